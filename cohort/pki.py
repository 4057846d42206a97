"""Cohort's local certificate authority for the mutual TLS between controller and agents.

Owns one CA (EC P-256, ten years) kept in a directory, the certificates it issues
to agents (server) and to the controller (client), their renewal, and the
``ssl.SSLContext`` objects both sides build from them. Agents trust only this CA;
the controller checks an agent's certificate against the CA without a host name,
as Octavia does, since amphora addresses change on failover.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import ipaddress
import os
import re
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS = 3650
RENEW_BEFORE = dt.timedelta(days=30)
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class CertPaths:
    """Where one issued identity lives: its certificate, its key and the CA that signed it."""

    cert: Path
    key: Path
    ca: Path


def not_after(cert_path: Path | str) -> dt.datetime:
    """The expiry (UTC, timezone-aware) of the first certificate in a PEM file."""
    cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    return cert.not_valid_after_utc


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _write_public(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.chmod(0o644)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class CertificateAuthority:
    """Loads the CA from ``directory`` or creates it there, then issues leaf certificates."""

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.ca_cert_path = self.directory / "ca.pem"
        self.ca_key_path = self.directory / "ca.key"
        with self._locked():
            if not (self.ca_cert_path.exists() and self.ca_key_path.exists()):
                self._create_ca()
        self._ca_cert = x509.load_pem_x509_certificate(self.ca_cert_path.read_bytes())
        key = serialization.load_pem_private_key(self.ca_key_path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{self.ca_key_path}: expected an EC private key")
        self._ca_key = key

    @contextmanager
    def _locked(self) -> Iterator[None]:
        # Controller processes and test workers may share one CA directory.
        with (self.directory / ".lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _create_ca(self) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Cohort CA")])
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        _write_private(self.ca_key_path, _key_pem(key))
        _write_public(self.ca_cert_path, cert.public_bytes(serialization.Encoding.PEM))

    def issue_server(self, name: str, ip_addresses: list[str], days: int = 365) -> CertPaths:
        """A server certificate for an agent, valid for ``ip_addresses``; reused while still good."""
        ips = sorted({str(ipaddress.ip_address(a)) for a in ip_addresses})
        return self._issue(f"server-{name}", name, ExtendedKeyUsageOID.SERVER_AUTH, ips, days)

    def issue_client(self, name: str, days: int = 365) -> CertPaths:
        """A client certificate (the controller's); reused while still good."""
        return self._issue(f"client-{name}", name, ExtendedKeyUsageOID.CLIENT_AUTH, [], days)

    def server_paths(self, name: str) -> CertPaths:
        """Where ``issue_server(name, ...)`` keeps its files (they may not exist yet)."""
        return self._paths(f"server-{name}")

    def client_paths(self, name: str) -> CertPaths:
        return self._paths(f"client-{name}")

    def _paths(self, stem: str) -> CertPaths:
        issued = self.directory / "issued"
        return CertPaths(cert=issued / f"{stem}.pem", key=issued / f"{stem}.key", ca=self.ca_cert_path)

    def _issue(
        self, stem: str, name: str, usage: x509.ObjectIdentifier, ips: list[str], days: int
    ) -> CertPaths:
        if not _NAME_RE.match(name):
            raise ValueError(f"invalid certificate name {name!r}")
        paths = self._paths(stem)
        paths.cert.parent.mkdir(exist_ok=True)
        with self._locked():
            if not self._still_good(paths, ips):
                self._sign_leaf(paths, name, usage, ips, days)
        return paths

    def _still_good(self, paths: CertPaths, ips: list[str]) -> bool:
        if not (paths.cert.exists() and paths.key.exists()):
            return False
        try:
            cert = x509.load_pem_x509_certificate(paths.cert.read_bytes())
            cert.verify_directly_issued_by(self._ca_cert)
        except (ValueError, TypeError, InvalidSignature):
            return False
        if cert.not_valid_after_utc - _now() < RENEW_BEFORE:
            return False
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            have = sorted(str(a) for a in san.get_values_for_type(x509.IPAddress))
        except x509.ExtensionNotFound:
            have = []
        return have == ips

    def _sign_leaf(
        self, paths: CertPaths, name: str, usage: x509.ObjectIdentifier, ips: list[str], days: int
    ) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self._ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(min(now + dt.timedelta(days=days), self._ca_cert.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._ca_key.public_key()),
                critical=False,
            )
        )
        if ips:
            san = [x509.IPAddress(ipaddress.ip_address(a)) for a in ips]
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        cert = builder.sign(self._ca_key, hashes.SHA256())
        _write_private(paths.key, _key_pem(key))
        _write_public(paths.cert, cert.public_bytes(serialization.Encoding.PEM))


def server_ssl_context(paths: CertPaths) -> ssl.SSLContext:
    """An agent's context: TLS >= 1.2 and a client certificate signed by the CA is mandatory."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(paths.cert), str(paths.key))
    ctx.load_verify_locations(cafile=str(paths.ca))
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_ssl_context(paths: CertPaths) -> ssl.SSLContext:
    """The controller's context: presents its certificate, trusts only the CA, no host name check."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cafile=str(paths.ca))
    ctx.load_cert_chain(str(paths.cert), str(paths.key))
    return ctx
