"""Operator API under ``/v2/octavia``: amphorae, clusters, distributors and BGP profiles (admin only)."""

from __future__ import annotations

import json
import time
from typing import Any

from fastapi import APIRouter, Request, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from cohort import secrets
from cohort.api import bgp_usage, views
from cohort.api.collection import list_collection
from cohort.api.deps import DB, AppState, Ctx, RawBody, State
from cohort.api.errors import Conflict, InvalidInput, NotFound
from cohort.api.guards import lock_load_balancer
from cohort.api.listing import parse_options, select_fields
from cohort.api.routes.loadbalancers import request_amphora_replacement
from cohort.api.routing import JSONRoute
from cohort.api.schemas import admin as a
from cohort.api.schemas.common import given, unwrap
from cohort.db import models as m
from cohort.db.infra import distributor_operating_status, serves_vips

router = APIRouter(prefix="/octavia", route_class=JSONRoute)

LIVE_AMPHORA = ("BOOTING", "ALLOCATED", "READY", "PENDING_CREATE", "ERROR", "PENDING_DELETE")


def _get(session: Session, model: type[Any], ident: str, label: str) -> Any:
    row = session.get(model, ident)
    if row is None:
        raise NotFound(label, ident)
    return row


# Amphorae ---------------------------------------------------------------------------------------

@router.get("/amphorae")
def list_amphorae(request: Request, session: DB, ctx: Ctx) -> dict[str, Any]:
    ctx.require_admin()
    query = select(m.Amphora).where(m.Amphora.status != "DELETED")
    return list_collection(request, session, ctx, m.Amphora, "amphorae", views.amphora, query,
                           aliases={"loadbalancer_id": "load_balancer_id"}, scoped=False)


@router.get("/amphorae/{ident}")
def show_amphora(ident: str, request: Request, session: DB, ctx: Ctx) -> dict[str, Any]:
    ctx.require_admin()
    fields = parse_options(list(request.query_params.multi_items()), 1).fields
    return {"amphora": select_fields(views.amphora(_get(session, m.Amphora, ident, "Amphora")), fields)}


@router.get("/amphorae/{ident}/stats")
def amphora_stats(ident: str, session: DB, ctx: Ctx) -> dict[str, Any]:
    ctx.require_admin()
    amphora = _get(session, m.Amphora, ident, "Amphora")
    rows = session.scalars(select(m.ListenerStatistics).where(m.ListenerStatistics.amphora_id == ident)).all()
    return {"amphora_stats": [
        {"id": row.listener_id, "listener_id": row.listener_id, "amphora_id": ident,
         "loadbalancer_id": amphora.load_balancer_id, "bytes_in": row.bytes_in, "bytes_out": row.bytes_out,
         "active_connections": row.active_connections, "total_connections": row.total_connections,
         "request_errors": row.request_errors}
        for row in rows
    ]}


def _lock_amphora_lb(session: Session, amphora: m.Amphora) -> None:
    if amphora.load_balancer_id is None:
        raise Conflict(f"Amphora {amphora.id} serves no load balancer.")
    lock_load_balancer(session, amphora.load_balancer_id)


@router.put("/amphorae/{ident}/config", status_code=202)
def amphora_config(ident: str, session: DB, ctx: Ctx, state: State) -> Response:
    """Push the amphora's configuration again (the reconciler re-applies it)."""
    ctx.require_admin()
    amphora = _get(session, m.Amphora, ident, "Amphora")
    _lock_amphora_lb(session, amphora)
    amphora.applied_generation = 0
    session.commit()
    state.on_change()
    return Response(status_code=202)


@router.put("/amphorae/{ident}/failover", status_code=202)
def amphora_failover(ident: str, session: DB, ctx: Ctx, state: State) -> Response:
    ctx.require_admin()
    amphora = _get(session, m.Amphora, ident, "Amphora")
    _lock_amphora_lb(session, amphora)
    assert amphora.load_balancer_id is not None
    request_amphora_replacement(session, amphora.load_balancer_id, ident)
    session.commit()
    state.on_change()
    return Response(status_code=202)


# Clusters ---------------------------------------------------------------------------------------

def _cluster_view(session: Session, row: m.AmphoraCluster) -> dict[str, Any]:
    amphorae = session.scalars(select(m.Amphora).where(
        m.Amphora.load_balancer_id == row.load_balancer_id, m.Amphora.role == "IN_CLUSTER",
        m.Amphora.status.in_(LIVE_AMPHORA))).all()
    healthy = [amp for amp in amphorae if amp.status in ("ALLOCATED", "READY")]
    bgp = None
    if row.cluster_type == "L3_BGP":
        # What each amphora's speaker last reported: its sessions per peer and what it announces.
        bgp = {}
        for amp in amphorae:
            health = session.get(m.AmphoraHealth, amp.id)
            try:
                bgp[amp.id] = json.loads(health.bgp) if health is not None and health.bgp else None
            except ValueError:
                bgp[amp.id] = None
    return views.cluster(row, [amp.id for amp in amphorae], len(healthy), bgp)


