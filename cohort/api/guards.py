"""Checks every write goes through: visibility, the load balancer lock and quotas.

The lock is a compare-and-set on the load balancer's provisioning_status (ACTIVE or ERROR to
PENDING_UPDATE) in the writer's transaction, so of two concurrent changes exactly one wins
and the other gets 409, on SQLite and PostgreSQL alike.

Quotas are checked for everything a request would create, nested objects included, by
:func:`check_quotas` on the request body before anything is built.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cohort.api.auth import RequestContext
from cohort.api.errors import Immutable, InvalidInput, NotAuthorized, NotFound, QuotaExceeded
from cohort.api.schemas import lbaas as s
from cohort.config import Settings
from cohort.db import locks
from cohort.db import models as m

T = TypeVar("T")

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
    if row is None:
        raise NotFound(label, ident)
    if not ctx.can_see(row.project_id):  # type: ignore[attr-defined]
        if ctx.forbids_openly:
            raise NotAuthorized()
        raise NotFound(label, ident)
    return row


def lock_load_balancer(session: Session, lb_id: str, new_status: str = "PENDING_UPDATE") -> None:
    """Take the load balancer for one change (``cohort.db.locks``), or 409 if another change holds it."""
    try:
        locks.lock_load_balancer(session, lb_id, new_status)
    except locks.LoadBalancerBusy as exc:
        raise Immutable("Load Balancer", lb_id) from exc


def check_bgp_speaker(session: Session, speaker_id: str | None) -> None:
    """An L3_BGP cluster needs a BGP speaker that exists and has peers; a 400 naming the field otherwise."""
    if not speaker_id:
        raise InvalidInput("Invalid input for field/attribute bgp_speaker_id: distributor_type L3_BGP needs a "
                           "BGP speaker in the flavor (bgp_speaker_id) and none is configured by default.")
    speaker = session.get(m.BgpSpeaker, speaker_id)
    if speaker is None:
        raise InvalidInput(f"Invalid input for field/attribute bgp_speaker_id: BGP speaker {speaker_id} not found.")
    if session.scalar(select(m.BgpPeer.id).where(m.BgpPeer.bgp_speaker_id == speaker_id).limit(1)) is None:
        raise InvalidInput(f"Invalid input for field/attribute bgp_speaker_id: BGP speaker {speaker_id} has no "
                           "peers; an L3_BGP cluster needs at least one.")


def quota_limit(session: Session, settings: Settings, project_id: str, field: str) -> int:
    row = session.get(m.Quota, project_id)
    value = getattr(row, field) if row is not None else None
    return int(value) if value is not None else int(getattr(settings.quotas, field))


# Each request body that makes one object of a model when built; the first match counts.
QUOTA_BODIES: tuple[tuple[type[BaseModel], type[Any]], ...] = (
    (s.LoadBalancerCreate, m.LoadBalancer),
    (s.ListenerTree, m.Listener),
    (s.PoolTree, m.Pool),
    (s.MemberCreate, m.Member),
    (s.HealthMonitorTree, m.HealthMonitor),
    (s.L7PolicyTree, m.L7Policy),
    (s.L7PolicyCreate, m.L7Policy),
    (s.L7RuleCreate, m.L7Rule),
)


def objects_in(body: BaseModel) -> Counter[type[Any]]:
    """How many objects of each model building ``body`` makes, at any depth of nesting.

    The walk follows every field rather than a list of known nestings, so an object nested
    where a new schema allows it (a redirect pool's members, say) is never left uncounted.
    """
    counts: Counter[type[Any]] = Counter()
    pending: list[object] = [body]
    while pending:
        item = pending.pop()
        if isinstance(item, list | tuple):
            pending.extend(item)
        elif isinstance(item, BaseModel):
            for kind, model in QUOTA_BODIES:
                if isinstance(item, kind):
                    counts[model] += 1
                    break
            pending.extend(getattr(item, name) for name in type(item).model_fields)
    return counts


def check_quotas(session: Session, settings: Settings, project_id: str,
                 new: BaseModel | Mapping[type[Any], int]) -> None:
    """403 unless the project may have every object ``new`` makes (a body, or counts per model) on top of its own."""
    counts = objects_in(new) if isinstance(new, BaseModel) else new
    for model in QUOTA_FIELDS:
        adding = counts.get(model, 0)
        if adding:
            _check_quota(session, settings, project_id, model, adding)


def _check_quota(session: Session, settings: Settings, project_id: str, model: type[Any], adding: int) -> None:
    limit = quota_limit(session, settings, project_id, QUOTA_FIELDS[model])
    if limit < 0:
        return
    used = session.scalar(
        select(func.count()).select_from(model).where(
            model.project_id == project_id, model.provisioning_status != "PENDING_DELETE"
        )
    ) or 0
    if used + adding > limit:
        raise QuotaExceeded(RESOURCE_LABELS[model])

