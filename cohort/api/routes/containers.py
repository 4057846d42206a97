"""``/v1/containers``: Barbican's containers, which name the secrets of a certificate and its key.

``openstack secret container create --type certificate --secret certificate=<ref> --secret
private_key=<ref> ...`` stores one; a listener or pool takes its ``container_ref`` wherever it
takes a secret ref, as Octavia does (Cohort then serves the certificate, the intermediates and
the key it names). Generic and RSA containers are kept as Barbican keeps them. A container only
holds secrets of its own project, and one in use by a listener or pool cannot be deleted.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, select

from cohort import secret_containers, secrets
from cohort.api.deps import DB, Ctx, RawBody, State
from cohort.api.errors import Conflict
from cohort.api.routes import acls
from cohort.api.routes.barbican import BarbicanFault, BarbicanRoute, href, isotime, page, paging
from cohort.api.schemas.common import parse_document
from cohort.db import models as m
from cohort.db.base import new_id, utcnow

router = APIRouter(route_class=BarbicanRoute)

Name = Annotated[str | None, Field(max_length=255)]


class ContainerSecretRef(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: Name = None
    secret_ref: Annotated[str, Field(min_length=1, max_length=1024)]


class ContainerCreate(BaseModel):
    """Barbican's container document (attributes it does not define are ignored, as Barbican ignores them)."""

    model_config = ConfigDict(extra="ignore")

    name: Name = None
    type: Literal["generic", "rsa", "certificate"]
    secret_refs: list[ContainerSecretRef] | None = Field(default=None, max_length=64)


def _invalid(reason: str, field: str) -> BarbicanFault:
    return BarbicanFault(400, f"Provided object does not match schema 'Container': {reason}. Invalid property: "
                              f"'{field}'")


def view(request: Request, row: m.SecretContainer) -> dict[str, Any]:
    return {
        "container_ref": href(request, "containers", row.id), "name": row.name or None, "type": row.type,
        "status": "ACTIVE", "created": isotime(row.created_at), "updated": isotime(row.updated_at or row.created_at),
        "creator_id": row.creator_id, "consumers": [],
        "secret_refs": [{"name": item.name or None, "secret_ref": href(request, "secrets", item.secret_id)}
                        for item in row.secrets],
    }


@router.post("/v1/containers", status_code=201)
@router.post("/v1/containers/", status_code=201, include_in_schema=False)
def create(raw: RawBody, request: Request, session: DB, ctx: Ctx, state: State) -> Response:
    body = parse_document(raw, ContainerCreate)
    refs = body.secret_refs or []
    reason = secret_containers.check_names(body.type, [ref.name or "" for ref in refs])
    if reason:
        raise _invalid(reason, "secret_refs")
    secret_ids = [secrets.ref_id(ref.secret_ref) for ref in refs]
    if len(set(secret_ids)) != len(secret_ids):
        raise _invalid("Duplicate secret ids are not allowed", "secret_refs")
    now = utcnow()
    for ref, secret_id in zip(refs, secret_ids, strict=True):
        secret = session.get(m.Secret, secret_id)
        if secret is None or secret.project_id != ctx.project_id or (
                secret.expiration is not None and secret.expiration <= now):
            raise BarbicanFault(404, f"Secret provided for '{ref.name}' doesn't exist.")
    row = m.SecretContainer(id=new_id(), project_id=ctx.project_id, name=body.name or "", type=body.type,
                            kind="", creator_id=ctx.user_id, created_at=now)
    row.secrets = [m.ContainerSecret(name=ref.name or "", secret_id=secret_id)
                   for ref, secret_id in zip(refs, secret_ids, strict=True)]
    session.add(row)
    session.flush()
    row.kind = secrets.container_kind(session, state.secrets_key_file, row)
    session.commit()
    location = href(request, "containers", row.id)
    return JSONResponse({"container_ref": location}, status_code=201, headers={"Location": location})


@router.get("/v1/containers")
def list_(request: Request, session: DB, ctx: Ctx) -> dict[str, Any]:
    offset, limit = paging(request)
    query = select(m.SecretContainer).where(m.SecretContainer.project_id == ctx.project_id)
    name = request.query_params.get("name")
    if name:
        query = query.where(m.SecretContainer.name.like(name))
    kind = request.query_params.get("type")
    if kind:
        query = query.where(m.SecretContainer.type == kind)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(query.order_by(m.SecretContainer.created_at, m.SecretContainer.id)
                           .offset(offset).limit(limit)).all()
    return page(request, "containers", [view(request, row) for row in rows], total, offset, limit)


@router.get("/v1/containers/{container_id}")
def show(container_id: str, request: Request, session: DB, ctx: Ctx) -> dict[str, Any]:
    return view(request, acls.container_for(session, ctx, container_id))


@router.delete("/v1/containers/{container_id}", status_code=204)
def delete(container_id: str, session: DB, ctx: Ctx) -> Response:
    row = acls.container_for(session, ctx, container_id, change=True)
    user = secrets.user_of(session, row)
    if user:
        raise Conflict(f"Container {container_id} is in use by {user} and cannot be deleted.")
    acls.forget(session, row.id)
    session.delete(row)
    session.commit()
    return Response(status_code=204)
