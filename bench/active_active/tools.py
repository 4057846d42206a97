"""The tools the benchmark runs inside the lab's namespaces, and how it starts them.

``python -m bench.active_active tool KIND VIP ...`` runs one of them (see :func:`tool_main`):

- ``client``: the scaling test's load, long-lived keep-alive connections (a request each every
  ``--interval``) and a stream of short ones, until stdin closes; prints what happened to each;
- ``ports``: one request from each of a range of fixed source ports (the distributor's pins);
- ``stream``: new connections (one request each) from ``--short-workers`` loops until stdin
  closes, each attempt timed on CLOCK_MONOTONIC (which the benchmark process shares); prints
  the failures with their times, for the failure window when an amphora dies;
- ``latency``: a sampler alternating sample by sample between source addresses, TCP connect
  or keep-alive request time, in batches asked for on stdin.

Every tool refuses targets outside the lab's address ranges, and :func:`tool_command` refuses
to start one outside the benchmark's namespaces.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from bench.common import REPO, BenchError, check_lab_address
from cohort import netns

FIXED_PORT_FIRST = 60001  # above the client namespace's ephemeral ports (setup.EPHEMERAL_PORTS)
REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
CLOSE_REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
NET_ERRORS = (OSError, EOFError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError)


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """(status, server will close) of one HTTP/1.1 response with a Content-Length body."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip().lower() for k, _, v in (line.partition(":") for line in head[1:] if line)}
    await reader.readexactly(int(headers.get("content-length", "0")))
    return int(head[0].split()[1]), headers.get("connection") == "close"


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes,
                   timeout: float) -> tuple[int, bool]:
    writer.write(request)
    await writer.drain()
    return await asyncio.wait_for(read_response(reader), timeout)


@dataclass
class LongLived:
    """One long-lived keep-alive connection of the load client and what happened to it."""

    ports: list[int] = field(default_factory=list)  # local ports, one per (re)connection
    ok: int = 0
    bad_status: int = 0
    server_closed: int = 0  # a clean FIN between requests or ``Connection: close``: HTTP reconnects
    broken: list[dict[str, Any]] = field(default_factory=list)  # a request that failed
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None

    async def connect(self, vip: str) -> None:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(vip, 80), 3)
        self.reader, self.writer = reader, writer
        self.ports.append(int(writer.get_extra_info("sockname")[1]))

    def drop(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def long_lived_loop(conn: LongLived, vip: str, interval: float, stop: asyncio.Event, t0: float) -> None:
    while not stop.is_set():
        await asyncio.sleep(interval)
        try:
            if conn.reader is None or conn.writer is None:
                await conn.connect(vip)
            assert conn.reader is not None and conn.writer is not None
            if conn.reader.at_eof():
                conn.server_closed += 1
                conn.drop()
                continue
            status, close = await exchange(conn.reader, conn.writer, REQUEST, 3.0)
            conn.ok += status == 200
            conn.bad_status += status != 200
            if close:
                conn.server_closed += 1
                conn.drop()
        except NET_ERRORS as exc:
            conn.broken.append({"t": round(time.monotonic() - t0, 3), "error": type(exc).__name__,
                                "port": conn.ports[-1] if conn.ports else None})
            conn.drop()


async def short_loop(vip: str, pause: float, stop: asyncio.Event, counts: dict[str, int]) -> None:
    while not stop.is_set():
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(vip, 80), 3)
            try:
                status, _ = await exchange(reader, writer, CLOSE_REQUEST, 3.0)
            finally:
                writer.close()
            key = "ok" if status == 200 else f"status_{status}"
        except NET_ERRORS as exc:
            key = type(exc).__name__
        counts[key] = counts.get(key, 0) + 1
        await asyncio.sleep(pause)


