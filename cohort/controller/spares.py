"""Spare amphorae: instances booted and agent-ready ahead of need, so a failover skips the boot.

A spare is an amphora row with no load balancer, status ``READY`` once its compute instance
runs and its agent answers (Octavia's spare pool, ``spare_amphora_pool_size``). Taking one is a
compare-and-set on that row (``claim``), so two controllers never take the same spare; the
claimed row keeps its id, so the instance named after it needs nothing renamed. Only a spare
built with the compute flavor the load balancer asks for is taken: a spare is never quietly
something else than what was asked for.

Every controller keeps the pool full (``SparePool.replenish``); two that top it up at once may
build one spare too many, which the next pass deletes. A spare left half-built by a killed
controller, or whose instance failed, is destroyed and built again.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from cohort.config import Settings
from cohort.controller import desired
from cohort.controller.wiring import Drivers
from cohort.db import models as m
from cohort.db.session import transaction

log = logging.getLogger(__name__)

BUILDING = ("PENDING_CREATE", "BOOTING")
# A spare still building after this long was left behind by a controller that died.
ABANDONED_AFTER = timedelta(seconds=180)
AGENT_READY_TIMEOUT = 60.0


def _spares(session: Session) -> list[m.Amphora]:
    return list(session.scalars(select(m.Amphora).where(
        m.Amphora.load_balancer_id.is_(None), m.Amphora.status.in_((*BUILDING, "READY")))
        .order_by(m.Amphora.created_at)))


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


class SparePool:
    def __init__(self, settings: Settings, sessions: sessionmaker[Session], drivers: Drivers,
                 interval: float = 1.0) -> None:
        self.settings = settings
        self.sessions = sessions
        self.drivers = drivers
        self.interval = interval
        self.built = 0
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.replenish()
            except Exception:  # noqa: BLE001 - the pool keeper must outlive any one failure
                log.exception("spare pool pass failed")

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
        for amphora_id, compute_id in doomed:
            self._destroy(amphora_id, compute_id)
        if kept < size:
            self.build_one()

    def _failed(self, row: m.Amphora, now: datetime) -> bool:
        if row.status in BUILDING:
            since = row.updated_at or row.created_at
            return since is not None and now - since > ABANDONED_AFTER
        return bool(row.compute_id) and self.drivers.compute.status(row.compute_id or "") in ("ERROR", "DELETED")

    def build_one(self) -> str:
        flavor = dict(self.settings.spare_amphora_compute_flavor)
        with transaction(self.sessions) as session:
            new = m.Amphora(load_balancer_id=None, role=None, status="PENDING_CREATE", compute_flavor=flavor)
            session.add(new)
            session.flush()
            amphora_id = new.id
        started = time.monotonic()
        instance = self.drivers.compute.build(amphora_id, "amphora", flavor)
        with transaction(self.sessions) as session:
            row = session.get(m.Amphora, amphora_id)
            assert row is not None
            row.compute_id, row.lb_network_ip, row.status = instance.compute_id, instance.lb_network_ip, "BOOTING"
            row.cert_expiration = self.drivers.cert_expiration(amphora_id)
            snapshot = desired.amphora(row)
        self.drivers.amphora.wait_ready(snapshot, AGENT_READY_TIMEOUT)
        with transaction(self.sessions) as session:
            session.execute(update(m.Amphora).where(
                m.Amphora.id == amphora_id, m.Amphora.status == "BOOTING", m.Amphora.load_balancer_id.is_(None))
                .values(status="READY"))
        self.built += 1
        log.info("spare amphora %s ready after %.1fs", amphora_id, time.monotonic() - started)
        return amphora_id

    def _destroy(self, amphora_id: str, compute_id: str | None) -> None:
        with transaction(self.sessions) as session:
            # Only a spare still unclaimed: a load balancer may have taken it meanwhile.
            gone = session.execute(update(m.Amphora).where(
                m.Amphora.id == amphora_id, m.Amphora.load_balancer_id.is_(None),
                m.Amphora.status != "DELETED").values(status="PENDING_DELETE")).rowcount  # type: ignore[attr-defined]
        if not gone:
            return
        if compute_id:
            self.drivers.network.unplug_all(compute_id)
            self.drivers.compute.delete(compute_id)
        with transaction(self.sessions) as session:
            row = session.get(m.Amphora, amphora_id)
            if row is not None:
                row.status = "DELETED"
        log.info("spare amphora %s destroyed", amphora_id)
