"""``/v2/lbaas/l7policies`` and ``/v2/lbaas/l7policies/{id}/rules``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from cohort.api import views
from cohort.api.builders import (
    apply_changes,
    build_l7policy,
    build_l7rule,
    place_policy,
    validate_policy,
    validate_rule,
)
from cohort.api.collection import list_collection
from cohort.api.deps import DB, Ctx, RawBody, State
from cohort.api.errors import NotFound
from cohort.api.guards import check_quotas, lock_load_balancer, visible
from cohort.api.listing import parse_options, select_fields
from cohort.api.routing import JSONRoute
from cohort.api.schemas import lbaas as s
from cohort.api.schemas.common import given, unwrap
from cohort.db import models as m

router = APIRouter(prefix="/lbaas/l7policies", route_class=JSONRoute)

POLICY_FIELDS = ("action", "redirect_pool_id", "redirect_url", "redirect_prefix", "redirect_http_code")


@router.post("", status_code=201)
def create_policy(raw: RawBody, request: Request, session: DB, ctx: Ctx, state: State) -> dict[str, Any]:
    body = unwrap(raw, "l7policy", s.L7PolicyCreate)
    listener = visible(session, ctx, m.Listener, body.listener_id)
    check_quotas(session, state.settings, listener.project_id, body)
    lock_load_balancer(session, listener.load_balancer_id)
    policy = build_l7policy(session, listener, body)
    session.commit()
    state.on_change()
    return {"l7policy": views.l7policy(policy)}


@router.get("")
def list_policies(request: Request, session: DB, ctx: Ctx, state: State) -> dict[str, Any]:
    query = select(m.L7Policy).options(selectinload(m.L7Policy.rules))
    return list_collection(request, session, ctx, m.L7Policy, "l7policies", views.l7policy, query,
                           max_limit=state.settings.api_max_page)


@router.get("/{policy_id}")
def show_policy(policy_id: str, request: Request, session: DB, ctx: Ctx) -> dict[str, Any]:
    fields = parse_options(list(request.query_params.multi_items()), 1).fields
    return {"l7policy": select_fields(views.l7policy(visible(session, ctx, m.L7Policy, policy_id)), fields)}


@router.put("/{policy_id}")
def update_policy(raw: RawBody, policy_id: str, request: Request, session: DB, ctx: Ctx,
                  state: State) -> dict[str, Any]:
    body = unwrap(raw, "l7policy", s.L7PolicyUpdate)
    policy = visible(session, ctx, m.L7Policy, policy_id)
    changes = given(body)
    merged = {name: getattr(policy, name) for name in POLICY_FIELDS}
    if "action" in changes and changes["action"] != policy.action:
        merged = {"action": changes["action"]}
    merged.update({k: v for k, v in changes.items() if k in POLICY_FIELDS})
    validate_policy(session, policy.listener, merged)
    lock_load_balancer(session, policy.listener.load_balancer_id)
    position = changes.pop("position", None)
    if "action" in changes:
        for name in POLICY_FIELDS[1:]:
            changes.setdefault(name, merged.get(name))
    apply_changes(policy, changes)
    if position is not None:
        place_policy(policy.listener, policy, position)
    session.commit()
    state.on_change()
    return {"l7policy": views.l7policy(policy)}


@router.delete("/{policy_id}", status_code=204)
def delete_policy(policy_id: str, session: DB, ctx: Ctx, state: State) -> Response:
    policy = visible(session, ctx, m.L7Policy, policy_id)
    lock_load_balancer(session, policy.listener.load_balancer_id)
    policy.provisioning_status = "PENDING_DELETE"
    for rule in policy.rules:
        rule.provisioning_status = "PENDING_DELETE"
    session.commit()
    state.on_change()
    return Response(status_code=204)


def _rule(session: Any, ctx: Any, policy_id: str, rule_id: str) -> m.L7Rule:
    rule = visible(session, ctx, m.L7Rule, rule_id)
    if rule.l7policy_id != policy_id:
        raise NotFound("L7 Rule", rule_id)
    return rule


@router.post("/{policy_id}/rules", status_code=201)
def create_rule(raw: RawBody, policy_id: str, request: Request, session: DB, ctx: Ctx, state: State) -> dict[str, Any]:
    body = unwrap(raw, "rule", s.L7RuleCreate)
    policy = visible(session, ctx, m.L7Policy, policy_id)
    check_quotas(session, state.settings, policy.project_id, body)
    lock_load_balancer(session, policy.listener.load_balancer_id)
    rule = build_l7rule(session, policy, body)
    session.commit()
    state.on_change()
    return {"rule": views.l7rule(rule)}


@router.get("/{policy_id}/rules")
def list_rules(policy_id: str, request: Request, session: DB, ctx: Ctx, state: State) -> dict[str, Any]:
    visible(session, ctx, m.L7Policy, policy_id)
    query = select(m.L7Rule).where(m.L7Rule.l7policy_id == policy_id)
    return list_collection(request, session, ctx, m.L7Rule, "rules", views.l7rule, query,
                           max_limit=state.settings.api_max_page)


@router.get("/{policy_id}/rules/{rule_id}")
def show_rule(policy_id: str, rule_id: str, request: Request, session: DB, ctx: Ctx) -> dict[str, Any]:
    fields = parse_options(list(request.query_params.multi_items()), 1).fields
    return {"rule": select_fields(views.l7rule(_rule(session, ctx, policy_id, rule_id)), fields)}


@router.put("/{policy_id}/rules/{rule_id}")
def update_rule(raw: RawBody, policy_id: str, rule_id: str, request: Request, session: DB, ctx: Ctx,
                      state: State) -> dict[str, Any]:
    body = unwrap(raw, "rule", s.L7RuleUpdate)
    rule = _rule(session, ctx, policy_id, rule_id)
    changes = given(body)
    merged = {"type": rule.type, "compare_type": rule.compare_type, "key": rule.key, "value": rule.value}
    merged.update({k: v for k, v in changes.items() if k in merged})
    validate_rule(merged)
    lock_load_balancer(session, rule.l7policy.listener.load_balancer_id)
    apply_changes(rule, changes)
    session.commit()
    state.on_change()
    return {"rule": views.l7rule(rule)}


@router.delete("/{policy_id}/rules/{rule_id}", status_code=204)
def delete_rule(policy_id: str, rule_id: str, session: DB, ctx: Ctx, state: State) -> Response:
    rule = _rule(session, ctx, policy_id, rule_id)
    lock_load_balancer(session, rule.l7policy.listener.load_balancer_id)
    rule.provisioning_status = "PENDING_DELETE"
    session.commit()
    state.on_change()
    return Response(status_code=204)
