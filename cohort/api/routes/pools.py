"""``/v2/lbaas/pools``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from cohort import secrets
from cohort.api import l4_cluster, views
from cohort.api.builders import (
    POOL_REFS,
    apply_changes,
    build_pool,
    check_tls_refs,
    listeners_using_pool,
    listeners_using_pools,
    validate_pool_fields,
)
from cohort.api.collection import list_collection
from cohort.api.deps import DB, Ctx, RawBody, State
from cohort.api.errors import Conflict, InvalidInput
from cohort.api.guards import check_quotas, lock_load_balancer, visible
from cohort.api.listing import parse_options, select_fields
from cohort.api.routing import JSONRoute
from cohort.api.schemas import lbaas as s
from cohort.api.schemas.common import given, unwrap
from cohort.db import models as m

router = APIRouter(prefix="/lbaas/pools", route_class=JSONRoute)


def pool_view(session: Any, pool: m.Pool) -> dict[str, Any]:
    return views.pool(pool, listeners_using_pool(session, pool.id))


@router.post("", status_code=201)
def create(raw: RawBody, request: Request, session: DB, ctx: Ctx, state: State) -> dict[str, Any]:
    body = unwrap(raw, "pool", s.PoolCreate)
    listener = visible(session, ctx, m.Listener, body.listener_id) if body.listener_id else None
    lb_id = listener.load_balancer_id if listener is not None else body.loadbalancer_id
    if body.loadbalancer_id and listener is not None and body.loadbalancer_id != listener.load_balancer_id:
        raise InvalidInput("The listener does not belong to the given load balancer.")
    assert lb_id is not None
    lb = visible(session, ctx, m.LoadBalancer, lb_id)
    check_quotas(session, state.settings, lb.project_id, body)
    lock_load_balancer(session, lb.id)
    pool = build_pool(session, lb, body, listener=listener, network=state.network,
                      stored_only=secrets.refs_must_be_stored(state.settings))
    session.commit()
    state.on_change()
    return {"pool": pool_view(session, pool)}


@router.get("")
def list_(request: Request, session: DB, ctx: Ctx, state: State) -> dict[str, Any]:
    query = select(m.Pool).options(selectinload(m.Pool.members), selectinload(m.Pool.health_monitor))

    def bodies(rows: list[m.Pool]) -> list[dict[str, Any]]:
        users = listeners_using_pools(session, [row.id for row in rows])
        return [views.pool(row, users[row.id]) for row in rows]

    return list_collection(request, session, ctx, m.Pool, "pools", None, query, batch_view=bodies,
                           aliases={"loadbalancer_id": "load_balancer_id"}, max_limit=state.settings.api_max_page)


@router.get("/{pool_id}")
def show(pool_id: str, request: Request, session: DB, ctx: Ctx) -> dict[str, Any]:
    fields = parse_options(list(request.query_params.multi_items()), 1).fields
    return {"pool": select_fields(pool_view(session, visible(session, ctx, m.Pool, pool_id)), fields)}


SESSION_PERSISTENCE_FIELDS = ("type", "cookie_name", "persistence_timeout", "persistence_granularity")


@router.put("/{pool_id}")
def update(raw: RawBody, pool_id: str, request: Request, session: DB, ctx: Ctx, state: State) -> dict[str, Any]:
    body = unwrap(raw, "pool", s.PoolUpdate)
    pool = visible(session, ctx, m.Pool, pool_id)
    changes = given(body)
    validate_pool_fields(pool.protocol, changes)
    check_tls_refs(session, pool.project_id, changes, POOL_REFS, secrets.refs_must_be_stored(state.settings))
    lock_load_balancer(session, pool.load_balancer_id)
    lb = session.get(m.LoadBalancer, pool.load_balancer_id)
    if lb is not None:
        l4_cluster.check_persistence(session, lb, pool.protocol, changes.get("session_persistence"))
    if "session_persistence" in changes:
        persistence = changes.pop("session_persistence")
        # The new persistence replaces the old one whole (Octavia's semantics): every field is set,
        # so the row SQLAlchemy reuses for the same pool keeps nothing of the old (a cookie name).
        pool.session_persistence = m.SessionPersistence(**{
            key: persistence.get(key) for key in SESSION_PERSISTENCE_FIELDS}) if persistence else None
    apply_changes(pool, changes)
    if pool.provisioning_status == "ACTIVE":
        pool.provisioning_status = "PENDING_UPDATE"
    session.commit()
    state.on_change()
    return {"pool": pool_view(session, pool)}


@router.delete("/{pool_id}", status_code=204)
def delete(pool_id: str, session: DB, ctx: Ctx, state: State) -> Response:
    pool = visible(session, ctx, m.Pool, pool_id)
    redirecting = session.scalars(select(m.L7Policy.id).where(
        m.L7Policy.redirect_pool_id == pool_id, m.L7Policy.provisioning_status != "PENDING_DELETE")).all()
    if redirecting:
        raise Conflict(f"Pool {pool_id} is in use by L7 policy {redirecting[0]} and cannot be deleted.")
    lock_load_balancer(session, pool.load_balancer_id)
    pool.provisioning_status = "PENDING_DELETE"
    if pool.health_monitor is not None:
        pool.health_monitor.provisioning_status = "PENDING_DELETE"
    for member in pool.members:
        member.provisioning_status = "PENDING_DELETE"
    session.commit()
    state.on_change()
    return Response(status_code=204)
