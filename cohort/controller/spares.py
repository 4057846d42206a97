"""Spare amphorae: instances booted and agent-ready ahead of need, so a failover skips the boot.

A spare is an amphora row with no load balancer, status ``READY`` once its compute instance
runs and its agent answers (Octavia's spare pool, ``spare_amphora_pool_size``). Taking one is a
compare-and-set on that row (``claim``), so two controllers never take the same spare; the
claimed row keeps its id, so the instance named after it needs nothing renamed. Only a spare
built with the compute flavor the load balancer asks for is taken: a spare is never quietly
something else than what was asked for.

Every controller keeps the pool full (``SparePool.replenish``); two that top it up at once may
build one spare too many, which the next pass deletes. A spare whose instance failed is destroyed
and built again, and so is one left half-built by a controller that died: its builder holds a lease
on the row (``lease_owner``, ``lease_expires``), renewed every third of ``reconcile_lease`` while it
builds, as a reconcile pass holds its load balancer; once the lease lapses any controller takes the
spare for abandoned. A builder that finds its row taken from it deletes the instance it built.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from cohort.config import Settings
from cohort.controller import desired
from cohort.controller.periodic import Periodic
from cohort.controller.wiring import Drivers
from cohort.db import models as m
from cohort.db.infra import SPARE_DISTRIBUTOR_SUFFIX
from cohort.db.session import transaction

log = logging.getLogger(__name__)

BUILDING = ("PENDING_CREATE", "BOOTING")
# A spare still building after this long is given up even while its builder renews the lease (a build
# that hangs), and so is one built before build leases existed (no lease on its row).
ABANDONED_AFTER = timedelta(seconds=180)
AGENT_READY_TIMEOUT = 60.0


def _spares(session: Session) -> list[m.Amphora]:
    return list(session.scalars(select(m.Amphora).where(
        m.Amphora.load_balancer_id.is_(None), m.Amphora.status.in_((*BUILDING, "READY")))
        .order_by(m.Amphora.created_at)))


def bringing_in(session: Session) -> bool:
    """Whether an amphora is being brought into a load balancer, or a distributor into its pair, now.

    Spares are built only when none is: a spare is for the next failure, and building one beside a
    failover's replacement slowed the replacement (in the lab they share one lock and two cores; in
    the chaos benchmark a replacement's build took 9.6 s beside a spare's)."""
    amphora = session.scalar(select(m.Amphora.id).where(
        m.Amphora.load_balancer_id.is_not(None), m.Amphora.status.in_(BUILDING)).limit(1))
    distributor = session.scalar(select(m.Distributor.id).where(
        m.Distributor.status.in_(BUILDING), m.Distributor.name.not_like(f"%{SPARE_DISTRIBUTOR_SUFFIX}")).limit(1))
    return amphora is not None or distributor is not None


# Spares wait for a quiet moment (``bringing_in``) at most this long: under a steady stream of creates
# there may be none, and an empty pool would make the next failover build from nothing.
MAX_DEFERRAL = 30.0


class Deferral:
    """Whether a wanted spare may be built now: not while something is brought in, unless it has
    waited ``MAX_DEFERRAL`` seconds for that already."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._since: float | None = None

    def allows(self, wanted: bool, busy: bool) -> bool:
        if not wanted or not busy:
            self._since = None
            return wanted
        now = self._clock()
        if self._since is None:
            self._since = now
        if now - self._since < MAX_DEFERRAL:
            return False
        log.warning("a spare has waited %.0fs for nothing to be brought in: built beside it", now - self._since)
        self._since = None
        return True


def claim(session: Session, compute_flavor: dict[str, Any], fields: dict[str, Any]) -> m.Amphora | None:
    """Take a READY spare built with ``compute_flavor`` for a load balancer (``fields`` set on it).

    Runs in the caller's transaction; None when there is no matching spare."""
    for row in _spares(session):
        if row.status != "READY" or dict(row.compute_flavor or {}) != compute_flavor:
            continue
        taken = session.execute(update(m.Amphora).where(
            m.Amphora.id == row.id, m.Amphora.status == "READY", m.Amphora.load_balancer_id.is_(None))
            .values(status="BOOTING", status_reason=None, **fields)).rowcount  # type: ignore[attr-defined]
        if taken == 1:
            session.expire(row)
            log.info("amphora %s: a spare taken for load balancer %s", row.id, fields.get("load_balancer_id"))
            return row
    return None


