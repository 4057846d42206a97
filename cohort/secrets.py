"""Tenant TLS material: parse and check bundles, keep them encrypted at rest, hand PEM to amphorae.

A secret is referenced from listeners and pools by its ref (``.../v1/secrets/<id>`` or the bare
id), as Octavia references Barbican containers. Bundles are checked when stored and when
referenced, so a bad bundle is a 400 at the API and never reaches an amphora.
"""

from __future__ import annotations

import base64
import uuid
from pathlib import Path

from cryptography import x509
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from sqlalchemy import select
from sqlalchemy.orm import Session

from cohort.config import Settings
from cohort.db import models as m

KINDS = ("certificate", "ca", "crl")


class BadSecret(ValueError):
    """The material is not what its kind requires."""


def ref_id(ref: str) -> str:
    return ref.rstrip("/").rsplit("/", 1)[-1]


def _fernet(key_file: Path) -> Fernet:
    if not key_file.exists():
        key_file.parent.mkdir(parents=True, exist_ok=True)
        key_file.touch(mode=0o600)
        key_file.write_bytes(Fernet.generate_key())
    return Fernet(key_file.read_bytes().strip())


def normalise(kind: str, payload: bytes, passphrase: bytes | None = None) -> bytes:
    """Return canonical PEM for ``kind`` or raise BadSecret saying what is wrong."""
    if kind == "certificate":
        return _certificate_bundle(payload, passphrase)
    if kind == "ca":
        try:
            certs = x509.load_pem_x509_certificates(payload)
        except ValueError as exc:
            raise BadSecret(f"not a PEM CA bundle: {exc}") from exc
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)
    if kind == "crl":
        try:
            crl = x509.load_pem_x509_crl(payload)
        except ValueError as exc:
            raise BadSecret(f"not a PEM certificate revocation list: {exc}") from exc
        return crl.public_bytes(serialization.Encoding.PEM)
    raise BadSecret(f"unknown secret kind {kind!r}; use one of {', '.join(KINDS)}")


def _certificate_bundle(payload: bytes, passphrase: bytes | None) -> bytes:
    if b"-----BEGIN" not in payload:
        try:
            key, cert, chain = pkcs12.load_key_and_certificates(payload, passphrase)
        except ValueError as exc:
            raise BadSecret(f"neither a PEM bundle nor a readable PKCS12 file: {exc}") from exc
        if key is None or cert is None:
            raise BadSecret("the PKCS12 file must hold a certificate and its private key")
        certs = [cert, *(chain or [])]
    else:
        try:
            certs = x509.load_pem_x509_certificates(payload)
        except ValueError as exc:
            raise BadSecret(f"no certificate in the PEM bundle: {exc}") from exc
        key_pem = _first_key_block(payload)
        try:
            loaded = serialization.load_pem_private_key(key_pem, passphrase)
        except (ValueError, TypeError) as exc:
            raise BadSecret(f"the private key cannot be read: {exc}") from exc
        if not isinstance(loaded, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
            raise BadSecret("the private key must be RSA or EC")
        key = loaded
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise BadSecret("the private key must be RSA or EC")
    public = certs[0].public_key().public_bytes(serialization.Encoding.DER,
                                                serialization.PublicFormat.SubjectPublicKeyInfo)
    if key.public_key().public_bytes(serialization.Encoding.DER,
                                     serialization.PublicFormat.SubjectPublicKeyInfo) != public:
        raise BadSecret("the private key does not match the certificate")
    key_out = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs) + key_out


def _first_key_block(payload: bytes) -> bytes:
    text = payload.decode("ascii", errors="replace")
    start = text.find("-----BEGIN")
    while start != -1:
        end_marker = text.find("-----END", start)
        line_end = text.find("-----", end_marker + 8)
        block = text[start:line_end + 5]
        if "PRIVATE KEY" in block.splitlines()[0]:
            return block.encode()
        start = text.find("-----BEGIN", line_end)
    raise BadSecret("no private key in the PEM bundle")


def store(session: Session, key_file: Path, project_id: str, name: str, kind: str, payload: bytes,
          passphrase: bytes | None = None) -> m.Secret:
    pem = normalise(kind, payload, passphrase)
    row = m.Secret(id=str(uuid.uuid4()), project_id=project_id, name=name, kind=kind,
                   ciphertext=_fernet(key_file).encrypt(pem))
    session.add(row)
    return row


def reveal(key_file: Path, row: m.Secret) -> bytes:
    return _fernet(key_file).decrypt(row.ciphertext)


def lookup(session: Session, project_id: str, ref: str) -> m.Secret | None:
    row = session.get(m.Secret, ref_id(ref))
    return row if row is not None and row.project_id == project_id else None


def certificates_for(session: Session, settings: Settings, lb_id: str) -> dict[str, bytes]:
    """Every ref the load balancer uses, mapped to its PEM, for the amphora driver."""
    lb = session.get(m.LoadBalancer, lb_id)
    if lb is None:
        return {}
    refs: set[str] = set()
    for listener in lb.listeners:
        refs.update(r for r in (listener.default_tls_container_ref, listener.client_ca_tls_container_ref,
                                listener.client_crl_container_ref) if r)
        refs.update(listener.sni_container_refs or [])
    for pool in lb.pools:
        refs.update(r for r in (pool.tls_container_ref, pool.ca_tls_container_ref, pool.crl_container_ref) if r)
    key_file = settings.state_dir / "secrets.key"
    found = {}
    for ref in refs:
        row = lookup(session, lb.project_id, ref)
        if row is not None:
            found[ref] = reveal(key_file, row)
    return found


def b64decode_payload(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except ValueError as exc:
        raise BadSecret(f"payload is not valid base64: {exc}") from exc


def secrets_of(session: Session, project_id: str | None) -> list[m.Secret]:
    query = select(m.Secret)
    if project_id is not None:
        query = query.where(m.Secret.project_id == project_id)
    return list(session.scalars(query.order_by(m.Secret.created_at)))
