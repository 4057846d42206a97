"""Active-active N+1: N capped amphorae behind the L2 distributor against one, the latency the
distributor adds, and what scaling 3->4->3 does to open and new connections.

In one run, on a private lab with Cohort on local drivers (see ``bench.common``):

1. throughput. Load balancers live side by side, each with the same ROUND_ROBIN pool of lab
   members: SINGLE (one amphora, no distributor), ACTIVE_ACTIVE with ``amp_cluster_size`` 2, 3
   and 4 (SOURCE_IP_PORT affinity, so one client spreads), and (``--matched``) three more
   SINGLE load balancers for the load-matched baselines SINGLEx2..4: N SINGLE load balancers
   loaded at once, each by its own wrk with 1/N of the connections, so that the machine
   carries the traffic of an N-amphora cluster. Every amphora is capped by the flavor's
   ``compute_flavor`` at ``--cap`` CPU. ``wrk -t2 -c64`` from the lab's client namespace
   measures requests/s over keep-alive connections and new connections/s (``Connection:
   close``); each repetition runs every configuration once, in a rotating order, so machine
   noise hits all alike. Figures are medians; scaling efficiency is (AA_N / SINGLE) / N, and
   the load-matched efficiency the median of the repetitions' AA_N / SINGLExN (what the
   distributor costs, apart from what a busier 2-vCPU machine costs every amphora). The
   client's packets are processed in a kernel thread of their own (``--client-kthread``, see
   ``bench.common.client_nic_kthread``): otherwise the client's answers to an amphora, and
   their way through the gateway and the distributor, are billed to that amphora's capped
   cgroup. With each run go the CPU of the members, wrk, each amphora (and its HAProxy), the
   distributor agent, this process (Cohort runs in it), kernel threads, other processes on
   the machine and the whole machine, and each amphora's cgroup throttling: a saturated
   amphora is throttled in most 100 ms CFS periods. The default cap, 0.05 CPU, is what keeps
   the amphorae the limit on a 2-vCPU machine; the same throughput is then measured again,
   fewer and shorter runs, at ``--compare-cap`` (0.25) on fresh load balancers, where the
   machine is.
2. latency the distributor adds, at low load, on the N=4 cluster of the last set: one
   sampler (SCHED_FIFO, in a namespace of the benchmark on the lab's front-end bridge)
   alternates sample by sample between two source addresses; from one the VIP is on-link
   (the distributor answers ARP for it), the other is policy-routed to one amphora's
   front-end address. Replies come straight from the amphora either way. Samples: TCP connect
   time (SYN to SYN-ACK, answered by the amphora's kernel) and keep-alive HTTP request time
   (through HAProxy to a member), timed with ``time.perf_counter_ns``, 1 ms apart.
3. scale-out 3->4 and scale-in 4->3 of the N=3 cluster with ``PUT /v2/octavia/clusters/{id}``
   under load: 60 keep-alive connections each sending a request every 50 ms (opened afresh
   before each change), and a stream of new short connections. Which amphora holds each
   long-lived connection comes from ``ss`` in every amphora's namespace before and after; a
   request that fails on one is a broken connection, a clean close by the server between
   requests is counted apart. Which amphora a NEW flow goes to comes from 2000 connections
   from fixed source ports (above the client namespace's ephemeral range) made before and
   after each change, looked up in the distributor's flow-pinning map; the fraction that
   changed amphora is compared with the ideal 1/4.

Run as root: ``.venv/bin/python bench/active_active.py`` (``--help`` for the knobs; about 11
minutes). Writes ``bench/results/active_active.json`` and ``bench/results/active_active.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from sqlalchemy import select  # noqa: E402

from bench.common import (  # noqa: E402
    CLK_TCK,
    REPO,
    RESULTS,
    BenchEnv,
    BenchError,
    CpuWatch,
    WrkResult,
    bench_env,
    cgroup_quota,
    cgroup_throttling,
    check_lab_address,
    client_nic_kthread,
    cmdline,
    machine_info,
    median,
    require_root_and_tools,
    run_wrk,
    system_busy_seconds,
    tune_load_namespace,
    utc_now,
    write_json,
)
from cohort import netns  # noqa: E402
from cohort.agents.amphora.stats import show_stat  # noqa: E402
from cohort.db import models as m  # noqa: E402
from cohort.distributor import nft  # noqa: E402
from cohort.drivers.distributor.base import DistributorRef  # noqa: E402
from cohort.lab import CLIENT_IP, FRONTEND_PORT_RANGE, PUBLIC_CIDR, Lab, allocate_address, release_address, short_hash  # noqa: E402

COMMAND = ".venv/bin/python bench/active_active.py"
SIZES = (2, 3, 4)
MODES = {"keepalive": False, "new_connection": True}  # mode -> wrk sends "Connection: close"
EPHEMERAL_PORTS = "1024 60000"  # of the client namespace; the fixed-port probe uses ports above
FIXED_PORT_FIRST = 60001
REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
CLOSE_REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
NET_ERRORS = (OSError, EOFError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError)

console = Console(width=None if sys.stdout.isatty() else 140)


# === tools that run inside the lab's namespaces (``active_active.py tool ...``) ====================


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
    parser = argparse.ArgumentParser(prog="active_active.py tool")
    parser.add_argument("kind", choices=("client", "ports", "latency"))
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
    cmd = [sys.executable, str(Path(__file__).resolve()), "tool", *args]
    return netns.in_ns(ns, ["chrt", "-f", "1", *cmd] if realtime else cmd)


TOOL_ENV = {**os.environ, "PYTHONPATH": str(REPO)}


# === the system under test =========================================================================


@dataclass
class Config:
    name: str  # SINGLE | AA2 | AA3 | AA4
    size: int
    lb_id: str
    vip: str
    amphorae: dict[str, str]  # namespace -> amphora id
    cluster_id: str | None

    def refresh(self, env: BenchEnv) -> None:
        with env.cohort.sessions() as session:
            rows = session.execute(select(m.Amphora.compute_id, m.Amphora.id).where(
                m.Amphora.load_balancer_id == self.lb_id, m.Amphora.status != "DELETED"))
            self.amphorae = {ns: ident for ns, ident in rows if ns}

    def sockets(self, env: BenchEnv) -> dict[str, Path]:
        """HAProxy admin socket of each amphora (the agent's state lives under ``i/<8 hex>``)."""
        return {ns: env.state_dir / "i" / ns.rsplit("-", 1)[1] / "jail" / "haproxy" / f"{self.lb_id}.sock"
                for ns in self.amphorae}

    @property
    def vips(self) -> list[str]:
        return [self.vip]


@dataclass
class Baseline:
    """N SINGLE load balancers loaded at once, each by its own wrk with 1/N of the connections.

    The machine then carries the traffic of an N-amphora cluster, so AA_N / SINGLExN compares
    the two at equal machine load: what the distributor costs, apart from what a busier
    machine costs every amphora (on 2 vCPUs, the members, wrk and the kernel's forwarding grow
    with the total rate and take cache and CPU from the capped amphorae; softirq work is
    charged to whichever process is running).
    """

    name: str  # SINGLEx2 | SINGLEx3 | SINGLEx4
    parts: list[Config]

    @property
    def size(self) -> int:
        return len(self.parts)

    @property
    def amphorae(self) -> dict[str, str]:
        return {ns: ident for part in self.parts for ns, ident in part.amphorae.items()}

    def sockets(self, env: BenchEnv) -> dict[str, Path]:
        return {ns: sock for part in self.parts for ns, sock in part.sockets(env).items()}

    @property
    def vips(self) -> list[str]:
        return [part.vip for part in self.parts]


Measured = Config | Baseline


@dataclass
class Distributor:
    ref: DistributorRef
    namespace: str

    def nft_map(self, name: str) -> list[Any]:
        out = netns.run_in(self.namespace, ["nft", "-j", "list", "map", nft.FAMILY, nft.TABLE, name], timeout=60)
        for item in json.loads(out.stdout).get("nftables", []):
            if "map" in item:
                return list(item["map"].get("elem", []))
        return []

    def marks(self, env: BenchEnv, cfg: Config) -> dict[int, str]:
        """mark -> amphora namespace, from the agent's status."""
        members = env.cohort.drivers.distributor.status(self.ref)["vips"][cfg.lb_id]["members"]
        by_id = {ident: ns for ns, ident in cfg.amphorae.items()}
        return {int(v["mark"]): by_id.get(ident, f"gone:{ident[:8]}") for ident, v in members.items()}

    def buckets(self, cfg: Config) -> list[int]:
        """The mark of each slot of the VIP's Maglev table."""
        pairs = sorted((int(k), int(v)) for k, v in self.nft_map(f"buckets_{nft.object_key(cfg.lb_id)}"))
        return [mark for _, mark in pairs]

    def pinned(self, cfg: Config, ports: range) -> dict[int, int]:
        """source port -> mark of the client's pinned flows with a source port in ``ports``."""
        found: dict[int, int] = {}
        for key, mark in self.nft_map(f"flows_{nft.object_key(cfg.lb_id)}"):
            inner = key.get("elem", {}).get("val", key) if isinstance(key, dict) else key
            saddr, sport = inner["concat"]
            if saddr == CLIENT_IP and int(sport) in ports:
                found[int(sport)] = int(mark)
        return found


def distributor_of(env: BenchEnv) -> Distributor:
    with env.cohort.sessions() as session:
        row = session.scalars(select(m.Distributor).where(m.Distributor.status != "DELETED")).one()
        if not row.lb_network_ip or not row.compute_id:
            raise BenchError("the distributor has no address or namespace")
        return Distributor(DistributorRef(row.id, row.lb_network_ip), row.compute_id)


def cluster_of(env: BenchEnv, lb_id: str) -> str:
    with env.cohort.sessions() as session:
        row = session.scalars(select(m.AmphoraCluster).where(m.AmphoraCluster.load_balancer_id == lb_id)).one()
        return str(row.id)


def wait_serving(env: BenchEnv, vip: str, bodies: set[str], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = env.lab.exec_client(["curl", "-s", "--max-time", "1", f"http://{vip}/"], timeout=5).stdout.strip()
        if out in bodies:
            return
        time.sleep(0.1)
    raise BenchError(f"{vip} does not serve within {timeout}s")


def build_configs(env: BenchEnv, members: list[str], names: set[str], cap: float,
                  matched: bool) -> tuple[list[Config], list[Baseline]]:
    """SINGLE and AA2..AA4, and with ``matched`` three more SINGLE load balancers for the baselines."""
    flavor = {"compute_flavor": {"cpu": cap}}
    single = env.flavor(f"single-{cap}", {"loadbalancer_topology": "SINGLE", **flavor})
    wanted = [("SINGLE", 1, single)]
    if matched:
        wanted += [(f"SINGLE#{k}", 1, single) for k in range(2, max(SIZES) + 1)]
    for n in SIZES:
        wanted.append((f"AA{n}", n, env.flavor(f"aa{n}-{cap}", {
            "loadbalancer_topology": "ACTIVE_ACTIVE", "amp_cluster_size": n,
            "distributor_affinity": "SOURCE_IP_PORT", **flavor})))
    created = [(name, n, env.create_lb(f"{name.lower().replace('#', '-')}-{cap}", members, fid))
               for name, n, fid in wanted]
    configs = []
    for name, n, lb in created:
        vip = env.wait_vip(lb["id"])
        env.wait_active(lb["id"], timeout=180)
        cfg = Config(name, n, lb["id"], vip, {}, cluster_of(env, lb["id"]) if n > 1 else None)
        cfg.refresh(env)
        if len(cfg.amphorae) != n:
            raise BenchError(f"{name}: {len(cfg.amphorae)} amphorae, expected {n}")
        for ns in cfg.amphorae:
            if cgroup_quota(Lab.instance_cgroup(ns)) != cap:
                raise BenchError(f"{name}: amphora {ns} has CPU quota {cgroup_quota(Lab.instance_cgroup(ns))}")
        wait_serving(env, vip, names)
        configs.append(cfg)
        console.print(f"  {name}: VIP {vip}, amphorae {sorted(cfg.amphorae)}")
    singles = [c for c in configs if c.size == 1]
    baselines = [Baseline(f"SINGLEx{n}", singles[:n]) for n in SIZES] if matched else []
    return [c for c in configs if "#" not in c.name], baselines


# === 1. throughput ==================================================================================


PF_KTHREAD = 0x00200000


def process_census(lab_netns: set[int]) -> dict[int, tuple[str, str, float]]:
    """pid -> (owner, comm, CPU seconds) of every process; owner: bench | lab | kthread | other.

    ``lab`` processes run in one of the lab's namespaces (amphorae, members, distributor, wrk);
    ``other`` is everything else on the machine: system daemons and other people's work.
    """
    out: dict[int, tuple[str, str, float]] = {}
    me = os.getpid()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            inode = os.stat(f"/proc/{pid}/ns/net").st_ino
        except OSError:
            continue
        comm, fields = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
        cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
        owner = "bench" if pid == me else "kthread" if int(fields[6]) & PF_KTHREAD else \
            "lab" if inode in lab_netns else "other"
        out[pid] = (owner, comm, cpu)
    return out


def census_delta(before: dict[int, tuple[str, str, float]], after: dict[int, tuple[str, str, float]],
                 wall: float) -> dict[str, Any]:
    """CPUs used per owner between two censuses, and the busiest ``other`` processes."""
    totals = {"lab": 0.0, "kthread": 0.0, "other": 0.0}
    others: dict[str, float] = {}
    for pid, (owner, comm, cpu) in after.items():
        used = (cpu - before[pid][2] if pid in before else cpu) / wall
        if owner in totals:
            totals[owner] += used
        if owner == "other" and used > 0.005:
            others[comm] = others.get(comm, 0.0) + used
    top = dict(sorted(others.items(), key=lambda kv: -kv[1])[:5])
    return {**totals, "other_top": {k: round(v, 3) for k, v in top.items()}}


def lab_netns_inodes(lab: Lab) -> set[int]:
    found = set()
    for ns in netns.list_netns():
        if ns.startswith(lab.prefix + "-"):
            with contextlib.suppress(OSError):
                found.add(os.stat(netns.NETNS_DIR / ns).st_ino)
    return found


@dataclass
class Run:
    config: str
    size: int
    mode: str
    repetition: int
    wrk: WrkResult
    machine_busy_cpu: float
    member_cpu: float
    member_busiest_worker_cpu: float
    wrk_cpu: float
    amphora_cpu: dict[str, float]  # the whole cgroup: HAProxy and the amphora agent
    haproxy_cpu: dict[str, float]
    amphora_throttled_fraction: dict[str, float]  # of the CFS periods in the run
    amphora_requests: dict[str, int]  # HAProxy frontend requests during the run
    distributor_agent_cpu: float
    bench_process_cpu: float  # this process: Cohort's API + controller threads and the bench
    buckets_changed: bool | None  # the Maglev table changed during the run (health flaps)
    processes: dict[str, Any]  # CPUs of lab / kernel-thread / other processes (process_census)


def haproxy_pids(cgroup: str) -> set[int]:
    return {p for p in netns.cgroup_pids(cgroup) if "haproxy" in " ".join(cmdline(p)[:1])}


def frontend_requests(sock: Path) -> int:
    try:
        rows = show_stat(str(sock))
    except OSError:
        return 0
    return sum(int(r.get("req_tot") or 0) for r in rows if r.get("svname") == "FRONTEND")


def run_wrk_on(env: BenchEnv, vips: list[str], args: argparse.Namespace, close: bool) -> WrkResult:
    """One wrk on one VIP; on several, one wrk each (its share of the connections) at once, added up."""
    if len(vips) == 1:
        return run_wrk(env.lab.client_ns, f"http://{vips[0]}/", threads=args.threads, connections=args.connections,
                       seconds=args.seconds, close=close)
    results: list[WrkResult | BaseException] = [BenchError("wrk did not run")] * len(vips)

    def one(index: int) -> None:
        try:
            results[index] = run_wrk(env.lab.client_ns, f"http://{vips[index]}/", threads=1,
                                     connections=max(1, args.connections // len(vips)), seconds=args.seconds,
                                     close=close)
        except BaseException as exc:  # noqa: BLE001 - re-raised below, in the caller's thread
            results[index] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(vips))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done = []
    for result in results:
        if isinstance(result, BaseException):
            raise result
        done.append(result)
    errors: dict[str, int] = {}
    for result in done:
        for key, value in result.socket_errors.items():
            errors[key] = errors.get(key, 0) + value
    return WrkResult(requests=sum(r.requests for r in done), seconds=max(r.seconds for r in done),
                     rps=sum(r.rps for r in done), p50_ms=median([r.p50_ms for r in done]),
                     p99_ms=max(r.p99_ms for r in done), socket_errors=errors,
                     non_2xx=sum(r.non_2xx for r in done), cpu_seconds=sum(r.cpu_seconds for r in done))


def measure(env: BenchEnv, cfg: Measured, mode: str, rep: int, args: argparse.Namespace,
            member_pids: Callable[[], set[int]], dist: Distributor) -> Run:
    cgroups = {ns: Lab.instance_cgroup(ns) for ns in cfg.amphorae}
    sockets = cfg.sockets(env)
    groups: dict[str, Callable[[], set[int]]] = {
        "member": member_pids,
        "distributor": lambda: netns.cgroup_pids(Lab.instance_cgroup(dist.namespace)),
        "bench": lambda: {os.getpid()},
    }
    for ns, cg in cgroups.items():
        groups[ns] = functools.partial(netns.cgroup_pids, cg)
        groups["haproxy:" + ns] = functools.partial(haproxy_pids, cg)
    clustered = isinstance(cfg, Config) and cfg.size > 1
    buckets0 = dist.buckets(cfg) if isinstance(cfg, Config) and clustered else None
    throttle0 = {ns: cgroup_throttling(cg) for ns, cg in cgroups.items()}
    requests0 = {ns: frontend_requests(s) for ns, s in sockets.items()}
    inodes = lab_netns_inodes(env.lab)
    watch = CpuWatch(groups)
    census0, t0 = process_census(inodes), time.monotonic()
    watch.start()
    result = run_wrk_on(env, cfg.vips, args, close=MODES[mode])
    cpu, machine = watch.stop()
    processes = census_delta(census0, process_census(inodes), time.monotonic() - t0)
    throttle1 = {ns: cgroup_throttling(cg) for ns, cg in cgroups.items()}
    requests1 = {ns: frontend_requests(s) for ns, s in sockets.items()}
    throttled = {ns: (throttle1[ns].get("nr_throttled", 0) - throttle0[ns].get("nr_throttled", 0))
                 / max(1, throttle1[ns].get("nr_periods", 0) - throttle0[ns].get("nr_periods", 0)) for ns in cgroups}
    return Run(cfg.name, cfg.size, mode, rep, result, machine, cpu["member"].total, cpu["member"].busiest,
               result.cpu_seconds / result.seconds if result.seconds else 0.0,
               {ns: cpu[ns].total for ns in cgroups}, {ns: cpu["haproxy:" + ns].total for ns in cgroups}, throttled,
               {ns: requests1[ns] - requests0[ns] for ns in sockets}, cpu["distributor"].total,
               cpu["bench"].total,
               None if buckets0 is None or not isinstance(cfg, Config) else dist.buckets(cfg) != buckets0, processes)


def wait_quiet(lab: Lab, max_wait: float, threshold: float) -> dict[str, float]:
    """Wait (at most ``max_wait`` s) until processes outside the lab use < ``threshold`` CPU over 1 s.

    The machine is shared (other people's tests and benchmarks): a repetition waits for a lull.
    """
    inodes, t0 = lab_netns_inodes(lab), time.monotonic()
    while True:
        census, t1 = process_census(inodes), time.monotonic()
        time.sleep(1.0)
        other = census_delta(census, process_census(inodes), time.monotonic() - t1)["other"]
        if other < threshold or time.monotonic() - t0 >= max_wait:
            return {"waited_s": round(time.monotonic() - t0, 1), "other_cpu_last_s": round(other, 3)}


def throughput(env: BenchEnv, configs: list[Measured], args: argparse.Namespace, member_ns: list[str],
               dist: Distributor, repetitions: int) -> tuple[list[Run], list[dict[str, float]]]:
    def member_pids() -> set[int]:
        return set().union(*(netns.netns_pids(ns) for ns in member_ns))

    for cfg in configs:  # warm-up: ARP, HAProxy's connections to the members; not recorded
        for vip in cfg.vips:
            run_wrk(env.lab.client_ns, f"http://{vip}/", threads=args.threads, connections=args.connections,
                    seconds=1, close=False)
    runs, quiet = [], []
    for rep in range(repetitions):
        quiet.append(wait_quiet(env.lab, args.quiet_wait, args.quiet_threshold))
        order = configs[rep % len(configs):] + configs[:rep % len(configs)]
        for mode in MODES:
            for cfg in order:
                run = measure(env, cfg, mode, rep, args, member_pids, dist)
                runs.append(run)
                console.print(f"  rep {rep + 1} {mode:<14} {cfg.name:<6} {run.wrk.rps:>9,.0f}/s  errors "
                              f"{run.wrk.errors}  machine {run.machine_busy_cpu:.2f} CPU  throttled "
                              f"{min(run.amphora_throttled_fraction.values()):.0%}-"
                              f"{max(run.amphora_throttled_fraction.values()):.0%}  others "
                              f"{run.processes['other']:.2f} CPU")
    return runs, quiet


def summarise(runs: list[Run], configs: list[Measured]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for mode in MODES:
        def rates(name: str, mode: str = mode) -> dict[int, float]:
            return {r.repetition: r.wrk.rps for r in runs if r.mode == mode and r.config == name}

        single_runs = rates("SINGLE")
        single = median(list(single_runs.values()))
        per: dict[str, Any] = {}
        for cfg in configs:
            mine = [r for r in runs if r.mode == mode and r.config == cfg.name]
            rate = median([r.wrk.rps for r in mine])
            paired = [r.wrk.rps / single_runs[r.repetition] for r in mine if single_runs.get(r.repetition)]
            # AA_N against N SINGLEs loaded at once in the same repetition (when the baseline was run).
            matched_runs = rates(f"SINGLEx{cfg.size}") if isinstance(cfg, Config) and cfg.size > 1 else {}
            matched = [r.wrk.rps / matched_runs[r.repetition] for r in mine if matched_runs.get(r.repetition)]
            shares = [{ns: n / max(1, sum(r.amphora_requests.values())) for ns, n in r.amphora_requests.items()}
                      for r in mine]
            amp_cpu = [sum(r.amphora_cpu.values()) for r in mine]
            per[cfg.name] = {
                "amphorae": cfg.size,
                "rate_per_s_median": rate,
                "rate_per_s_min": min(r.wrk.rps for r in mine),
                "rate_per_s_max": max(r.wrk.rps for r in mine),
                "ratio_to_single": rate / single if single else None,
                "ratio_to_single_paired_median": median(paired),
                "efficiency": rate / single / cfg.size if single else None,
                "efficiency_load_matched": median(matched) if matched else None,
                "latency_p50_ms_median": median([r.wrk.p50_ms for r in mine]),
                "latency_p99_ms_median": median([r.wrk.p99_ms for r in mine]),
                "errors_total": sum(r.wrk.errors for r in mine),
                "machine_busy_cpu_median": median([r.machine_busy_cpu for r in mine]),
                "member_cpu_median": median([r.member_cpu for r in mine]),
                "member_busiest_worker_cpu_max": max(r.member_busiest_worker_cpu for r in mine),
                "wrk_cpu_median": median([r.wrk_cpu for r in mine]),
                "amphorae_cpu_median": median(amp_cpu),
                "amphora_cpu_median_each": median([c / cfg.size for c in amp_cpu]),
                "haproxy_cpu_median_each": median([sum(r.haproxy_cpu.values()) / cfg.size for r in mine]),
                "amphora_throttled_fraction_min": min(min(r.amphora_throttled_fraction.values()) for r in mine),
                "amphora_throttled_fraction_median": median([statistics.fmean(r.amphora_throttled_fraction.values())
                                                             for r in mine]),
                "distributor_agent_cpu_median": median([r.distributor_agent_cpu for r in mine]),
                "bench_process_cpu_median": median([r.bench_process_cpu for r in mine]),
                # softirq/irq time charged to no process (the distributor's forwarding, the bridges).
                "unattributed_cpu_median": median([r.machine_busy_cpu - r.member_cpu - r.wrk_cpu
                                                   - sum(r.amphora_cpu.values()) - r.distributor_agent_cpu
                                                   - r.bench_process_cpu - r.processes["kthread"]
                                                   - r.processes["other"] for r in mine]),
                "kernel_threads_cpu_median": median([r.processes["kthread"] for r in mine]),
                "other_processes_cpu_median": median([r.processes["other"] for r in mine]),
                "other_processes_cpu_max": max(r.processes["other"] for r in mine),
                "request_share_min": min(min(s.values()) for s in shares) if shares else None,
                "request_share_max": max(max(s.values()) for s in shares) if shares else None,
                "bucket_table_changed_in_runs": sum(1 for r in mine if r.buckets_changed),
            }
        out[mode] = per
    return out


# === 2. latency added by the distributor ===========================================================


@contextlib.contextmanager
def frontend_namespace(lab: Lab, name: str, count: int) -> Iterator[tuple[str, list[str]]]:
    """A namespace of the benchmark on the lab's front-end bridge with ``count`` addresses.

    Named like a member namespace, so ``Lab.down()`` removes it even if this context never gets to.
    """
    ns, outer = lab.member_ns(name), f"m{short_hash('probe:' + name)}"
    owners = [f"probe:{name}:{i}" for i in range(count)]
    with lab.transaction() as st:
        addresses = [allocate_address(st, "public", PUBLIC_CIDR, owner, first=FRONTEND_PORT_RANGE[0],
                                      last=FRONTEND_PORT_RANGE[1]) for owner in owners]
    try:
        netns.add_netns(ns)
        netns.add_veth("eth0", ns, outer, lab.sw_ns)
        netns.set_link(outer, lab.sw_ns, master=lab.network("public").bridge)
        for address in addresses:
            netns.add_addr("eth0", ns, f"{address}/24")
        netns.set_link("eth0", ns)
        yield ns, addresses
    finally:
        netns.del_netns(ns)
        with lab.transaction() as st:
            for owner in owners:
                release_address(st, "public", owner)


class LatencyWorker:
    """A sampler running in a namespace; ``batch(kind, n, gap)`` asks it for n samples per source."""

    def __init__(self, ns: str, vip: str, sources: dict[str, str], realtime: bool) -> None:
        spec = ",".join(f"{k}={v}" for k, v in sources.items())
        cmd = tool_command(ns, "latency", vip, "--sources", spec, realtime=realtime)
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=TOOL_ENV, cwd=REPO)
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            self.close()
            raise BenchError(f"latency sampler in {ns} did not start")

    def batch(self, kind: str, count: int, gap: float) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{kind} {count} {gap}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise BenchError("latency sampler died")
        return dict(json.loads(line))

    def close(self) -> None:
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def percentiles(samples: list[float]) -> dict[str, float]:
    if len(samples) < 2:
        return {"p50_us": float("nan"), "p90_us": float("nan"), "p99_us": float("nan"), "n": len(samples)}
    cuts = statistics.quantiles(samples, n=100)
    return {"p50_us": cuts[49], "p90_us": cuts[89], "p99_us": cuts[98], "n": len(samples)}


PATHS = ("direct", "distributor")


def latency(env: BenchEnv, cfg: Config, args: argparse.Namespace) -> dict[str, Any]:
    """Connect and keep-alive request times via the distributor vs. straight to one amphora.

    One sampler in one namespace alternates sample by sample between two source addresses: from
    one the VIP is on-link (the distributor answers ARP for it), the other has a policy rule to
    a table whose /32 route sends the VIP to one amphora's front-end address. So both paths see
    the same machine noise at the same time.
    """
    target_ns = sorted(cfg.amphorae)[0]
    with env.cohort.sessions() as session:
        row = session.get(m.Amphora, cfg.amphorae[target_ns])
        assert row is not None and row.frontend_ip
        amphora_ip = str(row.frontend_ip)
    cgroups = [Lab.instance_cgroup(ns) for ns in cfg.amphorae]
    with frontend_namespace(env.lab, "latency", 2) as (ns, (via_dist, via_direct)):
        netns.run_in(ns, ["ip", "rule", "add", "pref", "100", "from", via_direct, "lookup", "100"])
        netns.run_in(ns, ["ip", "route", "add", f"{cfg.vip}/32", "via", amphora_ip, "dev", "eth0", "onlink",
                          "table", "100"])
        sources = {"distributor": via_dist, "direct": via_direct}
        worker = LatencyWorker(ns, cfg.vip, sources, args.latency_realtime)
        batches: list[dict[str, Any]] = []
        throttled0 = sum(cgroup_throttling(cg).get("nr_throttled", 0) for cg in cgroups)
        try:
            for rnd in range(args.latency_rounds):
                for kind in ("connect", "http"):
                    batches.append({"round": rnd, "kind": kind,
                                    **worker.batch(kind, args.latency_samples, args.latency_gap_ms / 1e3)})
        finally:
            worker.close()
        throttled = sum(cgroup_throttling(cg).get("nr_throttled", 0) for cg in cgroups) - throttled0
    out: dict[str, Any] = {
        "cap_cpu": cgroup_quota(cgroups[0]), "load_balancer": cfg.name, "vip": cfg.vip,
        "paths": {
            "distributor": f"{via_dist} (a namespace on the front-end bridge) -> VIP, on-link: the distributor "
                           f"answers ARP -> distributor -> one of {cfg.size} amphorae -> straight back",
            "direct": f"{via_direct} (same namespace, policy-routed) -> VIP via {amphora_ip}, one amphora's "
                      f"front-end address -> that amphora -> straight back",
        },
        "method": f"one sampler alternating sample by sample between the two paths, {args.latency_gap_ms} ms apart; "
                  f"{args.latency_rounds} rounds of {args.latency_samples} samples per path and kind; sampler "
                  f"{'SCHED_FIFO 1' if args.latency_realtime else 'SCHED_OTHER'}",
        "amphora_throttled_periods_during": throttled, "kinds": {}}
    for kind in ("connect", "http"):
        mine = [b for b in batches if b["kind"] == kind]
        stats = {p: percentiles([x for b in mine for x in b["samples_us"][p]]) for p in PATHS}
        per_round = []
        for b in mine:
            got = {p: percentiles(b["samples_us"][p]) for p in PATHS}
            per_round.append({q: got["distributor"][q] - got["direct"][q] for q in ("p50_us", "p99_us")})
        out["kinds"][kind] = {
            **{p: {**stats[p], "failures": sum(b["failures"][p] for b in mine)} for p in PATHS},
            **{f"added_{q}": stats["distributor"][q] - stats["direct"][q] for q in ("p50_us", "p90_us", "p99_us")},
            "added_p50_us_round_median": median([d["p50_us"] for d in per_round]),
            "added_p99_us_round_median": median([d["p99_us"] for d in per_round]),
            "per_round_added": per_round,
        }
    return out


# === 3. scale-out and scale-in under load ===========================================================


class LoadClient:
    """The long-lived + short-connection load of ``load_client``, running in the client namespace."""

    def __init__(self, env: BenchEnv, vip: str, args: argparse.Namespace) -> None:
        cmd = tool_command(env.lab.client_ns, "client", vip, "--connections", str(args.long_lived),
                           "--interval", str(args.long_lived_interval), "--short-workers", str(args.short_workers),
                           "--max-seconds", "150")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=TOOL_ENV,
                                     cwd=REPO)
        self.timer = threading.Timer(170, self.proc.kill)
        self.timer.start()
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("ready "):
            self.close()
            raise BenchError("load client did not start")
        self.ports: list[int] = json.loads(line[len("ready "):])

    def stop(self) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        out = self.proc.stdout.read()
        self.close()
        if self.proc.returncode != 0 or not out.strip():
            raise BenchError(f"load client failed ({self.proc.returncode})")
        return dict(json.loads(out.strip().splitlines()[-1]))

    def close(self) -> None:
        self.timer.cancel()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def established(namespaces: list[str]) -> dict[int, str]:
    """Client source port -> the amphora namespace holding that connection (``ss``)."""
    held: dict[int, str] = {}
    for ns in namespaces:
        out = netns.run_in(ns, ["ss", "-Htn", "state", "established"], check=False).stdout
        for line in out.splitlines():
            cols = line.split()
            if len(cols) >= 4 and cols[-2].endswith(":80"):
                host, _, port = cols[-1].rpartition(":")
                if host == CLIENT_IP:
                    held[int(port)] = ns
    return held


def probe_new_flows(env: BenchEnv, cfg: Config, dist: Distributor, args: argparse.Namespace) -> dict[str, Any]:
    """Which amphora each fixed source port's new connection went to (the distributor's pin)."""
    cmd = tool_command(env.lab.client_ns, "ports", cfg.vip, "--first", str(FIXED_PORT_FIRST),
                       "--count", str(args.probe_ports))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=TOOL_ENV, cwd=REPO, timeout=120, check=False)
    if proc.returncode != 0:
        raise BenchError(f"fixed-port probe failed: {proc.stderr[-2000:]}")
    served = {int(p): ok for p, ok in json.loads(proc.stdout).items()}
    ports = range(FIXED_PORT_FIRST, FIXED_PORT_FIRST + args.probe_ports)
    pins, marks = dist.pinned(cfg, ports), dist.marks(env, cfg)
    return {"served": sum(served.values()), "failed": len(served) - sum(served.values()),
            "amphora_of_port": {p: marks.get(mark, f"mark:{mark}") for p, mark in pins.items() if served.get(p)},
            "buckets": [marks.get(mark, f"mark:{mark}") for mark in dist.buckets(cfg)]}


