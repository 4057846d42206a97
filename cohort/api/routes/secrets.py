"""``/v1/secrets``: Barbican's secrets API, where tenants store the TLS material listeners and pools reference.

python-barbicanclient (``openstack secret store|get|list|delete``, ``openstack acl ...``,
``openstack secret container ...``) works against it unchanged: ``GET /v1`` answers its
version discovery, a secret is stored with Barbican's body (``payload``,
``payload_content_type`` text/plain or application/octet-stream with base64
``payload_content_encoding``, ``secret_type``, ``name``, ``expiration``, ``algorithm``,
``bit_length``, ``mode``) and its metadata, payload and list answer as Barbican's do. The
returned ``secret_ref`` is what ``default_tls_container_ref`` and the other TLS refs take, as in
Octavia (a PKCS12 secret, as Octavia's cookbook stores one, or PEM).

Cohort's own earlier body (``kind``: certificate, ca or crl, a PEM or base64 PKCS12 ``payload``,
an optional ``passphrase``) is still taken: it is checked at once and kept as PEM. Payloads are
encrypted at rest, never logged, and only returned to whom :mod:`cohort.api.routes.acls` allows.
This router also carries the containers and ACL routes, so the application mounts one router.
"""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from cohort import secrets
from cohort.api.deps import DB, Ctx, RawBody, State
from cohort.api.errors import Conflict
from cohort.api.routes import acls, containers
from cohort.api.routes.barbican import (
    BarbicanFault,
    BarbicanRoute,
    href,
    isotime,
    page,
    paging,
    version_document,
)
from cohort.api.schemas.common import Ident, parse_document
from cohort.db import models as m
from cohort.db.base import utcnow

router = APIRouter(route_class=BarbicanRoute)

MAX_PAYLOAD = 1_000_000  # characters of the JSON payload string
SECRET_TYPES = ("symmetric", "passphrase", "private", "public", "certificate", "opaque")
PLAIN, BINARY = "text/plain", ("application/octet-stream", "application/pkcs8")
Text255 = Annotated[str | None, Field(max_length=255)]


class SecretCreate(BaseModel):
    """Barbican's secret document, and Cohort's earlier one (``kind``, ``passphrase``, ``project_id``)."""

    model_config = ConfigDict(extra="ignore")  # Barbican takes attributes it does not define, and ignores them

    name: Text255 = None
    secret_type: Literal["symmetric", "passphrase", "private", "public", "certificate", "opaque"] = "opaque"
    algorithm: Text255 = None
    mode: Text255 = None
    bit_length: Annotated[int | None, Field(ge=1, le=32767)] = None
    expiration: Text255 = None
    payload: str | None = None
    payload_content_type: Text255 = None
    payload_content_encoding: Literal["base64"] | None = None
    transport_key_needed: Literal["true", "false"] | None = None
    transport_key_id: str | None = None
    kind: Literal["certificate", "ca", "crl"] | None = None
    passphrase: Annotated[str | None, Field(max_length=1024)] = None
    project_id: Ident | None = None


def _invalid(reason: str, field: str) -> BarbicanFault:
    return BarbicanFault(400, f"Provided object does not match schema 'Secret': {reason}. Invalid property: "
                              f"'{field}'")


def content_type(raw: str) -> str | None:
    """Barbican's normal form of a payload content type (text/plain may say charset=utf-8), or None."""
    mime, _, parameter = raw.partition(";")
    mime = mime.strip().lower()
    if parameter:
        key, _, value = parameter.partition("=")
        if key.strip().lower() != "charset" or value.strip().lower() != "utf-8":
            return None
        return PLAIN if mime == PLAIN else None
    return mime if mime == PLAIN or mime in BINARY else None


def _expiration(text: str | None) -> datetime | None:
    if text is None or not text.strip():
        return None
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise _invalid("Invalid date for 'expiration'", "expiration") from exc
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    if moment <= utcnow():
        raise _invalid("'expiration' is before current time", "expiration")
    return moment


