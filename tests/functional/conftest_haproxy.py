"""A one-namespace lab for HAProxy data-path tests: VIP, members and clients side by side.

The namespace ``cohort-r-<random>`` holds an interface (fe0) with the VIP
(203.0.113.50), three member addresses (192.0.2.11-13, each with a small HTTP
server that answers its name) and client addresses (198.51.100.1-8, .20). All
traffic stays inside it: client sockets are opened by a thread that has
entered the namespace, and servers run under ``ip netns exec``. Everything made
here is removed by pid and by namespace name, also when a test fails.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import http.client
import json
import os
import resource
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cohort.drivers.amphora.haproxy_config import cert_filename

T = TypeVar("T")

VIP = "203.0.113.50"
IFACE = "fe0"
MEMBER_ADDRESSES = {"m1": "192.0.2.11", "m2": "192.0.2.12", "m3": "192.0.2.13"}
MEMBER_PORT = 8080
CLIENTS = [f"198.51.100.{i}" for i in range(1, 9)]
OUTSIDER = "198.51.100.20"
_CLONE_NEWNET = 0x40000000

MEMBER_SERVER = r"""
import http.server, itertools, json, sys, time, urllib.parse
name, addr, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
sessions = itertools.count(1)

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        if url.path == "/slow":
            time.sleep(min(float(query.get("s", ["1"])[0]), 5.0))
        headers = {key.lower(): value for key, value in self.headers.items()}
        body = json.dumps({"member": name, "path": self.path, "headers": headers}).encode()
        self.send_response(200)
        self.send_header("X-Member", name)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if url.path == "/login":
            self.send_header("Set-Cookie", f"JSESSIONID={name}-{next(sessions)}; Path=/")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

