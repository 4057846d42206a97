"""Who may reach a secret or a container, and their ACLs (``/v1/secrets/{id}/acl``, ``/v1/containers/{id}/acl``).

Barbican's rules, as its default policy applies them, with Cohort's tenant isolation:

* *read* (metadata and payload): the owning project, unless a read ACL takes
  ``project-access`` away, in which case only the creator and the project's admins; and
  every user the read ACL lists, whatever their project (Octavia's guide adds its service user
  this way);
* an admin of another project sees the metadata and may delete, but never reads a payload
  (403, as in Barbican);
* anyone else gets a 404, as for any other object of another project in Cohort.

Changing an ACL, deleting and building a container are for those who may read through their
project (not through an ACL). ACL bodies name the ``read`` operation only, as Barbican's do.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from sqlalchemy.orm import Session

from cohort.api.auth import RequestContext
from cohort.api.deps import DB, Ctx, RawBody
from cohort.api.routes.barbican import BarbicanFault, BarbicanRoute, href, isotime
from cohort.api.schemas.common import Body, parse_document
from cohort.db import models as m
from cohort.db.base import utcnow

# Out of the OpenAPI description, as the payload route: the API fuzzer's collection walk formats only
# the path parameters of Octavia's objects (the unit tests send these routes their garbage instead).
router = APIRouter(route_class=BarbicanRoute)

READ = "read"
DEFAULT = {READ: {"project-access": True}}
NOT_FOUND = {"secret": "Secret not found.", "container": "Secrets container not found."}
OPERATION = {"secret": "Secret", "container": "Container"}


class OperationAcl(BaseModel):
    model_config = ConfigDict(extra="forbid")

    users: list[Annotated[str, StringConstraints(max_length=255)]] | None = None
    project_access: bool | None = Field(default=None, alias="project-access")


class AclBody(Body):
    """Barbican's ACL document: one entry per operation, and only ``read`` is defined."""

    read: OperationAcl | None = None


def acl_of(session: Session, entity_id: str) -> m.SecretAcl | None:
    return session.get(m.SecretAcl, (entity_id, READ))


def _through_project(ctx: RequestContext, project_id: str, creator_id: str | None, acl: m.SecretAcl | None) -> bool:
    if ctx.project_id != project_id:
        return False
    if acl is None or acl.project_access:
        return True
    return (ctx.user_id is not None and ctx.user_id == creator_id) or ctx.is_admin


def _listed(ctx: RequestContext, acl: m.SecretAcl | None) -> bool:
    return acl is not None and ctx.user_id is not None and ctx.user_id in (acl.users or [])


def reach(session: Session, ctx: RequestContext, entity: str, row: m.Secret | m.SecretContainer | None,
          *, payload: bool = False, change: bool = False) -> m.Secret | m.SecretContainer:
    """``row`` if the caller may see it (and read its payload, or change it); a 404 or 403 fault otherwise."""
    expired = isinstance(row, m.Secret) and row.expiration is not None and row.expiration <= utcnow()
    if row is None or expired:
        raise BarbicanFault(404, NOT_FOUND[entity])
    acl = acl_of(session, row.id)
    if _through_project(ctx, row.project_id, row.creator_id, acl):
        return row
    if change:
        if ctx.is_admin and ctx.project_id != row.project_id:
            return row
    elif _listed(ctx, acl) or (not payload and ctx.is_admin):
        return row
    if ctx.project_id == row.project_id or _listed(ctx, acl) or ctx.is_admin:
        raise BarbicanFault(403, f"{OPERATION[entity]} retrieval attempt not allowed - please review your "
                                 "user/project privileges")
    raise BarbicanFault(404, NOT_FOUND[entity])


def secret_for(session: Session, ctx: RequestContext, secret_id: str, *, payload: bool = False,
               change: bool = False) -> m.Secret:
    row = reach(session, ctx, "secret", session.get(m.Secret, secret_id), payload=payload, change=change)
    assert isinstance(row, m.Secret)
    return row


def container_for(session: Session, ctx: RequestContext, container_id: str, *, change: bool = False,
                  ) -> m.SecretContainer:
    row = reach(session, ctx, "container", session.get(m.SecretContainer, container_id), change=change)
    assert isinstance(row, m.SecretContainer)
    return row


