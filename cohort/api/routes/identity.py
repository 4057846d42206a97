"""Just enough of Keystone's v3 projects API for clients that resolve a project name first.

``openstack loadbalancer quota show|set|reset PROJECT`` looks the project up with
``GET /projects/PROJECT`` (then ``GET /projects?name=PROJECT``) on the identity endpoint,
which with ``--os-endpoint`` is this server. Cohort has no project registry: as in Octavia, a
project is whatever id the caller's token names, so a project is its own name. A non-admin
caller may only look up its own project (403 otherwise, which the clients also accept).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from cohort.api.deps import Ctx
from cohort.api.errors import NotAuthorized
from cohort.api.routing import JSONRoute

router = APIRouter(route_class=JSONRoute)


def project_view(project_id: str) -> dict[str, Any]:
    return {"id": project_id, "name": project_id, "domain_id": "default", "enabled": True,
            "description": "", "is_domain": False, "parent_id": "default", "tags": [],
            "links": {"self": f"/v3/projects/{project_id}"}}


@router.get("/projects")
@router.get("/v3/projects")
def list_projects(request: Request, ctx: Ctx) -> dict[str, Any]:
    name = request.query_params.get("name")
    wanted = name or ctx.project_id
    projects = [project_view(wanted)] if ctx.can_see(wanted) else []
    return {"projects": projects, "links": {"self": str(request.url), "next": None, "previous": None}}


@router.get("/projects/{project_id}")
@router.get("/v3/projects/{project_id}")
def show_project(project_id: str, ctx: Ctx) -> dict[str, Any]:
    if not ctx.can_see(project_id):
        raise NotAuthorized()
    return {"project": project_view(project_id)}
