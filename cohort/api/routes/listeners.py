"""``/v2/lbaas/listeners``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from cohort import secrets
from cohort.api import views
from cohort.api.builders import (
    LISTENER_REFS,
    apply_changes,
    build_listener,
    check_cidr_families,
    check_listener_pool,
    check_tls_refs,
    validate_listener_fields,
)
from cohort.api.collection import list_collection
from cohort.api.deps import DB, Ctx, RawBody, State
from cohort.api.errors import InvalidInput
from cohort.api.guards import check_quotas, lock_load_balancer, visible
from cohort.api.listing import parse_options, select_fields
from cohort.api.routing import JSONRoute
from cohort.api.schemas import lbaas as s
from cohort.api.schemas.common import given, unwrap
from cohort.api.stats import stats_body, sum_listener_stats
from cohort.db import models as m

router = APIRouter(prefix="/lbaas/listeners", route_class=JSONRoute)


@router.post("", status_code=201)
def create(raw: RawBody, request: Request, session: DB, ctx: Ctx, state: State) -> dict[str, Any]:
    body = unwrap(raw, "listener", s.ListenerCreate)
    lb = visible(session, ctx, m.LoadBalancer, body.loadbalancer_id)
    check_quotas(session, state.settings, lb.project_id, body)
    lock_load_balancer(session, lb.id)
    listener = build_listener(session, lb, body, network=state.network,
                              stored_only=secrets.refs_must_be_stored(state.settings))
    session.commit()
    state.on_change()
    return {"listener": views.listener(listener)}


@router.get("")
def list_(request: Request, session: DB, ctx: Ctx, state: State) -> dict[str, Any]:
    query = select(m.Listener).options(selectinload(m.Listener.l7policies))
    return list_collection(request, session, ctx, m.Listener, "listeners", views.listener, query,
                           aliases={"loadbalancer_id": "load_balancer_id"}, max_limit=state.settings.api_max_page)


@router.get("/{listener_id}")
def show(listener_id: str, request: Request, session: DB, ctx: Ctx) -> dict[str, Any]:
    fields = parse_options(list(request.query_params.multi_items()), 1).fields
    return {"listener": select_fields(views.listener(visible(session, ctx, m.Listener, listener_id)), fields)}


@router.put("/{listener_id}")
def update(raw: RawBody, listener_id: str, request: Request, session: DB, ctx: Ctx, state: State) -> dict[str, Any]:
    body = unwrap(raw, "listener", s.ListenerUpdate)
    listener = visible(session, ctx, m.Listener, listener_id)
    changes = given(body)
    merged = {column: getattr(listener, column) for column in s.ListenerUpdate.model_fields
              if column in m.Listener.__table__.columns}
    merged.update({k: v for k, v in changes.items() if v is not None})
    validate_listener_fields(listener.protocol, merged)
    check_cidr_families(listener.load_balancer, changes.get("allowed_cidrs"))
    check_tls_refs(session, listener.project_id, changes, LISTENER_REFS,
                   secrets.refs_must_be_stored(state.settings))
    pool_id = changes.get("default_pool_id")
    if pool_id:
        pool = session.get(m.Pool, pool_id)
        if pool is None or pool.load_balancer_id != listener.load_balancer_id:
            raise InvalidInput(f"Pool {pool_id} not found on load balancer {listener.load_balancer_id}.")
        check_listener_pool(listener.protocol, pool.protocol)
    lock_load_balancer(session, listener.load_balancer_id)
    apply_changes(listener, changes)
    session.commit()
    state.on_change()
    return {"listener": views.listener(listener)}


@router.delete("/{listener_id}", status_code=204)
def delete(listener_id: str, session: DB, ctx: Ctx, state: State) -> Response:
    listener = visible(session, ctx, m.Listener, listener_id)
    lock_load_balancer(session, listener.load_balancer_id)
    listener.provisioning_status = "PENDING_DELETE"
    for policy in listener.l7policies:
        policy.provisioning_status = "PENDING_DELETE"
        for rule in policy.rules:
            rule.provisioning_status = "PENDING_DELETE"
    session.commit()
    state.on_change()
    return Response(status_code=204)


@router.get("/{listener_id}/stats")
def stats(listener_id: str, session: DB, ctx: Ctx) -> dict[str, Any]:
    listener = visible(session, ctx, m.Listener, listener_id)
    return stats_body(sum_listener_stats(session, [listener.id]))
