"""Tenant secrets: keep payloads encrypted at rest, tell what TLS material they hold, hand PEM to amphorae.

Secrets and certificate containers (:mod:`cohort.secret_containers`) are stored as Barbican
stores them: a secret's payload exactly as the client sent it (a PKCS12 file, PEM, a key...).
When a secret is stored, the material it holds is recognised and kept as its ``kind``
(certificate and key, CA certificates, CRL, or opaque); a certificate container's kind says
whether its secrets make a usable certificate and key. Listeners and pools reference either by
its ref (``.../v1/secrets/<id>``, ``.../v1/containers/<id>`` or the bare id), as Octavia references
Barbican secrets and containers, and the kind is checked then, so bad material is a 400 at the
API and never reaches an amphora.
"""

from __future__ import annotations

import base64
import fcntl
import logging
import os
import re
import uuid
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from sqlalchemy import select
from sqlalchemy.orm import Session

from cohort.config import Settings
from cohort.db import models as m
from cohort.secret_containers import BadContainer, certificate_bundle

log = logging.getLogger(__name__)

KINDS = ("certificate", "ca", "crl")
OPAQUE = "opaque"
# What a listener or pool references: a secret or a container.
Material = m.Secret | m.SecretContainer


class BadSecret(ValueError):
    """The material is not what its kind requires."""


def ref_id(ref: str) -> str:
    return ref.rstrip("/").rsplit("/", 1)[-1]


def _fernet(key_file: Path) -> Fernet:
    key = _read_key(key_file)
    return Fernet(key if key else _create_key(key_file))


def _read_key(key_file: Path) -> bytes:
    try:
        return key_file.read_bytes().strip()
    except FileNotFoundError:
        return b""


