"""Shared plumbing of the benchmarks: a private lab with Cohort on local drivers, load and probes.

A benchmark opens :func:`bench_env`, which brings up a lab with a unique ``cohort-b{hex}``
prefix and its own management /24, runs Cohort (API + controller, local drivers) in a thread
of this process, and on the way out, also after a failure, stops Cohort, deletes every
amphora the lab recorded and takes the lab down. All traffic stays inside the lab's
namespaces: load generators run in the lab's client namespace (through the gateway to a
VIP) or in a *load-generator* namespace plugged onto the back-end bridge (straight to a
member), never in the root namespace.

Also here: the single-call load-balancer tree, flavors, what the system under test says about
itself (the admin API's amphorae, clusters and distributors; never its database), the ``wrk``
runner (bounded by its ``-d`` duration and a subprocess timeout) with the CPU it used, CPU
accounting of processes and cgroups, HAProxy's counters, a first-request prober that runs
inside a namespace, machine facts, and what the benchmarks' commands share (console, modes,
error exit).

Run ``python -m bench.common probe ...`` only through :class:`FirstRequestProbe`.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import httpx
from rich.console import Console

from cohort import harness, netns
from cohort.agents.amphora.stats import show_stat
from cohort.lab import Lab, short_hash
from cohort.service import Cohort

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
CLK_TCK = os.sysconf("SC_CLK_TCK")
LAB_NETWORKS = [ipaddress.ip_network(n) for n in
                ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "198.18.0.0/15")]


MODES = {"keepalive": False, "new_connection": True}  # mode -> wrk sends "Connection: close"


class BenchError(RuntimeError):
    """The benchmark cannot go on (not root, a tool missing, the system under test misbehaving)."""


def make_console(width: int) -> Console:
    """A console as wide as the terminal, or ``width`` when the output is not one (logs, CI)."""
    return Console(width=None if sys.stdout.isatty() else width)


def _terminated(_signum: int, _frame: Any) -> NoReturn:
    raise SystemExit(143)  # unwinds through the teardown


def run_main(main: Callable[[], int], console: Console) -> int:
    """A benchmark's exit status: ``main()``'s, or 1 with the reason when it raised BenchError.
    A SIGTERM unwinds through every teardown, as an error does: without this, a stopped run left
    its lab (namespaces, agents, FRR) behind."""
    signal.signal(signal.SIGTERM, _terminated)
    try:
        return main()
    except BenchError as exc:
        console.print(f"[red]benchmark failed:[/red] {exc}")
        return 1


def fmt(value: Any, spec: str) -> str:
    """``value`` formatted with ``spec``, or ``-`` when there is none."""
    return "-" if value is None else format(value, spec)


# --- machine ------------------------------------------------------------------------------------


def require_root_and_tools(*tools: str) -> None:
    if os.geteuid() != 0:
        raise BenchError("run as root: the benchmark builds network namespaces and cgroups")
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        raise BenchError(f"missing tools: {', '.join(missing)}")


def _first_line(cmd: Sequence[str]) -> str:
    try:
        proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unavailable"
    lines = (proc.stdout or proc.stderr).strip().splitlines()
    return lines[0].strip() if lines else "unavailable"


def machine_info() -> dict[str, Any]:
    model = "unknown"
    with suppress(OSError):
        found = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
        model = found.group(1) if found else model
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "haproxy": _first_line(["haproxy", "-v"]),
        "wrk": _first_line(["wrk", "--version"]),
        "python": platform.python_version(),
        "loadavg_at_start": list(os.getloadavg()),
    }


def machine_facts() -> dict[str, Any]:
    """:func:`machine_info` and how busy the machine was (other load) over one second before the run."""
    machine = machine_info()
    busy0 = system_busy_seconds()
    time.sleep(1.0)
    machine["busy_cpu_before_run"] = system_busy_seconds() - busy0
    return machine


def parameters(args: argparse.Namespace) -> dict[str, Any]:
    """The command's arguments as JSON values (paths as strings), for the results file."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}


def command_line(base: str, argv: Sequence[str] | None) -> str:
    """The command as run, with its options (``argv``, or this process's), for the results file: the
    figures it holds are reproduced by this line, not by the bare command."""
    given = sys.argv[1:] if argv is None else argv
    return " ".join([base, *(shlex.quote(arg) for arg in given)])


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


# --- Cohort and its API -------------------------------------------------------------------------