@router.get("/clusters")
def list_clusters(request: Request, session: DB, ctx: Ctx) -> dict[str, Any]:
    ctx.require_admin()
    return list_collection(request, session, ctx, m.AmphoraCluster, "clusters",
                           lambda row: _cluster_view(session, row),
                           aliases={"loadbalancer_id": "load_balancer_id"}, scoped=False)


@router.get("/clusters/{ident}")
def show_cluster(ident: str, session: DB, ctx: Ctx) -> dict[str, Any]:
    ctx.require_admin()
    return {"cluster": _cluster_view(session, _get(session, m.AmphoraCluster, ident, "Cluster"))}


@router.put("/clusters/{ident}")
def update_cluster(raw: RawBody, ident: str, request: Request, session: DB, ctx: Ctx, state: State) -> dict[str, Any]:
    ctx.require_admin()
    body = unwrap(raw, "cluster", a.ClusterUpdate)
    row = _get(session, m.AmphoraCluster, ident, "Cluster")
    changes = {k: v for k, v in given(body).items() if v is not None}
    desired = changes.get("desired_size", row.desired_size)
    minimum = changes.get("min_size", row.min_size)
    if minimum > desired:
        raise InvalidInput(f"min_size ({minimum}) must not exceed desired_size ({desired}).")
    if desired < 2:
        raise InvalidInput("An ACTIVE_ACTIVE cluster needs desired_size >= 2.")
    lock_load_balancer(session, row.load_balancer_id)
    for key, value in changes.items():
        setattr(row, key, value)
    row.provisioning_status = "PENDING_UPDATE"
    session.commit()
    state.on_change()
    return {"cluster": _cluster_view(session, row)}


# Distributors -----------------------------------------------------------------------------------

def _distributor_view(session: Session, row: m.Distributor, stale_after: float) -> dict[str, Any]:
    # Both members of a pair serve every cluster of their type; a failed, deleted or spare one serves none.
    registrations = [] if not serves_vips(row) else session.scalars(
        select(m.AmphoraRegistration).join(
            m.AmphoraCluster, m.AmphoraCluster.load_balancer_id == m.AmphoraRegistration.load_balancer_id)
        .where(m.AmphoraCluster.cluster_type == row.distributor_type)).all()
    health = session.get(m.DistributorHealth, row.id)
    status = distributor_operating_status(row.status, health, stale_after, time.time())
    return views.distributor(row, list(registrations), status, health.last_update if health else None)


@router.get("/distributors")
def list_distributors(request: Request, session: DB, ctx: Ctx, state: State) -> dict[str, Any]:
    ctx.require_admin()
    stale_after = state.settings.distributor_stale_after
    return list_collection(request, session, ctx, m.Distributor, "distributors",
                           lambda row: _distributor_view(session, row, stale_after), scoped=False)


@router.get("/distributors/{ident}")
def show_distributor(ident: str, session: DB, ctx: Ctx, state: State) -> dict[str, Any]:
    ctx.require_admin()
    row = _get(session, m.Distributor, ident, "Distributor")
    return {"distributor": _distributor_view(session, row, state.settings.distributor_stale_after)}


# BGP speakers and peers -------------------------------------------------------------------------

@router.post("/bgp_speakers", status_code=201)
def create_speaker(raw: RawBody, request: Request, session: DB, ctx: Ctx) -> dict[str, Any]:
    ctx.require_admin()
    body = unwrap(raw, "bgp_speaker", a.BgpSpeakerCreate)
    row = m.BgpSpeaker(**{k: v for k, v in body.model_dump().items() if v is not None})
    session.add(row)
    session.commit()
    return {"bgp_speaker": views.bgp_speaker(row)}


@router.get("/bgp_speakers")
def list_speakers(request: Request, session: DB, ctx: Ctx) -> dict[str, Any]:
    ctx.require_admin()
    return list_collection(request, session, ctx, m.BgpSpeaker, "bgp_speakers", views.bgp_speaker, scoped=False)


@router.get("/bgp_speakers/{ident}")
def show_speaker(ident: str, session: DB, ctx: Ctx) -> dict[str, Any]:
    ctx.require_admin()
    return {"bgp_speaker": views.bgp_speaker(_get(session, m.BgpSpeaker, ident, "BGP speaker"))}


@router.put("/bgp_speakers/{ident}")
def update_speaker(raw: RawBody, ident: str, request: Request, session: DB, ctx: Ctx,
                   state: State) -> dict[str, Any]:
    ctx.require_admin()
    body = unwrap(raw, "bgp_speaker", a.BgpSpeakerUpdate)
    row = _get(session, m.BgpSpeaker, ident, "BGP speaker")
    for key, value in given(body).items():
        if value is not None:
            setattr(row, key, value)
    users = bgp_usage.reconfigure_users(session, row.id, state.settings.default_bgp_speaker_id)
    session.commit()
    if users:
        state.on_change()
    return {"bgp_speaker": views.bgp_speaker(row)}