def _create_key(key_file: Path) -> bytes:
    """Make the key once, whatever the number of processes racing to: the first one's key is everyone's.

    Under an exclusive lock, the key is written to a private temporary file and only then put in
    place, so a reader never sees a partial key. An empty key file (left by a crash mid-write)
    has encrypted nothing and is replaced.
    """
    key_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with (key_file.parent / f".{key_file.name}.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            key = _read_key(key_file)
            if key:
                return key
            key = Fernet.generate_key()
            tmp = key_file.with_name(f".{key_file.name}.{os.getpid()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(key)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, key_file)
            return key
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def normalise(kind: str, payload: bytes, passphrase: bytes | None = None) -> bytes:
    """Return canonical PEM for ``kind`` or raise BadSecret saying what is wrong."""
    try:
        return _normalise(kind, payload, passphrase)
    except BadSecret:
        raise
    except (ValueError, TypeError, IndexError, OverflowError, UnsupportedAlgorithm) as exc:
        # The parsers of hostile input may fail in ways they do not document: still a client's error.
        raise BadSecret(f"unreadable {kind}: {exc}") from exc


def _normalise(kind: str, payload: bytes, passphrase: bytes | None) -> bytes:
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


# The opening line of a PEM block whose label names a private key (RSA, EC, ENCRYPTED or none).
PRIVATE_KEY_BEGIN = re.compile(rb"-----BEGIN ((?:[A-Z0-9]+ )*PRIVATE KEY)-----")


def _first_key_block(payload: bytes) -> bytes:
    # The first key block only, found with two linear scans: no pattern that could backtrack
    # over a megabyte of hostile payload.
    begin = PRIVATE_KEY_BEGIN.search(payload)
    if begin is None:
        raise BadSecret("no private key in the PEM bundle")
    end_line = b"-----END " + begin.group(1) + b"-----"
    end = payload.find(end_line, begin.end())
    if end == -1:
        raise BadSecret(f"the {begin.group(1).decode()} block has no end line")
    return payload[begin.start():end + len(end_line)]


def encrypt_text(key_file: Path, text: str) -> bytes:
    """A short operator secret (a BGP MD5 password) as stored at rest."""
    return _fernet(key_file).encrypt(text.encode())


def decrypt_text(key_file: Path, ciphertext: bytes) -> str:
    return _fernet(key_file).decrypt(ciphertext).decode()


def store(session: Session, key_file: Path, project_id: str, name: str, kind: str, payload: bytes,
          passphrase: bytes | None = None) -> m.Secret:
    """Cohort's own request (a ``kind``): the bundle is checked now and kept as canonical PEM (text/plain)."""
    pem = normalise(kind, payload, passphrase)
    row = m.Secret(id=str(uuid.uuid4()), project_id=project_id, name=name, kind=kind, content_type="text/plain",
                   ciphertext=_fernet(key_file).encrypt(pem))
    session.add(row)
    return row


def store_payload(session: Session, key_file: Path, project_id: str, payload: bytes | None,
                  content_type: str | None, **metadata: object) -> m.Secret:
    """Barbican's request: the payload is kept as sent; ``metadata`` are further columns (name, mode...)."""
    kind = recognise(payload) if payload else OPAQUE
    row = m.Secret(id=str(uuid.uuid4()), project_id=project_id, kind=kind,
                   content_type=content_type if payload else None,
                   ciphertext=_fernet(key_file).encrypt(payload) if payload else b"", **metadata)
    session.add(row)
    return row


def recognise(payload: bytes) -> str:
    """The TLS material ``payload`` holds: the first kind it reads as (a key makes it a certificate), else opaque."""
    for kind in KINDS:
        try:
            normalise(kind, payload)
        except BadSecret:
            continue
        return kind
    return OPAQUE


def reveal(key_file: Path, row: m.Secret) -> bytes:
    """The payload as stored (empty for a secret without one)."""
    return _fernet(key_file).decrypt(row.ciphertext) if row.ciphertext else b""


def material_pem(session: Session, key_file: Path, row: Material) -> bytes:
    """The PEM an amphora is given for a secret or a certificate container; BadSecret if there is none."""
    if isinstance(row, m.SecretContainer):
        parts = {}
        for item in row.secrets:
            secret = session.get(m.Secret, item.secret_id)
            if secret is None:
                raise BadSecret(f"the container's {item.name} secret is gone")
            parts[item.name] = reveal(key_file, secret)
        try:
            return normalise("certificate", certificate_bundle(parts))
        except BadContainer as exc:
            raise BadSecret(str(exc)) from exc
    if row.kind not in KINDS:
        raise BadSecret(f"the secret holds no TLS material ({row.kind})")
    return normalise(row.kind, reveal(key_file, row))


def container_kind(session: Session, key_file: Path, row: m.SecretContainer) -> str:
    """What a listener may use the container as: ``certificate``, or what it is instead."""
    if row.type != "certificate":
        return f"{row.type} container"
    try:
        material_pem(session, key_file, row)
    except BadSecret:
        return "certificate container without a usable certificate and key"
    return "certificate"


def refs_must_be_stored(settings: Settings) -> bool:
    """Whether a TLS ref must name stored material: not when no amphora is ever given any.

    With the noop amphora driver, as with Octavia's noop certificate manager (what API test suites
    run), a ref that names nothing stored is taken as it is; one that names stored material is
    still checked. Every other driver serves the material, so it must be there.
    """
    return settings.seam_drivers()["amphora"] != "noop"


def lookup(session: Session, project_id: str, ref: str) -> Material | None:
    """The project's secret or container that ``ref`` names (a ``/containers/`` ref names a container)."""
    ident = ref_id(ref)
    path = ref.rstrip("/")
    found: list[Material | None] = []
    if "/containers/" not in path:
        found.append(session.get(m.Secret, ident))
    if "/secrets/" not in path:
        found.append(session.get(m.SecretContainer, ident))
    return next((row for row in found if row is not None and row.project_id == project_id), None)


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
    key_file = settings.secrets_key_file
    found = {}
    for ref in refs:
        row = lookup(session, lb.project_id, ref)
        if row is None:
            continue
        try:
            found[ref] = material_pem(session, key_file, row)
        except BadSecret as exc:  # checked when referenced; only a later change can make it unusable
            log.warning("load balancer %s: %s %s is no longer usable: %s", lb_id, type(row).__name__, row.id, exc)
    return found


def b64decode_payload(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except ValueError as exc:
        raise BadSecret(f"payload is not valid base64: {exc}") from exc


def user_of(session: Session, row: Material) -> str | None:
    """The id of a listener or pool that references the secret or container, or None.

    Only objects of the row's own project can reference it (:func:`lookup`), so only they are
    read, and a ref matches when it names exactly this row, as :func:`lookup` resolves it. A
    secret is also in use when a container that holds it is.
    """
    ids = {row.id}
    if isinstance(row, m.Secret):
        ids.update(session.scalars(select(m.ContainerSecret.container_id).where(
            m.ContainerSecret.secret_id == row.id)))
    listeners = session.execute(select(
        m.Listener.id, m.Listener.default_tls_container_ref, m.Listener.client_ca_tls_container_ref,
        m.Listener.client_crl_container_ref, m.Listener.sni_container_refs,
    ).where(m.Listener.project_id == row.project_id).order_by(m.Listener.created_at))
    for listener_id, *refs, sni in listeners:
        if any(ref and ref_id(ref) in ids for ref in [*refs, *(sni or [])]):
            return str(listener_id)
    pools = session.execute(select(
        m.Pool.id, m.Pool.tls_container_ref, m.Pool.ca_tls_container_ref, m.Pool.crl_container_ref,
    ).where(m.Pool.project_id == row.project_id).order_by(m.Pool.created_at))
    for pool_id, *refs in pools:
        if any(ref and ref_id(ref) in ids for ref in refs):
            return str(pool_id)
    return None
