"""``/v2/lbaas/healthmonitors``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from cohort.api import views
from cohort.api.builders import apply_changes, build_health_monitor, monitor_fields
from cohort.api.collection import list_collection
from cohort.api.deps import DB, Ctx, RawBody, State
from cohort.api.guards import check_quotas, lock_load_balancer, visible
from cohort.api.listing import parse_options, select_fields
from cohort.api.routing import JSONRoute
from cohort.api.schemas import lbaas as s
from cohort.api.schemas.common import given, unwrap
from cohort.db import models as m

router = APIRouter(prefix="/lbaas/healthmonitors", route_class=JSONRoute)


@router.post("", status_code=201)
def create(raw: RawBody, request: Request, session: DB, ctx: Ctx, state: State) -> dict[str, Any]:
    body = unwrap(raw, "healthmonitor", s.HealthMonitorCreate)
    pool = visible(session, ctx, m.Pool, body.pool_id)
    check_quotas(session, state.settings, pool.project_id, body)
    lock_load_balancer(session, pool.load_balancer_id)
    monitor = build_health_monitor(session, pool, body)
    session.commit()
    state.on_change()
    return {"healthmonitor": views.health_monitor(monitor)}


@router.get("")
def list_(request: Request, session: DB, ctx: Ctx, state: State) -> dict[str, Any]:
    return list_collection(request, session, ctx, m.HealthMonitor, "healthmonitors", views.health_monitor,
                           max_limit=state.settings.api_max_page)


@router.get("/{monitor_id}")
def show(monitor_id: str, request: Request, session: DB, ctx: Ctx) -> dict[str, Any]:
    fields = parse_options(list(request.query_params.multi_items()), 1).fields
    monitor = visible(session, ctx, m.HealthMonitor, monitor_id)
    return {"healthmonitor": select_fields(views.health_monitor(monitor), fields)}


@router.put("/{monitor_id}")
def update(raw: RawBody, monitor_id: str, request: Request, session: DB, ctx: Ctx, state: State) -> dict[str, Any]:
    body = unwrap(raw, "healthmonitor", s.HealthMonitorUpdate)
    monitor = visible(session, ctx, m.HealthMonitor, monitor_id)
    changes = monitor_fields(monitor.type, given(body), existing=monitor)
    lock_load_balancer(session, monitor.pool.load_balancer_id)
    apply_changes(monitor, changes)
    session.commit()
    state.on_change()
    return {"healthmonitor": views.health_monitor(monitor)}


@router.delete("/{monitor_id}", status_code=204)
def delete(monitor_id: str, session: DB, ctx: Ctx, state: State) -> Response:
    monitor = visible(session, ctx, m.HealthMonitor, monitor_id)
    lock_load_balancer(session, monitor.pool.load_balancer_id)
    monitor.provisioning_status = "PENDING_DELETE"
    session.commit()
    state.on_change()
    return Response(status_code=204)