@router.delete("/bgp_speakers/{ident}", status_code=204)
def delete_speaker(ident: str, session: DB, ctx: Ctx, state: State) -> Response:
    ctx.require_admin()
    row = _get(session, m.BgpSpeaker, ident, "BGP speaker")
    bgp_usage.require_unused(session, row.id, state.settings.default_bgp_speaker_id, f"BGP speaker {row.id}")
    session.delete(row)
    session.commit()
    return Response(status_code=204)


def _check_peer(session: Session, fields: dict[str, Any], existing: m.BgpPeer | None = None) -> None:
    speaker_id = fields.get("bgp_speaker_id")
    if speaker_id and session.get(m.BgpSpeaker, speaker_id) is None:
        raise InvalidInput(f"BGP speaker {speaker_id} not found.")
    hold = fields.get("hold_time", existing.hold_time if existing else 90)
    if "hold_time" in fields and "keepalive_interval" not in fields:
        # The usual BGP timers: keepalives at a third of the hold time (none when it is 0).
        fields["keepalive_interval"] = hold // 3
    keepalive = fields.get("keepalive_interval", existing.keepalive_interval if existing else 30)
    if hold and keepalive >= hold:
        raise InvalidInput(f"keepalive_interval ({keepalive}) must be less than hold_time ({hold}).")
    auth = fields.get("auth_type", existing.auth_type if existing else None)
    password = fields.get("md5_password") or (existing is not None and existing.md5_password_ciphertext is not None)
    if auth == "md5" and not password:
        raise InvalidInput("md5_password is required when auth_type is md5.")
    if password and auth != "md5":
        raise InvalidInput("md5_password needs auth_type md5.")


def _peer_changed(session: Session, state: AppState, *speaker_ids: str | None) -> None:
    """Every load balancer whose speaker the peer belongs (or belonged) to gets the change."""
    for speaker_id in {s for s in speaker_ids if s}:
        bgp_usage.reconfigure_users(session, speaker_id, state.settings.default_bgp_speaker_id)


def _encrypt_password(state: AppState, fields: dict[str, Any]) -> None:
    """Replace a sent md5_password by its ciphertext: it is never stored readable."""
    password = fields.pop("md5_password", None)
    if password is not None:
        fields["md5_password_ciphertext"] = secrets.encrypt_text(state.secrets_key_file, password)


@router.post("/bgp_peers", status_code=201)
def create_peer(raw: RawBody, request: Request, session: DB, ctx: Ctx, state: State) -> dict[str, Any]:
    ctx.require_admin()
    body = unwrap(raw, "bgp_peer", a.BgpPeerCreate)
    fields = {k: v for k, v in body.model_dump().items() if v is not None}
    _check_peer(session, fields)
    _encrypt_password(state, fields)
    row = m.BgpPeer(**fields)
    session.add(row)
    _peer_changed(session, state, row.bgp_speaker_id)
    session.commit()
    state.on_change()
    return {"bgp_peer": views.bgp_peer(row)}


@router.get("/bgp_peers")
def list_peers(request: Request, session: DB, ctx: Ctx) -> dict[str, Any]:
    ctx.require_admin()
    return list_collection(request, session, ctx, m.BgpPeer, "bgp_peers", views.bgp_peer, scoped=False)


@router.get("/bgp_peers/{ident}")
def show_peer(ident: str, session: DB, ctx: Ctx) -> dict[str, Any]:
    ctx.require_admin()
    return {"bgp_peer": views.bgp_peer(_get(session, m.BgpPeer, ident, "BGP peer"))}


@router.put("/bgp_peers/{ident}")
def update_peer(raw: RawBody, ident: str, request: Request, session: DB, ctx: Ctx, state: State) -> dict[str, Any]:
    ctx.require_admin()
    body = unwrap(raw, "bgp_peer", a.BgpPeerUpdate)
    row = _get(session, m.BgpPeer, ident, "BGP peer")
    fields = {k: v for k, v in given(body).items() if v is not None}
    _check_peer(session, fields, row)
    _encrypt_password(state, fields)
    before = row.bgp_speaker_id
    for key, value in fields.items():
        setattr(row, key, value)
    _peer_changed(session, state, before, row.bgp_speaker_id)
    session.commit()
    state.on_change()
    return {"bgp_peer": views.bgp_peer(row)}


@router.delete("/bgp_peers/{ident}", status_code=204)
def delete_peer(ident: str, session: DB, ctx: Ctx, state: State) -> Response:
    ctx.require_admin()
    row = _get(session, m.BgpPeer, ident, "BGP peer")
    if row.bgp_speaker_id:
        bgp_usage.require_unused(session, row.bgp_speaker_id, state.settings.default_bgp_speaker_id,
                                 f"BGP peer {row.id}")
    session.delete(row)
    session.commit()
    return Response(status_code=204)