class SparePool(Periodic):
    what = "spare pool pass"

    def __init__(self, settings: Settings, sessions: sessionmaker[Session], drivers: Drivers,
                 interval: float = 1.0, owner: str | None = None) -> None:
        super().__init__(interval)
        # Imported here: the reconciler imports the amphora manager, which imports this module.
        from cohort.controller.reconciler import controller_id

        self.settings = settings
        self.sessions = sessions
        self.drivers = drivers
        self.owner = owner or controller_id()
        self.lease_seconds = settings.reconcile_lease
        self.built = 0
        self.deferral = Deferral()

    def tick(self) -> None:
        self.replenish()

    def replenish(self) -> None:
        """Destroy failed, abandoned and surplus spares; build one more while the pool is short."""
        size = self.settings.spare_amphora_pool_size
        now = datetime.now(UTC).replace(tzinfo=None)
        with self.sessions() as session:
            rows = _spares(session)
            failed = [r for r in rows if self._failed(r, now)]
            alive = [r for r in rows if r not in failed]
            # Two controllers topped the pool up at once: the newest READY ones go.
            surplus = [r for r in reversed(alive) if r.status == "READY"][:max(0, len(alive) - size)]
            doomed = [(r.id, r.compute_id) for r in failed + surplus]
            kept = len(alive) - len(surplus)
            busy = bringing_in(session)
        for amphora_id, compute_id in doomed:
            self._destroy(amphora_id, compute_id)
        if self.deferral.allows(kept < size, busy):
            self.build_one()

    def _failed(self, row: m.Amphora, now: datetime) -> bool:
        if row.status in BUILDING:
            if row.lease_expires is None:  # built before build leases
                since = row.updated_at or row.created_at
                return since is not None and now - since > ABANDONED_AFTER
            # Its builder stopped renewing (it died), or its build hangs.
            return row.lease_expires < time.time() or now - row.created_at > ABANDONED_AFTER
        return bool(row.compute_id) and self.drivers.compute.status(row.compute_id or "") in ("ERROR", "DELETED")

    def build_one(self) -> str | None:
        """Build one spare under this controller's lease; None if the row was taken from it meanwhile
        (its lease lapsed and another controller destroyed it): the instance built is deleted then."""
        flavor = dict(self.settings.spare_amphora_compute_flavor)
        with transaction(self.sessions) as session:
            new = m.Amphora(load_balancer_id=None, role=None, status="PENDING_CREATE", compute_flavor=flavor,
                            lease_owner=self.owner, lease_expires=time.time() + self.lease_seconds)
            session.add(new)
            session.flush()
            amphora_id = new.id
        started = time.monotonic()
        ready = 0
        with self._lease_kept(amphora_id):
            instance = self.drivers.compute.build(amphora_id, "amphora", flavor)
            with transaction(self.sessions) as session:
                row = session.get(m.Amphora, amphora_id)
                if row is None or not self._holds(row, "PENDING_CREATE"):
                    snapshot = None
                else:
                    row.compute_id, row.lb_network_ip, row.status = (instance.compute_id, instance.lb_network_ip,
                                                                     "BOOTING")
                    row.cert_expiration = self.drivers.cert_expiration(amphora_id)
                    snapshot = desired.amphora(row)
            if snapshot is not None:
                self.drivers.amphora.wait_ready(snapshot, AGENT_READY_TIMEOUT)
                with transaction(self.sessions) as session:
                    ready = session.execute(update(m.Amphora).where(
                        m.Amphora.id == amphora_id, m.Amphora.status == "BOOTING",
                        m.Amphora.load_balancer_id.is_(None), m.Amphora.lease_owner == self.owner)
                        .values(status="READY", lease_owner=None, lease_expires=None)).rowcount  # type: ignore[attr-defined]
        if not ready:
            log.warning("spare amphora %s was taken from this controller while it was built; deleting its instance",
                        amphora_id)
            self._discard(amphora_id, instance.compute_id)
            return None
        self.built += 1
        log.info("spare amphora %s ready after %.1fs", amphora_id, time.monotonic() - started)
        return amphora_id

    def _holds(self, row: m.Amphora, status: str) -> bool:
        return row.status == status and row.load_balancer_id is None and row.lease_owner == self.owner

    def _discard(self, amphora_id: str, compute_id: str) -> None:
        """Delete the instance of a spare this controller no longer owns, unless another owns it now."""
        with self.sessions() as session:
            row = session.get(m.Amphora, amphora_id)
            if row is not None and row.load_balancer_id is not None:
                return  # taken by a load balancer after all (it was READY): the instance is its now
        self.drivers.destroy_instance(compute_id)

    @contextmanager
    def _lease_kept(self, amphora_id: str) -> Iterator[None]:
        """Renew the build lease on ``amphora_id`` every third of it until the build ends."""
        done = threading.Event()

        def renew() -> None:
            while not done.wait(self.lease_seconds / 3):
                try:
                    with transaction(self.sessions) as session:
                        kept = session.execute(update(m.Amphora).where(
                            m.Amphora.id == amphora_id, m.Amphora.lease_owner == self.owner,
                            m.Amphora.status.in_(BUILDING),
                        ).values(lease_expires=time.time() + self.lease_seconds)).rowcount  # type: ignore[attr-defined]
                except SQLAlchemyError as exc:
                    log.warning("build lease on spare %s not renewed, trying again: %s", amphora_id, exc)
                    continue
                if not kept:
                    return

        keeper = threading.Thread(target=renew, name=f"spare-lease-{amphora_id[:8]}", daemon=True)
        keeper.start()
        try:
            yield
        finally:
            done.set()
            keeper.join(timeout=5)

    def _destroy(self, amphora_id: str, compute_id: str | None) -> None:
        with transaction(self.sessions) as session:
            # Only a spare still unclaimed (a load balancer may have taken it meanwhile), and not one
            # whose builder renewed its lease since this pass read it (unless its build hangs).
            gone = session.execute(update(m.Amphora).where(
                m.Amphora.id == amphora_id, m.Amphora.load_balancer_id.is_(None),
                m.Amphora.status != "DELETED",
                or_(m.Amphora.lease_expires.is_(None), m.Amphora.lease_expires < time.time(),
                    m.Amphora.created_at < datetime.now(UTC).replace(tzinfo=None) - ABANDONED_AFTER),
            ).values(status="PENDING_DELETE", lease_owner=None,
                     lease_expires=None)).rowcount  # type: ignore[attr-defined]
        if not gone:
            return
        if compute_id:
            self.drivers.destroy_instance(compute_id)
        with transaction(self.sessions) as session:
            row = session.get(m.Amphora, amphora_id)
            if row is not None:
                row.status = "DELETED"
        log.info("spare amphora %s destroyed", amphora_id)