def _payload(body: SecretCreate) -> tuple[bytes | None, str | None]:
    """The payload's bytes and normal content type, checked as Barbican checks them."""
    if body.payload is None:
        if body.payload_content_type is not None:
            raise _invalid("payload must be provided when payload_content_type is specified", "payload")
        return None, None
    if len(body.payload) > MAX_PAYLOAD:
        raise BarbicanFault(413, "Provided information too large to process")
    if body.payload_content_type is None:
        raise _invalid("If 'payload' is supplied, 'payload_content_type' must also be supplied.",
                       "payload_content_type")
    kind = content_type(body.payload_content_type)
    if kind is None:
        raise _invalid(f"payload_content_type is not one of {[PLAIN, *BINARY]}", "payload_content_type")
    if kind == PLAIN and body.payload_content_encoding is not None:
        raise _invalid("payload_content_encoding is not one of None", "payload_content_encoding")
    if kind != PLAIN and body.payload_content_encoding != "base64":
        raise _invalid("payload_content_encoding is not one of ['base64', 'binary']", "payload_content_encoding")
    text = body.payload.strip()
    if not text:
        raise _invalid("If 'payload' specified, must be non empty", "payload")
    if kind == PLAIN:
        return text.encode(), kind
    try:  # base64(1) wraps its lines, as in Octavia's cookbook: whitespace is no part of the text
        return base64.b64decode("".join(text.split()), validate=True), kind
    except (binascii.Error, ValueError) as exc:
        raise _invalid("Invalid payload for payload_content_encoding", "payload") from exc


def metadata(request: Request, row: m.Secret) -> dict[str, Any]:
    """A secret as Barbican describes it (exactly its attributes: the client builds objects from them)."""
    body: dict[str, Any] = {
        "secret_ref": href(request, "secrets", row.id), "name": row.name or None, "status": "ACTIVE",
        "created": isotime(row.created_at), "updated": isotime(row.updated_at or row.created_at),
        "secret_type": row.secret_type, "expiration": isotime(row.expiration), "algorithm": row.algorithm,
        "bit_length": row.bit_length, "mode": row.mode, "creator_id": row.creator_id, "consumers": [],
    }
    if row.content_type:
        body["content_types"] = {"default": row.content_type}
    return body


def created(request: Request, row: m.Secret) -> JSONResponse:
    """Barbican's answer (``secret_ref``), with Cohort's earlier attributes beside it (``id``, ``kind``...)."""
    ref = href(request, "secrets", row.id)
    return JSONResponse({"secret_ref": ref, "id": row.id, "name": row.name, "kind": row.kind,
                         "project_id": row.project_id, "created_at": row.created_at.replace(microsecond=0).isoformat()},
                        status_code=201, headers={"Location": ref})


@router.get("/v1")
@router.get("/v1/", include_in_schema=False)
def version(request: Request) -> dict[str, Any]:
    return version_document(request)


@router.post("/v1/secrets", status_code=201)
@router.post("/v1/secrets/", status_code=201, include_in_schema=False)
def create(raw: RawBody, request: Request, session: DB, ctx: Ctx, state: State) -> Response:
    body = parse_document(raw, SecretCreate)
    if body.transport_key_needed == "true" or body.transport_key_id:
        raise _invalid("Cohort has no transport keys: send the payload itself", "transport_key_needed")
    project_id = ctx.owning_project(body.project_id)
    extra: dict[str, Any] = {
        "secret_type": body.secret_type, "algorithm": body.algorithm, "bit_length": body.bit_length,
        "mode": body.mode, "expiration": _expiration(body.expiration), "creator_id": ctx.user_id,
    }
    if body.kind is not None or body.passphrase is not None or (
            body.payload is not None and body.payload_content_type is None):
        row = _store_checked(session, state.secrets_key_file, project_id, body)
        for key, value in extra.items():
            setattr(row, key, value)
    else:
        payload, kind = _payload(body)
        row = secrets.store_payload(session, state.secrets_key_file, project_id, payload, kind,
                                    name=(body.name or "").strip(), **extra)
    session.commit()
    return created(request, row)


