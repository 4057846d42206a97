"""Is a load balancer back at full strength? What is observed of it, and the rule that decides.

An :class:`Observation` is what an operator can see from outside at one instant: the load
balancer's provisioning status, its live amphorae (admin API), each one's HAProxy request
counter, and per topology what carries traffic: for L2 the distributor pair (admin API rows
and each agent's own status: VRRP role, the VIP applied, its healthy members), for L3 the
router's installed next hops, for ACTIVE_STANDBY which amphora holds the VIP. :func:`shortfalls`
(pure, unit-tested) lists what keeps it from full strength, given the observation before:

- the load balancer ACTIVE, exactly its size of amphorae, all ALLOCATED, none of the failed ones,
  every one's HAProxy answering on its admin socket (a standby's too);
- L2: the agent-MASTER's healthy members and L3: the router's next hops are exactly those amphorae;
- ACTIVE_STANDBY: exactly one amphora holds the VIP;
- every amphora that should carry traffic (all of a cluster, SINGLE's one, the VIP holder)
  served requests since the observation before (its counter grew), so a replacement counts only
  once it carries traffic;
- L2: a complete pair, two ACTIVE distributors, ONLINE, one MASTER and one BACKUP by their own
  VRRP state, both with the VIP applied, neither of them a failed one.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from bench.active_active.setup import Distributor
from bench.common import BenchEnv
from cohort import netns
from cohort.agents.amphora.stats import show_stat
from cohort.drivers.distributor.base import DistributorRef

KINDS = ("single", "standby", "l2", "l3")
STATUS_TIMEOUT = 1.0  # seconds for a distributor agent's status
# Seconds between asking the distributor agents: a status lists every pinned flow (thousands under the
# load), and asking both members at every observation cost them a core and slowed what was measured.
DISTRIBUTOR_POLL = 0.5


@dataclass
class DistributorView:
    id: str
    status: str  # admin API
    operating_status: str  # admin API (heartbeats)
    vrrp_role: str | None  # the agent's own VRRP state; None when it does not answer
    has_vip: bool  # the agent has the load balancer's VIP applied
    healthy_members: set[str] = field(default_factory=set)


@dataclass
class Observation:
    t: float
    provisioning: str
    amphorae: dict[str, str]  # live amphora id -> status
    requests: dict[str, int]  # amphora id -> HAProxy frontend requests (-1 when its socket does not answer)
    data_path: set[str] | None = None  # L2 / L3: amphora ids traffic is sent to
    vip_holders: set[str] | None = None  # ACTIVE_STANDBY: amphora ids with the VIP on an interface
    distributors: list[DistributorView] | None = None  # L2: the live pair


@dataclass(frozen=True)
class Expectation:
    kind: str  # single | standby | l2 | l3
    size: int
    failed_amphorae: frozenset[str] = frozenset()  # must be gone (replaced)
    failed_distributors: frozenset[str] = frozenset()


def carriers(obs: Observation, exp: Expectation) -> set[str]:
    """The amphorae that should be serving: the VIP holder of a pair, otherwise all of them."""
    if exp.kind == "standby":
        return set(obs.vip_holders or ())
    return set(obs.amphorae)


def pair_shortfalls(views: list[DistributorView], failed: frozenset[str]) -> list[str]:
    out = []
    live = [v for v in views if v.status == "ACTIVE"]
    if len(live) != 2:
        out.append(f"{len(live)} ACTIVE distributors")
    if {v.vrrp_role for v in live} != {"MASTER", "BACKUP"}:
        out.append(f"distributor VRRP roles {sorted(str(v.vrrp_role) for v in live)}")
    out += [f"distributor {v.id[:8]} {v.operating_status}" for v in live if v.operating_status != "ONLINE"]
    out += [f"distributor {v.id[:8]} lacks the VIP" for v in live if not v.has_vip]
    out += [f"failed distributor {v.id[:8]} still ACTIVE" for v in live if v.id in failed]
    return out


def shortfalls(prev: Observation | None, obs: Observation, exp: Expectation, serving: bool = True) -> list[str]:
    """What keeps the load balancer from full strength now (empty: it is at full strength).

    ``serving``: also require every carrier's request counter to have grown since ``prev``
    (needs load and a previous observation)."""
    out = []
    if obs.provisioning != "ACTIVE":
        out.append(f"load balancer {obs.provisioning}")
    if len(obs.amphorae) != exp.size:
        out.append(f"{len(obs.amphorae)} of {exp.size} amphorae")
    out += [f"amphora {a[:8]} {s}" for a, s in sorted(obs.amphorae.items()) if s != "ALLOCATED"]
    out += [f"failed amphora {a[:8]} still listed" for a in sorted(exp.failed_amphorae & set(obs.amphorae))]
    out += [f"amphora {a[:8]} HAProxy not answering" for a in sorted(obs.amphorae) if obs.requests.get(a, -1) < 0]
    if exp.kind in ("l2", "l3") and obs.data_path != set(obs.amphorae):
        path = obs.data_path or set()
        out.append(f"data path has {len(path & set(obs.amphorae))} of {len(obs.amphorae)} amphorae"
                   + (f" and {len(path - set(obs.amphorae))} others" if path - set(obs.amphorae) else "")
                   + f" (not {', '.join(a[:8] for a in sorted(set(obs.amphorae) - path)) or 'none'})")
    if exp.kind == "standby" and len(obs.vip_holders or ()) != 1:
        out.append(f"VIP held by {len(obs.vip_holders or ())} amphorae")
    if serving:
        for amphora in sorted(carriers(obs, exp)):
            before = prev.requests.get(amphora) if prev is not None else None
            now = obs.requests.get(amphora, 0)
            if before is None or now <= before or before < 0:
                out.append(f"amphora {amphora[:8]} not serving")
    if exp.kind == "l2":
        out += pair_shortfalls(obs.distributors or [], exp.failed_distributors)
    return out


# --- observing (impure) -------------------------------------------------------------------------


@dataclass
class Observer:
    """Takes observations of one load balancer (``kind``) through the admin API, agents and the lab."""

    env: BenchEnv
    lb_id: str
    vip: str
    kind: str
    _pair: tuple[float, list[DistributorView]] = (float("-inf"), [])

    def amphorae(self) -> list[dict[str, Any]]:
        rows = self.env.admin_list("amphorae", "amphorae", loadbalancer_id=self.lb_id)
        return [r for r in rows if r["status"] != "DELETED"]

    def namespace(self, amphora_id: str) -> str:
        return self.env.lab.instance_ns(amphora_id, "amphora")

    def vip_holders(self, ids: list[str]) -> set[str]:
        held = set()
        for amphora_id in ids:
            out = netns.run_in(self.namespace(amphora_id), ["ip", "-j", "-4", "addr", "show"], check=False).stdout
            try:
                links = json.loads(out or "[]")
            except ValueError:
                continue
            if any(a.get("local") == self.vip for link in links if link.get("ifname") != "lo"
                   for a in link.get("addr_info", [])):
                held.add(amphora_id)
        return held

    def distributors(self) -> list[DistributorView]:
        views = []
        for row in self.env.admin_list("distributors", "distributors"):
            if row["status"] in ("DELETED",):
                continue
            role, has_vip, healthy = None, False, set()
            if row["status"] == "ACTIVE" and row.get("lb_network_ip"):
                try:
                    # A member whose links are down must not hold the observations up (5 s connects).
                    # No flow count: listing every pin twice a second would load what is measured.
                    status = self.env.cohort.drivers.distributor.status(
                        DistributorRef(str(row["id"]), str(row["lb_network_ip"])), timeout=STATUS_TIMEOUT,
                        count_flows=False)
                    role = status.get("vrrp", {}).get("role")
                    vip = status.get("vips", {}).get(self.lb_id)
                    has_vip = vip is not None
                    healthy = {a for a, m in (vip or {}).get("members", {}).items() if m.get("healthy")}
                except Exception:  # noqa: BLE001 - a dead or unreachable agent is an observation
                    pass
            views.append(DistributorView(str(row["id"]), str(row["status"]), str(row.get("operating_status")),
                                         role, has_vip, healthy))
        return views

    def requests(self, namespace: str) -> int:
        """HAProxy's frontend request counter in amphora ``namespace``; -1 when its socket does not answer."""
        try:
            rows = show_stat(str(self.env.haproxy_socket(namespace, self.lb_id)))
        except OSError:
            return -1
        return sum(int(r.get("req_tot") or 0) for r in rows if r.get("svname") == "FRONTEND")

    def observe(self) -> Observation:
        status, body = self.env.api.get(f"/v2/lbaas/loadbalancers/{self.lb_id}")
        provisioning = body["loadbalancer"]["provisioning_status"] if status == 200 else f"HTTP {status}"
        rows = self.amphorae()
        live = {str(r["id"]): str(r["status"]) for r in rows}
        requests = {str(r["id"]): self.requests(str(r["compute_name"])) for r in rows if r.get("compute_name")}
        obs = Observation(time.monotonic(), provisioning, live, requests)
        if self.kind == "l2":
            if obs.t - self._pair[0] >= DISTRIBUTOR_POLL:
                self._pair = (obs.t, self.distributors())
            obs.distributors = self._pair[1]
            masters = [d for d in obs.distributors if d.vrrp_role == "MASTER"]
            obs.data_path = masters[0].healthy_members if len(masters) == 1 else set()
        elif self.kind == "l3":
            by_ip = {str(r["vrrp_ip"]): str(r["id"]) for r in rows if r.get("vrrp_ip")}
            obs.data_path = {by_ip.get(hop, f"?{hop}") for hop in self.env.lab.router.routes().get(self.vip, [])}
        elif self.kind == "standby":
            obs.vip_holders = self.vip_holders(sorted(live))
        return obs


def master(env: BenchEnv, views: list[DistributorView]) -> Distributor | None:
    """The distributor that is MASTER by its own VRRP state, as the setup module's Distributor."""
    rows = {str(r["id"]): r for r in env.admin_list("distributors", "distributors")}
    for view in views:
        row = rows.get(view.id)
        if view.vrrp_role == "MASTER" and row and row.get("lb_network_ip"):
            return Distributor(DistributorRef(view.id, str(row["lb_network_ip"])),
                               env.lab.instance_ns(view.id, "distributor"))
    return None