class Api:
    """JSON in, (status, JSON) out, against the Octavia v2 API of the Cohort under test."""

    def __init__(self, base: str) -> None:
        self.client = httpx.Client(base_url=base.rstrip("/"), timeout=30)

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        response = self.client.request(method, path, json=body)
        try:
            data = response.json() if response.content else None
        except ValueError:
            data = response.text
        return response.status_code, data

    def get(self, path: str) -> tuple[int, Any]:
        return self.call("GET", path)

    def post(self, path: str, body: Any) -> tuple[int, Any]:
        return self.call("POST", path, body)

    def delete(self, path: str) -> tuple[int, Any]:
        return self.call("DELETE", path)


@dataclass
class BenchEnv:
    lab: Lab
    cohort: Cohort
    api: Api
    state_dir: Path

    def flavor(self, name: str, data: dict[str, Any]) -> str:
        """A flavor of provider ``amphora`` carrying ``data``; returns its id."""
        status, profile = self.api.post("/v2/lbaas/flavorprofiles", {"flavorprofile": {
            "name": name, "provider_name": "amphora", "flavor_data": json.dumps(data)}})
        if status != 201:
            raise BenchError(f"flavor profile: {status} {profile}")
        status, flavor = self.api.post("/v2/lbaas/flavors", {"flavor": {
            "name": name, "flavor_profile_id": profile["flavorprofile"]["id"]}})
        if status != 201:
            raise BenchError(f"flavor: {status} {flavor}")
        return str(flavor["flavor"]["id"])

    def create_lb(self, name: str, members: Sequence[str], flavor_id: str | None = None, *,
                  protocol: str = "HTTP", port: int = 80) -> dict[str, Any]:
        """One POST: load balancer + ``protocol`` listener :``port`` + ROUND_ROBIN pool of ``members``
        (same protocol and port; HTTP :80 unless told)."""
        pool = {"protocol": protocol, "lb_algorithm": "ROUND_ROBIN", "members": [
            {"address": a, "protocol_port": port, "subnet_id": "private-subnet"} for a in members]}
        body: dict[str, Any] = {"name": name, "vip_subnet_id": "public-subnet", "listeners": [
            {"name": f"{name}-{protocol.lower()}", "protocol": protocol, "protocol_port": port,
             "default_pool": pool}]}
        if flavor_id:
            body["flavor_id"] = flavor_id
        status, created = self.api.post("/v2/lbaas/loadbalancers", {"loadbalancer": body})
        if status != 201:
            raise BenchError(f"create load balancer {name}: {status} {created}")
        return dict(created["loadbalancer"])

    def wait_vip(self, lb_id: str, timeout: float = 30.0) -> str:
        """The VIP address, which the controller allocates after the create call returns."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, body = self.api.get(f"/v2/lbaas/loadbalancers/{lb_id}")
            if status == 200 and body["loadbalancer"].get("vip_address"):
                return str(body["loadbalancer"]["vip_address"])
            time.sleep(0.02)
        raise BenchError(f"load balancer {lb_id} got no VIP within {timeout}s")

    def wait_active(self, lb_id: str, timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, body = self.api.get(f"/v2/lbaas/loadbalancers/{lb_id}")
            if status == 200 and body["loadbalancer"]["provisioning_status"] == "ACTIVE":
                return dict(body["loadbalancer"])
            if status == 200 and body["loadbalancer"]["provisioning_status"] == "ERROR":
                raise BenchError(f"load balancer {lb_id} went to ERROR")
            time.sleep(0.1)
        raise BenchError(f"load balancer {lb_id} not ACTIVE within {timeout}s")

    def delete_lb(self, lb_id: str, timeout: float = 60.0) -> None:
        """Cascade delete and wait until the API forgets it (its amphora is gone by then)."""
        status, body = self.api.delete(f"/v2/lbaas/loadbalancers/{lb_id}?cascade=true")
        if status not in (204, 404):
            raise BenchError(f"delete {lb_id}: {status} {body}")
        deadline = time.monotonic() + timeout
        while self.api.get(f"/v2/lbaas/loadbalancers/{lb_id}")[0] != 404:
            if time.monotonic() > deadline:
                raise BenchError(f"load balancer {lb_id} not deleted within {timeout}s")
            time.sleep(0.1)

    def admin_list(self, collection: str, key: str, **filters: str) -> list[dict[str, Any]]:
        """``GET /v2/octavia/{collection}`` (admin API) filtered by ``filters``; the ``key`` list."""
        query = "&".join(f"{k}={v}" for k, v in filters.items())
        status, body = self.api.get(f"/v2/octavia/{collection}" + (f"?{query}" if query else ""))
        if status != 200:
            raise BenchError(f"list {collection}: {status} {body}")
        return list(body[key])

    def amphorae_of(self, lb_id: str) -> dict[str, str]:
        """Namespace (compute id) -> amphora id of the live amphorae of one load balancer."""
        rows = self.admin_list("amphorae", "amphorae", loadbalancer_id=lb_id)
        return {str(r["compute_name"]): str(r["id"])
                for r in rows if r.get("compute_name") and r["status"] != "DELETED"}

    def amphora_namespaces_of(self, lb_id: str) -> list[str]:
        """Namespaces (compute ids) of the live amphorae of one load balancer."""
        return sorted(self.amphorae_of(lb_id))

    def cluster_of(self, lb_id: str) -> str:
        """The id of the amphora cluster of an ACTIVE_ACTIVE load balancer."""
        rows = self.admin_list("clusters", "clusters", loadbalancer_id=lb_id)
        if len(rows) != 1:
            raise BenchError(f"load balancer {lb_id}: {len(rows)} clusters")
        return str(rows[0]["id"])

    def haproxy_socket(self, namespace: str, lb_id: str) -> Path:
        """The admin socket of the HAProxy serving ``lb_id`` in amphora ``namespace``.

        The amphora agent keeps its state under ``i/<the namespace's 8 hex digits>`` of Cohort's
        state directory, HAProxy's sockets in its jail there.
        """
        return self.state_dir / "i" / namespace.rsplit("-", 1)[1] / "jail" / "haproxy" / f"{lb_id}.sock"

    def amphora_namespaces(self) -> list[str]:
        """Namespaces (compute ids) of the amphorae currently recorded in the lab."""
        instances = self.lab.snapshot().get("instances", {})
        return sorted(r["compute_id"] for r in instances.values() if r.get("kind") == "amphora")


@contextmanager
def bench_env(tag: str = "b", **overrides: Any) -> Iterator[BenchEnv]:
    """A fresh lab + Cohort (local drivers) from ``cohort.harness``; all of it removed on exit, also on failure.

    ``overrides``: settings of the Cohort under test (field names of ``cohort.config.Settings``)."""
    state_dir = Path(tempfile.mkdtemp(prefix=f"cohort-bench-{tag}-"))
    try:
        with harness.private_cohort(state_dir, tag=tag, **overrides) as instance:
            assert instance.lab is not None
            yield BenchEnv(instance.lab, instance.cohort, Api(instance.base), state_dir)
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)


# --- namespaces of the benchmark ----------------------------------------------------------------


def tune_load_namespace(ns: str) -> None:
    """Room for tens of thousands of short connections a second in a namespace the bench made."""
    netns.sysctl(ns, "net.ipv4.ip_local_port_range", "1024 65000")
    netns.sysctl(ns, "net.ipv4.tcp_tw_reuse", 1)


def client_nic_kthread(lab: Lab) -> str:
    """Process what the client sends in a kernel thread of its own, as another host's NIC would.

    On one machine a packet is processed, through every namespace it crosses, in the context of
    whoever sent it, and softirq time is billed to that process (this kernel has no
    IRQ_TIME_ACCOUNTING). When an amphora's answer reaches the client, the client's ACK or FIN
    is sent right there, so the gateway, the distributor and the amphora's own receive of that
    packet were billed to the *amphora's* capped cgroup: the benchmark charged the amphora for
    the client's and the network's work, more so behind a distributor (one more hop). With GRO
    on the client's switch port, veth receives through NAPI, and threaded NAPI runs it in the
    kernel thread ``napi/<port>-N`` (with TSO off on the client's end, which veth requires for
    it): everything the client sends is processed there, in every configuration alike.
    :func:`amphora_nic_kthreads` does the same for what the amphorae send. Returns the port's name.
    """
    return nic_kthread(lab, lab.client_ns, "eth0", "c-client")


# An amphora's links that carry the tenant's traffic (mgmt0 carries the agent's).
AMPHORA_DATA_LINKS = ("fe0", "be0")


def amphora_nic_kthreads(lab: Lab, ns: str) -> list[str]:
    """What amphora ``ns`` sends on its front-end and back-end links is processed in kernel threads
    of their switch-side ports, as a virtual machine's NIC would; returns the ports.

    Otherwise the receiver's whole stack runs inside HAProxy's ``sendto``: the client's TCP
    receive and the wake-up of wrk for each answer, the member's for each forwarded request. On
    this virtual machine a wake-up of a task on the other CPU costs an inter-processor interrupt
    (``_raw_spin_unlock_irqrestore`` under ``sock_def_readable``: 12.6% of a capped SINGLE
    HAProxy's ``perf`` samples, 15.9% of a cluster one's), and whether one is needed depends on
    what the other CPU is doing: one configuration served 10,500 to 14,800 requests per HAProxy
    CPU-second from run to run. With the ports threaded an amphora is billed for HAProxy and its
    own stack (conntrack, nftables, routing) up to its NIC, in every configuration alike.
    """
    ports = lab.ports.switch_ports(ns)  # an amphora's namespace is its compute instance
    missing = [dev for dev in AMPHORA_DATA_LINKS if dev not in ports]
    if missing:
        raise BenchError(f"{ns}: the lab has no port for {', '.join(missing)}")
    return [nic_kthread(lab, ns, dev, ports[dev]) for dev in AMPHORA_DATA_LINKS]


def nic_kthread(lab: Lab, ns: str, dev: str, port: str) -> str:
    """What ``dev`` of namespace ``ns`` sends is processed in the kernel thread of its switch-side
    ``port`` (see :func:`client_nic_kthread`); returns the port's name."""
    # veth hands a packet to NAPI only if the sender cannot do TSO (veth_skb_is_eligible_for_gro).
    netns.run_in(ns, ["ethtool", "-K", dev, "tso", "off"])
    netns.run_in(lab.sw_ns, ["ethtool", "-K", port, "gro", "on"])
    netns.run_in(lab.sw_ns, ["sh", "-c", f"echo 1 > /sys/class/net/{port}/threaded"])
    threaded = netns.run_in(lab.sw_ns, ["cat", f"/sys/class/net/{port}/threaded"]).stdout.strip()
    if threaded != "1":
        raise BenchError(f"threaded NAPI did not take on {port}: {threaded!r}")
    return port


