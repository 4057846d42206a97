"""Who is calling: the ``noauth`` and ``token`` strategies and the per-request context."""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass

from cohort.api.errors import NotAuthenticated, NotAuthorized
from cohort.config import Settings

# Where the ASGI scope carries the context of a request authenticated before its body was read.
CONTEXT_KEY = "cohort.context"


@dataclass(frozen=True)
class RequestContext:
    project_id: str
    roles: tuple[str, ...]

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles

    def owning_project(self, requested: str | None) -> str:
        """The project a new object belongs to: only an admin may create for another project."""
        if requested and requested != self.project_id:
            if not self.is_admin:
                raise NotAuthorized()
            return requested
        return self.project_id

    def can_see(self, project_id: str) -> bool:
        return self.is_admin or project_id == self.project_id

    def require_admin(self) -> None:
        if not self.is_admin:
            raise NotAuthorized()


def authenticate(headers: Mapping[str, str], settings: Settings) -> RequestContext:
    """The caller named by the request's headers (case-insensitive ``headers``), or NotAuthenticated.

    Headers only: a request is authenticated before a byte of its body is read.
    """
    if settings.auth_strategy == "noauth":
        project = headers.get("X-Project-Id") or settings.noauth_project_id
        roles_header = headers.get("X-Roles")
        roles = tuple(r.strip() for r in roles_header.split(",") if r.strip()) if roles_header else ("admin",)
        return RequestContext(project_id=project, roles=roles)
    token = headers.get("X-Auth-Token", "")
    for known, entry in settings.tokens.items():
        if token and hmac.compare_digest(known.encode(), token.encode()):
            return RequestContext(project_id=entry.project_id, roles=tuple(entry.roles))
    raise NotAuthenticated("Authentication required: a valid X-Auth-Token is needed.")
