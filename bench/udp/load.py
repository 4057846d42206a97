"""The load tools the UDP benchmark runs inside the lab's namespaces: an echo member and two generators.

``python -m bench.udp.load KIND ...`` (see :func:`tool_main`):

- ``echo``: a UDP echo server on ADDR:PORT, ``--workers`` processes on one ``SO_REUSEPORT``
  address, each a blocking ``recvfrom``/``sendto`` loop; it prints ``ready`` once bound and ends
  by itself after ``--max-seconds`` (the benchmark kills it by pid long before).
- ``pps``: request/response pairs over persistent flows. ``--processes`` workers, each with its
  share of ``--sockets`` connected non-blocking sockets (spread over the targets and source
  addresses) under one epoll; every socket keeps ``--window`` datagrams outstanding and sends
  one more for each answer (closed loop). A socket without an answer for ``--timeout`` seconds
  counts its outstanding datagrams lost and sends its window again.
- ``flows``: new flows. Each worker keeps ``--concurrency`` flows in flight; a flow is a new
  socket bound to the next (source address, source port) of the worker's share of
  ``--sources`` x ``--ports`` (so no source port repeats within a run: every flow is new to
  conntrack and the distributor), one datagram, its answer, close; ``--timeout`` fails it.

Both generators print ``ready``, wait for a line on stdin, then start every worker at one
instant (CLOCK_MONOTONIC), count only answers after ``--warmup`` seconds and stop
``--seconds`` later or at ``--max-count`` answers, whichever comes first; the answer is one
JSON line with the counts and the CPU the tool used (its workers included). Every tool refuses
addresses outside the lab's ranges.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import functools
import ipaddress
import json
import os
import resource
import select
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

LAB_NETWORKS = [ipaddress.ip_network(n) for n in
                ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "198.18.0.0/15")]
PORT_RANGE = (1024, 65000)  # source ports of the flows generator
MAX_SECONDS = 60.0  # no generator run is longer, whatever it is asked
EPOLLIN = select.EPOLLIN


@dataclass
class Counts:
    """What one generator worker (or all of them, added up) saw in its counted window."""

    answered: int = 0  # answers received in the counted window
    sent: int = 0  # datagrams sent in the counted window
    lost: int = 0  # pps: outstanding datagrams given up after the timeout; flows: flows timed out
    refused: int = 0  # ICMP port unreachable (ECONNREFUSED) on a socket
    send_blocked: int = 0  # a send that would have blocked (socket buffer full)
    bind_failed: int = 0  # flows: a source port already taken
    exhausted: bool = False  # flows: the worker ran out of (source, port) pairs before the end
    capped: bool = False  # stopped at --max-count
    counted_s: float = 0.0  # length of the counted window actually run
    cpu_s: float = 0.0  # user + system CPU of the worker
    extra: dict[str, Any] = field(default_factory=dict)


def merge(parts: Sequence[Counts]) -> Counts:
    """The workers' counts added up; the window is the longest, flags set if any worker's is."""
    total = Counts()
    for part in parts:
        for name in ("answered", "sent", "lost", "refused", "send_blocked", "bind_failed"):
            setattr(total, name, getattr(total, name) + getattr(part, name))
        total.exhausted |= part.exhausted
        total.capped |= part.capped
        total.counted_s = max(total.counted_s, part.counted_s)
        total.cpu_s += part.cpu_s
    return total


def split_evenly(count: int, parts: int) -> list[int]:
    """``count`` things over ``parts`` holders, the first ones taking one more when it does not divide."""
    if parts < 1:
        raise ValueError("at least one part")
    base, extra = divmod(max(0, count), parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def flow_pairs(sources: Sequence[str], ports: tuple[int, int], worker: int, workers: int) -> Iterator[tuple[str, int]]:
    """Worker ``worker``'s share of every (source address, source port), ports ``ports[0]..ports[1]``:
    every ``workers``-th pair, so that no two workers and no two flows of a run share a pair."""
    index = 0
    for source in sources:
        for port in range(ports[0], ports[1] + 1):
            if index % workers == worker:
                yield source, port
            index += 1


def pair_capacity(sources: Sequence[str], ports: tuple[int, int]) -> int:
    return len(sources) * (ports[1] - ports[0] + 1)


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _die_with_parent(parent: int) -> None:
    """In a forked worker: killed when the tool that forked it dies (PR_SET_PDEATHSIG), whoever kills it."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    if os.getppid() != parent:  # it died before that took effect
        os._exit(1)


