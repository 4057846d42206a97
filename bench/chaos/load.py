"""The load of a chaos episode: an open-loop stream of new connections and long-lived keep-alive ones.

New connections come from ``python -m bench.chaos tool arrivals`` in the lab's client namespace:
an attempt *starts* every ``1 / rate`` seconds whatever the earlier ones are doing (open loop), so
a silent outage, where every attempt hangs until its connect timeout, is still sampled every few
milliseconds; a closed loop (``bench.active_active``'s ``stream`` tool) stands still while its
attempts hang and under-reads such windows. Each attempt: connect (1 s timeout), one
``Connection: close`` request (2 s); failures are listed with their start and end on
CLOCK_MONOTONIC (which this process shares), in the ``stream`` tool's output format, so
:func:`bench.active_active.failover.window` reads them. Attempts in flight are bounded.

Long-lived connections are ``bench.active_active``'s ``client`` tool (keep-alive, a request each
every ``interval``) with no short loops. :func:`connection_map` says which amphora holds each of
them, read from ``ss`` in the amphorae's namespaces, so a broken one can be told apart: on the
failed amphora (expected) or elsewhere (a target miss).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import threading
import time
from typing import Any

from bench.active_active.failover import Stream
from bench.active_active.tools import CLOSE_REQUEST, NET_ERRORS, TOOL_ENV, exchange, start_tool
from bench.common import REPO, BenchEnv, BenchError, check_lab_address, kill_after
from cohort import netns
from cohort.lab import CLIENT_IP

CONNECT_TIMEOUT = 1.0
RESPONSE_TIMEOUT = 2.0
MAX_IN_FLIGHT = 800
MAX_SECONDS = 240.0


async def arrivals(vip: str, rate: float, max_seconds: float) -> dict[str, Any]:
    """Attempts started every ``1 / rate`` s until stdin closes (or ``max_seconds``); ``ready`` first."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def watch_stdin() -> None:
        sys.stdin.read()
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=watch_stdin, daemon=True).start()
    loop.call_later(max_seconds, stop.set)
    failures: list[dict[str, Any]] = []
    done: dict[str, float] = {"ok": 0, "first_t": time.monotonic(), "last_ok_t": 0.0, "skipped": 0}
    in_flight: set[asyncio.Task[None]] = set()

    async def attempt() -> None:
        t0 = time.monotonic()
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(vip, 80), CONNECT_TIMEOUT)
            try:
                status, _ = await exchange(reader, writer, CLOSE_REQUEST, RESPONSE_TIMEOUT)
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

    print("ready", flush=True)
    gap, start = 1.0 / rate, time.monotonic()
    tick = 0
    while not stop.is_set():
        if len(in_flight) < MAX_IN_FLIGHT:
            task = asyncio.create_task(attempt())
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        else:
            done["skipped"] += 1
        tick += 1
        # Absolute schedule: a late wake-up does not shift every later attempt.
        await asyncio.sleep(max(0.0, start + tick * gap - time.monotonic()))
    if in_flight:
        await asyncio.wait(in_flight, timeout=CONNECT_TIMEOUT + RESPONSE_TIMEOUT + 1)
    return {**done, "end_t": time.monotonic(), "failures": failures}


def tool_main(argv: list[str]) -> int:
    """``python -m bench.chaos tool arrivals VIP --rate R``: in this namespace, until stdin closes."""
    parser = argparse.ArgumentParser(prog="python -m bench.chaos tool")
    parser.add_argument("kind", choices=("arrivals",))
    parser.add_argument("vip")
    parser.add_argument("--rate", type=float, default=200.0, help="attempts started per second")
    parser.add_argument("--max-seconds", type=float, default=MAX_SECONDS)
    args = parser.parse_args(argv)
    check_lab_address(args.vip)
    if not 1 <= args.rate <= 1000:
        parser.error("--rate 1-1000")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))
    result = asyncio.run(arrivals(args.vip, args.rate, min(args.max_seconds, MAX_SECONDS)))
    print(json.dumps(result), flush=True)
    return 0


class Arrivals(Stream):
    """The ``arrivals`` tool in the client namespace; ``stop()`` (from Stream) returns its failures."""

    def __init__(self, env: BenchEnv, vip: str, rate: float) -> None:  # noqa: D107 - Stream's other half
        ns = env.lab.client_ns
        if not ns.startswith("cohort-"):
            raise BenchError(f"load runs only inside the lab's namespaces, not {ns!r}")
        cmd = netns.in_ns(ns, [sys.executable, "-m", "bench.chaos", "tool", "arrivals", vip,
                               "--rate", str(rate), "--max-seconds", str(MAX_SECONDS)])
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env=TOOL_ENV, cwd=REPO)
        self.timer = kill_after(self.proc, MAX_SECONDS + 20)
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            self.close()
            raise BenchError("the arrivals tool did not start")


class KeepAlive:
    """``count`` long-lived keep-alive connections (the ``client`` tool, no short loops)."""

    def __init__(self, env: BenchEnv, vip: str, count: int, interval: float) -> None:
        self.proc = start_tool(env.lab.client_ns, "client", vip, "--connections", str(count), "--interval",
                               str(interval), "--short-workers", "0", "--max-seconds", str(MAX_SECONDS))
        self.timer = kill_after(self.proc, MAX_SECONDS + 20)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        # The tool's clock starts right after it says ready: its break times are relative to it.
        self.started = time.monotonic()
        if not line.startswith("ready "):
            self.close()
            raise BenchError("the keep-alive client did not start")
        self.ports: list[int] = json.loads(line.split(" ", 1)[1])

    def stop(self) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        out = self.proc.stdout.read()
        self.close()
        if self.proc.returncode != 0 or not out.strip():
            raise BenchError(f"the keep-alive client failed ({self.proc.returncode})")
        return {**json.loads(out.strip().splitlines()[-1]), "started": self.started}

    def close(self) -> None:
        self.timer.cancel()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def parse_ss(text: str, client: str = CLIENT_IP) -> set[int]:
    """Client source ports of the established connections ``ss -Htn`` lists (peer ``client``)."""
    ports = set()
    for line in text.splitlines():
        cols = line.split()
        if len(cols) < 4:
            continue
        address, _, port = cols[3].rpartition(":")
        if address.strip("[]") == client and port.isdigit():
            ports.add(int(port))
    return ports


def connection_map(env: BenchEnv, amphorae: dict[str, str]) -> dict[int, str]:
    """Client port -> amphora id of the client's connections to port 80 (``amphorae``: id -> namespace)."""
    found: dict[int, str] = {}
    for amphora_id, ns in amphorae.items():
        out = netns.run_in(ns, ["ss", "-Htn", "state", "established", "( sport = :80 )"], check=False)
        for port in parse_ss(out.stdout):
            found[port] = amphora_id
    return found