def moved(before: dict[str, Any], after: dict[str, Any], added: set[str], removed: set[str]) -> dict[str, Any]:
    """How many fixed-port flows (and Maglev slots) changed amphora between two probes.

    The ideal is the share of the amphora that joined or left: 1/4 for 3->4 and for 4->3.
    """
    a, b = before["amphora_of_port"], after["amphora_of_port"]
    common = sorted(set(a) & set(b))
    changed = [p for p in common if a[p] != b[p]]
    slots = list(zip(before["buckets"], after["buckets"], strict=False))
    largest = max(len(set(before["buckets"])), len(set(after["buckets"])))
    return {
        "ports_compared": len(common),
        "moved": len(changed),
        "moved_fraction": len(changed) / len(common) if common else None,
        "moved_to_new_amphora": sum(1 for p in changed if b[p] in added),
        "moved_from_removed_amphora": sum(1 for p in changed if a[p] in removed),
        "moved_between_staying_amphorae": sum(1 for p in changed if a[p] not in removed and b[p] not in added),
        "bucket_slots_changed_fraction": sum(1 for x, y in slots if x != y) / len(slots) if slots else None,
        "table_size_before_after": [len(before["buckets"]), len(after["buckets"])],
        "ideal_fraction": (len(added) + len(removed)) / largest if largest else None,
    }