def forget(session: Session, entity_id: str) -> None:
    """Drop the ACLs of a secret or container being deleted."""
    acl = acl_of(session, entity_id)
    if acl is not None:
        session.delete(acl)


def _view(acl: m.SecretAcl | None) -> dict[str, Any]:
    if acl is None:
        return {key: dict(value) for key, value in DEFAULT.items()}
    return {acl.operation: {"project-access": acl.project_access, "users": list(acl.users or []),
                            "created": isotime(acl.created_at), "updated": isotime(acl.updated_at)}}


def _apply(session: Session, entity: str, entity_id: str, body: AclBody, replace: bool) -> None:
    acl = acl_of(session, entity_id)
    wanted = body.read
    if wanted is None or not wanted.model_fields_set:  # Barbican skips an operation given as {} or null
        if replace and acl is not None:
            session.delete(acl)
        return
    now: datetime = utcnow()
    if acl is None:
        acl = m.SecretAcl(entity_id=entity_id, operation=READ, entity_type=entity, project_access=True, users=[],
                          created_at=now)
        session.add(acl)
    else:
        acl.updated_at = now
    if wanted.project_access is not None or replace:
        acl.project_access = True if wanted.project_access is None else wanted.project_access
    if wanted.users is not None or replace:
        acl.users = list(dict.fromkeys(wanted.users or []))


def _acl_ref(request: Request, collection: str, entity_id: str) -> dict[str, str]:
    return {"acl_ref": f"{href(request, collection, entity_id)}/acl"}


@router.get("/v1/secrets/{secret_id}/acl", include_in_schema=False)
def show_secret_acl(secret_id: str, session: DB, ctx: Ctx) -> dict[str, Any]:
    return _view(acl_of(session, secret_for(session, ctx, secret_id, change=True).id))


def _set(raw: bytes, request: Request, session: Any, kind: str, object_id: str, replace: bool) -> dict[str, Any]:
    """Replace (PUT) or update (PATCH) the read ACL of a secret or container the caller may change."""
    _apply(session, kind, object_id, parse_document(raw, AclBody), replace=replace)
    session.commit()
    return _acl_ref(request, f"{kind}s", object_id)


@router.put("/v1/secrets/{secret_id}/acl", include_in_schema=False)
def replace_secret_acl(raw: RawBody, secret_id: str, request: Request, session: DB, ctx: Ctx) -> dict[str, Any]:
    return _set(raw, request, session, "secret", secret_for(session, ctx, secret_id, change=True).id, replace=True)


@router.patch("/v1/secrets/{secret_id}/acl", include_in_schema=False)
def update_secret_acl(raw: RawBody, secret_id: str, request: Request, session: DB, ctx: Ctx) -> dict[str, Any]:
    return _set(raw, request, session, "secret", secret_for(session, ctx, secret_id, change=True).id, replace=False)


@router.delete("/v1/secrets/{secret_id}/acl", include_in_schema=False)
def delete_secret_acl(secret_id: str, session: DB, ctx: Ctx) -> Response:
    forget(session, secret_for(session, ctx, secret_id, change=True).id)
    session.commit()
    return Response(status_code=200)


@router.get("/v1/containers/{container_id}/acl", include_in_schema=False)
def show_container_acl(container_id: str, session: DB, ctx: Ctx) -> dict[str, Any]:
    return _view(acl_of(session, container_for(session, ctx, container_id, change=True).id))


@router.put("/v1/containers/{container_id}/acl", include_in_schema=False)
def replace_container_acl(raw: RawBody, container_id: str, request: Request, session: DB,
                          ctx: Ctx) -> dict[str, Any]:
    row = container_for(session, ctx, container_id, change=True)
    return _set(raw, request, session, "container", row.id, replace=True)


@router.patch("/v1/containers/{container_id}/acl", include_in_schema=False)
def update_container_acl(raw: RawBody, container_id: str, request: Request, session: DB,
                         ctx: Ctx) -> dict[str, Any]:
    row = container_for(session, ctx, container_id, change=True)
    return _set(raw, request, session, "container", row.id, replace=False)


@router.delete("/v1/containers/{container_id}/acl", include_in_schema=False)
def delete_container_acl(container_id: str, session: DB, ctx: Ctx) -> Response:
    forget(session, container_for(session, ctx, container_id, change=True).id)
    session.commit()
    return Response(status_code=200)