def _sleep_until(instant: float) -> None:
    delay = instant - time.monotonic()
    if delay > 0:
        time.sleep(delay)


# --- pps: closed loop over persistent flows ----------------------------------------------------


def pps_worker(targets: Sequence[tuple[str, int]], sources: Sequence[str], sockets: int, window: int,
               payload: bytes, start: float, warmup: float, seconds: float, timeout: float,
               max_count: int) -> Counts:
    """One worker of the ``pps`` generator; see the module's docstring."""
    counts = Counts()
    cpu0 = _cpu_seconds()
    poller = select.epoll()
    socks: list[socket.socket] = []
    try:
        for i in range(sockets):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            socks.append(sock)
            sock.setblocking(False)
            sock.bind((sources[i % len(sources)], 0))
            sock.connect(targets[i % len(targets)])
            poller.register(sock.fileno(), EPOLLIN)
        by_fd = {sock.fileno(): i for i, sock in enumerate(socks)}
        outstanding = [0] * len(socks)
        last = [0.0] * len(socks)
        counting_from, end = start + warmup, start + warmup + seconds
        counting = False

        def fill(i: int, now: float) -> None:
            sock = socks[i]
            while outstanding[i] < window:
                try:
                    sock.send(payload)
                except BlockingIOError:
                    counts.send_blocked += 1
                    break
                except ConnectionRefusedError:
                    counts.refused += 1
                    break
                outstanding[i] += 1
                if counting:
                    counts.sent += 1
            last[i] = now

        poll = poller.poll
        answered = 0
        _sleep_until(start)
        now = time.monotonic()
        for i in range(len(socks)):
            fill(i, now)
        next_sweep = now + timeout
        while now < end:
            if not counting and now >= counting_from:
                counting, counting_from = True, now
            # Level-triggered: one recv per ready socket and poll; a socket with more is ready again.
            for fd, _ in poll(0.01):
                i = by_fd[fd]
                try:
                    socks[i].recv(2048)
                except BlockingIOError:
                    continue
                except ConnectionRefusedError:
                    counts.refused += 1
                    continue
                if counting:
                    answered += 1
                if outstanding[i] == window:  # the usual case: one answer, one more request
                    try:
                        socks[i].send(payload)
                        if counting:
                            counts.sent += 1
                        last[i] = now
                        continue
                    except OSError:
                        pass
                outstanding[i] = max(0, outstanding[i] - 1)
                fill(i, now)
            now = time.monotonic()
            if answered >= max_count:
                counts.capped = True
                break
            if now >= next_sweep:  # a socket that heard nothing for a while lost its datagrams
                for i in range(len(socks)):
                    if outstanding[i] and now - last[i] > timeout:
                        if counting:
                            counts.lost += outstanding[i]
                        outstanding[i] = 0
                        fill(i, now)
                next_sweep = now + timeout / 2
        counts.answered = answered
        counts.counted_s = max(0.0, now - counting_from) if counting else 0.0
    finally:
        poller.close()
        for sock in socks:
            sock.close()
    counts.cpu_s = _cpu_seconds() - cpu0
    return counts


# --- flows: new flows, each one datagram and its answer ------------------------------------------


