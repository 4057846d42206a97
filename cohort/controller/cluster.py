"""ACTIVE_ACTIVE: the shared distributor, VIP plugging and amphora registration with stable positions.

Positions are recorded per load balancer and never reused while an amphora holds one, so the
distributor's (deterministic) table changes only where the membership changed. Scale-in drains
first: the leaving amphora gets no new flows, keeps its open ones until they end or the drain
timeout passes, and only then is unregistered and deleted.
"""

from __future__ import annotations

import logging
import time

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from cohort import datamodel as d
from cohort.controller import desired
from cohort.controller.amphorae import SCALED_IN
from cohort.controller.wiring import Drivers
from cohort.db import models as m
from cohort.db.session import transaction
from cohort.drivers.distributor.base import ClusterMember, DistributorRef, DistributorVip
from cohort.drivers.errors import DriverError
from cohort.drivers.network.base import VipPort

log = logging.getLogger(__name__)

SHARED_PROJECT = ""  # distributor ports serve every tenant (see the local network driver)



class ClusterManager:
    def __init__(self, sessions: sessionmaker[Session], drivers: Drivers, drain_timeout: float) -> None:
        self.sessions = sessions
        self.drivers = drivers
        self.drain_timeout = drain_timeout

    # The distributor ---------------------------------------------------------------------------

    def ensure_distributor(self, distributor_type: str) -> DistributorRef:
        """The one shared distributor of this type, built on first use (idempotently).

        Controllers sharing a database may race to create it: the unique index on live names
        (migration 0006) lets one insert win, and the others use its row.
        """
        for _attempt in range(3):
            try:
                with transaction(self.sessions) as session:
                    row = session.scalar(select(m.Distributor).where(
                        m.Distributor.distributor_type == distributor_type, m.Distributor.status != "DELETED"))
                    if row is None:
                        row = m.Distributor(name=f"distributor-{distributor_type.lower()}",
                                            distributor_type=distributor_type, status="PENDING_CREATE")
                        session.add(row)
                        session.flush()
                    ident, compute_id, address = row.id, row.compute_id, row.lb_network_ip
                    failed = row.status == "ERROR"
                break
            except IntegrityError:
                continue  # another controller created it first: use that one
        else:
            raise DriverError(f"could not create or find the {distributor_type} distributor")
        if failed and compute_id is not None:
            # A dead distributor is rebuilt from scratch; its tables are deterministic, so the
            # replacement sends each flow where the old one did.
            self.drivers.network.unplug_all(compute_id)
            self.drivers.compute.delete(compute_id)
            compute_id = None
        if compute_id is None or address is None or self.drivers.compute.status(compute_id) != "ACTIVE":
            instance = self.drivers.compute.build(ident, "distributor", {})
            with transaction(self.sessions) as session:
                row = session.get(m.Distributor, ident)
                assert row is not None
                row.compute_id, row.lb_network_ip, row.status = instance.compute_id, instance.lb_network_ip, "BOOTING"
                # The old instance's last heartbeat says nothing about this one: its silence counts anew.
                health = session.get(m.DistributorHealth, ident)
                if health is not None:
                    session.delete(health)
            compute_id, address = instance.compute_id, instance.lb_network_ip
        ref = DistributorRef(id=ident, lb_network_ip=address)
        self.drivers.distributor.wait_ready(ref, 60.0)
        with transaction(self.sessions) as session:
            row = session.get(m.Distributor, ident)
            assert row is not None
            row.status = "ACTIVE"
        return ref

    def plug_vip(self, ref: DistributorRef, lb: d.LoadBalancer, vip: VipPort) -> None:
        with self.sessions() as session:
            row = session.get(m.Distributor, ref.id)
            assert row is not None and row.compute_id is not None
            compute_id = row.compute_id
        port = self.drivers.network.plug_port(compute_id, vip.subnet_id, SHARED_PROJECT)
        self.drivers.distributor.add_vip(ref, DistributorVip(
            lb_id=lb.id, vip_address=vip.address, port=port, affinity=lb.topology.distributor_affinity))
        with transaction(self.sessions) as session:
            row = session.get(m.Distributor, ref.id)
            assert row is not None
            if port.port_id not in (row.vip_port_ids or []):
                row.vip_port_ids = [*(row.vip_port_ids or []), port.port_id]
            cluster = session.scalar(select(m.AmphoraCluster).where(m.AmphoraCluster.load_balancer_id == lb.id))
            if cluster is not None:
                cluster.distributor_id = ref.id

    # Registration ------------------------------------------------------------------------------

    def register(self, ref: DistributorRef, lb_id: str, active: list[str], draining: list[str]) -> None:
        """Record positions (stable; new amphorae take the lowest free one) and push the membership."""
        wanted = {**dict.fromkeys(draining, "DRAINING"), **dict.fromkeys(active, "ACTIVE")}
        with transaction(self.sessions) as session:
            rows = {r.amphora_id: r for r in session.scalars(select(m.AmphoraRegistration).where(
                m.AmphoraRegistration.load_balancer_id == lb_id))}
            for amphora_id, row in list(rows.items()):
                if amphora_id not in wanted:
                    session.delete(row)
                    del rows[amphora_id]
            session.flush()
            taken = {r.position for r in rows.values()}
            for amphora_id, state in wanted.items():
                registration = rows.get(amphora_id)
                if registration is None:
                    position = next(p for p in range(len(taken) + len(wanted) + 1) if p not in taken)
                    taken.add(position)
                    registration = m.AmphoraRegistration(load_balancer_id=lb_id, amphora_id=amphora_id,
                                                         distributor_id=ref.id, position=position)
                    session.add(registration)
                registration.state = state
            session.flush()
            members = []
            for row in session.scalars(select(m.AmphoraRegistration).where(
                    m.AmphoraRegistration.load_balancer_id == lb_id).order_by(m.AmphoraRegistration.position)):
                amphora = session.get(m.Amphora, row.amphora_id)
                if amphora is None or not amphora.frontend_ip or not amphora.frontend_mac:
                    continue
                members.append(ClusterMember(amphora_id=amphora.id, mac_address=amphora.frontend_mac,
                                             frontend_ip=amphora.frontend_ip, position=row.position,
                                             weight=row.weight, state=row.state))
        self.drivers.distributor.set_amphorae(ref, lb_id, members)

    def drain(self, lb_id: str, amphora_ids: list[str]) -> None:
        """The distributor already sends them no new flows; now their HAProxy closes gracefully and the
        drain ends when it has no connection left, or when the drain timeout passes."""
        if not amphora_ids:
            return
        leaving = self._snapshots(amphora_ids)
        for amphora in leaving:
            try:
                self.drivers.amphora.drain(amphora, lb_id)
            except DriverError as exc:
                log.info("drain of amphora %s: %s", amphora.id, exc)
        deadline = time.monotonic() + self.drain_timeout
        pending = list(leaving)
        while pending and time.monotonic() < deadline:
            still = []
            for amphora in pending:
                try:
                    if not self.drivers.amphora.drained(amphora, lb_id):
                        still.append(amphora)
                except DriverError:
                    pass  # an amphora that no longer answers has nothing left to drain
            pending = still
            if pending:
                time.sleep(0.5)
        if pending:
            log.info("drain of %s on %s timed out after %.0fs", [a.id for a in pending], lb_id, self.drain_timeout)

    def _snapshots(self, amphora_ids: list[str]) -> list[d.Amphora]:
        with self.sessions() as session:
            rows = [session.get(m.Amphora, ident) for ident in amphora_ids]
            return [desired.amphora(row) for row in rows if row is not None]

    def remove_vip(self, lb_id: str) -> None:
        with self.sessions() as session:
            cluster = session.scalar(select(m.AmphoraCluster).where(m.AmphoraCluster.load_balancer_id == lb_id))
            distributor = session.get(m.Distributor, cluster.distributor_id) if cluster and \
                cluster.distributor_id else None
            ref = DistributorRef(distributor.id, distributor.lb_network_ip) if distributor and \
                distributor.lb_network_ip else None
        if ref is not None:
            self.drivers.distributor.remove_vip(ref, lb_id)
        with transaction(self.sessions) as session:
            for row in session.scalars(select(m.AmphoraRegistration).where(
                    m.AmphoraRegistration.load_balancer_id == lb_id)):
                session.delete(row)

    def leaving_by_scale_in(self, session: Session, lb_id: str) -> list[str]:
        """Amphorae that leave because the cluster shrinks (they drain; failed ones do not)."""
        rows = session.scalars(select(m.Amphora).where(
            m.Amphora.load_balancer_id == lb_id, m.Amphora.status == "PENDING_DELETE",
            m.Amphora.status_reason == SCALED_IN))
        return [row.id for row in rows]
