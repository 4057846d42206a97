"""``/v1/secrets``: where tenants store TLS material that listeners and pools reference.

A small Barbican-shaped store (Cohort has no Barbican): POST returns a ``secret_ref`` to use as
``default_tls_container_ref``, ``sni_container_refs``, ``client_ca_tls_container_ref`` and the like.
Payloads are write-only: they are never returned.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request, Response
from pydantic import Field

from cohort import secrets
from cohort.api.deps import DB, Ctx, RawBody, State
from cohort.api.errors import Conflict, InvalidInput, NotFound
from cohort.api.routing import JSONRoute
from cohort.api.schemas.common import Body, Ident, Name, parse_document
from cohort.db import models as m

router = APIRouter(prefix="/v1/secrets", route_class=JSONRoute)


class SecretCreate(Body):
    name: Name = ""
    kind: Literal["certificate", "ca", "crl"] = "certificate"
    payload: Annotated[str, Field(min_length=1, max_length=1_000_000)]
    payload_content_encoding: Literal["base64"] | None = None
    passphrase: str | None = None
    project_id: Ident | None = None


def view(request: Request, row: m.Secret) -> dict[str, Any]:
    base = str(request.base_url).rstrip("/")
    return {"id": row.id, "secret_ref": f"{base}/v1/secrets/{row.id}", "name": row.name, "kind": row.kind,
            "project_id": row.project_id, "created_at": row.created_at.replace(microsecond=0).isoformat()}


@router.post("", status_code=201)
def create(raw: RawBody, request: Request, session: DB, ctx: Ctx, state: State) -> dict[str, Any]:
    body = parse_document(raw, SecretCreate)
    project_id = ctx.owning_project(body.project_id)
    try:
        payload = (secrets.b64decode_payload(body.payload) if body.payload_content_encoding == "base64"
                   else body.payload.encode())
        row = secrets.store(session, state.secrets_key_file, project_id, body.name, body.kind, payload,
                            body.passphrase.encode() if body.passphrase else None)
    except secrets.BadSecret as exc:
        raise InvalidInput(f"Invalid input for field/attribute payload: {exc}") from exc
    session.commit()
    return view(request, row)


@router.get("")
def list_(request: Request, session: DB, ctx: Ctx) -> dict[str, Any]:
    rows = secrets.secrets_of(session, None if ctx.is_admin else ctx.project_id)
    return {"secrets": [view(request, row) for row in rows], "total": len(rows)}


def _visible(session: Any, ctx: Any, secret_id: str) -> m.Secret:
    row: m.Secret | None = session.get(m.Secret, secret_id)
    if row is None or not ctx.can_see(row.project_id):
        raise NotFound("Secret", secret_id)
    return row


@router.get("/{secret_id}")
def show(secret_id: str, request: Request, session: DB, ctx: Ctx) -> dict[str, Any]:
    return view(request, _visible(session, ctx, secret_id))


@router.delete("/{secret_id}", status_code=204)
def delete(secret_id: str, session: DB, ctx: Ctx) -> Response:
    row = _visible(session, ctx, secret_id)
    users = secrets.user_of(session, row)
    if users:
        raise Conflict(f"Secret {secret_id} is in use by {users} and cannot be deleted.")
    session.delete(row)
    session.commit()
    return Response(status_code=204)