def flows_worker(targets: Sequence[tuple[str, int]], sources: Sequence[str], ports: tuple[int, int], worker: int,
                 workers: int, concurrency: int, payload: bytes, start: float, warmup: float, seconds: float,
                 timeout: float, max_count: int) -> Counts:
    """One worker of the ``flows`` generator; see the module's docstring."""
    counts = Counts()
    cpu0 = _cpu_seconds()
    poller = select.epoll()
    pairs = flow_pairs(sources, ports, worker, workers)
    inflight: dict[int, tuple[socket.socket, float]] = {}
    target_index = worker
    counting_from, end = start + warmup, start + warmup + seconds
    counting = False

    def open_one(now: float) -> bool:
        """Start the next flow; False when this worker has no (source, port) left."""
        nonlocal target_index
        while True:
            try:
                source, port = next(pairs)
            except StopIteration:
                counts.exhausted = True
                return False
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setblocking(False)
            try:
                sock.bind((source, port))
            except OSError:
                sock.close()
                counts.bind_failed += 1
                continue
            try:
                sock.connect(targets[target_index % len(targets)])
                sock.send(payload)
            except OSError:
                sock.close()
                counts.refused += 1
                continue
            target_index += 1
            if counting:
                counts.sent += 1
            poller.register(sock.fileno(), EPOLLIN)
            inflight[sock.fileno()] = (sock, now)
            return True

    def close(fd: int) -> None:
        sock, _ = inflight.pop(fd)
        poller.unregister(fd)
        sock.close()

    try:
        _sleep_until(start)
        now = time.monotonic()
        for _ in range(concurrency):
            if not open_one(now):
                break
        next_sweep = now + timeout
        while now < end and inflight:
            if not counting and now >= counting_from:
                counting, counting_from = True, now
            for fd, _ in poller.poll(0.01):
                if fd not in inflight:
                    continue
                sock, _ = inflight[fd]
                try:
                    sock.recv(2048)
                    if counting:
                        counts.answered += 1
                except BlockingIOError:
                    continue
                except ConnectionRefusedError:
                    counts.refused += 1
                close(fd)
                open_one(now)
            now = time.monotonic()
            if counting and counts.answered >= max_count:
                counts.capped = True
                break
            if now >= next_sweep:
                for fd in [fd for fd, (_, t0) in inflight.items() if now - t0 > timeout]:
                    close(fd)
                    if counting:
                        counts.lost += 1
                    open_one(now)
                next_sweep = now + timeout / 4
        counts.counted_s = max(0.0, now - counting_from) if counting else 0.0
    finally:
        for fd in list(inflight):
            close(fd)
        poller.close()
    counts.cpu_s = _cpu_seconds() - cpu0
    return counts


# --- running workers -----------------------------------------------------------------------------


