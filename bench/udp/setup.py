"""What is under test and around it: echo members, the load generators' namespaces, the UDP load balancers.

Owns the lab side of the benchmark: UDP echo members (``bench.udp.load echo``) in namespaces
of the benchmark on the back-end bridge, a load-generator namespace there for the direct path,
extra source addresses for the client (new flows must be new to every conntrack and to the
distributor's pins: :class:`SourcePool`), the load balancers (SINGLE and ACTIVE_ACTIVE N through
the Octavia v2 API, a UDP listener and a ROUND_ROBIN pool of the members, every amphora capped
by the flavor's ``compute_flavor``), and the tools started in the lab's namespaces.
"""

from __future__ import annotations

import json
import math
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

from bench.active_active.setup import Config
from bench.common import (
    REPO,
    BenchEnv,
    BenchError,
    cgroup_quota,
    lab_namespace,
    lab_namespace_port,
    nic_kthread,
)
from bench.udp.load import PORT_RANGE
from bench.udp.napi import AmphoraLinks, napi_threads, thread_of
from cohort import netns
from cohort.lab import CLIENT_IP, Lab

UDP_PORT = 7007
TOOL_ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def tool_command(ns: str, *args: str) -> list[str]:
    """``python -m bench.udp.load ARGS`` inside namespace ``ns`` (only the lab's)."""
    if not ns.startswith("cohort-"):
        raise BenchError(f"load runs only inside the lab's namespaces, not {ns!r}")
    return netns.in_ns(ns, [sys.executable, "-m", "bench.udp.load", *args])


def start_tool(ns: str, *args: str) -> subprocess.Popen[str]:
    """A tool in its own session (so that it and the workers it forks are stopped together)."""
    return subprocess.Popen(tool_command(ns, *args), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=TOOL_ENV, cwd=REPO, start_new_session=True)


def stop_tool(proc: subprocess.Popen[str]) -> None:
    """Stop a tool we started, and the workers it forked (its session, which it leads)."""
    if proc.poll() is None:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


def read_ready(proc: subprocess.Popen[str], what: str, timeout: float = 30.0) -> None:
    """Wait for a tool's ``ready`` line (bounded)."""
    assert proc.stdout is not None and proc.stderr is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
        if ready:
            line = proc.stdout.readline()
            if line.strip() == "ready":
                return
            if not line:
                break
    stop_tool(proc)
    raise BenchError(f"{what} did not start: {proc.stderr.read()[-2000:]}")


def probe(ns: str, targets: Sequence[str], seconds: float = 30.0) -> None:
    """Every ``ADDR:PORT`` of ``targets`` answers a datagram from namespace ``ns``."""
    proc = subprocess.run(tool_command(ns, "probe", "--targets", ",".join(targets), "--seconds", str(seconds)),
                          capture_output=True, text=True, env=TOOL_ENV, cwd=REPO, timeout=seconds + 30, check=False)
    if proc.returncode != 0:
        raise BenchError(f"no UDP answer from {targets} in {ns}: {proc.stdout.strip()} {proc.stderr[-1000:]}")


# --- source addresses of new flows ---------------------------------------------------------------


@dataclass
class SourcePool:
    """The client's source addresses for new flows, handed out least recently used first.

    A flow is new to the amphora's conntrack only if no flow with its source address and port
    was seen for 30 s (``nf_conntrack_udp_timeout``), and new to the distributor only after its
    pin's 120 s; one address gives ``PORT_RANGE`` ports. :meth:`take` returns addresses unused
    for ``min_age`` seconds, or how long to wait until there are that many.
    """

    addresses: list[str]
    min_age: float
    last_used: dict[str, float] = field(default_factory=dict)

    def take(self, count: int, now: float) -> tuple[list[str], float]:
        """(addresses, 0) or ([], seconds to wait)."""
        if count > len(self.addresses):
            raise BenchError(f"{count} source addresses wanted, the pool has {len(self.addresses)}")
        ranked = sorted(self.addresses, key=lambda a: (self.last_used.get(a, -math.inf), a))
        chosen = ranked[:count]
        oldest_needed = max(self.last_used.get(a, -math.inf) for a in chosen)
        wait = oldest_needed + self.min_age - now
        if wait > 0:
            return [], wait
        for address in chosen:
            self.last_used[address] = now
        return chosen, 0.0


def addresses_per_run(max_flows: int, ports: tuple[int, int] = PORT_RANGE) -> int:
    """Source addresses a flows run needs so that ``max_flows`` flows never repeat a (source, port)."""
    return max(1, math.ceil(max_flows / (ports[1] - ports[0] + 1)))


SOURCE_HOSTS = (100, 254)  # host numbers of the client's extra addresses: clear of the client's own .10


def add_client_sources(env: BenchEnv, count: int) -> list[str]:
    """``count`` more addresses of the client network on the client's eth0 (reserved in the lab's book)."""
    lab = env.lab
    found = []
    for i in range(count):
        address = lab.reserve_address("client", f"bench:udp:source:{i}", first=SOURCE_HOSTS[0], last=SOURCE_HOSTS[1])
        if address == CLIENT_IP:
            raise BenchError(f"the lab handed out the client's own address {address}")
        netns.add_addr("eth0", lab.client_ns, f"{address}/24")
        found.append(address)
    return found