def scale_event(env: BenchEnv, cfg: Config, target: int, args: argparse.Namespace,
                dist: Distributor, before_probe: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Scale ``cfg`` to ``target`` under load; (what happened, the fixed-port probe afterwards)."""
    before = dict(cfg.amphorae)
    client = LoadClient(env, cfg.vip, args)
    try:
        time.sleep(1.0)
        held_before = established(list(before))
        started = time.monotonic()
        status, body = env.api.call("PUT", f"/v2/octavia/clusters/{cfg.cluster_id}",
                                    {"cluster": {"desired_size": target}})
        if status != 200:
            raise BenchError(f"scale to {target}: {status} {body}")
        deadline = started + 150
        while True:
            cfg.refresh(env)
            lb = env.api.get(f"/v2/lbaas/loadbalancers/{cfg.lb_id}")[1]["loadbalancer"]
            if lb["provisioning_status"] == "ACTIVE" and len(cfg.amphorae) == target:
                break
            if lb["provisioning_status"] == "ERROR" or time.monotonic() > deadline:
                raise BenchError(f"scale to {target}: {lb['provisioning_status']}, {len(cfg.amphorae)} amphorae")
            time.sleep(0.2)
        took = time.monotonic() - started
        held_after = established(list(cfg.amphorae))
        time.sleep(args.settle)
        outcome = client.stop()
    finally:
        client.close()
    cfg.size = target
    after_probe = probe_new_flows(env, cfg, dist, args)
    added, removed = set(cfg.amphorae) - set(before), set(before) - set(cfg.amphorae)
    conns = outcome["connections"]
    broken = [b for c in conns for b in c["broken"]]
    first_ports = [c["ports"][0] for c in conns]
    return {
        "from": len(before), "to": target, "api_to_active_s": took,
        "added": sorted(added), "removed": sorted(removed),
        "client_seconds": outcome["seconds"],
        "long_lived": {
            "connections": len(conns),
            "per_amphora_at_start": {ns: sum(1 for p in first_ports if held_before.get(p) == ns) for ns in before},
            "on_removed_amphora": sum(1 for p in first_ports if held_before.get(p) in removed),
            "requests_ok": sum(c["ok"] for c in conns),
            "bad_status": sum(c["bad_status"] for c in conns),
            "broken": len(broken),
            "broken_connections": sum(1 for c in conns if c["broken"]),
            "broken_on_removed_amphora": sum(1 for c in conns if c["broken"]
                                             and held_before.get(c["ports"][0]) in removed),
            "broken_errors": {e: sum(1 for b in broken if b["error"] == e) for e in {b["error"] for b in broken}},
            "broken_at_s": sorted(b["t"] for b in broken),
            "closed_cleanly_by_server": sum(c["server_closed"] for c in conns),
            "changed_amphora_while_open": sum(1 for p, ns in held_before.items()
                                              if p in held_after and held_after[p] != ns),
            "still_open_on_same_amphora": sum(1 for p, ns in held_before.items() if held_after.get(p) == ns),
        },
        "short_connections": outcome["short"],
        "new_flows": moved(before_probe, after_probe, added, removed),
        "probe_after": {k: v for k, v in after_probe.items() if k in ("served", "failed")},
    }, after_probe


def scaling(env: BenchEnv, cfg: Config, dist: Distributor, args: argparse.Namespace) -> dict[str, Any]:
    probe3 = probe_new_flows(env, cfg, dist, args)
    out, probe4 = scale_event(env, cfg, cfg.size + 1, args, dist, probe3)
    console.print(f"  {out['from']}->{out['to']}: {out['api_to_active_s']:.1f}s, long-lived broken "
                  f"{out['long_lived']['broken']}, new flows moved {out['new_flows']['moved_fraction']:.3f}")
    back, probe3b = scale_event(env, cfg, cfg.size - 1, args, dist, probe4)
    console.print(f"  {back['from']}->{back['to']}: {back['api_to_active_s']:.1f}s, long-lived broken "
                  f"{back['long_lived']['broken']}, new flows moved {back['new_flows']['moved_fraction']:.3f}")
    same = moved(probe3, probe3b, set(), set())
    return {"probe_before": {k: v for k, v in probe3.items() if k in ("served", "failed")},
            "scale_out": out, "scale_in": back,
            "new_flows_3_then_3_again": {k: same[k] for k in ("ports_compared", "moved", "moved_fraction",
                                                                "bucket_slots_changed_fraction")}}


def all_load_balancers(configs: list[Config], baselines: list[Baseline]) -> list[Config]:
    seen = {c.lb_id: c for c in configs}
    for baseline in baselines:
        seen.update({part.lb_id: part for part in baseline.parts})
    return list(seen.values())


def config_report(configs: list[Config], baselines: list[Baseline]) -> dict[str, Any]:
    report: dict[str, Any] = {c.name: {"lb_id": c.lb_id, "vip": c.vip, "amphorae": sorted(c.amphorae),
                                       "cluster_id": c.cluster_id} for c in configs}
    report.update({b.name: {"load_balancers": [p.lb_id for p in b.parts], "vips": b.vips} for b in baselines})
    return report


def compare_cap(env: BenchEnv, configs: list[Config], baselines: list[Baseline], args: argparse.Namespace,
                names: list[str], members: list[str], dist: Distributor) -> tuple[dict[str, Any], list[Config]]:
    """The same throughput at another cap (fewer, shorter runs), on fresh load balancers; (figures, them)."""
    for cfg in all_load_balancers(configs, baselines):
        env.delete_lb(cfg.lb_id)
    console.print(f"throughput at cap {args.compare_cap} (comparison):")
    others, other_baselines = build_configs(env, members, set(names), args.compare_cap, args.matched)
    measured: list[Measured] = [*others, *other_baselines]
    quick = argparse.Namespace(**{**vars(args), "seconds": args.compare_seconds})
    runs, quiet = throughput(env, measured, quick, [env.lab.member_ns(n) for n in names], dist,
                             args.compare_repetitions)
    return {"cap_cpu": args.compare_cap, "repetitions": args.compare_repetitions, "seconds": args.compare_seconds,
            "configs": config_report(others, other_baselines),
            "throughput": summarise(runs, measured), "quiet_waits": quiet,
            "runs": [{**asdict(r), "wrk": asdict(r.wrk)} for r in runs]}, others


# === report ==========================================================================================


def _f(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def throughput_tables(figures: dict[str, Any], cap: float, runs: str, nproc: int) -> list[Table]:
    table = Table(title=f"Throughput, every amphora capped at {cap} CPU (medians of {runs})")
    for col in ("mode", "config", "rate/s", "min - max", "x SINGLE", "paired", "efficiency", "load-matched",
                "p50 ms", "p99 ms", "errors", "share min-max"):
        table.add_column(col, justify="left" if col in ("mode", "config") else "right")
    cpu = Table(title=f"Where the CPU went at cap {cap} (medians; CPUs = CPU-seconds per second)")
    for col in ("mode", "config", f"machine/{nproc}", "members", "busiest worker", "wrk", "amphorae",
                "each (HAProxy)", "throttled", "distributor agent", "bench+Cohort", "kthreads", "other procs",
                "unattributed*"):
        cpu.add_column(col, justify="left" if col in ("mode", "config") else "right")
    for mode, per in figures.items():
        for name, f in per.items():
            table.add_row(mode, name, f"{f['rate_per_s_median']:,.0f}",
                          f"{f['rate_per_s_min']:,.0f} - {f['rate_per_s_max']:,.0f}", _f(f["ratio_to_single"], ".2f"),
                          _f(f["ratio_to_single_paired_median"], ".2f"), _f(f["efficiency"], ".2f"),
                          _f(f.get("efficiency_load_matched"), ".2f"), f"{f['latency_p50_ms_median']:.2f}",
                          f"{f['latency_p99_ms_median']:.2f}",
                          str(f["errors_total"]), f"{f['request_share_min']:.2f}-{f['request_share_max']:.2f}")
            cpu.add_row(mode, name, f"{f['machine_busy_cpu_median']:.2f}", f"{f['member_cpu_median']:.2f}",
                        f"{f['member_busiest_worker_cpu_max']:.2f}", f"{f['wrk_cpu_median']:.2f}",
                        f"{f['amphorae_cpu_median']:.2f}",
                        f"{f['amphora_cpu_median_each']:.3f} ({f['haproxy_cpu_median_each']:.3f})",
                        f"{f['amphora_throttled_fraction_median']:.0%}", f"{f['distributor_agent_cpu_median']:.2f}",
                        f"{f['bench_process_cpu_median']:.2f}", f"{f['kernel_threads_cpu_median']:.2f}",
                        f"{f['other_processes_cpu_median']:.2f}", f"{f['unattributed_cpu_median']:.2f}")
        table.add_section()
        cpu.add_section()
    return [table, cpu]


def latency_table(lat: dict[str, Any]) -> Table:
    table = Table(title=f"Latency the distributor adds (one request at a time; {lat['load_balancer']}, "
                        f"amphorae capped at {lat['cap_cpu']} CPU)")
    for col in ("sample", "direct p50 µs", "p99", "via distributor p50", "p99 ", "added p50", "added p90",
                "added p99", "added p50 / p99, round medians", "n each"):
        table.add_column(col, justify="left" if col == "sample" else "right")
    for kind, k in lat["kinds"].items():
        table.add_row("TCP connect (SYN->SYN-ACK)" if kind == "connect" else "HTTP request, keep-alive",
                      f"{k['direct']['p50_us']:.1f}", f"{k['direct']['p99_us']:.1f}",
                      f"{k['distributor']['p50_us']:.1f}", f"{k['distributor']['p99_us']:.1f}",
                      f"{k['added_p50_us']:+.1f}", f"{k['added_p90_us']:+.1f}", f"{k['added_p99_us']:+.1f}",
                      f"{k['added_p50_us_round_median']:+.1f} / {k['added_p99_us_round_median']:+.1f}",
                      str(k["direct"]["n"]))
    return table


def scaling_table(scaling: dict[str, Any]) -> Table:
    table = Table(title="Scaling under load (60 keep-alive connections, a request each every 50 ms, "
                        "+ a stream of new connections)")
    for col in ("event", "API->ACTIVE s", "long-lived broken", "on removed amphora", "changed amphora",
                "clean closes", "short conns ok / failed", "new flows moved", "ideal", "buckets changed"):
        table.add_column(col, justify="left" if col == "event" else "right")
    for key in ("scale_out", "scale_in"):
        e = scaling[key]
        ll, nf, short = e["long_lived"], e["new_flows"], e["short_connections"]
        table.add_row(f"{e['from']} -> {e['to']}", f"{e['api_to_active_s']:.1f}",
                      f"{ll['broken']} ({ll['broken_connections']}/{ll['connections']} conns)",
                      f"{ll['on_removed_amphora']} (broken {ll['broken_on_removed_amphora']})",
                      str(ll["changed_amphora_while_open"]), str(ll["closed_cleanly_by_server"]),
                      f"{short.get('ok', 0)} / {sum(v for k, v in short.items() if k != 'ok')}",
                      f"{nf['moved_fraction']:.3f} ({nf['moved']}/{nf['ports_compared']})",
                      f"{nf['ideal_fraction']:.3f}", f"{nf['bucket_slots_changed_fraction']:.3f}")
    return table


def print_report(report: dict[str, Any]) -> None:
    nproc, params = report["machine"]["nproc"], report["parameters"]
    if "throughput" in report:
        for table in throughput_tables(report["throughput"], report["cap_cpu"],
                                       f"{params['repetitions']} x {params['seconds']} s", nproc):
            console.print(table)
        console.print("x SINGLE: ratio of medians; paired: median of per-repetition ratios; efficiency = "
                      "(AA_N / SINGLE) / N; load-matched: median of per-repetition AA_N / SINGLExN (N SINGLE "
                      "load balancers loaded at once: the same machine load); share: each amphora's part of the "
                      "requests (HAProxy counters); "
                      "*unattributed: busy time charged to no process seen at both ends of the run (softirq: "
                      "forwarding, bridges; processes that started and ended within it)")
    if "compare" in report:
        c = report["compare"]
        for table in throughput_tables(c["throughput"], c["cap_cpu"], f"{c['repetitions']} x {c['seconds']} s",
                                       nproc):
            console.print(table)
    if "latency" in report:
        console.print(latency_table(report["latency"]))
        for path, text in report["latency"]["paths"].items():
            console.print(f"  {path}: {text}")
    if "scaling" in report:
        console.print(scaling_table(report["scaling"]))
        again = report["scaling"]["new_flows_3_then_3_again"]
        console.print(f"3 -> 4 -> 3: {again['moved']} of {again['ports_compared']} fixed-port flows and "
                      f"{again['bucket_slots_changed_fraction']:.3f} of the bucket slots differ from before "
                      f"the scale-out")
    if "other_processes_cpu" in report:
        o = report["other_processes_cpu"]
        console.print(f"Other processes on this shared machine (not the lab, not this process): median "
                      f"{o['median']:.2f} CPU, max {o['max']:.2f}, above 0.25 CPU in {o['runs_above_0.25']} of "
                      f"{o['runs']} runs")
    mach, mem = report["machine"], report["members"]
    console.print(f"Machine: {nproc} vCPUs ({mach['cpu_model']}), busy {mach['busy_cpu_before_run']:.2f} CPU before "
                  f"the run; members: {mem['count']} x {mem['workers']} workers")
    console.print(f"Reproduce (as root, in {REPO}): [bold]{COMMAND}[/bold]")


def plot(report: dict[str, Any], path: Path) -> Path:
    """Throughput against N (SINGLE is N=1) with the ideal N x SINGLE, per cap and mode; PNG, or an SVG."""
    panels = [(report["cap_cpu"], report["throughput"])]
    if "compare" in report:
        panels.append((report["compare"]["cap_cpu"], report["compare"]["throughput"]))
    series = {(cap, mode): [(int(f["amphorae"]), float(f["rate_per_s_median"])) for name, f in per.items()
                            if not name.startswith("SINGLEx")]
              for cap, figures in panels for mode, per in figures.items()}
    matched = {(cap, mode): [(int(f["amphorae"]), float(f["rate_per_s_median"])) for name, f in per.items()
                             if name == "SINGLE" or name.startswith("SINGLEx")]
               for cap, figures in panels for mode, per in figures.items()}
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return _plot_svg(series, path.with_suffix(".svg"))
    fig, axes = plt.subplots(len(panels), 2, figsize=(10, 3.8 * len(panels)), squeeze=False)
    for ax, ((cap, mode), points) in zip(axes.flat, series.items(), strict=True):
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        ax.plot(xs, [ys[0] * x for x in xs], "--", color="grey", label="ideal: N x SINGLE")
        if len(matched[(cap, mode)]) > 1:
            mx, my = zip(*matched[(cap, mode)], strict=True)
            ax.plot(mx, my, "s:", color="tab:green", label="N SINGLE load balancers loaded at once")
        ax.plot(xs, ys, "o-", label="ACTIVE_ACTIVE, N amphorae (median)")
        for x, y in points:
            ax.annotate(f"{y / ys[0] / x:.2f}", (x, y), textcoords="offset points", xytext=(0, -14), ha="center",
                        fontsize=8)
        ax.set_title(f"{'requests/s, keep-alive' if mode == 'keepalive' else 'new connections/s'}; cap {cap} CPU",
                     fontsize=10)
        ax.set_xlabel("amphorae N (1 = SINGLE)")
        ax.set_xticks(xs)
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8, loc="upper left")
    fig.suptitle("Cohort ACTIVE_ACTIVE throughput vs N (point labels: scaling efficiency (AA_N/SINGLE)/N)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _svg_point(x0: int, y0: int, top: float, x: float, y: float) -> str:
    return f"{x0 + (x - 1) * 100:.0f},{y0 + 240 - y / top * 200:.0f}"


def _plot_svg(series: dict[tuple[float, str], list[tuple[int, float]]], path: Path) -> Path:
    parts = ['<svg xmlns="http://www.w3.org/2000/svg" width="760" height="600" font-size="11">']
    for i, ((cap, mode), points) in enumerate(series.items()):
        x0, y0, top = 40 + 380 * (i % 2), 280 * (i // 2), max(max(y for _, y in points), points[0][1] * 4)
        at = functools.partial(_svg_point, x0, y0, top)
        parts.append(f'<text x="{x0}" y="{y0 + 20}">{mode}, cap {cap} CPU (grey: N x SINGLE)</text>')
        parts.append(f'<polyline fill="none" stroke="grey" stroke-dasharray="4" points="'
                     f'{" ".join(at(x, points[0][1] * x) for x, _ in points)}"/>')
        parts.append(f'<polyline fill="none" stroke="blue" points="{" ".join(at(x, y) for x, y in points)}"/>')
        parts += [f'<text x="{at(x, y).split(",")[0]}" y="{at(x, y).split(",")[1]}">{y:,.0f}</text>' for x, y in points]
    path.write_text("\n".join([*parts, "</svg>"]) + "\n")
    return path


# === main ===========================================================================================


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--cap", type=float, default=0.05, help="CPU quota of every amphora (compute_flavor cpu)")
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=5, help="length of each wrk run")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--members", type=int, default=2)
    parser.add_argument("--member-workers", type=int, default=2)
    parser.add_argument("--latency-rounds", type=int, default=4)
    parser.add_argument("--latency-samples", type=int, default=750, help="samples per path in a batch")
    parser.add_argument("--latency-realtime", action=argparse.BooleanOptionalAction, default=True,
                        help="run the latency sampler SCHED_FIFO (chrt -f 1) so other work does not delay it")
    parser.add_argument("--latency-gap-ms", type=float, default=1.0,
                        help="pause between samples: keeps a capped amphora far below its quota")
    parser.add_argument("--long-lived", type=int, default=60)
    parser.add_argument("--long-lived-interval", type=float, default=0.05)
    parser.add_argument("--short-workers", type=int, default=2, help="loops making new short connections")
    parser.add_argument("--probe-ports", type=int, default=2000, help="fixed source ports probed for new flows")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds of load kept after a scale event")
    parser.add_argument("--compare-cap", type=float, default=0.25,
                        help="afterwards, throughput again at this cap (0: skip), to show where the machine saturates")
    parser.add_argument("--compare-repetitions", type=int, default=2)
    parser.add_argument("--compare-seconds", type=int, default=3)
    parser.add_argument("--quiet-wait", type=float, default=6.0,
                        help="before each repetition, wait at most this long for other processes to calm down")
    parser.add_argument("--quiet-threshold", type=float, default=0.25, help="CPUs of other processes deemed calm")
    parser.add_argument("--client-kthread", action=argparse.BooleanOptionalAction, default=True,
                        help="process the client's packets in a kernel thread (bench.common.client_nic_kthread)")
    parser.add_argument("--matched", action=argparse.BooleanOptionalAction, default=True,
                        help="also measure N SINGLE load balancers loaded at once (the load-matched baselines)")
    parser.add_argument("--skip", choices=("throughput", "latency", "scaling"), action="append", default=[])
    parser.add_argument("--output", type=Path, default=RESULTS / "active_active.json")
    args = parser.parse_args(argv)
    if not (1 <= args.seconds <= 30 and 1 <= args.repetitions <= 10 and 0 < args.cap <= 1
            and 1 <= args.probe_ports <= 5000 and 1 <= args.latency_rounds <= 50 and args.connections <= 1000
            and 0 <= args.compare_cap <= 1 and 1 <= args.compare_repetitions <= 10 and 1 <= args.compare_seconds <= 30):
        parser.error("keep the run bounded: --seconds 1-30, --repetitions 1-10, --cap (0, 1], --probe-ports <= 5000")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    require_root_and_tools("wrk", "haproxy", "ip", "nft", "ss", "curl", "chrt", "ethtool")
    started = time.monotonic()
    machine = machine_info()
    busy0 = system_busy_seconds()
    time.sleep(1.0)
    machine["busy_cpu_before_run"] = system_busy_seconds() - busy0
    report: dict[str, Any] = {"benchmark": "active_active", "timestamp": utc_now(), "command": COMMAND,
                              "machine": machine, "cap_cpu": args.cap,
                              "parameters": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
    with bench_env("aa") as env:
        lab = env.lab
        tune_load_namespace(lab.client_ns)
        netns.sysctl(lab.client_ns, "net.ipv4.ip_local_port_range", EPHEMERAL_PORTS)
        if args.client_kthread:
            port = client_nic_kthread(lab)
            report["client_packets"] = (f"processed in kernel thread napi/{port}-N (GRO + threaded NAPI on the "
                                        "client's switch port), as another host's; see bench.common")
        else:
            report["client_packets"] = "processed in the sender's context (billed to whoever sent or answered)"
        names = [f"web{i + 1}" for i in range(args.members)]
        members = [lab.add_member(name, workers=args.member_workers) for name in names]
        report["members"] = {"count": args.members, "workers": args.member_workers, "addresses": members,
                             "server": "cohort.lab_member"}
        console.print(f"lab {lab.prefix} up; members {members} ({args.member_workers} workers each); cap {args.cap}")
        configs, baselines = build_configs(env, members, set(names), args.cap, args.matched)
        measured: list[Measured] = [*configs, *baselines]
        dist = distributor_of(env)
        report["configs"] = config_report(configs, baselines)
        report["distributor"] = {"namespace": dist.namespace, "id": dist.ref.id}
        report["setup_s"] = time.monotonic() - started
        by_name = {c.name: c for c in configs}
        if "throughput" not in args.skip:
            console.print("throughput:")
            runs, quiet = throughput(env, measured, args, [lab.member_ns(n) for n in names], dist,
                                     args.repetitions)
            report["throughput"] = summarise(runs, measured)
            report["quiet_waits"] = quiet
            others = [r.processes["other"] for r in runs]
            report["other_processes_cpu"] = {"median": median(others), "max": max(others),
                                             "runs_above_0.25": sum(1 for o in others if o > 0.25), "runs": len(others)}
            report["runs"] = [{**asdict(r), "wrk": asdict(r.wrk)} for r in runs]
        if "scaling" not in args.skip:
            console.print("scaling:")
            report["scaling"] = scaling(env, by_name["AA3"], dist, args)
        if args.compare_cap:
            report["compare"], configs = compare_cap(env, configs, baselines, args, names, members, dist)
            by_name = {c.name: c for c in configs}
        if "latency" not in args.skip:
            console.print(f"latency (cap {cgroup_quota(Lab.instance_cgroup(next(iter(by_name['AA4'].amphorae))))}):")
            report["latency"] = latency(env, by_name["AA4"], args)
    report["elapsed_s"] = time.monotonic() - started
    write_json(args.output, report)
    print_report(report)
    if "throughput" in report:
        console.print(f"plot: {plot(report, args.output.with_suffix('.png'))}")
    console.print(f"wrote {args.output} ({report['elapsed_s']:.0f}s)")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["tool"]:
        sys.exit(tool_main(sys.argv[2:]))
    try:
        sys.exit(main())
    except BenchError as exc:
        console.print(f"[red]benchmark failed:[/red] {exc}")
        sys.exit(1)
