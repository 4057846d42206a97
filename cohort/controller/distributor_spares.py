"""A spare distributor per type in use: booted and agent-ready ahead of need, so a failed member of a
pair is replaced without waiting for a build (``distributor_spare``).

The spare is a distributor row named ``distributor-<type>-spare`` (``spare_distributor_name``) with
status ``READY``; it holds no VIP and is in no pair, and its agent heartbeats like any other. When a
member fails, the pass that replaces it renames the spare to the member's name
(``distributors.promote_spare``), and this keeper builds the next spare. The unique index on live
distributor names keeps one spare per type however many controllers keep it, and one spare that
died (its instance failed, or it has been silent as long as a pair may be) is destroyed and built
again. A spare left half-built by a controller that died is given up after ``ABANDONED_AFTER``.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from cohort.config import Settings
from cohort.controller import spares as spares_mod
from cohort.controller.distributors import LIVE, READY_TIMEOUT, DistributorPair
from cohort.controller.periodic import Periodic
from cohort.controller.wiring import Drivers
from cohort.db import models as m
from cohort.db.infra import spare_distributor_name
from cohort.db.session import transaction
from cohort.drivers.distributor.base import DistributorRef
from cohort.drivers.errors import DriverError

log = logging.getLogger(__name__)

BUILDING = ("PENDING_CREATE", "BOOTING")
# A spare still building after this long was left by a controller that died (a build takes seconds).
ABANDONED_AFTER = timedelta(seconds=120)
# How many times ``distributor_stale_after`` a READY spare may be silent before it is rebuilt (as long
# as both members of a pair may be: its heartbeats take the same path).
SILENCE_FACTOR = 3.0


class DistributorSpares(Periodic):
    what = "spare distributor pass"

    def __init__(self, settings: Settings, sessions: sessionmaker[Session], drivers: Drivers,
                 interval: float = 1.0) -> None:
        super().__init__(interval)
        self.settings = settings
        self.sessions = sessions
        self.drivers = drivers
        self.pair = DistributorPair(sessions, drivers)
        self.built = 0
        self.deferral = spares_mod.Deferral()

    def tick(self) -> None:
        self.replenish()

    def types_in_use(self, session: Session) -> list[str]:
        """The distributor types with a pair member: a spare is kept only where a pair exists."""
        return sorted(set(session.scalars(select(m.Distributor.distributor_type).where(
            m.Distributor.status == "ACTIVE"))))

    def replenish(self) -> None:
        """Give up dead or abandoned spares, then build the one spare each type in use lacks (not while
        an amphora or distributor is being brought in: ``spares.bringing_in``)."""
        with self.sessions() as session:
            kinds = self.types_in_use(session)
            spares = {row.distributor_type: row for row in session.scalars(select(m.Distributor).where(
                m.Distributor.name.in_([spare_distributor_name(kind) for kind in kinds]),
                m.Distributor.status.in_((*LIVE, "READY"))))}
            dead = [(row.id, reason) for row in spares.values() if (reason := self._dead(session, row))]
            busy = spares_mod.bringing_in(session)
        dead_ids = {ident for ident, _ in dead}
        missing = [kind for kind in kinds if kind not in spares or spares[kind].id in dead_ids]
        allowed = self.deferral.allows(bool(missing), busy)
        for ident, reason in dead:
            if self.pair.fail_spare(ident, reason):
                self.pair.destroy(ident)
        for kind in missing if allowed else []:
            self.build(kind)

    def _dead(self, session: Session, row: m.Distributor) -> str | None:
        if row.status in BUILDING:
            started = row.created_at or datetime.now(UTC).replace(tzinfo=None)
            abandoned = datetime.now(UTC).replace(tzinfo=None) - started > ABANDONED_AFTER
            return f"still building after {ABANDONED_AFTER.seconds}s" if abandoned else None
        if row.compute_id and self.drivers.compute.status(row.compute_id) in ("ERROR", "DELETED"):
            return "its compute instance failed"
        health = session.get(m.DistributorHealth, row.id)
        silence = time.time() - health.last_update if health is not None else 0.0
        if silence > self.settings.distributor_stale_after * SILENCE_FACTOR:
            return f"no heartbeat for {silence:.1f}s"
        return None

    def build(self, distributor_type: str) -> str | None:
        """Build the spare of ``distributor_type``; None when another controller builds it (or a pass
        promoted it) meanwhile."""
        name = spare_distributor_name(distributor_type)
        try:
            with transaction(self.sessions) as session:
                row = m.Distributor(name=name, distributor_type=distributor_type, status="PENDING_CREATE")
                session.add(row)
                session.flush()
                ident = row.id
        except IntegrityError:
            return None  # another controller keeps this spare
        started = time.monotonic()
        try:
            instance = self.drivers.compute.build(ident, "distributor", {})
            with transaction(self.sessions) as session:
                booting = session.execute(update(m.Distributor).where(
                    m.Distributor.id == ident, m.Distributor.name == name, m.Distributor.status == "PENDING_CREATE",
                ).values(compute_id=instance.compute_id, lb_network_ip=instance.lb_network_ip,
                         status="BOOTING")).rowcount  # type: ignore[attr-defined]
            if booting:
                self.drivers.distributor.wait_ready(DistributorRef(ident, instance.lb_network_ip), READY_TIMEOUT)
                with transaction(self.sessions) as session:
                    booting = session.execute(update(m.Distributor).where(
                        m.Distributor.id == ident, m.Distributor.name == name, m.Distributor.status == "BOOTING",
                    ).values(status="READY")).rowcount  # type: ignore[attr-defined]
        except DriverError as exc:
            log.warning("spare %s distributor %s could not be built: %s", distributor_type, ident, exc)
            if self.pair.fail_spare(ident, f"build failed: {exc}"):
                self.pair.destroy(ident)
            return None
        if not booting:  # given up for abandoned meanwhile: its instance goes
            log.warning("spare distributor %s was given up while it was built; destroying it", ident)
            self.pair.destroy(ident)
            return None
        self.built += 1
        log.info("spare %s distributor %s ready after %.1fs", distributor_type, ident, time.monotonic() - started)
        return ident