Server((addr, port), Handler).serve_forever()
"""


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def member(self) -> str | None:
        return self.headers.get("X-Member")

    def json(self) -> dict[str, object]:
        data = json.loads(self.body)
        assert isinstance(data, dict)
        return data


def _raise_nofile() -> None:
    # As the amphora agent does (as far as this sandbox's hard limit allows);
    # HAProxy sizes its maxconn from it.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = 100000 if hard == resource.RLIM_INFINITY else min(100000, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


class Lab:
    def __init__(self, tmp: Path) -> None:
        self.ns = f"cohort-r-{secrets.token_hex(4)}"
        self.tmp = tmp
        self.state_dir = tmp / "state"
        self.cert_dir = tmp / "certs"
        self.members: dict[str, subprocess.Popen[bytes]] = {}
        self._script = tmp / "member_server.py"
        self._created = False

    # --- namespace -------------------------------------------------------------------------------

    def ip(self, *args: str) -> None:
        subprocess.run(["ip", "-n", self.ns, *args], check=True, capture_output=True, timeout=10)

    def create(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.cert_dir.mkdir(parents=True, exist_ok=True)
        self._script.write_text(MEMBER_SERVER)
        subprocess.run(["ip", "netns", "add", self.ns], check=True, capture_output=True, timeout=10)
        self._created = True
        self.ip("link", "set", "lo", "up")
        # This kernel has no dummy driver: a veth pair with both ends inside
        # the namespace plays the front-end interface.
        self.ip("link", "add", IFACE, "type", "veth", "peer", "name", f"{IFACE}p")
        self.ip("link", "set", IFACE, "up")
        self.ip("link", "set", f"{IFACE}p", "up")
        for address in [VIP, *MEMBER_ADDRESSES.values(), *CLIENTS, OUTSIDER]:
            self.ip("addr", "add", f"{address}/32", "dev", IFACE)

    def destroy(self) -> None:
        for proc in self.members.values():
            _stop(proc)
        if self._created:
            subprocess.run(["ip", "netns", "del", self.ns], capture_output=True, timeout=10)

    def in_ns(self, fn: Callable[[], T], timeout: float = 20.0) -> T:
        """Run ``fn`` in a fresh thread that entered the namespace (sockets it opens stay there)."""
        outcome: list[T] = []
        failure: list[BaseException] = []

        def target() -> None:
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                with open(f"/run/netns/{self.ns}") as handle:
                    if libc.setns(handle.fileno(), _CLONE_NEWNET) != 0:
                        raise OSError(ctypes.get_errno(), "setns failed")
                outcome.append(fn())
            except BaseException as exc:  # handed to the caller's thread
                failure.append(exc)

        thread = threading.Thread(target=target, daemon=True)
        thread.start()
        thread.join(timeout)
        if thread.is_alive():
            raise TimeoutError(f"namespace call still running after {timeout}s")
        if failure:
            raise failure[0]
        return outcome[0]

    def connect(self, address: str, port: int, source: str | None = None, timeout: float = 5.0) -> socket.socket:
        return self.in_ns(lambda: socket.create_connection((address, port), timeout, (source, 0) if source else None))

    def wait_port(self, address: str, port: int, deadline_s: float = 5.0) -> None:
        deadline = time.monotonic() + deadline_s
        while True:
            try:
                self.connect(address, port, timeout=1.0).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    # --- members ---------------------------------------------------------------------------------

    def start_member(self, name: str) -> None:
        address = MEMBER_ADDRESSES[name]
        self.members[name] = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, sys.executable, str(self._script), name, address, str(MEMBER_PORT)]
        )
        self.wait_port(address, MEMBER_PORT)

    def stop_member(self, name: str) -> None:
        _stop(self.members.pop(name))

    def ensure_members(self) -> None:
        for name, address in MEMBER_ADDRESSES.items():
            if name not in self.members or self.members[name].poll() is not None:
                self.start_member(name)
            self.wait_port(address, MEMBER_PORT)

    # --- haproxy ---------------------------------------------------------------------------------

    @contextlib.contextmanager
    def haproxy(self, cfg: str, wait_for: tuple[str, int] | None = (VIP, 80)) -> Iterator[subprocess.Popen[bytes]]:
        path = self.tmp / f"haproxy-{secrets.token_hex(3)}.cfg"
        path.write_text(cfg)
        check = subprocess.run(["haproxy", "-c", "-q", "-f", str(path)], capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, check.stdout + check.stderr
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, "haproxy", "-db", "-f", str(path)],
            preexec_fn=_raise_nofile,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            if wait_for is not None:
                self.wait_port(*wait_for)
            yield proc
        finally:
            _stop(proc)

    def admin(self, lb_id: str, command: str) -> str:
        """A command on haproxy's stats socket (a unix socket: no network involved)."""
        with self.connect_unix(str(self.state_dir / f"{lb_id}.sock")) as sock:
            sock.sendall(command.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    @staticmethod
    def connect_unix(path: str) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(5)
        sock.connect(path)
        return sock

    def _stats(self, lb_id: str) -> list[dict[str, str]]:
        lines = self.admin(lb_id, "show stat").splitlines()
        fields = lines[0].lstrip("# ").split(",")
        return [dict(zip(fields, line.split(","), strict=False)) for line in lines[1:] if line]

    def server_status(self, lb_id: str, backend: str) -> dict[str, str]:
        return {r["svname"]: r["status"] for r in self._stats(lb_id) if r["pxname"] == backend and r["type"] == "2"}

    def backend_sessions(self, lb_id: str, backend: str) -> int:
        """Streams the backend is serving now (``scur``)."""
        row = next(r for r in self._stats(lb_id) if r["pxname"] == backend and r["svname"] == "BACKEND")
        return int(row["scur"])

    # --- clients ---------------------------------------------------------------------------------

    def open(
        self,
        port: int = 80,
        source: str | None = None,
        tls: ssl.SSLContext | None = None,
        sni: str | None = None,
        address: str = VIP,
    ) -> http.client.HTTPConnection:
        sock = self.connect(address, port, source)
        conn = http.client.HTTPConnection(address, port, timeout=5)
        conn.sock = tls.wrap_socket(sock, server_hostname=sni) if tls is not None else sock
        return conn

    def get(
        self,
        path: str = "/",
        headers: dict[str, str] | None = None,
        conn: http.client.HTTPConnection | None = None,
        **open_kw: object,
    ) -> Reply:
        own = conn is None
        connection = conn or self.open(**open_kw)  # type: ignore[arg-type]
        try:
            connection.request("GET", path, headers=headers or {})
            response = connection.getresponse()
            return Reply(response.status, response.headers, response.read())
        finally:
            if own:
                connection.close()


@contextlib.contextmanager
def lab_namespace(tmp: Path) -> Iterator[Lab]:
    if os.geteuid() != 0:
        import pytest

        pytest.skip("needs root for network namespaces")
    lab = Lab(tmp)
    try:
        lab.create()
        lab.ensure_members()
        yield lab
    finally:
        lab.destroy()


# --- TLS material ----------------------------------------------------------------------------------


@dataclass
class Pki:
    server_ca: Path  # verifies the listener's certificates
    client: tuple[Path, Path]  # certificate and key signed by the client CA (ref "client-ca")
    rogue_client: tuple[Path, Path]  # signed by a CA the listener does not trust


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _issue(
    cn: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    ca: bool = False,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    issuer_name, issuer_key = (issuer[0].subject, issuer[1]) if issuer else (name, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(cn)]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def write_pki(cert_dir: Path, server_refs: dict[str, str]) -> Pki:
    """Server bundles for ``server_refs`` (ref -> host name), a client CA at ref ``client-ca``, client certs."""
    server_ca_key, client_ca_key, rogue_ca_key = _key(), _key(), _key()
    server_ca = _issue("Cohort test server CA", server_ca_key, None, ca=True)
    client_ca = _issue("Cohort test client CA", client_ca_key, None, ca=True)
    rogue_ca = _issue("Rogue CA", rogue_ca_key, None, ca=True)
    for ref, host in server_refs.items():
        key = _key()
        bundle = _cert_pem(_issue(host, key, (server_ca, server_ca_key))) + _key_pem(key) + _cert_pem(server_ca)
        (cert_dir / cert_filename(ref)).write_bytes(bundle)
    (cert_dir / cert_filename("client-ca")).write_bytes(_cert_pem(client_ca))
    (cert_dir / "server-ca.pem").write_bytes(_cert_pem(server_ca))
    pairs = []
    for name, issuer in (("client", (client_ca, client_ca_key)), ("rogue", (rogue_ca, rogue_ca_key))):
        key = _key()
        (cert_dir / f"{name}.crt").write_bytes(_cert_pem(_issue(f"{name}.example.net", key, issuer)))
        (cert_dir / f"{name}.key").write_bytes(_key_pem(key))
        pairs.append((cert_dir / f"{name}.crt", cert_dir / f"{name}.key"))
    return Pki(server_ca=cert_dir / "server-ca.pem", client=pairs[0], rogue_client=pairs[1])
