"""``/v2/lbaas/loadbalancers``: create (also as a whole tree), read, update, delete, status, stats, failover."""

from __future__ import annotations

import ipaddress
import json
from typing import Any

from fastapi import APIRouter, Request, Response
from sqlalchemy import Select, bindparam, literal_column, select, union_all
from sqlalchemy.orm import Session

from cohort import secrets
from cohort.api import lb_json, views
from cohort.api.builders import build_listener, build_pool, set_fields
from cohort.api.collection import list_collection, page_of
from cohort.api.deps import DB, AppState, Ctx, RawBody, State
from cohort.api.errors import APIFault, InvalidInput, NotAuthorized, NotFound
from cohort.api.guards import check_bgp_speaker, check_quotas, lock_load_balancer, visible
from cohort.api.listing import parse_options, select_fields
from cohort.api.routing import JSONRoute
from cohort.api.schemas import lbaas as s
from cohort.api.schemas.common import given, unwrap
from cohort.api.stats import stats_body, sum_listener_stats
from cohort.db import models as m

router = APIRouter(prefix="/lbaas/loadbalancers", route_class=JSONRoute)

PROVIDERS = {"amphora", "octavia"}


# The hot reads (show, list) use prebuilt statements on the tables: an ORM load with its
# relationships costs several times more than the two small queries that the view needs.
LB_TABLE = m.LoadBalancer.__table__
LB_BY_ID = select(LB_TABLE).where(LB_TABLE.c.id == bindparam("lb_id"))
_LISTENER, _POOL = m.Listener.__table__, m.Pool.__table__
CHILD_IDS = union_all(
    select(_LISTENER.c.load_balancer_id.label("lb_id"), _LISTENER.c.id, literal_column("'listener'").label("kind"),
           _LISTENER.c.created_at).where(_LISTENER.c.load_balancer_id.in_(bindparam("lb_ids", expanding=True))),
    select(_POOL.c.load_balancer_id.label("lb_id"), _POOL.c.id, literal_column("'pool'").label("kind"),
           _POOL.c.created_at).where(_POOL.c.load_balancer_id.in_(bindparam("lb_ids", expanding=True))),
).order_by("created_at", "id")


def child_ids(session: Session, lb_ids: list[str]) -> dict[str, tuple[list[str], list[str]]]:
    """Listener and pool ids of each load balancer, in creation order, in one query."""
    found: dict[str, tuple[list[str], list[str]]] = {lb_id: ([], []) for lb_id in lb_ids}
    if lb_ids:
        for row in session.connection().execute(CHILD_IDS, {"lb_ids": lb_ids}):
            found[row.lb_id][0 if row.kind == "listener" else 1].append(row.id)
    return found


def lb_views(session: Session, rows: list[Any]) -> list[dict[str, Any]]:
    children = child_ids(session, [row.id for row in rows])
    return [views.load_balancer(row, *children[row.id]) for row in rows]


def resolve_flavor(session: Session, flavor_id: str | None) -> dict[str, Any]:
    if flavor_id is None:
        return {}
    flavor = session.get(m.Flavor, flavor_id)
    if flavor is None:
        raise InvalidInput(f"Flavor {flavor_id} not found.")
    if not flavor.enabled:
        raise InvalidInput(f"The selected flavor is not allowed: Flavor {flavor_id} is disabled.")
    profile = session.get(m.FlavorProfile, flavor.flavor_profile_id)
    data: dict[str, Any] = json.loads(profile.flavor_data) if profile else {}
    return data


def _vip(state: AppState, body: s.LoadBalancerCreate) -> tuple[str, str]:
    subnet = None
    if body.vip_port_id:
        raise InvalidInput(f"Port {body.vip_port_id} not found: Cohort allocates VIP ports itself; "
                           "give vip_subnet_id or vip_network_id.")
    if body.vip_subnet_id:
        subnet = state.network.get_subnet(body.vip_subnet_id)
        if subnet is None:
            raise InvalidInput(f"Subnet {body.vip_subnet_id} not found.")
        if subnet.any_address:  # a noop stand-in: taken with whatever network and address came with it
            return subnet.id, body.vip_network_id or subnet.network_id
        if body.vip_network_id and body.vip_network_id != subnet.network_id:
            raise InvalidInput(f"Subnet {subnet.id} is not on network {body.vip_network_id}.")
    elif body.vip_network_id:
        candidates = state.network.subnets_on_network(body.vip_network_id)
        if body.vip_address:
            candidates = [c for c in candidates if c.any_address or ipaddress.ip_address(body.vip_address) in
                          ipaddress.ip_network(c.cidr)]
        if not candidates:
            raise InvalidInput(f"Network {body.vip_network_id} not found or has no usable subnet.")
        subnet = candidates[0]
    assert subnet is not None
    if body.vip_address and not subnet.any_address and \
            ipaddress.ip_address(body.vip_address) not in ipaddress.ip_network(subnet.cidr):
        raise InvalidInput(f"VIP address {body.vip_address} is not in subnet {subnet.id} ({subnet.cidr}).")
    return subnet.id, subnet.network_id


