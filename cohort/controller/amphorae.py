"""Bring a load balancer's amphorae to what its topology asks for, step by idempotent step.

Every step records its result in the database before the next one starts, and every driver
call is idempotent, so a controller killed at any point resumes where it stopped: an amphora
row is written before its compute instance is built (the instance is named after the row),
and a half-plugged amphora is simply plugged again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from cohort import datamodel as d
from cohort.controller import desired, fanout, spares
from cohort.controller.wiring import Drivers
from cohort.db import models as m
from cohort.db.session import transaction
from cohort.drivers.network.base import VipPort

log = logging.getLogger(__name__)

SCALED_IN = "scaled in: draining"
AGENT_READY_TIMEOUT = 60.0


@dataclass(frozen=True)
class Slot:
    role: str
    vrrp_priority: int | None = None


def wanted_slots(topology: d.Topology) -> list[Slot]:
    if topology.name == "ACTIVE_STANDBY":
        return [Slot("MASTER", 100), Slot("BACKUP", 90)]
    if topology.name == "ACTIVE_ACTIVE":
        return [Slot("IN_CLUSTER")] * topology.amp_cluster_size
    return [Slot("STANDALONE")]


def promote_survivor(keep: list[m.Amphora], slots: list[Slot]) -> None:
    """ACTIVE_STANDBY: when the MASTER is being replaced, its surviving BACKUP becomes the MASTER.

    The BACKUP's keepalived already holds (or is about to take) the VIP; the replacement joins as
    BACKUP, whose ``nopreempt`` keeps it from taking the VIP back. Rebuilt as MASTER it would
    preempt a working survivor moments after the takeover: a second outage for every open
    connection (Octavia fixed the same by never preempting). The roles stay true to who serves.
    """
    roles = {slot.role: slot for slot in slots}
    if set(roles) != {"MASTER", "BACKUP"} or any(row.role == "MASTER" for row in keep):
        return
    survivors = [row for row in keep if row.role == "BACKUP"]
    if survivors:
        survivors[0].role, survivors[0].vrrp_priority = "MASTER", roles["MASTER"].vrrp_priority


def vip_mode(topology: d.Topology) -> str:
    return {"ACTIVE_STANDBY": "keepalived", "ACTIVE_ACTIVE": "loopback"}.get(topology.name, "interface")


def vrrp_id_for(lb_id: str) -> int:
    return int(lb_id.replace("-", "")[:8], 16) % 255 + 1


class AmphoraManager:
    def __init__(self, sessions: sessionmaker[Session], drivers: Drivers,
                 progress: Callable[[str], None] | None = None) -> None:
        self.sessions = sessions
        self.drivers = drivers
        self.progress = progress or (lambda _message: None)

    def ensure_vip(self, lb_id: str) -> VipPort:
        with transaction(self.sessions) as session:
            lb = session.get(m.LoadBalancer, lb_id)
            assert lb is not None and lb.vip_subnet_id is not None
            vip = self.drivers.network.allocate_vip(lb.id, lb.vip_subnet_id, lb.vip_address)
            # An address or network the client gave stays as given (Octavia returns it as sent).
            lb.vip_address = lb.vip_address or vip.address
            lb.vip_port_id, lb.vip_network_id = vip.port_id, lb.vip_network_id or vip.network_id
            return vip

    def live_amphorae(self, session: Session, lb_id: str) -> list[m.Amphora]:
        return list(session.scalars(select(m.Amphora).where(
            m.Amphora.load_balancer_id == lb_id, m.Amphora.status != "DELETED").order_by(m.Amphora.created_at)))

    def plan(self, lb_id: str, topology: d.Topology) -> list[str]:
        """Create rows for missing amphorae (also replacements of failed ones); return the ids to serve."""
        with transaction(self.sessions) as session:
            rows = self.live_amphorae(session, lb_id)
            keep = [row for row in rows if row.status != "PENDING_DELETE"]
            lb = session.get(m.LoadBalancer, lb_id)
            assert lb is not None
            slots = wanted_slots(topology)
            promote_survivor(keep, slots)
            cluster = session.scalar(select(m.AmphoraCluster).where(m.AmphoraCluster.load_balancer_id == lb_id))
            for slot in slots:
                taken = [row for row in keep if row.role == slot.role]
                if len(taken) >= slots.count(slot):
                    continue
                fields = {"load_balancer_id": lb_id, "role": slot.role, "vrrp_priority": slot.vrrp_priority,
                          "vrrp_id": vrrp_id_for(lb_id) if slot.role in ("MASTER", "BACKUP") else None,
                          "cluster_id": cluster.id if cluster else None, "ha_ip": lb.vip_address}
                # A booted spare skips the boot; otherwise a new instance is built.
                row = spares.claim(session, topology.compute_flavor, fields)
                if row is None:
                    row = m.Amphora(status="PENDING_CREATE", compute_flavor=topology.compute_flavor, **fields)
                    session.add(row)
                keep.append(row)
            # Scale-in: the newest surplus amphorae of a role go first.
            for slot in {s.role: s for s in slots}.values():
                same = [row for row in keep if row.role == slot.role]
                for surplus in same[slots.count(slot):]:
                    surplus.status = "PENDING_DELETE"
                    surplus.status_reason = SCALED_IN
                    keep.remove(surplus)
            session.flush()
            return [row.id for row in keep]

    def build(self, amphora_id: str, lb: d.LoadBalancer, vip: VipPort) -> None:
        """Compute, agent, ports and addresses for one amphora; each step skipped once recorded."""
        with transaction(self.sessions) as session:
            row = session.get(m.Amphora, amphora_id)
            assert row is not None
            status, compute_id = row.status, row.compute_id
        if status == "PENDING_CREATE" or compute_id is None:
            self.progress(f"building amphora {amphora_id[:8]}")
            instance = self.drivers.compute.build(amphora_id, "amphora", lb.topology.compute_flavor)
            with transaction(self.sessions) as session:
                row = session.get(m.Amphora, amphora_id)
                assert row is not None
                row.compute_id, row.lb_network_ip, row.status = instance.compute_id, instance.lb_network_ip, "BOOTING"
                row.cert_expiration = self.drivers.cert_expiration(amphora_id)
        amp = self._snapshot(amphora_id)
        if status != "ALLOCATED":
            self.drivers.amphora.wait_ready(amp, AGENT_READY_TIMEOUT)
            port = self.drivers.network.plug_port(amp.compute_id or "", vip.subnet_id, lb.project_id)
            self.drivers.amphora.post_vip_plug(amp, port, vip.address, vip_mode(lb.topology))
            with transaction(self.sessions) as session:
                row = session.get(m.Amphora, amphora_id)
                assert row is not None
                row.vrrp_ip = row.frontend_ip = port.address
                row.vrrp_port_id = row.frontend_port_id = port.port_id
                row.frontend_mac = port.mac_address
                row.ha_ip, row.ha_port_id = vip.address, vip.port_id
                row.vrrp_interface = "fe0"
                row.status = "ALLOCATED"
                row.plugged_subnets = []
        self.plug_member_networks(amphora_id, lb)

    def plug_member_networks(self, amphora_id: str, lb: d.LoadBalancer) -> None:
        with transaction(self.sessions) as session:
            row = session.get(m.Amphora, amphora_id)
            assert row is not None
            plugged = set(row.plugged_subnets or [])
        missing = [s for s in desired.member_subnets(lb) if s not in plugged]
        if not missing:
            return
        amp = self._snapshot(amphora_id)
        for subnet_id in missing:
            port = self.drivers.network.plug_port(amp.compute_id or "", subnet_id, lb.project_id)
            self.drivers.amphora.post_network_plug(amp, port)
            plugged.add(subnet_id)
        with transaction(self.sessions) as session:
            row = session.get(m.Amphora, amphora_id)
            assert row is not None
            row.plugged_subnets = sorted(plugged)

    def _snapshot(self, amphora_id: str) -> d.Amphora:
        with self.sessions() as session:
            row = session.get(m.Amphora, amphora_id)
            assert row is not None
            return desired.amphora(row)

    def snapshots(self, ids: list[str]) -> list[d.Amphora]:
        return [self._snapshot(ident) for ident in ids]

    def configure(self, lb: d.LoadBalancer, ids: list[str], generation: int,
                  certificates: dict[str, bytes]) -> None:
        peers = self.snapshots(ids)

        def update(amp: d.Amphora) -> None:
            self.drivers.amphora.update(amp, lb, peers, certificates)
            with transaction(self.sessions) as session:
                row = session.get(m.Amphora, amp.id)
                assert row is not None
                row.applied_generation = generation

        with self.sessions() as session:
            applied = {amp.id: row.applied_generation if (row := session.get(m.Amphora, amp.id)) else 0
                       for amp in peers}
        pending = [amp for amp in peers if applied[amp.id] < generation]
        if lb.topology.name == "ACTIVE_STANDBY" and any(applied[amp.id] == 0 for amp in pending):
            # An amphora joins: oldest first (``ids`` is in creation order), so the survivor advertises
            # to the newcomer's address before the newcomer's keepalived starts listening; it hears a
            # MASTER and stays BACKUP instead of taking the VIP when its own timer runs out.
            for amp in pending:
                update(amp)
            return
        fanout.each(pending, update, "configure")

    def failed_instances(self, lb_id: str) -> list[tuple[str, str]]:
        """(amphora id, compute id) of the amphorae being replaced whose instance failed."""
        with self.sessions() as session:
            replaced = [(row.id, row.compute_id) for row in self.live_amphorae(session, lb_id)
                        if row.status == "PENDING_DELETE" and row.compute_id]
        return [(a, c) for a, c in replaced if self.drivers.compute.status(c) == "ERROR"]

    def stop_failed(self, failed: list[tuple[str, str]]) -> None:
        """Delete now, not once the replacement serves, the instances that failed: nothing of theirs
        serves any more, and what outlived the rest must not go on. In the chaos benchmark a dying
        agent had started its BGP speaker again; it announced the VIP for the dead HAProxy until the
        amphora was retired (95 and 260 connections refused over 1.3 and 3.9 s). Their ports stay
        until ``retire``: a distributor still lists the amphora until this pass registers the
        survivors, and a spare given its freed address would answer its probes."""
        fanout.each(failed, lambda amphora: self.drivers.compute.delete(amphora[1]), "stop-failed")

    def retire(self, lb_id: str, keep: list[str]) -> None:
        """Delete amphorae no longer wanted (replaced or scaled in); the survivors already serve."""
        with self.sessions() as session:
            doomed = [(row.id, row.compute_id) for row in self.live_amphorae(session, lb_id) if row.id not in keep]
        for amphora_id, compute_id in doomed:
            self.destroy(amphora_id, compute_id)

    def destroy(self, amphora_id: str, compute_id: str | None) -> None:
        if compute_id:
            self.drivers.destroy_instance(compute_id)
        with transaction(self.sessions) as session:
            row = session.get(m.Amphora, amphora_id)
            if row is not None:
                row.status = "DELETED"
            health = session.get(m.AmphoraHealth, amphora_id)
            if health is not None:
                session.delete(health)
            session.execute(delete(m.ListenerStatistics).where(m.ListenerStatistics.amphora_id == amphora_id))


def describe(exc: BaseException) -> str:
    text = str(exc) or exc.__class__.__name__
    return text if len(text) < 2000 else text[:1997] + "..."

