"""The last step of a reconcile pass: record the outcome on every object in one transaction.

A pass names its controller (``owner``): the outcome is recorded only while that controller
still holds the load balancer's lease, checked on the row locked for the transaction, so a pass
that lost its lease never overwrites the work of the controller that took it over.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from cohort.db import models as m
from cohort.db.session import transaction

CONFIGURED_ONLINE = (m.L7Policy, m.L7Rule, m.HealthMonitor)


def tree(lb: m.LoadBalancer) -> Iterator[Any]:
    """Every child object of a load balancer, leaves first (the order deletes must follow)."""
    for listener in lb.listeners:
        for policy in listener.l7policies:
            yield from policy.rules
            yield policy
    for pool in lb.pools:
        yield from pool.members
        if pool.health_monitor is not None:
            yield pool.health_monitor
    for pool in lb.pools:
        yield pool
    yield from lb.listeners


def _release(lb: m.LoadBalancer) -> None:
    lb.lease_owner = None
    lb.lease_expires = None
    lb.attempts = 0
    lb.next_attempt = 0.0


def _held(session: Session, lb_id: str, owner: str | None) -> m.LoadBalancer | None:
    """The load balancer (locked when an owner is named), or None if it is gone or another holds it."""
    lb = session.get(m.LoadBalancer, lb_id, with_for_update=owner is not None)
    if lb is None or (owner is not None and lb.lease_owner != owner):
        return None
    return lb


def finalize_active(sessions: sessionmaker[Session], lb_id: str, generation: int, owner: str | None = None) -> None:
    with transaction(sessions) as session:
        lb = _held(session, lb_id, owner)
        if lb is None or lb.generation != generation or lb.provisioning_status == "PENDING_DELETE":
            return
        doomed = [obj for obj in tree(lb) if obj.provisioning_status == "PENDING_DELETE"]
        doomed_pools = {obj.id for obj in doomed if isinstance(obj, m.Pool)}
        for listener in lb.listeners:
            if listener.default_pool_id in doomed_pools:
                listener.default_pool_id = None
        for obj in doomed:
            session.delete(obj)
        session.flush()
        session.expire(lb)
        for obj in tree(lb):
            if obj.provisioning_status in ("PENDING_CREATE", "PENDING_UPDATE"):
                obj.provisioning_status = "ACTIVE"
            if not obj.admin_state_up:
                # A member nothing monitors stays NO_MONITOR (as in Octavia); the health manager
                # reports a disabled member's real state where amphorae run.
                if not (isinstance(obj, m.Member) and obj.operating_status == "NO_MONITOR"):
                    obj.operating_status = "OFFLINE"
            elif isinstance(obj, CONFIGURED_ONLINE) and obj.operating_status == "OFFLINE":
                # As in Octavia: an enabled L7 policy or rule is ONLINE once applied (nothing measures
                # them), and so is an enabled monitor until the health manager reports otherwise.
                obj.operating_status = "ONLINE"
        cluster = session.scalar(select(m.AmphoraCluster).where(m.AmphoraCluster.load_balancer_id == lb_id))
        if cluster is not None:
            cluster.provisioning_status = "ACTIVE"
        lb.provisioning_status = "ACTIVE"
        lb.status_reason = None
        if not lb.admin_state_up:
            lb.operating_status = "OFFLINE"
        _release(lb)


def finalize_error(sessions: sessionmaker[Session], lb_id: str, reason: str, owner: str | None = None) -> None:
    with transaction(sessions) as session:
        lb = _held(session, lb_id, owner)
        if lb is None:
            return
        for obj in tree(lb):
            if obj.provisioning_status.startswith("PENDING_"):
                obj.provisioning_status = "ERROR"
        cluster = session.scalar(select(m.AmphoraCluster).where(m.AmphoraCluster.load_balancer_id == lb_id))
        if cluster is not None:
            cluster.provisioning_status = "ERROR"
        lb.provisioning_status = "ERROR"
        lb.status_reason = reason
        _release(lb)


def finalize_deleted(sessions: sessionmaker[Session], lb_id: str, owner: str | None = None) -> None:
    with transaction(sessions) as session:
        lb = _held(session, lb_id, owner)
        if lb is None:
            return
        for obj in tree(lb):
            if isinstance(obj, m.Listener):
                obj.default_pool_id = None
        session.flush()
        session.delete(lb)
        session.execute(delete(m.AmphoraCluster).where(m.AmphoraCluster.load_balancer_id == lb_id))
        session.execute(delete(m.AmphoraRegistration).where(m.AmphoraRegistration.load_balancer_id == lb_id))
        session.execute(delete(m.Amphora).where(m.Amphora.load_balancer_id == lb_id,
                                                m.Amphora.status == "DELETED"))