def _topology(state: AppState, flavor: dict[str, Any]) -> str:
    return str(flavor.get("loadbalancer_topology") or state.settings.default_topology)


@router.post("", status_code=201)
def create(raw: RawBody, request: Request, session: DB, ctx: Ctx, state: State) -> dict[str, Any]:
    body = unwrap(raw, "loadbalancer", s.LoadBalancerCreate)
    project_id = ctx.owning_project(body.project_id)
    provider = body.provider or state.settings.default_provider
    if provider not in PROVIDERS:
        raise InvalidInput(f"Provider '{provider}' is not enabled.")
    flavor = resolve_flavor(session, body.flavor_id)
    if body.availability_zone:
        zone = session.get(m.AvailabilityZone, body.availability_zone)
        if zone is None or not zone.enabled:
            raise InvalidInput(f"Availability zone {body.availability_zone} not found or disabled.")
    subnet_id, network_id = _vip(state, body)
    if _topology(state, flavor) == "ACTIVE_ACTIVE" and flavor.get("distributor_type") == "L3_BGP":
        check_bgp_speaker(session, flavor.get("bgp_speaker_id") or state.settings.default_bgp_speaker_id)
    check_quotas(session, state.settings, project_id, body)
    fields = {k: v for k, v in given(body).items()
              if k not in ("listeners", "pools", "project_id", "provider", "vip_subnet_id", "vip_network_id",
                           "vip_port_id") and v is not None}
    lb = m.LoadBalancer(
        project_id=project_id, provisioning_status="PENDING_CREATE", operating_status="OFFLINE",
        provider=provider, vip_subnet_id=subnet_id, vip_network_id=network_id,
        topology=_topology(state, flavor), listeners=[], pools=[], **fields,
    )
    session.add(lb)
    session.flush()
    if lb.topology == "ACTIVE_ACTIVE":
        session.add(m.AmphoraCluster(
            load_balancer_id=lb.id, cluster_name=f"cluster-{lb.id[:8]}",
            desired_size=int(flavor.get("amp_cluster_size", 3)), min_size=int(flavor.get("amp_cluster_min_size", 2)),
            cooldown=int(flavor.get("amp_cluster_cooldown", 30)),
            cluster_type=str(flavor.get("distributor_type", "L2")),
        ))
    _build_tree(session, state, lb, body)
    session.commit()
    state.on_change()
    return {"loadbalancer": lb_views(session, [lb])[0]}


def _build_tree(session: Session, state: AppState, lb: m.LoadBalancer, body: s.LoadBalancerCreate) -> None:
    """The single-call create (its quotas were checked for the whole tree before the load balancer was made)."""
    stored_only = secrets.refs_must_be_stored(state.settings)
    for pool_body in body.pools or []:
        build_pool(session, lb, pool_body, network=state.network, stored_only=stored_only)
    for listener_body in body.listeners or []:
        build_listener(session, lb, listener_body, network=state.network, stored_only=stored_only)


def rendered_bodies(session: Session, rows: list[Any], fields: list[str]) -> list[str]:
    """JSON texts of rows selected with :func:`lb_json.body_column`, with their listener and pool ids."""
    children = child_ids(session, [row.id for row in rows])
    return [lb_json.with_children(row.body, *children[row.id], fields=fields) for row in rows]


def _rendered_select(fields: list[str]) -> Select[Any]:
    return select(LB_TABLE.c.id, LB_TABLE.c.project_id, lb_json.body_column(fields))


RENDERED_BY_ID = _rendered_select([]).where(LB_TABLE.c.id == bindparam("lb_id"))


@router.get("")
def list_(request: Request, session: DB, ctx: Ctx, state: State) -> Any:
    if not lb_json.supported(lb_json.session_engine(session)):
        return list_collection(request, session, ctx, m.LoadBalancer, "loadbalancers", None, select(LB_TABLE),
                               batch_view=lambda rows: lb_views(session, rows),
                               max_limit=state.settings.api_max_page, entities=False)
    options = parse_options(list(request.query_params.multi_items()), state.settings.api_max_page)
    rows, links = page_of(request, session, ctx, m.LoadBalancer, _rendered_select(options.fields), options,
                          entities=False)
    bodies = ",".join(rendered_bodies(session, rows, options.fields))
    content = f'{{"loadbalancers":[{bodies}],"loadbalancers_links":{json.dumps(links)}}}'
    return Response(content, media_type="application/json")


def _unseen(ctx: Ctx, lb_id: str, exists: bool) -> APIFault:
    """Another project's load balancer is a 403 under a policy (as in Octavia), else unknown."""
    return NotAuthorized() if exists and ctx.forbids_openly else NotFound("Load Balancer", lb_id)


