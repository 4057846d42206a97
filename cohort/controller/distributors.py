"""The distributor pair of each type: built on first use, kept whole, its failed members destroyed.

Every L2 VIP is served by two distributors, ``distributor-<type>-0`` and ``-1``; keepalived in
each (VRRP, see ``cohort.distributor.vrrp``) decides which one holds the VIPs. A member that
fails (its instance died, or it went silent: ``FailoverWatcher``) is marked ERROR and replaced
under the same name by the type's ready spare (``cohort.controller.distributor_spares``) or by a
new row, so the replacement has an id, a heartbeat key and an instance of its own: a replaced
member that turns out to be alive after all can be told from its successor, and is destroyed
again whenever it heartbeats (``put_down_revenants``). The failover watcher destroys a failed
member while its replacement is brought in, not before: that took a second of the time a
distributor failure leaves the pair one member short.

Controllers sharing a database may race to create a member: the unique index on live names
(migrations 0006, 0008) lets one insert win, and the others use its row; instance builds are
idempotent per row id.
"""

from __future__ import annotations

import logging

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from cohort.controller.wiring import Drivers
from cohort.db import models as m
from cohort.db.infra import spare_distributor_name
from cohort.db.session import transaction
from cohort.drivers.distributor.base import DistributorRef
from cohort.drivers.errors import DriverError

log = logging.getLogger(__name__)

PAIR_SIZE = 2
LIVE = ("PENDING_CREATE", "BOOTING", "ACTIVE")
READY_TIMEOUT = 60.0


def member_names(distributor_type: str) -> list[str]:
    return [f"distributor-{distributor_type.lower()}-{slot}" for slot in range(PAIR_SIZE)]


def promote_spare(session: Session, distributor_type: str, name: str) -> bool:
    """Make the type's READY spare the member ``name`` (in the caller's transaction); False without one.

    A compare-and-set on the spare's row: of controllers racing to replace one member, one promotes
    it; the unique index on live names refuses a second member of that name (IntegrityError)."""
    promoted = session.execute(update(m.Distributor).where(
        m.Distributor.name == spare_distributor_name(distributor_type),
        m.Distributor.distributor_type == distributor_type, m.Distributor.status == "READY",
    ).values(name=name, status="ACTIVE", status_reason=None)).rowcount  # type: ignore[attr-defined]
    if promoted:
        log.info("the %s spare distributor replaces %s", distributor_type, name)
    return bool(promoted)