def lab_namespace_port(network: str, name: str) -> str:
    """The switch-side port of :func:`lab_namespace` ``name`` on ``network``."""
    return f"m{short_hash(f'{network}:{name}')}"


@contextmanager
def lab_namespace(lab: Lab, name: str, network: str, count: int = 1) -> Iterator[tuple[str, list[str]]]:
    """A namespace of the benchmark on the lab's ``network`` bridge with ``count`` addresses of it.

    It is named like a member namespace so that ``Lab.down()`` removes it even if this context
    never gets to. Yields (namespace, addresses).
    """
    ns, outer = lab.member_ns(name), lab_namespace_port(network, name)
    owners = [f"bench:{name}:{i}" for i in range(count)]
    addresses: list[str] = []
    try:
        for owner in owners:
            addresses.append(lab.reserve_address(network, owner))
        netns.add_netns(ns)
        netns.add_veth("eth0", ns, outer, lab.sw_ns)
        netns.set_link(outer, lab.sw_ns, master=lab.network(network).bridge)
        for address in addresses:
            netns.add_addr("eth0", ns, f"{address}/24")
        netns.set_link("eth0", ns)
        yield ns, addresses
    finally:
        netns.del_netns(ns)
        for owner in owners:
            lab.release_address(network, owner)


@contextmanager
def backend_loadgen(lab: Lab, name: str = "loadgen") -> Iterator[tuple[str, str]]:
    """A namespace on the lab's back-end bridge, for direct-to-member load; yields (namespace, address)."""
    with lab_namespace(lab, name, "private") as (ns, (address,)):
        tune_load_namespace(ns)
        yield ns, address


