"""ACTIVE_ACTIVE: VIP plugging into the distributor pair and amphora registration with stable positions.

Positions are recorded per load balancer and never reused while an amphora holds one, so the
distributor's (deterministic) table changes only where the membership changed. Scale-in drains
first: the leaving amphora gets no new flows, keeps its open ones until they end or the drain
timeout passes, and only then is unregistered and deleted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from cohort import datamodel as d
from cohort.controller import desired, fanout
from cohort.controller.amphorae import SCALED_IN
from cohort.controller.distributors import DistributorPair
from cohort.controller.wiring import Drivers
from cohort.db import models as m
from cohort.db.session import transaction
from cohort.distributor.vrrp import DEFAULT_ADVERT_INT
from cohort.drivers.distributor.base import ClusterMember, DistributorRef, DistributorVip, VrrpPeer
from cohort.drivers.errors import DriverError
from cohort.drivers.network.base import VipPort

log = logging.getLogger(__name__)

SHARED_PROJECT = ""  # distributor ports serve every tenant (see the local network driver)


def peers_of(amphora: d.Amphora, cluster: Sequence[d.Amphora]) -> list[d.Amphora]:
    """The amphorae ``amphora`` copies the packets of flows it does not own to (the second chance, L2
    and L3): the others of ``cluster`` that have a front-end address. ``cluster`` includes the
    amphorae leaving by scale-in: they own their open flows until they have drained."""
    return [peer for peer in cluster if peer.id != amphora.id and peer.vrrp_ip and peer.vrrp_ip != amphora.vrrp_ip]


class ClusterManager:
    def __init__(self, sessions: sessionmaker[Session], drivers: Drivers, drain_timeout: float,
                 advert_int: float = DEFAULT_ADVERT_INT) -> None:
        self.sessions = sessions
        self.drivers = drivers
        self.drain_timeout = drain_timeout
        self.advert_int = advert_int
        self.pair = DistributorPair(sessions, drivers)

    # The distributor pair ----------------------------------------------------------------------

    def ensure_pair(self, distributor_type: str) -> list[DistributorRef]:
        """The two distributors of this type (``DistributorPair``), oldest first."""
        return self.pair.ensure(distributor_type)

    def plug_vip(self, refs: list[DistributorRef], lb: d.LoadBalancer, vip: VipPort) -> None:
        """Plug the VIP into every member, each told the other's address on the VIP's network.

        Members are told oldest first: a replacement's keepalived starts (and waits to hear a
        MASTER) only after the member holding the VIPs advertises to its new address.
        """
        with self.sessions() as session:
            compute_ids = []
            for ref in refs:
                row = session.get(m.Distributor, ref.id)
                assert row is not None and row.compute_id is not None
                compute_ids.append(row.compute_id)
        ports = [self.drivers.network.plug_port(c, vip.subnet_id, SHARED_PROJECT) for c in compute_ids]
        for index, (ref, port) in enumerate(zip(refs, ports, strict=True)):
            peers = [p.address for i, p in enumerate(ports) if i != index]
            self.drivers.distributor.add_vip(ref, DistributorVip(
                lb_id=lb.id, vip_address=vip.address, port=port, affinity=lb.topology.distributor_affinity,
                vrrp=VrrpPeer(peer=peers[0] if peers else None, advert_int=self.advert_int)))
        with transaction(self.sessions) as session:
            for ref, port in zip(refs, ports, strict=True):
                row = session.get(m.Distributor, ref.id)
                assert row is not None
                if port.port_id not in (row.vip_port_ids or []):
                    row.vip_port_ids = [*(row.vip_port_ids or []), port.port_id]
            cluster = session.scalar(select(m.AmphoraCluster).where(m.AmphoraCluster.load_balancer_id == lb.id))
            if cluster is not None:
                cluster.distributor_id = refs[0].id

    # Registration ------------------------------------------------------------------------------

    def register(self, refs: list[DistributorRef], lb_id: str, active: list[str], draining: list[str]) -> None:
        """Record positions (stable; new amphorae take the lowest free one) and push the membership to
        every member of the pair: their tables, derived from the positions, are the same."""
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
                                                         distributor_id=refs[0].id, position=position)
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
        fanout.each(refs, lambda ref: self.drivers.distributor.set_amphorae(ref, lb_id, members), "register")

    def share_peers(self, lb_id: str, vip: str, serving: list[str], leaving: list[str]) -> None:
        """Tell every amphora of an L2 cluster the others (``peers_of``), for the second chance: a
        distributor that takes the VIPs over has no flow pins and sends some flows to an amphora
        that never saw them. Done before the distributors' table changes, so every amphora knows a
        newcomer before flows move. A leaving amphora that no longer answers is only logged."""
        staying, going = self.snapshots(serving), self.snapshots(leaving)

        def share(amphora: d.Amphora) -> None:
            try:
                self.drivers.amphora.set_cluster_peers(amphora, vip, lb_id, peers_of(amphora, staying + going))
            except DriverError as exc:
                if amphora in staying:
                    raise
                log.info("cluster peers of leaving amphora %s: %s", amphora.id, exc)

        fanout.each(staying + going, share, "share-peers")

    def drain(self, lb_id: str, amphora_ids: list[str]) -> None:
        """The distributor already sends them no new flows; now their HAProxy closes gracefully and the
        drain ends when it has no connection left, or when the drain timeout passes."""
        if not amphora_ids:
            return
        leaving = self.snapshots(amphora_ids)
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

    def snapshots(self, amphora_ids: list[str]) -> list[d.Amphora]:
        with self.sessions() as session:
            rows = [session.get(m.Amphora, ident) for ident in amphora_ids]
            return [desired.amphora(row) for row in rows if row is not None]

    def remove_vip(self, lb_id: str) -> None:
        with self.sessions() as session:
            cluster = session.scalar(select(m.AmphoraCluster).where(m.AmphoraCluster.load_balancer_id == lb_id))
            rows = self.pair.live(session, cluster.cluster_type) if cluster is not None else []
            refs = [DistributorRef(row.id, row.lb_network_ip) for row in rows if row.lb_network_ip]
        for ref in refs:
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
