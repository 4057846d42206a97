"""The level-triggered reconciler: load balancers in PENDING_* converge to ACTIVE, or ERROR with a reason.

Each pass claims one load balancer with a lease (so several controllers can share a
database), applies the whole desired state through idempotent driver calls, then finalises
the objects in one transaction. A pass interrupted anywhere (crash, kill) is simply run again.
A pass that finds its lease gone (not renewed in time, and taken by another controller) stops at
its next step and finalises nothing: two passes on one load balancer would build twice.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from cohort.config import Settings
from cohort.controller import desired
from cohort.controller.amphorae import AmphoraManager, describe
from cohort.controller.cluster import ClusterManager
from cohort.controller.fabric import Fabric
from cohort.controller.finalize import finalize_active, finalize_deleted, finalize_error
from cohort.controller.wiring import Drivers
from cohort.db import models as m
from cohort.drivers.distributor.base import DistributorRef
from cohort.drivers.errors import DriverError, PermanentDriverError

log = logging.getLogger(__name__)

PENDING = ("PENDING_CREATE", "PENDING_UPDATE", "PENDING_DELETE")
# A lease (``reconcile_lease`` seconds) is renewed every third of it while its pass runs, so it can
# be short: a controller that dies mid-pass hands its load balancer to another within seconds,
# however long passes take.
CertificateSource = Callable[[Session, str], dict[str, bytes]]


class Phases:
    """Seconds spent in each phase of a pass, for its log line."""

    def __init__(self) -> None:
        self._last = self._start = time.monotonic()
        self._spent: list[tuple[str, float]] = []

    def mark(self, phase: str) -> None:
        now = time.monotonic()
        self._spent.append((phase, now - self._last))
        self._last = now

    def beside(self, phase: str, seconds: float) -> None:
        """A phase that ran beside the others: shown, not part of the pass's time."""
        self._spent.append((f"({phase} beside)", seconds))

    def __str__(self) -> str:
        parts = ", ".join(f"{phase} {seconds:.2f}" for phase, seconds in self._spent)
        return f"{self._last - self._start:.2f}s ({parts})"


class LeaseLost(Exception):
    """Another controller holds the load balancer now: this pass stops and leaves it the work."""


class Lease:
    """This pass's hold on one load balancer, as its keeper last found it."""

    def __init__(self, lb_id: str) -> None:
        self.lb_id = lb_id
        self.lost = threading.Event()

    def check(self) -> None:
        if self.lost.is_set():
            raise LeaseLost(f"lease on load balancer {self.lb_id} lost to another controller")