async def load_client(vip: str, connections: int, interval: float, short_workers: int, short_pause: float,
                      max_seconds: float) -> dict[str, Any]:
    """Long-lived + short connections until stdin closes (or ``max_seconds``); prints ``ready`` first."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def watch_stdin() -> None:
        sys.stdin.read()
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=watch_stdin, daemon=True).start()
    loop.call_later(max_seconds, stop.set)
    conns = [LongLived() for _ in range(connections)]
    for conn in conns:
        await conn.connect(vip)
    print("ready " + json.dumps([c.ports[0] for c in conns]), flush=True)
    t0 = time.monotonic()
    counts: dict[str, int] = {}
    tasks = [asyncio.create_task(long_lived_loop(c, vip, interval, stop, t0)) for c in conns]
    tasks += [asyncio.create_task(short_loop(vip, short_pause, stop, counts)) for _ in range(short_workers)]
    await asyncio.gather(*tasks)
    for conn in conns:
        conn.drop()
    return {"seconds": time.monotonic() - t0, "short": counts, "connections": [
        {"ports": c.ports, "ok": c.ok, "bad_status": c.bad_status, "server_closed": c.server_closed,
         "broken": c.broken} for c in conns]}


async def stream(vip: str, workers: int, pause: float, max_seconds: float) -> dict[str, Any]:
    """New connections from ``workers`` loops until stdin closes (or ``max_seconds``); ``ready`` first.

    Each attempt: connect (1 s timeout), one ``Connection: close`` request (2 s). Failures are
    listed with their start and end (``time.monotonic``); successes only counted, with the last.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    def watch_stdin() -> None:
        sys.stdin.read()
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=watch_stdin, daemon=True).start()
    loop.call_later(max_seconds, stop.set)
    failures: list[dict[str, Any]] = []
    done: dict[str, float] = {"ok": 0, "first_t": time.monotonic(), "last_ok_t": 0.0}

    async def worker() -> None:
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(vip, 80), 1.0)
                try:
                    status, _ = await exchange(reader, writer, CLOSE_REQUEST, 2.0)
                finally:
                    writer.close()
                error = None if status == 200 else f"status_{status}"
            except NET_ERRORS as exc:
                error = type(exc).__name__
            if error is None:
                done["ok"] += 1
                done["last_ok_t"] = time.monotonic()
            else:
                failures.append({"t0": round(t0, 4), "t1": round(time.monotonic(), 4), "error": error})
            await asyncio.sleep(pause)

    print("ready", flush=True)
    await asyncio.gather(*(worker() for _ in range(workers)))
    return {**done, "end_t": time.monotonic(), "failures": failures}


async def fixed_port_probe(vip: str, first: int, count: int, concurrency: int) -> dict[int, bool]:
    """One HTTP request (``Connection: close``) from each local port first..first+count-1."""
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(concurrency)

    async def one(port: int) -> bool:
        async with gate:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setblocking(False)
            try:
                sock.bind(("", port))
                await asyncio.wait_for(loop.sock_connect(sock, (vip, 80)), 3)
                reader, writer = await asyncio.open_connection(sock=sock)
            except NET_ERRORS:
                sock.close()
                return False
            try:
                status, _ = await exchange(reader, writer, CLOSE_REQUEST, 3.0)
                # Wait for the server's FIN: closing second leaves no TIME_WAIT on this port.
                await asyncio.wait_for(reader.read(), 3)
                return status == 200
            except NET_ERRORS:
                return False
            finally:
                writer.close()

    results = await asyncio.gather(*(one(p) for p in range(first, first + count)))
    return dict(zip(range(first, first + count), results, strict=True))


def _read_http(sock: socket.socket, buf: bytearray) -> None:
    """Consume one response with a Content-Length body from ``sock`` (``buf``: bytes already read)."""
    while (end := buf.find(b"\r\n\r\n")) < 0:
        chunk = sock.recv(65536)
        if not chunk:
            raise EOFError("server closed")
        buf += chunk
    length = 0
    for line in bytes(buf[:end]).split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == b"content-length":
            length = int(value)
    while len(buf) < end + 4 + length:
        chunk = sock.recv(65536)
        if not chunk:
            raise EOFError("server closed")
        buf += chunk
    del buf[: end + 4 + length]