@router.get("/{lb_id}")
def show(lb_id: str, request: Request, session: DB, ctx: Ctx) -> Any:
    fields = parse_options(list(request.query_params.multi_items()), 1).fields
    if not lb_json.supported(lb_json.session_engine(session)):
        row = session.connection().execute(LB_BY_ID, {"lb_id": lb_id}).one_or_none()
        if row is None or not ctx.can_see(row.project_id):
            raise _unseen(ctx, lb_id, row is not None)
        return {"loadbalancer": select_fields(lb_views(session, [row])[0], fields)}
    statement = RENDERED_BY_ID if not fields else _rendered_select(fields).where(LB_TABLE.c.id == bindparam("lb_id"))
    row = session.connection().execute(statement, {"lb_id": lb_id}).one_or_none()
    if row is None or not ctx.can_see(row.project_id):
        raise _unseen(ctx, lb_id, row is not None)
    return Response(f'{{"loadbalancer":{rendered_bodies(session, [row], fields)[0]}}}',
                    media_type="application/json")


@router.put("/{lb_id}")
def update(raw: RawBody, lb_id: str, request: Request, session: DB, ctx: Ctx, state: State) -> dict[str, Any]:
    body = unwrap(raw, "loadbalancer", s.LoadBalancerUpdate)
    lb = visible(session, ctx, m.LoadBalancer, lb_id)
    lock_load_balancer(session, lb_id)
    set_fields(lb, given(body))
    session.commit()
    state.on_change()
    # The object as this change left it (PENDING_UPDATE), even if the reconciler is already done.
    return {"loadbalancer": lb_views(session, [lb])[0]}


@router.delete("/{lb_id}", status_code=204)
def delete(lb_id: str, request: Request, session: DB, ctx: Ctx, state: State) -> Response:
    lb = visible(session, ctx, m.LoadBalancer, lb_id)
    cascade = request.query_params.get("cascade", "false").lower() in ("true", "1", "yes")
    children: list[Any] = [*lb.listeners, *lb.pools]
    if not cascade and any(o.provisioning_status != "PENDING_DELETE" for o in children):
        raise InvalidInput(f"Cannot delete Load Balancer {lb_id} - it has children")
    lock_load_balancer(session, lb_id, "PENDING_DELETE")
    if cascade:
        mark_tree_deleted(session, lb)
    session.commit()
    state.on_change()
    return Response(status_code=204)


def mark_tree_deleted(session: Session, lb: m.LoadBalancer) -> None:
    for listener in lb.listeners:
        listener.provisioning_status = "PENDING_DELETE"
        for policy in listener.l7policies:
            policy.provisioning_status = "PENDING_DELETE"
            for rule in policy.rules:
                rule.provisioning_status = "PENDING_DELETE"
    for pool in lb.pools:
        pool.provisioning_status = "PENDING_DELETE"
        if pool.health_monitor is not None:
            pool.health_monitor.provisioning_status = "PENDING_DELETE"
        for member in pool.members:
            member.provisioning_status = "PENDING_DELETE"


@router.get("/{lb_id}/status")
@router.get("/{lb_id}/statuses")
def status_tree(lb_id: str, session: DB, ctx: Ctx) -> dict[str, Any]:
    lb = visible(session, ctx, m.LoadBalancer, lb_id)

    def status(row: Any) -> dict[str, Any]:
        return {"id": row.id, "name": row.name, "provisioning_status": row.provisioning_status,
                "operating_status": row.operating_status}

    def pool_status(pool: m.Pool) -> dict[str, Any]:
        body = status(pool)
        if pool.health_monitor is not None:
            body["health_monitor"] = {**status(pool.health_monitor), "type": pool.health_monitor.type}
        body["members"] = [{**status(member), "address": member.address, "protocol_port": member.protocol_port}
                           for member in pool.members]
        return body

    listeners = []
    for listener in lb.listeners:
        pool_ids = [listener.default_pool_id] + [p.redirect_pool_id for p in listener.l7policies]
        pools = [pool for pool in lb.pools if pool.id in pool_ids]
        listeners.append({**status(listener), "pools": [pool_status(pool) for pool in pools]})
    return {"statuses": {"loadbalancer": {**status(lb), "listeners": listeners}}}


@router.get("/{lb_id}/stats")
def stats(lb_id: str, session: DB, ctx: Ctx) -> dict[str, Any]:
    lb = visible(session, ctx, m.LoadBalancer, lb_id)
    return stats_body(sum_listener_stats(session, [listener.id for listener in lb.listeners]))


@router.put("/{lb_id}/failover", status_code=202)
def failover(lb_id: str, session: DB, ctx: Ctx, state: State) -> Response:
    ctx.require_admin()
    visible(session, ctx, m.LoadBalancer, lb_id)
    lock_load_balancer(session, lb_id)
    request_amphora_replacement(session, lb_id)
    session.commit()
    state.on_change()
    return Response(status_code=202)


def request_amphora_replacement(session: Session, lb_id: str, amphora_id: str | None = None) -> int:
    """Flag amphorae for the reconciler to rebuild (a replacement comes up before the old one goes)."""
    query = select(m.Amphora).where(m.Amphora.load_balancer_id == lb_id, m.Amphora.status != "DELETED")
    if amphora_id is not None:
        query = query.where(m.Amphora.id == amphora_id)
    count = 0
    for amphora in session.scalars(query):
        amphora.status = "PENDING_DELETE"
        count += 1
    return count

