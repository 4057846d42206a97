"""``/v2/lbaas/quotas``: per-project limits with configured defaults (-1 is unlimited)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from sqlalchemy import select

from cohort.api.deps import DB, Ctx, RawBody, State
from cohort.api.errors import NotAuthorized
from cohort.api.guards import quota_limit
from cohort.api.routing import JSONRoute
from cohort.api.schemas.admin import QuotaBody
from cohort.api.schemas.common import unwrap
from cohort.config import QuotaDefaults
from cohort.db import models as m

router = APIRouter(prefix="/lbaas/quotas", route_class=JSONRoute)
FIELDS = tuple(QuotaDefaults.model_fields)


def _with_aliases(values: dict[str, Any]) -> dict[str, Any]:
    """Octavia returns both spellings of two names; clients read either."""
    return {**values, "load_balancer": values["loadbalancer"], "health_monitor": values["healthmonitor"]}


def effective(session: Any, state: State, project_id: str) -> dict[str, Any]:
    return _with_aliases({name: quota_limit(session, state.settings, project_id, name) for name in FIELDS})


@router.get("")
def list_quotas(request: Request, session: DB, ctx: Ctx, state: State) -> dict[str, Any]:
    query = select(m.Quota.project_id)
    if not ctx.is_admin:
        query = query.where(m.Quota.project_id == ctx.project_id)
    wanted = request.query_params.get("project_id")
    if wanted:
        query = query.where(m.Quota.project_id == wanted)
    projects = session.scalars(query.order_by(m.Quota.project_id)).all()
    return {"quotas": [{"project_id": p, **effective(session, state, p)} for p in projects], "quotas_links": []}


@router.get("/defaults")
def defaults(ctx: Ctx, state: State) -> dict[str, Any]:
    return {"quota": _with_aliases(state.settings.quotas.model_dump())}


@router.get("/{project_id}")
def show(project_id: str, session: DB, ctx: Ctx, state: State) -> dict[str, Any]:
    if not ctx.can_see(project_id):
        raise NotAuthorized()
    return {"quota": effective(session, state, project_id)}


@router.put("/{project_id}", status_code=202)
def update(raw: RawBody, project_id: str, request: Request, session: DB, ctx: Ctx, state: State) -> dict[str, Any]:
    ctx.require_admin()
    body = unwrap(raw, "quota", QuotaBody)
    row = session.get(m.Quota, project_id) or m.Quota(project_id=project_id)
    for key, value in body.normalised().items():
        setattr(row, key, value)
    session.add(row)
    session.commit()
    return {"quota": effective(session, state, project_id)}


@router.delete("/{project_id}", status_code=202)
def reset(project_id: str, session: DB, ctx: Ctx) -> Response:
    ctx.require_admin()
    row = session.get(m.Quota, project_id)
    if row is not None:
        session.delete(row)
        session.commit()
    return Response(status_code=202)
