"""``/v2/lbaas/pools/{pool_id}/members``, including the batch update of the whole collection."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from sqlalchemy import select

from cohort.api import views
from cohort.api.builders import build_member, update_member
from cohort.api.collection import list_collection
from cohort.api.deps import DB, Ctx, RawBody, State
from cohort.api.errors import NotFound
from cohort.api.guards import check_quotas, lock_load_balancer, visible
from cohort.api.listing import parse_options, select_fields
from cohort.api.routing import JSONRoute
from cohort.api.schemas import lbaas as s
from cohort.api.schemas.common import given, parse_document, unwrap
from cohort.db import models as m

router = APIRouter(prefix="/lbaas/pools/{pool_id}/members", route_class=JSONRoute)


def _member(session: Any, ctx: Any, pool_id: str, member_id: str) -> m.Member:
    member = visible(session, ctx, m.Member, member_id)
    if member.pool_id != pool_id:
        raise NotFound("Member", member_id)
    return member


@router.post("", status_code=201)
def create(raw: RawBody, pool_id: str, request: Request, session: DB, ctx: Ctx, state: State) -> dict[str, Any]:
    body = unwrap(raw, "member", s.MemberCreate)
    pool = visible(session, ctx, m.Pool, pool_id)
    check_quotas(session, state.settings, pool.project_id, body)
    lock_load_balancer(session, pool.load_balancer_id)
    member = build_member(session, pool, body, state.network)
    session.commit()
    state.on_change()
    return {"member": views.member(member)}


@router.get("")
def list_(pool_id: str, request: Request, session: DB, ctx: Ctx, state: State) -> dict[str, Any]:
    visible(session, ctx, m.Pool, pool_id)
    query = select(m.Member).where(m.Member.pool_id == pool_id)
    return list_collection(request, session, ctx, m.Member, "members", views.member, query,
                           max_limit=state.settings.api_max_page)


@router.put("", status_code=202)
def batch_update(raw: RawBody, pool_id: str, request: Request, session: DB, ctx: Ctx, state: State) -> Response:
    body = parse_document(raw, s.MemberBatch)
    pool = visible(session, ctx, m.Pool, pool_id)
    additive_only = request.query_params.get("additive_only", "false").lower() in ("true", "1", "yes")
    live = {(mb.address, mb.protocol_port): mb for mb in pool.members if mb.provisioning_status != "PENDING_DELETE"}
    wanted = {(mb.address, mb.protocol_port): mb for mb in body.members}
    new = [key for key in wanted if key not in live]
    check_quotas(session, state.settings, pool.project_id, {m.Member: len(new)})
    lock_load_balancer(session, pool.load_balancer_id)
    for key, member_body in wanted.items():
        if key in live:
            changes = {k: v for k, v in given(member_body).items()
                       if k in s.MemberUpdate.model_fields}
            update_member(live[key], changes)
        else:
            build_member(session, pool, member_body, state.network)
    if not additive_only:
        for key, member in live.items():
            if key not in wanted:
                member.provisioning_status = "PENDING_DELETE"
    session.commit()
    state.on_change()
    return Response(status_code=202)


@router.get("/{member_id}")
def show(pool_id: str, member_id: str, request: Request, session: DB, ctx: Ctx) -> dict[str, Any]:
    fields = parse_options(list(request.query_params.multi_items()), 1).fields
    return {"member": select_fields(views.member(_member(session, ctx, pool_id, member_id)), fields)}


@router.put("/{member_id}")
def update(raw: RawBody, pool_id: str, member_id: str, request: Request, session: DB, ctx: Ctx,
                 state: State) -> dict[str, Any]:
    body = unwrap(raw, "member", s.MemberUpdate)
    member = _member(session, ctx, pool_id, member_id)
    lock_load_balancer(session, member.pool.load_balancer_id)
    update_member(member, given(body))
    session.commit()
    state.on_change()
    return {"member": views.member(member)}


@router.delete("/{member_id}", status_code=204)
def delete(pool_id: str, member_id: str, session: DB, ctx: Ctx, state: State) -> Response:
    member = _member(session, ctx, pool_id, member_id)
    lock_load_balancer(session, member.pool.load_balancer_id)
    member.provisioning_status = "PENDING_DELETE"
    session.commit()
    state.on_change()
    return Response(status_code=204)