class DistributorPair:
    def __init__(self, sessions: sessionmaker[Session], drivers: Drivers) -> None:
        self.sessions = sessions
        self.drivers = drivers

    def live(self, session: Session, distributor_type: str) -> list[m.Distributor]:
        """The live members, oldest first: the one that holds the VIPs longest is told of changes first."""
        return list(session.scalars(select(m.Distributor).where(
            m.Distributor.distributor_type == distributor_type, m.Distributor.status.in_(LIVE),
            m.Distributor.name.in_(member_names(distributor_type)))
            .order_by(m.Distributor.created_at, m.Distributor.name)))

    def ensure(self, distributor_type: str) -> list[DistributorRef]:
        """Both members of the pair, a missing one taken from the spare or built, oldest first."""
        self._fail_dead_instances(distributor_type)
        self._create_rows(distributor_type)
        with self.sessions() as session:
            rows = [(r.id, r.compute_id, r.lb_network_ip, r.status) for r in self.live(session, distributor_type)]
        refs = []
        for ident, compute_id, address, status in rows:
            if compute_id is None or address is None:
                instance = self.drivers.compute.build(ident, "distributor", {})
                compute_id, address = instance.compute_id, instance.lb_network_ip
                with transaction(self.sessions) as session:
                    row = session.get(m.Distributor, ident)
                    if row is None or row.status not in LIVE:
                        raise DriverError(f"distributor {ident} failed while it was built")
                    row.compute_id, row.lb_network_ip, row.status = compute_id, address, "BOOTING"
                status = "BOOTING"
            ref = DistributorRef(id=ident, lb_network_ip=address)
            if status != "ACTIVE":
                self.drivers.distributor.wait_ready(ref, READY_TIMEOUT)
                with transaction(self.sessions) as session:
                    row = session.get(m.Distributor, ident)
                    if row is not None and row.status in LIVE:
                        row.status = "ACTIVE"
            refs.append(ref)
        return refs

    def _create_rows(self, distributor_type: str) -> None:
        for _attempt in range(5):
            try:
                with transaction(self.sessions) as session:
                    taken = {row.name for row in self.live(session, distributor_type)}
                    for name in member_names(distributor_type):
                        if name in taken:
                            continue
                        if not promote_spare(session, distributor_type, name):
                            session.add(m.Distributor(name=name, distributor_type=distributor_type,
                                                      status="PENDING_CREATE"))
                        session.flush()
                return
            except IntegrityError:
                continue  # another controller created or promoted that member first: use it
        raise DriverError(f"could not create or find the {distributor_type} distributor pair")

    def _fail_dead_instances(self, distributor_type: str) -> None:
        """Members whose instance died are failed here too, not only when the watcher scans."""
        with self.sessions() as session:
            rows = [(r.id, r.compute_id) for r in self.live(session, distributor_type) if r.compute_id]
        for ident, compute_id in rows:
            if self.drivers.compute.status(compute_id) in ("ERROR", "DELETED"):
                self.fail(ident, "its compute instance failed")

    def fail(self, distributor_id: str, reason: str) -> bool:
        """Mark a live member failed; False if it was not live (another controller came first).

        A compare-and-set: of several controllers that see one failure, exactly one gets True and acts."""
        with transaction(self.sessions) as session:
            claimed = session.execute(update(m.Distributor).where(
                m.Distributor.id == distributor_id, m.Distributor.status.in_(LIVE),
            ).values(status="ERROR", status_reason=reason, role=None)).rowcount  # type: ignore[attr-defined]
        if not claimed:
            return False
        log.warning("distributor %s failed: %s", distributor_id, reason)
        return True

    def fail_spare(self, distributor_id: str, reason: str) -> bool:
        """Mark a spare (built or building) failed; False if it was promoted or failed meanwhile."""
        with transaction(self.sessions) as session:
            row = session.get(m.Distributor, distributor_id)
            if row is None:
                return False
            claimed = session.execute(update(m.Distributor).where(
                m.Distributor.id == distributor_id, m.Distributor.name == spare_distributor_name(row.distributor_type),
                m.Distributor.status.in_((*LIVE, "READY")),
            ).values(status="ERROR", status_reason=reason, role=None)).rowcount  # type: ignore[attr-defined]
        if claimed:
            log.warning("spare distributor %s failed: %s", distributor_id, reason)
        return bool(claimed)

    def destroy_failed(self, distributor_type: str | None = None) -> int:
        with self.sessions() as session:
            query = select(m.Distributor.id).where(m.Distributor.status == "ERROR")
            if distributor_type is not None:
                query = query.where(m.Distributor.distributor_type == distributor_type)
            failed = list(session.scalars(query))
        return sum(self.destroy(ident) for ident in failed)

    def destroy(self, distributor_id: str) -> bool:
        """Delete a member's instance and ports; the row stays, DELETED. False if a driver failed
        (the member stays ERROR and is destroyed on a later pass)."""
        with self.sessions() as session:
            row = session.get(m.Distributor, distributor_id)
            compute_id = row.compute_id if row is not None else None
        try:
            if compute_id is not None:
                self.drivers.destroy_instance(compute_id)
        except DriverError as exc:
            log.warning("distributor %s: destroying its instance failed, will retry: %s", distributor_id, exc)
            return False
        with transaction(self.sessions) as session:
            row = session.get(m.Distributor, distributor_id)
            if row is not None:
                row.status, row.role = "DELETED", None
            # Its last heartbeat is forgotten: any heartbeat from now on is from a revenant.
            session.execute(delete(m.DistributorHealth).where(m.DistributorHealth.distributor_id == distributor_id))
        log.info("distributor %s destroyed", distributor_id)
        return True

    def put_down_revenants(self) -> int:
        """Destroy again every replaced member that heartbeated since it was destroyed: it was cut off,
        not dead, and must not announce a VIP beside its successor."""
        with self.sessions() as session:
            revenants = list(session.scalars(
                select(m.Distributor.id)
                .join(m.DistributorHealth, m.DistributorHealth.distributor_id == m.Distributor.id)
                .where(m.Distributor.status == "DELETED")))
        put_down = 0
        for ident in revenants:
            # Forgetting the heartbeat claims the revenant: one controller destroys it, the others
            # find nothing left to forget. A revenant that lives on heartbeats, and is claimed, again.
            with transaction(self.sessions) as session:
                claimed = session.execute(delete(m.DistributorHealth).where(
                    m.DistributorHealth.distributor_id == ident)).rowcount  # type: ignore[attr-defined]
            if not claimed:
                continue
            log.warning("distributor %s was replaced but heartbeats again: destroying it again", ident)
            self.destroy(ident)
            put_down += 1
        return put_down