def _connect_us(vip: str, source: str) -> float | None:
    """TCP connect time (SYN to SYN-ACK) from ``source``; the socket is closed with a RST."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.settimeout(1.0)
        sock.bind((source, 0))
        t0 = time.perf_counter_ns()
        try:
            sock.connect((vip, 80))
        except OSError:
            return None
        return (time.perf_counter_ns() - t0) / 1e3


def latency_samples(vip: str, sources: dict[str, str], kind: str, count: int, gap: float) -> dict[str, Any]:
    """Samples in microseconds from each source address in turn (the order flips every sample),
    ``gap`` seconds apart: ``connect`` or ``http`` (a request on a keep-alive connection per source)."""
    samples: dict[str, list[float]] = {name: [] for name in sources}
    failures = dict.fromkeys(sources, 0)
    names = list(sources)
    conns: dict[str, socket.socket] = {}
    buf = {name: bytearray() for name in names}
    try:
        if kind == "http":
            for name, source in sources.items():
                conns[name] = socket.create_connection((vip, 80), timeout=2.0, source_address=(source, 0))
                conns[name].setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                for _ in range(20):  # warm-up: HAProxy's connection to the member
                    conns[name].sendall(REQUEST)
                    _read_http(conns[name], buf[name])
        for i in range(count):
            for name in names if i % 2 == 0 else names[::-1]:
                time.sleep(gap)
                if kind == "connect":
                    got = _connect_us(vip, sources[name])
                    if got is None:
                        failures[name] += 1
                    else:
                        samples[name].append(got)
                    continue
                t0 = time.perf_counter_ns()
                conns[name].sendall(REQUEST)
                _read_http(conns[name], buf[name])
                samples[name].append((time.perf_counter_ns() - t0) / 1e3)
    finally:
        for conn in conns.values():
            conn.close()
    return {"samples_us": samples, "failures": failures}


def tool_main(argv: list[str]) -> int:
    """``python -m bench.active_active tool KIND VIP ...``: one of the tools, in this namespace."""
    parser = argparse.ArgumentParser(prog="python -m bench.active_active tool")
    parser.add_argument("kind", choices=("client", "ports", "latency", "stream"))
    parser.add_argument("vip")
    parser.add_argument("--connections", type=int, default=60)
    parser.add_argument("--interval", type=float, default=0.05)
    parser.add_argument("--short-workers", type=int, default=2)
    parser.add_argument("--short-pause", type=float, default=0.01)
    parser.add_argument("--max-seconds", type=float, default=120.0)
    parser.add_argument("--first", type=int, default=FIXED_PORT_FIRST)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--sources", default="", help="latency: NAME=ADDRESS,... source addresses to alternate")
    args = parser.parse_args(argv)
    check_lab_address(args.vip)
    if args.kind == "client":
        result = asyncio.run(load_client(args.vip, args.connections, args.interval, args.short_workers,
                                         args.short_pause, min(args.max_seconds, 300.0)))
        print(json.dumps(result), flush=True)
    elif args.kind == "stream":
        result = asyncio.run(stream(args.vip, args.short_workers, args.short_pause, min(args.max_seconds, 300.0)))
        print(json.dumps(result), flush=True)
    elif args.kind == "ports":
        print(json.dumps(asyncio.run(fixed_port_probe(args.vip, args.first, args.count, 32))), flush=True)
    else:
        print("ready", flush=True)
        sources = dict(item.split("=", 1) for item in args.sources.split(","))
        for address in sources.values():
            check_lab_address(address)
        for line in sys.stdin:  # "connect N GAP" | "http N GAP", one JSON answer each
            kind, count, gap = line.split()
            got = latency_samples(args.vip, sources, kind, min(int(count), 100_000), min(float(gap), 1.0))
            print(json.dumps(got), flush=True)
    return 0


def tool_command(ns: str, *args: str, realtime: bool = False) -> list[str]:
    """The command line of a tool in namespace ``ns``; ``realtime``: SCHED_FIFO priority 1, so that
    other work on the machine does not delay its wake-ups (it sleeps between samples, never spins)."""
    if not ns.startswith("cohort-"):
        raise BenchError(f"tools run only inside the benchmark's namespaces, not {ns!r}")
    cmd = [sys.executable, "-m", "bench.active_active", "tool", *args]
    return netns.in_ns(ns, ["chrt", "-f", "1", *cmd] if realtime else cmd)


TOOL_ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def start_tool(ns: str, *args: str, realtime: bool = False) -> subprocess.Popen[str]:
    """A tool started in namespace ``ns``, its stdin and stdout piped to this process (text)."""
    return subprocess.Popen(tool_command(ns, *args, realtime=realtime), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=TOOL_ENV, cwd=REPO)


def run_tool(ns: str, *args: str, timeout: float) -> str:
    """A tool run to its end in namespace ``ns``; its output (BenchError when it fails)."""
    proc = subprocess.run(tool_command(ns, *args), capture_output=True, text=True, env=TOOL_ENV, cwd=REPO,
                          timeout=timeout, check=False)
    if proc.returncode != 0:
        raise BenchError(f"tool {args[0]} failed: {proc.stderr[-2000:]}")
    return proc.stdout
