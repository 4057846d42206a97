"""The distributor agent's logic: VIPs, memberships, health and draining, turned into kernel plans.

One lock serialises every change; each change is saved (``StateStore``) before it is applied
(``DataPlane``, and keepalived for the VIP addresses), so a crash at any point is repaired by
the next agent re-applying the state. The VIP addresses themselves belong to keepalived
(``cohort.distributor.vrrp``): on the MASTER of the pair it holds them, so only that member
answers ARP; both members have every table applied. Bucket tables are Maglev tables over the
ACTIVE, healthy members (all ACTIVE ones when none is healthy: the probes are a hint, not the
authority on the cluster); DRAINING members keep their routes, hence their pinned flows, until
none is left or the drain timeout passes.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from cohort.agents.common.proc import CommandFailed
from cohort.agents.distributor.state import AgentState, MemberState, StateStore, VipState, VrrpSettings
from cohort.distributor import maglev, nft, vrrp
from cohort.distributor.probes import ProbeSettings, ProbeTarget

LOG = logging.getLogger(__name__)
COUNTERS_MAX_AGE = 1.0
# Counting pinned flows means listing every element of every flow map: hundreds of thousands
# under load, a JSON document whose parsing holds the interpreter for seconds, during which no
# heartbeat left and the controller replaced a healthy distributor. Heartbeats never count: they
# carry the flow counts of the last status request (the controller reads them from there, fresh,
# when it needs them: draining).
HEARTBEAT_FLOWS_MAX_AGE = math.inf
# The data plane is checked against the state on every link/route/rule event, after
# CONVERGE_SETTLE seconds (a burst of events is one check), and every CONVERGE_PERIOD seconds.
CONVERGE_SETTLE = 0.05
CONVERGE_PERIOD = 2.0
HEARTBEAT_LOCK_WAIT = 0.5  # seconds a heartbeat waits for the state before it repeats the last one
HEARTBEAT_BUDGET = 60_000  # bytes of JSON body; a heartbeat datagram must stay under 65000


class Kernel(Protocol):
    """What the service needs from the kernel (``DataPlane``; a recording fake in unit tests)."""

    def prepare(self) -> None: ...

    def find_interface(self, mac: str) -> str: ...

    def configure_interface(self, ifname: str, address: str, prefixlen: int) -> None: ...

    def addresses(self, ifname: str) -> set[str]:
        """The IPv4 addresses on ``ifname`` (keepalived's VIPs among them on the MASTER)."""
        ...

    def release_addresses(self, ifname: str, cidrs: Iterable[str]) -> None: ...

    def introduce(self, ifname: str, own: str, peer: str) -> bool:
        """Make ``peer`` learn this member's MAC (an ARP exchange); whether it answered."""
        ...

    def apply(
        self,
        plans: Sequence[nft.VipPlan],
        keep_keys: Iterable[str],
        managed_ifaces: Iterable[str],
        buckets_for: Iterable[str] | None,
    ) -> None: ...

    def apply_buckets(self, plan: nft.VipPlan) -> None: ...

    def drift(self, plans: Sequence[nft.VipPlan], keep_keys: Iterable[str], managed_ifaces: Iterable[str]) -> list[str]:
        """How the kernel differs from ``plans`` (empty: as ``apply`` left it)."""
        ...

    def counters(self, flows_of: Iterable[str] | None = None) -> dict[str, nft.VipCounters]:
        """Counters per VIP key, with the pinned flows of the keys in ``flows_of`` (None: of all)."""
        ...


class VrrpDaemon(Protocol):
    """keepalived as the service drives it (``KeepalivedManager``; a fake in unit tests)."""

    def put_config(self, text: str) -> bool: ...

    def running(self) -> bool: ...

    def reload(self) -> None:
        """Re-read the configuration keeping the VRRP state; start keepalived if it is not running."""
        ...

    def stop(self) -> None: ...


@dataclass(frozen=True)
class VipSpec:
    lb_id: str
    vip_address: str
    mac_address: str
    address: str
    subnet_cidr: str
    gateway: str | None
    affinity: str = "SOURCE_IP"
    health_port: int = 8008
    flow_timeout: int = 300
    drain_timeout: int = 300
    probe: ProbeSettings = ProbeSettings()
    vrrp: VrrpSettings | None = None  # None: keep what the port has (alone, if nothing)


@dataclass(frozen=True)
class MemberSpec:
    amphora_id: str
    mac_address: str
    frontend_ip: str
    position: int
    weight: int = 1
    state: str = "ACTIVE"


def plan_of(vip: VipState) -> nft.VipPlan:
    routed = sorted((m for m in vip.members.values() if not m.drained), key=lambda m: m.mark)
    eligible = [m for m in vip.members.values() if m.state == "ACTIVE" and m.weight > 0]
    healthy = [m for m in eligible if m.healthy]
    chosen = sorted(healthy or eligible, key=lambda m: (m.position, m.amphora_id))
    slots = maglev.build_table([(m.amphora_id, m.weight) for m in chosen], vip.table_size) if chosen else []
    return nft.VipPlan(
        lb_id=vip.lb_id,
        vip=vip.vip_address,
        ifname=vip.interface,
        own_address=vip.address,
        gateway=vip.gateway,
        reply_table=vip.reply_table,
        affinity=vip.affinity,
        forwards=tuple(nft.Forward(m.mark, m.frontend_ip, m.mac_address) for m in routed),
        buckets=tuple(chosen[i].mark for i in slots),
        flow_timeout=vip.flow_timeout,
    )


class DistributorService:
    def __init__(
        self,
        distributor_id: str,
        store: StateStore,
        dataplane: Kernel,
        keepalived: VrrpDaemon,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.distributor_id = distributor_id
        self.store = store
        self.dataplane = dataplane
        self.keepalived = keepalived
        self.clock = clock
        self.state: AgentState = store.load()
        self.on_change: Callable[[], None] = lambda: None  # the prober's wake()
        self._lock = threading.RLock()
        self._counters: tuple[float, dict[str, nft.VipCounters]] = (float("-inf"), {})
        self._flows: tuple[float, dict[str, dict[int, int]]] = (float("-inf"), {})
        self.monotonic: Callable[[], float] = time.monotonic  # the counters' ages (replaced in tests)
        self._heartbeat_offset = 0
        self._last_heartbeat: dict[str, Any] | None = None
        self._drift_wake = threading.Event()
        self._drift_failed = ""  # the last failure to re-apply, said once
        self._stubborn: list[str] = []  # a drift re-applying did not cure: not re-applied again
        # (lb_id, amphora_id) -> when the probes found it down (monotonic): reported as "down_for", so
        # the controller counts its unreachability from then, not from the heartbeat that carried it.
        self._down_since: dict[tuple[str, str], float] = {}

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Re-apply the saved state (a restart): same marks, same tables, flows untouched."""
        with self._lock:
            self.dataplane.prepare()
            for vip in self.state.vips.values():
                try:
                    vip.interface = self.dataplane.find_interface(vip.mac_address)
                    self.dataplane.configure_interface(vip.interface, vip.address, vip.prefixlen)
                except (LookupError, OSError) as e:
                    LOG.error("load balancer %s: interface %s not usable: %s", vip.lb_id, vip.mac_address, e)
                    vip.interface = ""
            self.store.save(self.state)
            self._apply(buckets_for=None)
            self._sync_vrrp()  # adopts a keepalived its predecessor left running
            LOG.info("re-applied %d VIPs", len(self.state.vips))

    def _apply(
        self, buckets_for: Iterable[str] | None, dropping: VipState | None = None, left: str = ""
    ) -> None:
        """Apply every VIP but ``dropping``; ``left`` names an interface a VIP just moved away from."""
        vips = [v for v in self.state.vips.values() if v is not dropping]
        plans = [plan_of(v) for v in vips if v.interface]
        keep = {nft.object_key(v.lb_id) for v in vips}
        # Interfaces whose stale permanent neighbours may be removed: ours, including one being left.
        managed = {v.interface for v in self.state.vips.values() if v.interface} | ({left} if left else set())
        self.dataplane.apply(plans, keep, managed, buckets_for)

    def converge(self) -> list[str]:
        """Re-apply the state if the kernel drifted from it, and say how it had (empty: it had not).

        A link that goes down takes its routes and permanent neighbours with it, and nothing
        puts them back when it comes up again; someone may flush a table or delete our nft table.
        Missing nft objects refill every bucket map; otherwise the maps, which only the agent
        writes, are left alone (the pins in the flow maps always are).
        """
        with self._lock:
            vips = [v for v in self.state.vips.values() if v.interface]
            plans = [plan_of(v) for v in vips]
            args = (plans, {p.key for p in plans}, {v.interface for v in vips})
            drift = self.dataplane.drift(*args)
            if not drift or drift == self._stubborn:
                self._drift_failed = ""
                return drift
            self._stubborn = []
            said = "; ".join(drift[:4]) + (f" and {len(drift) - 4} more" if len(drift) > 4 else "")
            try:
                self._apply(buckets_for=None if any(d.startswith("nft ") for d in drift) else ())
            except CommandFailed as e:  # a link still down refuses routes through it: the next event retries
                if str(e) != self._drift_failed:
                    LOG.warning("data plane drifted (%s); re-applying failed: %s", said, e)
                self._drift_failed = str(e)
                return drift
            self._drift_failed = ""
            LOG.warning("data plane drifted from the state (%s): re-applied", said)
            # What re-applying does not fix, re-applying again will not: never a loop of applies
            # (each makes route events), until the difference changes.
            if (left := self.dataplane.drift(*args)) == drift:
                LOG.error("the kernel still differs from the state after re-applying it: %s", said)
                self._stubborn = left
            return drift

    def drifted(self) -> None:
        """Something in the kernel changed (``DataPlane.watch``): check it soon."""
        self._drift_wake.set()

    def run_converge(self, stop: threading.Event, period: float = CONVERGE_PERIOD) -> None:
        """``converge`` on every kernel event (coalesced over ``CONVERGE_SETTLE``), and every ``period``
        seconds whatever happens: neighbours and nft are not watched (ARP churns neighbour events)."""
        while not stop.is_set():
            self._drift_wake.wait(period)
            if stop.wait(CONVERGE_SETTLE):
                return
            self._drift_wake.clear()
            try:
                self.converge()
            except Exception:
                LOG.exception("converge failed")

    # --- VIPs ----------------------------------------------------------------------------------

    def plug_vip(self, spec: VipSpec) -> str:
        with self._lock:
            ifname = self.dataplane.find_interface(spec.mac_address)
            old = self.state.vips.get(spec.lb_id)
            vip = VipState(
                lb_id=spec.lb_id,
                vip_address=spec.vip_address,
                mac_address=spec.mac_address,
                address=spec.address,
                subnet_cidr=spec.subnet_cidr,
                gateway=spec.gateway,
                affinity=spec.affinity,
                health_port=spec.health_port,
                reply_table=old.reply_table if old else self.state.allocate_id(),
                table_size=old.table_size if old else maglev.table_size(1),
                interface=ifname,
                flow_timeout=spec.flow_timeout,
                drain_timeout=spec.drain_timeout,
                probe=spec.probe,
                members=old.members if old else {},
            )
            old_vrrp = self.state.vrrp.get(spec.mac_address)
            if old == vip and (spec.vrrp is None or spec.vrrp == old_vrrp):
                # Every pass of the controller plugs the VIP again: as it stands, there is nothing to
                # redo (re-rendering and re-checking keepalived's configuration and re-applying every
                # table cost a failover's pass about a second under load); kernel drift is the
                # converger's, a dead keepalived is started again.
                if not self.keepalived.running():
                    self._sync_vrrp()
                return ifname
            if old is not None:
                kept = {spec.vip_address, spec.address} if old.interface == ifname else set()
                self._release_addresses(old, kept)
            self.state.vips[spec.lb_id] = vip
            if spec.vrrp is not None:
                self.state.vrrp[spec.mac_address] = spec.vrrp
            try:
                self._vrrp_config(every_vip=True)  # what keepalived refuses is refused before anything is saved
            except ValueError:
                self._restore(spec, old, old_vrrp)
                raise
            self.store.save(self.state)
            self.dataplane.configure_interface(ifname, spec.address, vip.prefixlen)
            self._apply(buckets_for={spec.lb_id}, left=old.interface if old and old.interface != ifname else "")
            # Tables first, then the address: a member that becomes MASTER forwards at once.
            self._sync_vrrp()
        self.on_change()
        return ifname

    def _restore(self, spec: VipSpec, old: VipState | None, old_vrrp: VrrpSettings | None) -> None:
        if old is None:
            self.state.vips.pop(spec.lb_id, None)
        else:
            self.state.vips[spec.lb_id] = old
        if old_vrrp is None:
            self.state.vrrp.pop(spec.mac_address, None)
        else:
            self.state.vrrp[spec.mac_address] = old_vrrp

    def _release_addresses(self, vip: VipState, kept: set[str] | None = None) -> None:
        """Remove the VIP's addresses from its interface, but those in ``kept`` or used by another VIP."""
        if not vip.interface:
            return
        others = [v for v in self.state.vips.values() if v.lb_id != vip.lb_id and v.interface == vip.interface]
        in_use = {v.vip_address for v in others} | {v.address for v in others} | (kept or set())
        cidrs = [f"{vip.vip_address}/32"] if vip.vip_address not in in_use else []
        if vip.address not in in_use:
            cidrs.append(f"{vip.address}/{vip.prefixlen}")
        if cidrs:
            self.dataplane.release_addresses(vip.interface, cidrs)

    def unplug_vip(self, lb_id: str) -> None:
        with self._lock:
            vip = self.state.vips.get(lb_id)
            if vip is None:
                return
            # Kernel first: a crash before the save leaves the VIP recorded, and a retry finishes it.
            self._apply(buckets_for=(), dropping=vip)
            del self.state.vips[lb_id]
            if not any(v.mac_address == vip.mac_address for v in self.state.vips.values()):
                self.state.vrrp.pop(vip.mac_address, None)
            self._sync_vrrp()
            self._release_addresses(vip)
            self.store.save(self.state)
        self.on_change()

    def set_members(self, lb_id: str, specs: list[MemberSpec]) -> None:
        with self._lock:
            vip = self.state.vips.get(lb_id)
            if vip is None:
                raise LookupError(f"no VIP for load balancer {lb_id}")
            net = ipaddress.ip_network(vip.subnet_cidr)
            now = self.clock()
            members: dict[str, MemberState] = {}
            for s in specs:
                if ipaddress.ip_address(s.frontend_ip) not in net:
                    raise ValueError(f"amphora {s.amphora_id}: {s.frontend_ip} is not in {net}")
                old = vip.members.get(s.amphora_id)
                was_draining = old is not None and old.state == "DRAINING"
                draining = s.state == "DRAINING"
                members[s.amphora_id] = MemberState(
                    amphora_id=s.amphora_id,
                    mac_address=s.mac_address,
                    frontend_ip=s.frontend_ip,
                    position=s.position,
                    weight=s.weight,
                    state=s.state,
                    mark=old.mark if old else self.state.allocate_id(),
                    healthy=old.healthy if old else True,
                    drain_since=(old.drain_since if was_draining and old else now) if draining else None,
                    drained=bool(old and old.drained and was_draining and draining),
                )
            vip.members = members
            active = sum(1 for m in members.values() if m.state == "ACTIVE")
            # Grow, never shrink: a new size reshuffles the whole table.
            vip.table_size = max(vip.table_size, maglev.table_size(active))
            self.store.save(self.state)
            self._apply(buckets_for={lb_id})
            self._sync_vrrp()  # a VIP's first members let keepalived hold it; tables are in place by now
        self.on_change()

    # --- health and draining -------------------------------------------------------------------

    def probe_targets(self) -> list[ProbeTarget]:
        with self._lock:
            return [
                ProbeTarget(
                    key=(v.lb_id, m.amphora_id),
                    address=m.frontend_ip,
                    port=v.health_port,
                    device=v.interface or None,
                    healthy=m.healthy,
                    settings=v.probe,
                )
                for v in self.state.vips.values()
                for m in v.members.values()
                if not m.drained
            ]

    def on_health(self, changes: dict[Hashable, bool]) -> None:
        with self._lock:
            touched = set()
            for key, ok in changes.items():
                assert isinstance(key, tuple)
                lb_id, amphora_id = key
                vip = self.state.vips.get(lb_id)
                member = vip.members.get(amphora_id) if vip else None
                if vip is None or member is None or member.healthy == ok:
                    continue
                member.healthy = ok
                if ok:
                    self._down_since.pop((lb_id, amphora_id), None)
                else:
                    self._down_since[(lb_id, amphora_id)] = self.monotonic()
                touched.add(lb_id)
                LOG.warning("load balancer %s: amphora %s is %s", lb_id, amphora_id, "UP" if ok else "DOWN")
            if not touched:
                return
            for lb_id in touched:  # traffic first: the durable write (an fsync) can wait
                vip = self.state.vips[lb_id]
                if vip.interface:
                    self.dataplane.apply_buckets(plan_of(vip))
            self.store.save(self.state)

    def housekeeping(self) -> None:
        """Withdraw the routes of DRAINING members whose pinned flows are gone (or that timed out)."""
        with self._lock:
            draining = [nft.object_key(v.lb_id) for v in self.state.vips.values()
                        if any(m.state == "DRAINING" and not m.drained for m in v.members.values())]
        if not draining:
            return
        counters = self.dataplane.counters(flows_of=draining)
        with self._lock:
            now, changed = self.clock(), False
            for vip in self.state.vips.values():
                flows = counters.get(nft.object_key(vip.lb_id), nft.VipCounters()).flows
                for m in vip.members.values():
                    if m.state != "DRAINING" or m.drained:
                        continue
                    since = m.drain_since if m.drain_since is not None else now
                    if flows.get(m.mark, 0) == 0 or now - since >= vip.drain_timeout:
                        m.drained = True
                        changed = True
                        LOG.info("load balancer %s: amphora %s drained", vip.lb_id, m.amphora_id)
            if changed:
                self.store.save(self.state)
                self._apply(buckets_for=())

    def run_housekeeping(self, stop: threading.Event, period: float = 1.0) -> None:
        while not stop.wait(period):
            for task in (self.housekeeping, self.watch_vrrp):
                try:
                    task()
                except Exception:
                    LOG.exception("%s failed", task.__name__)

    # --- VRRP: which member of the pair holds the VIPs -----------------------------------------

    def _vrrp_groups(self, every_vip: bool = False) -> list[vrrp.VrrpGroup]:
        """keepalived's groups: the VIPs this member may hold, those whose amphorae it knows. A VIP with
        no member yet is left out (``every_vip``: kept, to validate it): a member that became MASTER
        with it would answer the VIP itself, with resets, where it should forward (measured: a
        joining member took the VIPs before its tables came, and reset 24 of 24 open connections)."""
        by_port: dict[str, list[VipState]] = {}
        for vip in self.state.vips.values():
            if vip.interface and (every_vip or vip.members):
                by_port.setdefault(vip.mac_address, []).append(vip)
        groups = []
        for mac, vips in by_port.items():
            settings = self.state.vrrp.get(mac, VrrpSettings())
            groups.append(vrrp.VrrpGroup(
                interface=vips[0].interface, own_address=vips[0].address, peer=settings.peer,
                vips=tuple(v.vip_address for v in vips), vrid=settings.vrid, advert_int=settings.advert_int))
        return groups

    def _vrrp_config(self, every_vip: bool = False) -> str | None:
        groups = self._vrrp_groups(every_vip)
        return vrrp.render_keepalived(self.distributor_id, groups) if groups else None

    def _sync_vrrp(self) -> None:
        """Make keepalived hold (on the MASTER) exactly the VIPs of the state; stopped when there are none."""
        text = self._vrrp_config()
        if text is None:
            self.keepalived.stop()  # it removes the addresses it held
            return
        changed = self.keepalived.put_config(text)
        if not self.keepalived.running():
            # A keepalived that died left its addresses behind; one that starts is BACKUP until it
            # hears no MASTER, so it must not answer ARP for them meanwhile.
            self._release_vips()
            self._introduce_to_peers()
            self.keepalived.reload()
        elif changed:
            self.keepalived.reload()

    def _introduce_to_peers(self) -> None:
        """Before keepalived starts: have each peer learn our MAC. A replacement often takes the address
        of the member it replaces, whose neighbour entry the MASTER holds as FAILED; until the MASTER
        resolves it again its advertisements do not reach us, and after three intervals we would take
        the VIPs from it (measured: the gateway sent the VIP's traffic to a joining member for 1 s)."""
        for group in self._vrrp_groups():
            if group.peer is not None and not self.dataplane.introduce(group.interface, group.own_address, group.peer):
                LOG.warning("VRRP peer %s does not answer ARP on %s: starting keepalived anyway", group.peer,
                            group.interface)

    def _release_vips(self) -> None:
        for vip in self.state.vips.values():
            if vip.interface and vip.vip_address in self.dataplane.addresses(vip.interface):
                self.dataplane.release_addresses(vip.interface, [f"{vip.vip_address}/32"])

    def watch_vrrp(self) -> None:
        """Restart a keepalived that died (the peer holds the VIPs meanwhile, if it lives)."""
        with self._lock:
            if self._vrrp_groups() and not self.keepalived.running():
                LOG.warning("keepalived is not running: starting it again")
                self._sync_vrrp()

    def vrrp_roles(self) -> dict[str, str]:
        """Per interface: MASTER (it holds the VIPs), BACKUP, or FAULT (keepalived is not running).

        The state is held only to copy the groups: the kernel is asked without it, so a probe
        verdict never waits behind a status or heartbeat reading addresses (``ip`` under load).
        """
        with self._lock:
            groups = self._vrrp_groups()
        return self._roles_of(groups)

    def _roles_of(self, groups: list[vrrp.VrrpGroup]) -> dict[str, str]:
        if not groups:
            return {}
        if not self.keepalived.running():
            return {g.interface: "FAULT" for g in groups}
        roles = {}
        for g in groups:
            held = set(g.vips) & self.dataplane.addresses(g.interface)
            roles[g.interface] = "MASTER" if held else "BACKUP"
        return roles

    # --- reporting -----------------------------------------------------------------------------

    def counters(self, max_age: float = COUNTERS_MAX_AGE,
                 flows_max_age: float = COUNTERS_MAX_AGE) -> dict[str, nft.VipCounters]:
        """Counters at most ``max_age`` seconds old, with flow counts at most ``flows_max_age`` old."""
        now = self.monotonic()
        if now - self._flows[0] > flows_max_age:
            data = self.dataplane.counters(flows_of=None)
            self._counters = (now, data)
            self._flows = (now, {key: c.flows for key, c in data.items()})
        elif now - self._counters[0] > max_age:
            self._counters = (now, self.dataplane.counters(flows_of=()))
        flows = self._flows[1]
        return {key: dataclasses.replace(c, flows=flows.get(key, {})) for key, c in self._counters[1].items()}

    def status(self, max_age: float = COUNTERS_MAX_AGE, flows_max_age: float | None = None) -> dict[str, Any]:
        counters = self.counters(max_age, max_age if flows_max_age is None else flows_max_age)
        return self._status(counters, self.vrrp_roles())

    def _status(self, counters: dict[str, nft.VipCounters], roles: dict[str, str]) -> dict[str, Any]:
        """The state with what the kernel was found to hold (read before, without the state's lock)."""
        with self._lock:
            vips = {}
            for vip in self.state.vips.values():
                c = counters.get(nft.object_key(vip.lb_id), nft.VipCounters())
                plan = plan_of(vip)
                members = {
                    m.amphora_id: {
                        "healthy": m.healthy,
                        "state": m.state,
                        "drained": m.drained,
                        "weight": m.weight,
                        "position": m.position,
                        "frontend_ip": m.frontend_ip,
                        "mark": m.mark,
                        "flows": c.flows.get(m.mark, 0),
                        "buckets": plan.buckets.count(m.mark),
                        **self._down_for(vip.lb_id, m.amphora_id, m.healthy),
                    }
                    for m in vip.members.values()
                }
                vips[vip.lb_id] = {
                    "vip_address": vip.vip_address,
                    "interface": vip.interface,
                    "affinity": vip.affinity,
                    "health_port": vip.health_port,
                    "table_size": vip.table_size,
                    "members": members,
                    "stats": {
                        "packets_in": c.packets,
                        "bytes_in": c.bytes,
                        "connections": c.connections,
                        "flows": sum(c.flows.values()),
                    },
                }
            return {"id": self.distributor_id, "vips": vips,
                    "vrrp": {"role": _pair_role(roles), "interfaces": roles}}

    def _down_for(self, lb_id: str, amphora_id: str, healthy: bool) -> dict[str, float]:
        """``{"down_for": seconds}`` for a member the probes found down while this agent ran."""
        since = None if healthy else self._down_since.get((lb_id, amphora_id))
        return {} if since is None else {"down_for": round(max(0.0, self.monotonic() - since), 2)}

    def heartbeat_body(self, budget: int = HEARTBEAT_BUDGET) -> dict[str, Any]:
        """``{"distributor": true, "vips": {lb_id: {"members": {id: {healthy, flows, drained[, down_for]}},
        "stats"}}}``.

        A datagram holds ~150 VIPs; beyond ``budget`` bytes each heartbeat carries the next
        slice of VIPs (``"partial": true``, ``"vips_total"``), so every VIP is reported in turn
        and a distributor with many load balancers never falls silent.
        """
        # Liveness must not wait behind a slow change (an nft or keepalived step under load): the
        # controllers fail a distributor over after distributor_stale_after (3 s) of silence. When
        # the state is busy, the last body goes again; its verdicts were true a moment ago.
        # The kernel is read first, without the lock: the probes' verdicts take it to rewrite bucket
        # maps, and must not wait behind an nft listing or an address check of a busy machine.
        if not self._hold_for_heartbeat():
            return self._last_heartbeat_again()
        try:
            groups = self._vrrp_groups()
        finally:
            self._lock.release()
        counters = self.counters(COUNTERS_MAX_AGE, HEARTBEAT_FLOWS_MAX_AGE)
        roles = self._roles_of(groups)
        if not self._hold_for_heartbeat():
            return self._last_heartbeat_again()
        try:
            body = self._heartbeat_body(budget, self._status(counters, roles))
        finally:
            self._lock.release()
        self._last_heartbeat = body
        return body

    def _hold_for_heartbeat(self) -> bool:
        """Take the state's lock, or give up after HEARTBEAT_LOCK_WAIT if a last body can go again."""
        if self._lock.acquire(timeout=HEARTBEAT_LOCK_WAIT):
            return True
        if self._last_heartbeat is not None:
            return False
        self._lock.acquire()
        return True

    def _last_heartbeat_again(self) -> dict[str, Any]:
        assert self._last_heartbeat is not None
        LOG.warning("state busy for %.1fs: the heartbeat repeats the last one", HEARTBEAT_LOCK_WAIT)
        return self._last_heartbeat

    def _heartbeat_body(self, budget: int, status: dict[str, Any]) -> dict[str, Any]:
        vips = status["vips"]
        slim = {
            lb_id: {
                "members": {
                    aid: {k: m[k] for k in ("healthy", "flows", "drained", "down_for") if k in m}
                    for aid, m in v["members"].items()
                },
                "stats": v["stats"],
            }
            for lb_id, v in vips.items()
        }
        body: dict[str, Any] = {"ver": 1, "distributor": True, "role": status["vrrp"]["role"], "vips": slim}
        if len(json.dumps(body)) <= budget:
            return body
        items = sorted(slim.items())
        start = self._heartbeat_offset % len(items)
        chosen: dict[str, Any] = {}
        size = len(json.dumps({**body, "vips": {}, "partial": True, "vips_total": len(items)}))
        for lb_id, v in items[start:] + items[:start]:
            size += len(json.dumps({lb_id: v}))
            if size > budget and chosen:
                break
            chosen[lb_id] = v
        self._heartbeat_offset = start + len(chosen)
        return {**body, "vips": chosen, "partial": True, "vips_total": len(items)}


def _pair_role(roles: dict[str, str]) -> str | None:
    """One role for the member from its per-interface ones: MASTER if it holds VIPs anywhere."""
    for role in ("MASTER", "FAULT", "BACKUP"):
        if role in roles.values():
            return role
    return None