def controller_id() -> str:
    """Unique per process: two controllers on one host must never hold each other's leases."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class Reconciler:
    def __init__(self, settings: Settings, sessions: sessionmaker[Session], drivers: Drivers,
                 certificates: CertificateSource | None = None, owner: str | None = None,
                 read_sessions: sessionmaker[Session] | None = None) -> None:
        self.settings = settings
        self.sessions = sessions
        # Polling only reads: on SQLite it must not take the write lock every 0.1 s.
        self.read_sessions = read_sessions or sessions
        self.drivers = drivers
        self.amphorae = AmphoraManager(sessions, drivers)
        self.cluster = ClusterManager(sessions, drivers, settings.drain_timeout, settings.distributor_advert_int)
        self.fabric = Fabric(sessions, drivers, self.cluster, settings.secrets_key_file,
                             settings.default_bgp_speaker_id, settings.bgp_withdraw_grace)
        self.certificates = certificates or (lambda _session, _lb_id: {})
        self.owner = owner or controller_id()
        self.lease_seconds = settings.reconcile_lease
        self.renew_every = self.lease_seconds / 3
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._busy: set[str] = set()
        self._busy_lock = threading.Lock()

    # Loop ---------------------------------------------------------------------------------------

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def run(self) -> None:
        with ThreadPoolExecutor(max_workers=self.settings.reconcile_workers, thread_name_prefix="reconcile") as pool:
            while not self._stop.is_set():
                for lb_id in self.due():
                    with self._busy_lock:
                        if lb_id in self._busy:
                            continue
                        self._busy.add(lb_id)
                    pool.submit(self._guarded, lb_id)
                self._wake.wait(self.settings.reconcile_interval)
                self._wake.clear()

    def run_until_idle(self, timeout: float = 30.0) -> None:
        """Reconcile in the calling thread until nothing is due (tests and one-shot tools)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            due = self.due(ignore_backoff=True)
            if not due:
                return
            for lb_id in due:
                self.reconcile(lb_id)
        raise TimeoutError("reconciler did not become idle")

    def _guarded(self, lb_id: str) -> None:
        try:
            self.reconcile(lb_id)
        except Exception:  # noqa: BLE001 - one load balancer must never stop the loop
            log.exception("reconcile of %s failed", lb_id)
        finally:
            with self._busy_lock:
                self._busy.discard(lb_id)
            self._wake.set()

    def due(self, ignore_backoff: bool = False) -> list[str]:
        now = time.time()
        with self.read_sessions() as session:
            query = select(m.LoadBalancer.id).where(
                m.LoadBalancer.provisioning_status.in_(PENDING),
                or_(m.LoadBalancer.lease_expires.is_(None), m.LoadBalancer.lease_expires < now,
                    m.LoadBalancer.lease_owner == self.owner),
            )
            if not ignore_backoff:
                query = query.where(m.LoadBalancer.next_attempt <= now)
            return list(session.scalars(query.order_by(m.LoadBalancer.next_attempt).limit(100)))

    def _claim(self, lb_id: str) -> bool:
        now = time.time()
        with self.sessions() as session, session.begin():
            result = session.execute(
                update(m.LoadBalancer).where(
                    m.LoadBalancer.id == lb_id, m.LoadBalancer.provisioning_status.in_(PENDING),
                    or_(m.LoadBalancer.lease_expires.is_(None), m.LoadBalancer.lease_expires < now,
                        m.LoadBalancer.lease_owner == self.owner),
                ).values(lease_owner=self.owner, lease_expires=now + self.lease_seconds)
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]

    # One pass -----------------------------------------------------------------------------------

    def reconcile(self, lb_id: str) -> None:
        if not self._claim(lb_id):
            return
        with self._lease_kept(lb_id) as lease:
            self._pass(lb_id, lease)

    @contextmanager
    def _lease_kept(self, lb_id: str) -> Iterator[Lease]:
        """Renew this controller's lease on ``lb_id`` until the pass ends; tell the pass if it is lost."""
        done = threading.Event()
        lease = Lease(lb_id)

        def renew() -> None:
            while not done.wait(self.renew_every):
                try:
                    with self.sessions() as session, session.begin():
                        kept = session.execute(update(m.LoadBalancer).where(
                            m.LoadBalancer.id == lb_id, m.LoadBalancer.lease_owner == self.owner,
                        ).values(lease_expires=time.time() + self.lease_seconds)).rowcount  # type: ignore[attr-defined]
                except SQLAlchemyError as exc:
                    # The keeper must outlive a database hiccup: a dead keeper lets the lease lapse
                    # while the pass goes on, and another controller would start the same pass.
                    log.warning("lease on %s not renewed, trying again: %s", lb_id, exc)
                    continue
                if not kept and not done.is_set():
                    lease.lost.set()
                    log.warning("lease on %s was taken by another controller; this pass stops", lb_id)
                    return

        keeper = threading.Thread(target=renew, name=f"lease-{lb_id[:8]}", daemon=True)
        keeper.start()
        try:
            yield lease
        finally:
            done.set()
            keeper.join(timeout=5)

    def _pass(self, lb_id: str, lease: Lease) -> None:
        with self.sessions() as session:
            lb_row = session.get(m.LoadBalancer, lb_id)
            if lb_row is None:
                return
            status, generation = lb_row.provisioning_status, lb_row.generation
        try:
            if status == "PENDING_DELETE":
                self._delete(lb_id, lease)
                finalize_deleted(self.sessions, lb_id, owner=self.owner)
            else:
                self._apply(lb_id, generation, lease)
                finalize_active(self.sessions, lb_id, generation, owner=self.owner)
        except LeaseLost as exc:
            log.warning("load balancer %s: %s", lb_id, exc)
        except PermanentDriverError as exc:
            log.warning("load balancer %s: %s", lb_id, exc)
            finalize_error(self.sessions, lb_id, describe(exc), owner=self.owner)
        except DriverError as exc:
            self._retry_later(lb_id, exc)

    def _retry_later(self, lb_id: str, exc: Exception) -> None:
        with self.sessions() as session, session.begin():
            lb = session.get(m.LoadBalancer, lb_id)
            if lb is None or lb.lease_owner != self.owner:
                return  # another controller holds it now: its pass decides
            lb.attempts += 1
            started = lb.updated_at or lb.created_at
            age = time.time() - started.timestamp() if started else 0.0
            if age > self.settings.reconcile_timeout and lb.attempts > 3:
                session.rollback()
                finalize_error(self.sessions, lb_id, f"gave up after {lb.attempts} attempts: {describe(exc)}",
                               owner=self.owner)
                return
            lb.next_attempt = time.time() + min(0.5 * 2 ** min(lb.attempts, 6), 30.0)
            lb.lease_expires = None
            lb.status_reason = f"retrying: {describe(exc)}"
        log.info("load balancer %s: will retry (%s)", lb_id, exc)

    def _apply(self, lb_id: str, generation: int, lease: Lease) -> None:
        clock = Phases()
        vip = self.amphorae.ensure_vip(lb_id)
        lease.check()
        with self.sessions() as session:
            lb_row = session.get(m.LoadBalancer, lb_id)
            assert lb_row is not None
            lb = desired.load_balancer(session, self.settings, lb_row)
            certificates = self.certificates(session, lb_id)
        ids = self.amphorae.plan(lb_id, lb.topology)
        failed = self.amphorae.failed_instances(lb_id)
        clock.mark("plan")
        l2 = lb.topology.name == "ACTIVE_ACTIVE" and lb.topology.distributor_type != "L3_BGP"
        # Beside the amphorae's build and configuration: failed instances stop (see stop_failed), for
        # deleting an instance under load took as long as building one; and the distributor pair is
        # made whole and given the VIP, which needs nothing of the amphorae (in the chaos benchmark it
        # cost a replacement pass up to 2.2 s after its amphora was configured).
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="pass") as pool:
            stopping = pool.submit(self.amphorae.stop_failed, failed) if failed else None
            front = pool.submit(self._front_end, lb, vip) if l2 else None
            for amphora_id in ids:
                lease.check()
                self.amphorae.build(amphora_id, lb, vip)
            clock.mark("build")
            lease.check()
            self.amphorae.configure(lb, ids, generation, certificates)
            clock.mark("configure")
            lease.check()
            if front is not None:
                refs, seconds = front.result()
                clock.beside("distributor pair and VIP", seconds)
                clock.mark("distributors waited for")
                self._register(lb, vip, ids, refs, clock)
            elif lb.topology.name == "ACTIVE_ACTIVE":
                with self.sessions() as session:
                    leaving = self.cluster.leaving_by_scale_in(session, lb.id)
                self.fabric.announce(lb, vip, ids, leaving)
                clock.mark("announce")
            if stopping is not None:
                stopping.result()
        lease.check()
        self.amphorae.retire(lb_id, ids)
        clock.mark("retire")
        # Where a pass spends its time (a failover's replacement is waited for on this pass).
        log.info("load balancer %s: generation %d applied in %s", lb_id, generation, clock)

    def _front_end(self, lb: Any, vip: Any) -> tuple[list[DistributorRef], float]:
        """The distributor pair, whole, with the VIP plugged into both; and the seconds that took."""
        started = time.monotonic()
        refs = self.cluster.ensure_pair(lb.topology.distributor_type)
        self.cluster.plug_vip(refs, lb, vip)
        return refs, time.monotonic() - started

    def _register(self, lb: Any, vip: Any, ids: list[str], refs: list[DistributorRef], clock: Phases) -> None:
        """Register the serving amphorae; amphorae leaving by scale-in drain before they go. Every
        amphora knows its cluster peers (the second chance) before the table changes."""
        with self.sessions() as session:
            leaving = self.cluster.leaving_by_scale_in(session, lb.id)
        self.cluster.share_peers(lb.id, vip.address, ids, leaving)
        clock.mark("cluster peers")
        self.cluster.register(refs, lb.id, active=ids, draining=leaving)
        clock.mark("register")
        if leaving:
            self.cluster.drain(lb.id, leaving)
            self.cluster.register(refs, lb.id, active=ids, draining=[])
            self.cluster.share_peers(lb.id, vip.address, ids, [])  # drained: they own no flow any more
            clock.mark("drain")

    def _delete(self, lb_id: str, lease: Lease) -> None:
        lease.check()
        self.cluster.remove_vip(lb_id)
        with self.sessions() as session:
            amphorae = [(row.id, row.compute_id) for row in self.amphorae.live_amphorae(session, lb_id)]
        for amphora_id, compute_id in amphorae:
            self.amphorae.destroy(amphora_id, compute_id)
        self.drivers.network.deallocate_vip(lb_id)