# --- members and the direct load generator ----------------------------------------------------------


@dataclass
class Members:
    names: list[str]
    namespaces: list[str]
    addresses: list[str]
    echoes: list[subprocess.Popen[str]]

    @property
    def targets(self) -> list[str]:
        return [f"{a}:{UDP_PORT}" for a in self.addresses]

    def pids(self) -> set[int]:
        return set().union(*(netns.netns_pids(ns) for ns in self.namespaces))


@contextmanager
def echo_members(env: BenchEnv, count: int, workers: int, max_seconds: float) -> Iterator[Members]:
    """``count`` namespaces on the back-end bridge, each serving a UDP echo on :UDP_PORT with
    ``workers`` processes; all stopped on the way out."""
    with ExitStack() as stack:
        members = Members([], [], [], [])
        for i in range(count):
            name = f"udp{i + 1}"
            ns, (address,) = stack.enter_context(lab_namespace(env.lab, name, "private"))
            proc = start_tool(ns, "echo", "--targets", f"{address}:{UDP_PORT}", "--workers", str(workers),
                              "--max-seconds", str(int(max_seconds)))
            stack.callback(stop_tool, proc)  # before its namespace goes
            members.echoes.append(proc)
            read_ready(proc, f"echo member {name}")
            members.names.append(name)
            members.namespaces.append(ns)
            members.addresses.append(address)
        yield members


@dataclass
class LoadGen:
    """Where a generator runs and what it sends from; ``nic_threads`` process what it sends."""

    namespace: str
    sources: list[str]
    nic_threads: set[int]


def new_nic_thread(enable: Callable[[], str]) -> set[int]:
    """The NAPI thread that ``enable`` (which returns the port's name) makes: the new ``napi/<port>``
    one, since every lab's client port has the same name."""
    before = napi_threads()
    port = enable()
    return {thread_of(port, before, napi_threads())}


@contextmanager
def direct_loadgen(env: BenchEnv, addresses: int) -> Iterator[LoadGen]:
    """A namespace on the back-end bridge whose sends are processed in its port's NAPI thread,
    as the client's are (``bench.common.nic_kthread``)."""
    with lab_namespace(env.lab, "udpload", "private", addresses) as (ns, sources):
        port = lab_namespace_port("private", "udpload")
        yield LoadGen(ns, sources, new_nic_thread(lambda: nic_kthread(env.lab, ns, "eth0", port)))


# --- load balancers ----------------------------------------------------------------------------------


def build_load_balancers(env: BenchEnv, members: Members, cap: float, sizes: Sequence[int]) -> list[Config]:
    """SINGLE and ACTIVE_ACTIVE N (L2 distributor, SOURCE_IP_PORT affinity) for each of ``sizes``,
    each a UDP listener :UDP_PORT over a ROUND_ROBIN pool of the echo members, every amphora
    capped at ``cap`` CPU; created at once, then waited for."""
    flavor = {"compute_flavor": {"cpu": cap}}
    wanted = [("SINGLE", 1, env.flavor(f"udp-single-{cap}", {"loadbalancer_topology": "SINGLE", **flavor}))]
    for n in sizes:
        wanted.append((f"AA{n}", n, env.flavor(f"udp-aa{n}-{cap}", {
            "loadbalancer_topology": "ACTIVE_ACTIVE", "amp_cluster_size": n,
            "distributor_affinity": "SOURCE_IP_PORT", **flavor})))
    created = [(name, n, env.create_lb(f"udp-{name.lower()}", members.addresses, fid, protocol="UDP",
                                       port=UDP_PORT)) for name, n, fid in wanted]
    configs = []
    for name, n, lb in created:
        vip = env.wait_vip(lb["id"])
        env.wait_active(lb["id"], timeout=300)
        cfg = Config(name, n, lb["id"], vip, {}, env.cluster_of(lb["id"]) if n > 1 else None)
        cfg.refresh(env)
        if len(cfg.amphorae) != n:
            raise BenchError(f"{name}: {len(cfg.amphorae)} amphorae, expected {n}")
        for ns in cfg.amphorae:
            quota = cgroup_quota(Lab.instance_cgroup(ns))
            if quota is None or abs(quota - cap) > 0.002:
                raise BenchError(f"{name}: amphora {ns} has CPU quota {quota}, expected {cap}")
        probe(env.lab.client_ns, [f"{vip}:{UDP_PORT}"])
        configs.append(cfg)
    return configs


def config_report(configs: Sequence[Config], links: dict[str, AmphoraLinks]) -> dict[str, Any]:
    return {c.name: {"lb_id": c.lb_id, "vip": c.vip, "cluster_id": c.cluster_id, "amphorae": {
        ns: {"links": [e.dev for e in links[ns].inner], "switch_ports": [e.dev for e in links[ns].outer]}
        if ns in links else {} for ns in sorted(c.amphorae)}} for c in configs}


def parse_result(text: str) -> dict[str, Any]:
    """The generator's JSON answer (its last line)."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if not lines:
        raise BenchError("the load generator answered nothing")
    try:
        return dict(json.loads(lines[-1]))
    except ValueError as exc:
        raise BenchError(f"unreadable load generator answer: {lines[-1][:500]}") from exc
