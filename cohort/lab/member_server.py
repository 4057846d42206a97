"""The lab's member server: a small, fast HTTP/1.1 origin that says who it is.

Every request gets ``200``, the body ``NAME\\n`` and the header ``X-Member: NAME`` (plus
``X-Peer``, the client address it saw), except ``/healthz`` which answers ``ok\\n``;
``/set-cookie/NAME=VALUE`` also sets that cookie, as an application starting a session would. It
keeps connections alive, accepts pipelined requests and request bodies (Content-Length or
chunked). It is an asyncio protocol rather than ``http.server`` because benchmarks push
tens of thousands of requests per second through it; ``--workers N`` runs N processes on
one ``SO_REUSEPORT`` socket address for more.

Run as ``python -m cohort.lab.member_server --name NAME --bind ADDR:PORT``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import signal
import socket
import sys

MAX_HEAD = 64 * 1024
# GET /set-cookie/NAME=VALUE answers with that cookie set (an application's session, for persistence tests).
COOKIE_PATH = b"/set-cookie/"
COOKIE = re.compile(rb"[A-Za-z0-9_-]{1,32}=[A-Za-z0-9_-]{1,64}")


class BadRequest(Exception):
    pass


def chunked_length(buf: bytearray, start: int) -> int | None:
    """Bytes taken by a chunked body starting at ``start`` (trailers included); None if incomplete."""
    pos = start
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        try:
            size = int(bytes(buf[pos:eol]).split(b";", 1)[0].strip(), 16)
        except ValueError as exc:
            raise BadRequest("bad chunk size") from exc
        pos = eol + 2
        if size == 0:
            end = buf.find(b"\r\n\r\n", pos - 2)
            return None if end < 0 else end + 4 - start
        if len(buf) < pos + size + 2:
            return None
        pos += size + 2


class MemberProtocol(asyncio.Protocol):
    def __init__(self, name: str) -> None:
        self.name = name
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.peer = b"-"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer = f"{peer[0]}:{peer[1]}".encode()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        try:
            while self.transport is not None and self._one_request():
                pass
        except BadRequest:
            self._respond(400, b"bad request\n", keep_alive=False, head=False)

    def _one_request(self) -> bool:
        """Answer the first complete request in the buffer; False when more bytes are needed."""
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buf) > MAX_HEAD:
                raise BadRequest("header too large")
            return False
        lines = bytes(self.buf[:end]).split(b"\r\n")
        parts = lines[0].split()
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            raise BadRequest("bad request line")
        method, target, version = parts
        headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            key, sep, value = line.partition(b":")
            if not sep:
                raise BadRequest("bad header")
            headers[key.strip().lower()] = value.strip()
        if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
            body = chunked_length(self.buf, end + 4)
            if body is None:
                return False
        else:
            try:
                body = int(headers.get(b"content-length", b"0"))
            except ValueError as exc:
                raise BadRequest("bad content-length") from exc
            if len(self.buf) < end + 4 + body:
                return False
        del self.buf[: end + 4 + body]
        connection = headers.get(b"connection", b"").lower()
        keep_alive = b"keep-alive" in connection if version == b"HTTP/1.0" else b"close" not in connection
        path = target.split(b"?", 1)[0]
        payload = b"ok\n" if path == b"/healthz" else self.name.encode() + b"\n"
        cookie = path[len(COOKIE_PATH):] if path.startswith(COOKIE_PATH) else None
        if cookie is not None and not COOKIE.fullmatch(cookie):
            cookie = None
        self._respond(200, payload, keep_alive=keep_alive, head=method == b"HEAD", cookie=cookie)
        return True

    def _respond(self, code: int, body: bytes, *, keep_alive: bool, head: bool, cookie: bytes | None = None) -> None:
        if self.transport is None:
            return
        reason = b"OK" if code == 200 else b"Bad Request"
        out = b"".join(
            (
                b"HTTP/1.1 %d %s\r\n" % (code, reason),
                b"Content-Type: text/plain\r\nContent-Length: %d\r\n" % len(body),
                b"X-Member: " + self.name.encode() + b"\r\nX-Peer: " + self.peer + b"\r\n",
                b"Set-Cookie: " + cookie + b"\r\n" if cookie else b"",
                b"Connection: keep-alive\r\n\r\n" if keep_alive else b"Connection: close\r\n\r\n",
                b"" if head else body,
            )
        )
        self.transport.write(out)
        if not keep_alive:
            self.transport.close()
            self.transport = None

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


def parse_bind(bind: str) -> tuple[str, int]:
    host, sep, port = bind.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--bind wants ADDR:PORT, not {bind!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


async def serve(name: str, host: str, port: int, reuse_port: bool, worker: bool = False) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: MemberProtocol(name), host, port, reuse_address=True, reuse_port=reuse_port, backlog=4096
    )
    print(f"member {name} pid {os.getpid()} listening on {host}:{port}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    parent = os.getppid()
    async with server:
        while not stop.is_set():
            # A worker whose parent died would serve on alone; it leaves instead.
            if worker and os.getppid() != parent:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cohort.lab.member_server", description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True)
    parser.add_argument("--bind", required=True, help="ADDR:PORT")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    host, port = parse_bind(args.bind)
    workers = max(1, args.workers)
    children: list[int] = []
    if workers > 1:
        # Bind once first so that a bad address fails loudly before any fork.
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            probe.bind((host, port))
        for _ in range(workers - 1):
            pid = os.fork()
            if pid == 0:
                asyncio.run(serve(args.name, host, port, reuse_port=True, worker=True))
                os._exit(0)
            children.append(pid)
    try:
        asyncio.run(serve(args.name, host, port, reuse_port=workers > 1))
    finally:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
    return 0


if __name__ == "__main__":
    sys.exit(main())
