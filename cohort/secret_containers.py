"""Barbican containers: which secret names each type takes, and a certificate container as one PEM bundle.

Octavia reads a certificate container's ``certificate``, ``private_key``, ``intermediates`` and
``private_key_passphrase`` secrets and gives the amphora the certificate, its chain and the key
in the clear. This module does the same from the payloads of those secrets (PEM or DER; the
key may be encrypted with the passphrase), so a container works wherever a PKCS12 secret does.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

TYPES = ("generic", "rsa", "certificate")
# Per type: (names it must have, names it may have); a generic container takes any names.
NAMES: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "certificate": (frozenset({"certificate"}),
                    frozenset({"certificate", "private_key", "private_key_passphrase", "intermediates"})),
    "rsa": (frozenset({"public_key", "private_key"}),
            frozenset({"public_key", "private_key", "private_key_passphrase"})),
}
USABLE = "certificate"  # the kind of a certificate container a TLS listener can serve


class BadContainer(ValueError):
    """The container's secrets do not make what its type promises."""


def check_names(container_type: str, names: list[str]) -> str | None:
    """Why ``names`` do not suit a container of ``container_type`` (Barbican's words), or None."""
    if len(set(names)) != len(names):
        return "Duplicate reference names are not allowed"
    if container_type not in NAMES:
        return None
    required, allowed = NAMES[container_type]
    if container_type == "certificate":
        if set(names) - allowed:
            return ("only 'private_key', 'certificate' , 'private_key_passphrase',  or 'intermediates' reference "
                    "names are allowed for Certificate type")
        if not required <= set(names):
            return "The minimum required reference name is 'certificate' for Certificate type"
    else:
        if set(names) - allowed:
            return ("only 'private_key', 'public_key' and 'private_key_passphrase' reference names are allowed for "
                    "RSA type")
        if not required <= set(names):
            return "The minimum required reference names are 'public_key' and'private_key' for RSA type"
    return None


def certificate_bundle(parts: dict[str, bytes]) -> bytes:
    """The certificate, the intermediates and the key (unencrypted) of a certificate container, as PEM.

    ``parts`` maps the container's names to their payloads. Raises BadContainer saying what is
    missing or unreadable; the caller checks that the key matches the certificate.
    """
    try:
        return _bundle(parts)
    except BadContainer:
        raise
    except (ValueError, TypeError, IndexError, OverflowError, UnsupportedAlgorithm) as exc:
        raise BadContainer(f"unreadable certificate container: {exc}") from exc


def _bundle(parts: dict[str, bytes]) -> bytes:
    if "certificate" not in parts:
        raise BadContainer("the container has no certificate")
    if "private_key" not in parts:
        raise BadContainer("the container has no private_key")
    certs = _certificates(parts["certificate"], "certificate")[:1]
    if "intermediates" in parts:
        certs += _certificates(parts["intermediates"], "intermediates")
    passphrase = parts.get("private_key_passphrase")
    key = _private_key(parts["private_key"], passphrase.strip() if passphrase else None)
    pem = b"".join(cert.public_bytes(serialization.Encoding.PEM) for cert in certs)
    return pem + key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption())


def _certificates(payload: bytes, name: str) -> list[x509.Certificate]:
    if b"-----BEGIN" in payload:
        try:
            return x509.load_pem_x509_certificates(payload)
        except ValueError as exc:
            raise BadContainer(f"the {name} secret holds no PEM certificate: {exc}") from exc
    try:
        return [x509.load_der_x509_certificate(payload)]
    except ValueError as exc:
        raise BadContainer(f"the {name} secret is neither a PEM nor a DER certificate: {exc}") from exc


def _private_key(payload: bytes, passphrase: bytes | None) -> PrivateKeyTypes:
    loader = serialization.load_pem_private_key if b"-----BEGIN" in payload else serialization.load_der_private_key
    try:
        return loader(payload, passphrase)
    except TypeError as exc:  # encrypted without a passphrase, or a passphrase for a clear key
        raise BadContainer(f"the private_key cannot be read with the passphrase given: {exc}") from exc
    except ValueError as exc:
        raise BadContainer(f"the private_key secret is not a readable key: {exc}") from exc
