"""Request bodies on a real server: authenticated before they are read, cut off with a 413 at the limit.

Raw sockets, so that a test controls exactly what is sent and can show what the server did
not wait for: a 401 or 413 that comes back while the declared body was never sent.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import free_port, running_cohort, wait_for

LB = "/v2/lbaas/loadbalancers"
LIMIT = 64 * 1024
TOKENS = {"t-a": {"project_id": "a", "roles": ["member"]}}
HUGE = 300 * 1024 * 1024


@pytest.fixture
def base(tmp_path: Path) -> Iterator[str]:
    with running_cohort(tmp_path, drivers="noop", auth_strategy="token", tokens=TOKENS,
                        api_max_body_bytes=LIMIT) as (_, url):
        yield url


def _connect(base: str) -> socket.socket:
    host, port = base.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    return sock


def _head(path: str, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: test", "Content-Type: application/json",
             *(f"{name}: {value}" for name, value in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _response(sock: socket.socket) -> tuple[int, dict[str, str], Any]:
    """Read one response, then see the server close the connection: the rest of the body is never wanted."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in header_lines)}
    while len(body) < int(headers["content-length"]):
        body += sock.recv(65536)
    assert headers.get("connection") == "close"
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    return int(status_line.split()[1]), headers, json.loads(body)


def _fault(status: int, body: Any, expected: int) -> None:
    assert status == expected, body
    assert set(body) == {"faultcode", "faultstring", "debuginfo"} and body["faultcode"] == "Client", body


def test_unauthenticated_body_is_never_read(base: str) -> None:
    for framing in ({"Content-Length": str(HUGE)}, {"Transfer-Encoding": "chunked"}):
        for token in ({}, {"X-Auth-Token": "t-wrong"}):
            with _connect(base) as sock:
                sock.sendall(_head(LB, {**framing, **token}))  # and not a byte of the body
                status, _, body = _response(sock)
            _fault(status, body, 401)
    assert httpx.get(base + "/").status_code == 200  # version discovery stays public
    assert httpx.get(base + LB).status_code == 401


def test_declared_length_over_the_limit_is_refused_unread(base: str) -> None:
    with _connect(base) as sock:
        sock.sendall(_head(LB, {"Content-Length": str(HUGE), "X-Auth-Token": "t-a"}))
        status, _, body = _response(sock)
    _fault(status, body, 413)
    assert str(LIMIT) in body["faultstring"]


class Pump(threading.Thread):
    """Sends a chunked body of ``total`` bytes until done or until the server closes the connection."""

    def __init__(self, sock: socket.socket, total: int) -> None:
        super().__init__(daemon=True)
        self.sock, self.total, self.sent = sock, total, 0
        self.start()

    def run(self) -> None:
        chunk = b" " * 16384
        frame = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
        try:
            while self.sent < self.total:
                self.sock.sendall(frame)
                self.sent += len(chunk)
            self.sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # the server closed the connection: what the test waits for


def test_chunked_body_is_cut_off_at_the_limit(base: str) -> None:
    with _connect(base) as sock:
        sock.sendall(_head(LB, {"Transfer-Encoding": "chunked", "X-Auth-Token": "t-a"}))
        pump = Pump(sock, 256 * 1024 * 1024)
        sock.recv(1, socket.MSG_PEEK)  # the answer's first byte
        sent_before_answer = pump.sent
        status, _, body = _response(sock)
        pump.join(30)
    _fault(status, body, 413)
    # Answered once the limit was passed, not at the end of the 256 MB: a few socket buffers' worth
    # later; and the connection closed after a bounded drain, not after the whole upload.
    assert sent_before_answer < 16 * 1024 * 1024
    assert pump.sent < 48 * 1024 * 1024


def _padded(body: dict[str, Any], size: int) -> bytes:
    text = json.dumps(body).encode()
    return text[:-1] + b" " * (size - len(text)) + b"}"


def test_bodies_up_to_the_limit_are_served(base: str) -> None:
    client = httpx.Client(base_url=base, headers={"X-Auth-Token": "t-a"})
    create = {"loadbalancer": {"vip_subnet_id": "public-subnet"}}
    assert client.post(LB, content=_padded(create, LIMIT)).status_code == 201
    answer = client.post(LB, content=_padded(create, LIMIT + 1))
    _fault(answer.status_code, answer.json(), 413)

    def chunks(data: bytes) -> Iterator[bytes]:
        for start in range(0, len(data), 1000):
            yield data[start:start + 1000]

    # Streamed without a Content-Length: counted as it arrives, on both sides of the limit.
    assert client.post(LB, content=chunks(_padded(create, LIMIT - 10))).status_code == 201
    answer = client.post(LB, content=chunks(_padded(create, LIMIT + 10)))
    _fault(answer.status_code, answer.json(), 413)
    assert client.get(LB).status_code == 200  # the client's next request is served as usual


def test_every_worker_process_cuts_off_chunked_bodies(tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "COHORT_API_MAX_BODY_BYTES": str(LIMIT)}
    proc = subprocess.Popen([sys.executable, "-m", "cohort.cli", "up", "--drivers", "noop", "--workers", "2",
                             "--state-dir", str(tmp_path / "state"), "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: _answers(base), timeout=60)
        for _ in range(6):  # new connections: each worker takes some
            with _connect(base) as sock:
                sock.sendall(_head(LB, {"Transfer-Encoding": "chunked"}))
                pump = Pump(sock, 64 * 1024 * 1024)
                status, _, body = _response(sock)
                pump.join(30)
            _fault(status, body, 413)
        answer = httpx.post(base + LB, json={"loadbalancer": {"vip_subnet_id": "public-subnet"}})
        assert answer.status_code == 201, answer.text
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def _answers(base: str) -> bool:
    try:
        return httpx.get(base + "/v2.0", timeout=2).status_code == 200
    except httpx.TransportError:
        return False