def check_lab_address(address: str) -> None:
    """Refuse any load target outside the lab's documentation/benchmark ranges."""
    ip = ipaddress.ip_address(address)
    if not any(ip in net for net in LAB_NETWORKS):
        raise BenchError(f"{address} is outside the lab's address ranges")


# --- CPU accounting -----------------------------------------------------------------------------


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads); 0 when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def process_threads(pid: int) -> int:
    with suppress(OSError):
        found = re.search(r"^Threads:\s+(\d+)", Path(f"/proc/{pid}/status").read_text(), re.MULTILINE)
        if found:
            return int(found.group(1))
    return 0


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


def system_busy_seconds() -> float:
    """CPU seconds spent busy (not idle/iowait) by the whole machine since boot."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / CLK_TCK


def cgroup_throttling(cgroup: str) -> dict[str, int]:
    """``cpu.stat`` of a cgroup v1 cpu group (nr_periods, nr_throttled, throttled_time ns)."""
    path = netns.CGROUP_ROOT / "cpu" / cgroup / "cpu.stat"
    try:
        pairs = (line.split() for line in path.read_text().splitlines())
    except OSError:
        return {}
    return {k: int(v) for k, v in pairs}


def cgroup_quota(cgroup: str) -> float | None:
    """The CPU quota of a cgroup v1 cpu group as a fraction of one CPU; None when unlimited."""
    base = netns.CGROUP_ROOT / "cpu" / cgroup
    try:
        quota = int((base / "cpu.cfs_quota_us").read_text())
        period = int((base / "cpu.cfs_period_us").read_text())
    except OSError:
        return None
    return None if quota < 0 else quota / period


@dataclass(frozen=True)
class GroupCpu:
    total: float  # CPUs used by the group: CPU seconds per wall second
    busiest: float  # CPUs used by its busiest process (a single-threaded worker saturates at 1.0)


@dataclass
class CpuWatch:
    """CPU used by named groups of processes over one interval, and by the whole machine."""

    groups: dict[str, Callable[[], set[int]]]
    _start: dict[str, dict[int, float]] = field(default_factory=dict)
    _busy0: float = 0.0
    _t0: float = 0.0

    def start(self) -> None:
        self._start = {name: {p: process_cpu_seconds(p) for p in pids()} for name, pids in self.groups.items()}
        self._busy0, self._t0 = system_busy_seconds(), time.monotonic()

    def stop(self) -> tuple[dict[str, GroupCpu], float]:
        """Per group, the CPUs it used since start(); and the CPUs the machine was busy."""
        wall = max(time.monotonic() - self._t0, 1e-6)
        machine = (system_busy_seconds() - self._busy0) / wall
        out: dict[str, GroupCpu] = {}
        for name, pids in self.groups.items():
            before = self._start.get(name, {})
            used = [process_cpu_seconds(p) - before.get(p, 0.0) for p in pids() | set(before)]
            out[name] = GroupCpu(sum(used) / wall, max(used, default=0.0) / wall)
        return out, machine


def haproxy_pids(cgroup: str) -> set[int]:
    """HAProxy's processes (master and worker) in an amphora's cgroup."""
    return command_pids(cgroup, "haproxy")


def command_pids(cgroup: str, name: str) -> set[int]:
    """The processes in ``cgroup`` whose program's path contains ``name`` (haproxy, bird)."""
    return {p for p in netns.cgroup_pids(cgroup) if name in " ".join(cmdline(p)[:1])}


