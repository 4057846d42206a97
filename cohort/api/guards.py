"""Checks every write goes through: visibility, the load balancer lock and quotas.

The lock is a compare-and-set on the load balancer's provisioning_status (ACTIVE or ERROR to
PENDING_UPDATE) in the writer's transaction, so of two concurrent changes exactly one wins
and the other gets 409, on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from cohort.api.auth import RequestContext
from cohort.api.errors import Immutable, NotFound, QuotaExceeded
from cohort.config import Settings
from cohort.db import models as m

T = TypeVar("T")

MUTABLE_STATES = ("ACTIVE", "ERROR")
PENDING_STATES = ("PENDING_CREATE", "PENDING_UPDATE", "PENDING_DELETE")

RESOURCE_LABELS: dict[type[Any], str] = {
    m.LoadBalancer: "Load Balancer",
    m.Listener: "Listener",
    m.Pool: "Pool",
    m.Member: "Member",
    m.HealthMonitor: "Health Monitor",
    m.L7Policy: "L7 Policy",
    m.L7Rule: "L7 Rule",
}

QUOTA_FIELDS: dict[type[Any], str] = {
    m.LoadBalancer: "loadbalancer",
    m.Listener: "listener",
    m.Pool: "pool",
    m.Member: "member",
    m.HealthMonitor: "healthmonitor",
    m.L7Policy: "l7policy",
    m.L7Rule: "l7rule",
}


def visible(session: Session, ctx: RequestContext, model: type[T], ident: str) -> T:
    """The object if it exists, is not being deleted away, and the caller may see it; else 404."""
    row = session.get(model, ident)
    label = RESOURCE_LABELS.get(model, model.__name__)
    if row is None or not ctx.can_see(row.project_id):  # type: ignore[attr-defined]
        raise NotFound(label, ident)
    return row


def lock_load_balancer(session: Session, lb_id: str, new_status: str = "PENDING_UPDATE") -> None:
    """Take the load balancer for one change, or 409 if another change holds it."""
    result = session.execute(
        update(m.LoadBalancer)
        .where(m.LoadBalancer.id == lb_id, m.LoadBalancer.provisioning_status.in_(MUTABLE_STATES))
        .values(provisioning_status=new_status, generation=m.LoadBalancer.generation + 1, attempts=0,
                next_attempt=0.0, status_reason=None)
        .execution_options(synchronize_session="fetch")
    )
    if result.rowcount == 0:  # type: ignore[attr-defined]
        raise Immutable("Load Balancer", lb_id)


def quota_limit(session: Session, settings: Settings, project_id: str, field: str) -> int:
    row = session.get(m.Quota, project_id)
    value = getattr(row, field) if row is not None else None
    return int(value) if value is not None else int(getattr(settings.quotas, field))


def check_quota(session: Session, settings: Settings, project_id: str, model: type[Any], adding: int = 1) -> None:
    field = QUOTA_FIELDS[model]
    limit = quota_limit(session, settings, project_id, field)
    if limit < 0:
        return
    used = session.scalar(
        select(func.count()).select_from(model).where(
            model.project_id == project_id, model.provisioning_status != "PENDING_DELETE"
        )
    ) or 0
    if used + adding > limit:
        raise QuotaExceeded(RESOURCE_LABELS[model])

