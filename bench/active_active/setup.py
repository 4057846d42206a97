"""What is under test: the load balancers and baselines, the lab around them, the distributor.

Owns building the configurations (SINGLE, ACTIVE_ACTIVE N = 2..4, the load-matched SINGLExN
baselines) through the Octavia v2 API, and learning about them as an operator would: amphorae
and clusters from the admin API, the distributor from the admin API and its agent's status,
its flow and bucket maps from ``nft`` in its namespace, amphora CPU quotas from their cgroups.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.active_active.cli import console
from bench.common import BenchEnv, BenchError, cgroup_quota, client_nic_kthread, tune_load_namespace
from cohort import netns
from cohort.distributor import nft
from cohort.drivers.distributor.base import DistributorRef
from cohort.lab import CLIENT_IP, Lab

SIZES = (2, 3, 4)
EPHEMERAL_PORTS = "1024 60000"  # of the client namespace; the fixed-port probe uses ports above


@dataclass
class Config:
    name: str  # SINGLE | AA2 | AA3 | AA4 | L3AA2 | L3AA3 | L3AA4 (bench.active_active.l3)
    size: int
    lb_id: str
    vip: str
    amphorae: dict[str, str]  # namespace -> amphora id
    cluster_id: str | None
    l3: bool = False  # ACTIVE_ACTIVE over L3 BGP: no distributor, the lab router's ECMP spreads

    def refresh(self, env: BenchEnv) -> None:
        """Its live amphorae, as the admin API lists them."""
        self.amphorae = env.amphorae_of(self.lb_id)

    def sockets(self, env: BenchEnv) -> dict[str, Path]:
        """HAProxy admin socket of each amphora."""
        return {ns: env.haproxy_socket(ns, self.lb_id) for ns in self.amphorae}

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
    """The L2 distributor: its agent's status, and its nftables maps read in its namespace."""

    ref: DistributorRef
    namespace: str

    def status(self, env: BenchEnv) -> dict[str, Any]:
        """``GET /1.0/status`` of the distributor agent (mutual TLS, the controller's client certificate)."""
        return env.cohort.drivers.distributor.status(self.ref)

    def nft_map(self, name: str) -> list[Any]:
        out = netns.run_in(self.namespace, ["nft", "-j", "list", "map", nft.FAMILY, nft.TABLE, name], timeout=60)
        for item in json.loads(out.stdout).get("nftables", []):
            if "map" in item:
                return list(item["map"].get("elem", []))
        return []

    def marks(self, env: BenchEnv, cfg: Config) -> dict[int, str]:
        """mark -> amphora namespace, from the agent's status."""
        members = self.status(env)["vips"][cfg.lb_id]["members"]
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


def distributor_of(env: BenchEnv, timeout: float = 30.0) -> Distributor:
    """The live pair's MASTER (it holds the VIPs and carries every flow), as the admin API lists it."""
    deadline = time.monotonic() + timeout
    while True:
        rows = [r for r in env.admin_list("distributors", "distributors") if r["status"] == "ACTIVE"]
        masters = [r for r in rows if r.get("role") == "MASTER"]
        if len(rows) == 2 and len(masters) == 1:
            break
        if time.monotonic() > deadline:
            raise BenchError(f"expected a distributor pair with one MASTER, the API lists {len(rows)} ACTIVE "
                             f"distributors with roles {[r.get('role') for r in rows]}")
        time.sleep(0.5)
    row = masters[0]
    if not row.get("lb_network_ip") or not row.get("compute_id"):
        raise BenchError("the distributor has no address or namespace")
    return Distributor(DistributorRef(str(row["id"]), str(row["lb_network_ip"])), str(row["compute_id"]))


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
        cfg = Config(name, n, lb["id"], vip, {}, env.cluster_of(lb["id"]) if n > 1 else None)
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


def prepare_lab(env: BenchEnv, members: int, workers: int, client_kthread: bool) -> dict[str, Any]:
    """The client namespace tuned, the client's packet path chosen, ``members`` member servers;
    the report's ``client_packets`` and ``members``."""
    lab = env.lab
    tune_load_namespace(lab.client_ns)
    netns.sysctl(lab.client_ns, "net.ipv4.ip_local_port_range", EPHEMERAL_PORTS)
    if client_kthread:
        port = client_nic_kthread(lab)
        packets = (f"processed in kernel thread napi/{port}-N (GRO + threaded NAPI on the client's switch "
                   "port), as another host's; see bench.common")
    else:
        packets = "processed in the sender's context (billed to whoever sent or answered)"
    names = member_names(members)
    addresses = [lab.add_member(name, workers=workers) for name in names]
    return {"client_packets": packets, "members": {
        "count": members, "workers": workers, "addresses": addresses, "server": "cohort.lab_member"}}


def member_pids_of(lab: Lab, names: list[str]) -> Callable[[], set[int]]:
    """The processes of the members' namespaces, asked afresh at each call (for a run's CPU census)."""
    def pids() -> set[int]:
        return set().union(*(netns.netns_pids(lab.member_ns(name)) for name in names))
    return pids


def member_names(count: int) -> list[str]:
    return [f"web{i + 1}" for i in range(count)]