def _store_checked(session: Session, key_file: Any, project_id: str, body: SecretCreate) -> m.Secret:
    """Cohort's earlier request: the bundle must be what ``kind`` says (a certificate by default)."""
    text = body.payload or ""
    if not text:
        raise _invalid("If 'payload' specified, must be non empty", "payload")
    if len(text) > MAX_PAYLOAD:
        raise BarbicanFault(413, "Provided information too large to process")
    try:
        payload = (secrets.b64decode_payload(text) if body.payload_content_encoding == "base64" else text.encode())
        return secrets.store(session, key_file, project_id, body.name or "", body.kind or "certificate", payload,
                             body.passphrase.encode() if body.passphrase else None)
    except secrets.BadSecret as exc:
        raise BarbicanFault(400, f"Invalid input for field/attribute payload: {exc}") from exc


@router.get("/v1/secrets")
def list_(request: Request, session: DB, ctx: Ctx) -> dict[str, Any]:
    offset, limit = paging(request)
    params = request.query_params
    now = utcnow()
    query = select(m.Secret).where(or_(m.Secret.expiration.is_(None), m.Secret.expiration > now))
    if params.get("acl_only", "").lower() == "true" and ctx.user_id:
        shared = [acl.entity_id for acl in session.scalars(select(m.SecretAcl).where(
            m.SecretAcl.entity_type == "secret")) if ctx.user_id in (acl.users or [])]
        query = query.where(m.Secret.id.in_(shared))
    else:
        query = query.where(m.Secret.project_id == ctx.project_id)
    for name, column in (("name", m.Secret.name), ("alg", m.Secret.algorithm), ("mode", m.Secret.mode)):
        if params.get(name):
            query = query.where(column.like(params[name]))
    if params.get("secret_type"):
        query = query.where(m.Secret.secret_type == params["secret_type"])
    bits = params.get("bits", "")
    if bits.isdigit() and int(bits) > 0:
        query = query.where(m.Secret.bit_length == int(bits))
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(query.order_by(m.Secret.created_at, m.Secret.id).offset(offset).limit(limit)).all()
    return page(request, "secrets", [metadata(request, row) for row in rows], total, offset, limit)


def _wants_metadata(request: Request) -> bool:
    accept = request.headers.get("accept")
    return not accept or accept.strip() in ("application/json", "*/*")


@router.get("/v1/secrets/{secret_id}")
def show(secret_id: str, request: Request, session: DB, ctx: Ctx, state: State) -> Any:
    if _wants_metadata(request):
        return metadata(request, acls.secret_for(session, ctx, secret_id))
    return _payload_response(request, acls.secret_for(session, ctx, secret_id, payload=True), state)


@router.get("/v1/secrets/{secret_id}/payload", include_in_schema=False)  # see acls.router
def payload(secret_id: str, request: Request, session: DB, ctx: Ctx, state: State) -> Response:
    return _payload_response(request, acls.secret_for(session, ctx, secret_id, payload=True), state)


def _payload_response(request: Request, row: m.Secret, state: Any) -> Response:
    """The payload in the type the client accepts (Barbican's default: application/octet-stream)."""
    accept = (request.headers.get("accept") or "application/octet-stream").strip()
    if accept == "*/*":
        accept = row.content_type or accept
    if not row.content_type:
        raise BarbicanFault(404, "Not Found. Sorry but your secret has no payload.")
    wanted = content_type(accept)
    refused = BarbicanFault(406, "Secret payload retrieval issue seen - Wrong payload content-type.")
    if wanted is None:
        raise refused
    data = secrets.reveal(state.secrets_key_file, row)
    if wanted == PLAIN:
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise refused from exc
    return Response(content=data, media_type=wanted)


@router.delete("/v1/secrets/{secret_id}", status_code=204)
def delete(secret_id: str, session: DB, ctx: Ctx, state: State) -> Response:
    row = acls.secret_for(session, ctx, secret_id, change=True)
    user = secrets.user_of(session, row)
    if user:
        raise Conflict(f"Secret {secret_id} is in use by {user} and cannot be deleted.")
    # As in Barbican, the secret leaves the containers that hold it.
    holders = session.scalars(select(m.ContainerSecret).where(m.ContainerSecret.secret_id == row.id)).all()
    for item in holders:
        container = item.container
        container.secrets.remove(item)
        session.flush()
        container.kind = secrets.container_kind(session, state.secrets_key_file, container)
        container.updated_at = utcnow()
    acls.forget(session, row.id)
    session.delete(row)
    session.commit()
    return Response(status_code=204)


router.include_router(containers.router)
router.include_router(acls.router)