def haproxy_server_counters(sock: Path) -> dict[str, int]:
    """Summed over the servers: ``connect`` (new connections to members), ``reuse``, ``stot``."""
    totals = {"connect": 0, "reuse": 0, "stot": 0}
    for row in show_stat(str(sock)):
        if row.get("svname") in ("FRONTEND", "BACKEND"):
            continue
        for key in totals:
            with suppress(ValueError):
                totals[key] += int(row.get(key) or 0)
    return totals


def haproxy_frontend_requests(sock: Path) -> int:
    """Requests HAProxy's frontends have received (``req_tot``); 0 when the socket does not answer."""
    try:
        rows = show_stat(str(sock))
    except OSError:
        return 0
    return sum(int(r.get("req_tot") or 0) for r in rows if r.get("svname") == "FRONTEND")


# --- wrk ----------------------------------------------------------------------------------------

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    found = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not found:
        raise ValueError(f"bad wrk duration {text!r}")
    return float(found.group(1)) * _UNITS[found.group(2)]


@dataclass
class WrkResult:
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    socket_errors: dict[str, int]
    non_2xx: int
    cpu_seconds: float  # wrk's own user + system time

    @property
    def errors(self) -> int:
        return sum(self.socket_errors.values()) + self.non_2xx


def parse_wrk(text: str, cpu_seconds: float) -> WrkResult:
    done = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", text)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if not done or not rps:
        raise BenchError(f"unreadable wrk output:\n{text}")
    latency = dict(re.findall(r"^\s+(50|99)%\s+([\d.]+(?:us|ms|s|m))\s*$", text, re.MULTILINE))
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    socket_errors = dict(zip(("connect", "read", "write", "timeout"),
                             (int(g) for g in errors.groups()), strict=True)) if errors else {}
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return WrkResult(
        requests=int(done.group(1)),
        seconds=_ms(done.group(2) + done.group(3)) / 1e3,
        rps=float(rps.group(1)),
        p50_ms=_ms(latency["50"]) if "50" in latency else float("nan"),
        p99_ms=_ms(latency["99"]) if "99" in latency else float("nan"),
        socket_errors=socket_errors,
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        cpu_seconds=cpu_seconds,
    )


