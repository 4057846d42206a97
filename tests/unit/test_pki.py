"""The local CA: issuing, renewal, and the mutual-TLS contexts over real sockets on 127.0.0.1."""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509

from cohort.pki import CertificateAuthority, CertPaths, client_ssl_context, not_after, server_ssl_context


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return CertificateAuthority(tmp_path_factory.mktemp("pki"))


def test_ca_is_created_private_and_reloaded(tmp_path: Path) -> None:
    ca = CertificateAuthority(tmp_path)
    assert stat.S_IMODE(ca.ca_key_path.stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate(ca.ca_cert_path.read_bytes())
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not_after(ca.ca_cert_path) - dt.datetime.now(dt.UTC) > dt.timedelta(days=3600)
    again = CertificateAuthority(tmp_path)
    assert again.ca_cert_path.read_bytes() == ca.ca_cert_path.read_bytes()


def test_server_certificate_is_signed_idempotent_and_covers_ips(ca: CertificateAuthority) -> None:
    paths = ca.issue_server("amp-1", ["198.18.0.10", "2001:db8::10"])
    cert = x509.load_pem_x509_certificate(paths.cert.read_bytes())
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(paths.ca.read_bytes()))
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(str(a) for a in san.get_values_for_type(x509.IPAddress)) == ["198.18.0.10", "2001:db8::10"]
    assert stat.S_IMODE(paths.key.stat().st_mode) == 0o600
    assert ca.server_paths("amp-1") == paths
    assert ca.issue_server("amp-1", ["2001:db8::10", "198.18.0.10"]).cert.read_bytes() == paths.cert.read_bytes()


def test_reissued_when_expiring_missing_or_addresses_change(ca: CertificateAuthority) -> None:
    short = ca.issue_client("soon", days=10)
    first = short.cert.read_bytes()
    assert not_after(short.cert) - dt.datetime.now(dt.UTC) < dt.timedelta(days=11)
    renewed = ca.issue_client("soon")
    assert renewed.cert.read_bytes() != first
    assert not_after(renewed.cert) - dt.datetime.now(dt.UTC) > dt.timedelta(days=300)

    paths = ca.issue_server("amp-2", ["198.18.0.11"])
    before = paths.cert.read_bytes()
    assert ca.issue_server("amp-2", ["198.18.0.12"]).cert.read_bytes() != before
    paths.key.unlink()
    assert ca.issue_server("amp-2", ["198.18.0.12"]).key.exists()


def test_invalid_names_are_refused(ca: CertificateAuthority) -> None:
    with pytest.raises(ValueError):
        ca.issue_client("../escape")
    with pytest.raises(ValueError):
        ca.issue_server("amp", ["not-an-ip"])


def _serve_once(ctx: ssl.SSLContext) -> tuple[socket.socket, threading.Thread, list[str]]:
    """A TLS echo server for one connection; ``outcome`` gets 'ok' or the server-side error."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(5)
    outcome: list[str] = []

    def serve() -> None:
        try:
            conn, _ = listener.accept()
            with ctx.wrap_socket(conn, server_side=True) as tls:
                tls.settimeout(5)
                tls.sendall(tls.recv(100))
                outcome.append("ok")
        except (OSError, ssl.SSLError) as e:
            outcome.append(f"{type(e).__name__}: {e}")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener, thread, outcome


def _talk(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> tuple[bytes | None, str]:
    listener, thread, outcome = _serve_once(server_ctx)
    answer: bytes | None = None
    try:
        with (
            socket.create_connection(listener.getsockname(), timeout=5) as raw,
            client_ctx.wrap_socket(raw) as tls,
        ):
            tls.sendall(b"ping")
            answer = tls.recv(100) or None
    except (OSError, ssl.SSLError):
        answer = None
    finally:
        thread.join(5)
        listener.close()
    return answer, outcome[0] if outcome else "no outcome"


def _bare_client(ca_file: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cafile=str(ca_file))
    return ctx


def test_mutual_tls_accepts_the_ca_client(ca: CertificateAuthority) -> None:
    server = ca.issue_server("agent", ["127.0.0.1"])
    client = ca.issue_client("controller")
    assert _talk(server_ssl_context(server), client_ssl_context(client)) == (b"ping", "ok")


def test_client_without_certificate_is_refused(ca: CertificateAuthority) -> None:
    server = ca.issue_server("agent", ["127.0.0.1"])
    answer, outcome = _talk(server_ssl_context(server), _bare_client(server.ca))
    assert answer is None
    assert "certificate" in outcome.lower()


def test_client_from_another_ca_is_refused(ca: CertificateAuthority, tmp_path: Path) -> None:
    server = ca.issue_server("agent", ["127.0.0.1"])
    stranger = CertificateAuthority(tmp_path).issue_client("controller")
    foreign = CertPaths(cert=stranger.cert, key=stranger.key, ca=server.ca)  # trusts our CA, signed by theirs
    answer, outcome = _talk(server_ssl_context(server), client_ssl_context(foreign))
    assert answer is None
    assert outcome != "ok"


def test_client_refuses_a_server_from_another_ca(ca: CertificateAuthority, tmp_path: Path) -> None:
    impostor = CertificateAuthority(tmp_path).issue_server("agent", ["127.0.0.1"])
    client = ca.issue_client("controller")
    answer, _ = _talk(server_ssl_context(impostor), client_ssl_context(client))
    assert answer is None


def test_contexts_require_tls12(ca: CertificateAuthority) -> None:
    paths = ca.issue_server("agent", ["127.0.0.1"])
    server = server_ssl_context(paths)
    assert server.minimum_version == ssl.TLSVersion.TLSv1_2
    assert server.verify_mode == ssl.CERT_REQUIRED
    assert client_ssl_context(ca.issue_client("controller")).minimum_version == ssl.TLSVersion.TLSv1_2