def run_workers(jobs: Sequence[Callable[[], Counts]], deadline: float) -> list[Counts]:
    """Each job in a forked process; their Counts (JSON over a pipe). A worker still running at
    ``deadline`` (monotonic) is killed and counts nothing."""
    children: list[tuple[int, int]] = []
    me = os.getpid()
    for job in jobs:
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the worker
            _die_with_parent(me)
            os.close(read_end)
            code = 0
            try:
                data = json.dumps(asdict(job())).encode()
            except BaseException as exc:  # noqa: BLE001 - reported to the parent, which fails the run
                data, code = json.dumps({"error": f"{type(exc).__name__}: {exc}"}).encode(), 1
            with os.fdopen(write_end, "wb") as out:
                out.write(data)
            os._exit(code)
        os.close(write_end)
        children.append((pid, read_end))
    results: list[Counts] = []
    errors: list[str] = []
    for pid, read_end in children:
        chunks = []
        while True:
            ready, _, _ = select.select([read_end], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                os.kill(pid, 9)
                errors.append(f"worker {pid} overran its deadline")
                break
            chunk = os.read(read_end, 65536)
            if not chunk:
                break
            chunks.append(chunk)
        os.close(read_end)
        os.waitpid(pid, 0)
        if chunks:
            got = json.loads(b"".join(chunks))
            if "error" in got:
                errors.append(str(got["error"]))
            else:
                results.append(Counts(**got))
    if errors:
        raise RuntimeError("; ".join(errors))
    return results


# --- echo member ---------------------------------------------------------------------------------


def echo_worker(address: str, port: int, max_seconds: float) -> None:
    """Answer every datagram with itself until ``max_seconds`` have passed."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind((address, port))
    # A blocking socket whose receive gives up after 1 s (SO_RCVTIMEO): one system call per
    # datagram, where Python's own timeout would poll before each.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 1, 0))
    end = time.monotonic() + max_seconds
    recvfrom, sendto = sock.recvfrom, sock.sendto
    while time.monotonic() < end:
        try:
            for _ in range(10_000):
                data, peer = recvfrom(2048)
                sendto(data, peer)
        except OSError:  # nothing for 1 s (EAGAIN), a peer's port unreachable: keep serving
            continue


def echo_main(address: str, port: int, workers: int, max_seconds: float) -> int:
    """``workers`` echo processes on one SO_REUSEPORT address; ``ready`` once all are bound."""
    pids = []
    me = os.getpid()
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:
            _die_with_parent(me)
            try:
                echo_worker(address, port, max_seconds)
            finally:
                os._exit(0)
        pids.append(pid)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # bound: every worker's socket in /proc/net/udp
        if _udp_bound(port) >= workers:
            break
        time.sleep(0.01)
    print("ready", flush=True)
    for pid in pids:
        os.waitpid(pid, 0)
    return 0


def _udp_bound(port: int) -> int:
    with open("/proc/net/udp") as table:
        rows = table.read().splitlines()[1:]
    return sum(1 for row in rows if int(row.split()[1].rsplit(":", 1)[1], 16) == port)


def probe(targets: Sequence[tuple[str, int]], seconds: float) -> list[tuple[str, int]]:
    """A datagram to each target every 0.1 s until each has answered once (at most ``seconds``);
    the targets that never answered."""
    waiting = {target: socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for target in targets}
    try:
        for target, sock in waiting.items():
            sock.connect(target)
            sock.settimeout(0.1)
        deadline = time.monotonic() + seconds
        while waiting and time.monotonic() < deadline:
            for target, sock in list(waiting.items()):
                try:
                    sock.send(b"probe")
                    sock.recv(2048)
                except OSError:
                    time.sleep(0.05)
                    continue
                sock.close()
                del waiting[target]
        return sorted(waiting)
    finally:
        for sock in waiting.values():
            sock.close()


# --- the command -----------------------------------------------------------------------------------


def parse_targets(text: str) -> list[tuple[str, int]]:
    """``ADDR:PORT,ADDR:PORT`` -> [(addr, port)]."""
    out = []
    for item in text.split(","):
        address, _, port = item.strip().rpartition(":")
        if not address or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"bad target {item!r}: ADDR:PORT")
        out.append((address, int(port)))
    if not out:
        raise ValueError("no target")
    return out


def tool_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.udp.load")
    parser.add_argument("kind", choices=("echo", "probe", "pps", "flows"))
    parser.add_argument("--targets", required=True, help="ADDR:PORT,... (echo: the one address to bind)")
    parser.add_argument("--sources", default="", help="source addresses, comma-separated (default: any)")
    parser.add_argument("--processes", type=int, default=2, help="generator workers (echo: --workers)")
    parser.add_argument("--workers", type=int, default=2, help="echo processes")
    parser.add_argument("--sockets", type=int, default=128, help="pps: flows (sockets) over all workers")
    parser.add_argument("--window", type=int, default=1, help="pps: datagrams outstanding per socket")
    parser.add_argument("--concurrency", type=int, default=128, help="flows: flows in flight over all workers")
    parser.add_argument("--ports", default=f"{PORT_RANGE[0]}-{PORT_RANGE[1]}", help="flows: source ports LOW-HIGH")
    parser.add_argument("--payload", type=int, default=64, help="bytes of each datagram")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--timeout", type=float, default=0.2, help="seconds without an answer that count as lost")
    parser.add_argument("--max-count", type=int, default=2_000_000, help="answers after which a run stops")
    parser.add_argument("--max-seconds", type=float, default=1800.0, help="echo: ends by itself after this")
    return parser


def check_tool_args(args: argparse.Namespace, check_address: Callable[[str], None]) -> None:
    """Bounded runs only, and only to the lab's addresses (``check_address`` raises otherwise)."""
    if not (0 < args.seconds <= MAX_SECONDS and 0 <= args.warmup <= 10 and 0.001 <= args.timeout <= 5
            and 1 <= args.processes <= 16 and 1 <= args.workers <= 16 and 1 <= args.sockets <= 4096
            and 1 <= args.window <= 64 and 1 <= args.concurrency <= 4096 and 1 <= args.payload <= 1400
            and 1 <= args.max_count <= 50_000_000 and 1 <= args.max_seconds <= 3600):
        raise ValueError("out of bounds: --seconds (0, 60], --processes 1-16, --sockets/--concurrency 1-4096, "
                         "--window 1-64, --payload 1-1400, --max-seconds 1-3600")
    for address, _ in parse_targets(args.targets):
        check_address(address)
    for address in filter(None, args.sources.split(",")):
        check_address(address)


def check_lab_address(address: str) -> None:
    """Refuse any address outside the lab's ranges (``bench.common.LAB_NETWORKS``, which this tool
    does not import: its start would take seconds on a busy machine); 0.0.0.0 binds any."""
    ip = ipaddress.ip_address(address)
    if not (ip == ipaddress.ip_address("0.0.0.0") or any(ip in net for net in LAB_NETWORKS)):
        raise ValueError(f"{address} is outside the lab's address ranges")


def tool_main(argv: Sequence[str], check_address: Callable[[str], None] = check_lab_address) -> int:
    """``python -m bench.udp.load KIND ...``: one of the tools, in the namespace it was started in."""
    args = tool_parser().parse_args(list(argv))
    try:
        check_tool_args(args, check_address)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    targets = parse_targets(args.targets)
    if args.kind == "echo":
        return echo_main(targets[0][0], targets[0][1], args.workers, args.max_seconds)
    if args.kind == "probe":
        missing = probe(targets, args.seconds)
        print(json.dumps({"unanswered": [f"{a}:{p}" for a, p in missing]}), flush=True)
        return 1 if missing else 0
    sources = [s for s in args.sources.split(",") if s] or ["0.0.0.0"]
    low, _, high = args.ports.partition("-")
    ports = (int(low), int(high))
    if not 1 <= ports[0] <= ports[1] <= 65535:
        print(f"bad --ports {args.ports}", file=sys.stderr)
        return 2
    payload = b"u" * args.payload
    print("ready", flush=True)
    sys.stdin.readline()  # the benchmark's go
    start = time.monotonic() + 0.05
    limit = split_evenly(args.max_count, args.processes)
    jobs: list[Callable[[], Counts]] = []
    if args.kind == "pps":
        for i, n in enumerate(split_evenly(args.sockets, args.processes)):
            mine = targets[i % len(targets):] + targets[:i % len(targets)]  # workers start on different members
            jobs.append(functools.partial(pps_worker, mine, sources, max(1, n), args.window, payload, start,
                                          args.warmup, args.seconds, args.timeout, max(1, limit[i])))
    else:
        for i, n in enumerate(split_evenly(args.concurrency, args.processes)):
            jobs.append(functools.partial(flows_worker, targets, sources, ports, i, args.processes, max(1, n),
                                          payload, start, args.warmup, args.seconds, args.timeout, max(1, limit[i])))
    cpu0 = _cpu_seconds()
    results = run_workers(jobs, start + args.warmup + args.seconds + 10)
    total = merge(results)
    total.cpu_s += _cpu_seconds() - cpu0
    total.extra = {"workers": len(results), "kind": args.kind}
    print(json.dumps(asdict(total)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(tool_main(sys.argv[1:]))