def wrk_command(url: str, *, threads: int, connections: int, seconds: int, close: bool) -> list[str]:
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency"]
    if close:
        cmd += ["-H", "Connection: close"]
    return [*cmd, url]


def kill_after(proc: subprocess.Popen[Any], seconds: float) -> threading.Timer:
    """Kill ``proc`` if it still runs after ``seconds`` (cancel the timer when done with it).

    A daemon thread: a benchmark stopped by a signal exits at once instead of waiting for it.
    """
    timer = threading.Timer(seconds, proc.kill)
    timer.daemon = True
    timer.start()
    return timer


def run_wrk(ns: str, url: str, *, threads: int, connections: int, seconds: int, close: bool) -> WrkResult:
    """One bounded wrk run inside namespace ``ns``; its output parsed, with the CPU it used."""
    host = httpx.URL(url).host
    check_lab_address(host)
    if not ns.startswith("cohort-"):
        raise BenchError(f"load runs only inside the benchmark's namespaces, not {ns!r}")
    cmd = netns.in_ns(ns, wrk_command(url, threads=threads, connections=connections, seconds=seconds, close=close))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    timer = kill_after(proc, seconds + 20)
    try:
        assert proc.stdout is not None
        output = proc.stdout.read()
        # wait4 rather than wait: it also returns the CPU time wrk used.
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    finally:
        timer.cancel()
        if proc.returncode is None:
            proc.kill()
            proc.wait()
    if proc.returncode != 0:
        raise BenchError(f"wrk failed ({proc.returncode}): {output}")
    return parse_wrk(output, usage.ru_utime + usage.ru_stime)


# --- time to the first served request -----------------------------------------------------------


class FirstRequestProbe:
    """A prober already running in a namespace: told a VIP, it reports when it first served.

    It is started before the timed API call, so its own start-up is not counted; it tries a
    new connection every 10 ms (100 ms connect timeout) and the instant is CLOCK_MONOTONIC,
    which this process and the prober share.
    """

    def __init__(self, ns: str, expect: str, timeout: float = 30.0) -> None:
        cmd = [sys.executable, "-m", "bench.common", "probe", "--expect", expect, "--timeout", str(timeout)]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen(netns.in_ns(ns, cmd), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
        self.timeout = timeout
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            self.close()
            raise BenchError("first-request prober did not start")

    def start(self, address: str, port: int = 80) -> None:
        """Start probing ``address``:``port`` now; returns at once."""
        check_lab_address(address)
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{address} {port}\n")
        self.proc.stdin.close()

    def served_at(self) -> float:
        """The monotonic time of the first good answer (waits for it)."""
        assert self.proc.stdout is not None and self.proc.stderr is not None
        try:
            self.proc.wait(timeout=self.timeout + 10)
        except subprocess.TimeoutExpired:
            self.close()
            raise BenchError("first-request prober hung") from None
        out, err = self.proc.stdout.read(), self.proc.stderr.read()
        if self.proc.returncode != 0:
            raise BenchError(f"no request served within {self.timeout}s: {err.strip()}")
        return float(out.strip())

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _probe_once(address: str, port: int, expect: bytes) -> bool:
    request = f"GET / HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n".encode()
    try:
        with socket.create_connection((address, port), timeout=0.1) as sock:
            sock.settimeout(1.0)
            sock.sendall(request)
            data = b""
            while chunk := sock.recv(4096):
                data += chunk
    except OSError:
        return False
    head, _, body = data.partition(b"\r\n\r\n")
    return head.startswith(b"HTTP/1.1 200") and body.strip() == expect


def _probe_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench.common probe")
    parser.add_argument("--expect", required=True, help="the body the member answers")
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args(argv)
    print("ready", flush=True)
    address, port = sys.stdin.readline().split()
    check_lab_address(address)
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        if _probe_once(address, int(port), args.expect.encode()):
            print(f"{time.monotonic():.6f}", flush=True)
            return 0
        time.sleep(0.01)
    print("timed out", file=sys.stderr)
    return 1


if __name__ == "__main__":
    if sys.argv[1:2] != ["probe"]:
        sys.exit("usage: python -m bench.common probe --expect BODY [--timeout S] (VIP and port on stdin)")
    sys.exit(_probe_main(sys.argv[2:]))
