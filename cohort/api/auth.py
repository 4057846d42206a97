"""Who is calling and what they may do: the ``noauth``, ``token`` and ``keystone`` strategies and the request context.

``noauth`` takes the project from ``X-Project-Id``; ``token`` maps static tokens to a project and
roles; ``keystone`` validates Keystone tokens (:mod:`cohort.api.keystone`) and takes project,
user and roles from the token. Under ``keystone`` (or with ``enforce_policy`` set) every request is
checked against Octavia's RBAC rules (:mod:`cohort.api.policy`); otherwise the role ``admin`` is
all there is to it, as before.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
from collections.abc import Mapping
from dataclasses import dataclass

from cohort.api import keystone
from cohort.api.errors import NotAuthenticated, NotAuthorized
from cohort.api.policy import Credentials, PolicyEngine, engine
from cohort.config import Settings

# Where the ASGI scope carries the context of a request authenticated before its body was read.
CONTEXT_KEY = "cohort.context"


@dataclass(frozen=True)
class RequestContext:
    project_id: str
    roles: tuple[str, ...]
    user_id: str | None = None
    # With a policy, ``rule`` is the rule of the endpoint being served, once it has been enforced
    # for the caller's own project; what reaches other projects asks the policy again.
    policy: PolicyEngine | None = None
    rule: str | None = None

    def allows(self, rule: str, project_id: str) -> bool:
        if self.policy is None:
            return "admin" in self.roles or project_id == self.project_id
        return self.policy.allows(rule, project_id, Credentials(self.project_id, self.user_id, self.roles))

    def enforcing(self, rule: str) -> RequestContext:
        """This context once ``rule`` allows the caller in their own project; NotAuthorized otherwise."""
        if not self.allows(rule, self.project_id):
            raise NotAuthorized()
        return dataclasses.replace(self, rule=rule)

    @property
    def is_admin(self) -> bool:
        """May see every project's objects: a list's ``-global`` rule, else ``context_is_admin``."""
        if self.policy is None:
            return "admin" in self.roles
        if self.rule is not None and self.rule.endswith(":get_all"):
            return self.allows(f"{self.rule}-global", self.project_id)
        return self.allows("context_is_admin", self.project_id)

    @property
    def forbids_openly(self) -> bool:
        """Another project's object is a 403, as in Octavia, under a policy (a 404 without one)."""
        return self.policy is not None

    def _reaches(self, project_id: str) -> bool:
        if project_id == self.project_id:
            return True
        if self.policy is not None and self.rule is not None:
            return self.allows(self.rule, project_id)
        return self.is_admin

    def owning_project(self, requested: str | None) -> str:
        """The project a new object belongs to: only a caller the rule allows there may create for another."""
        if requested and requested != self.project_id:
            if not self._reaches(requested):
                raise NotAuthorized()
            return requested
        return self.project_id

    def can_see(self, project_id: str) -> bool:
        return self._reaches(project_id)

    def require_admin(self) -> None:
        """Operator-only endpoints: under a policy their own rule decides (already enforced)."""
        if self.policy is not None and self.rule is not None:
            return
        if not (self.allows("load-balancer:admin", self.project_id) if self.policy else self.is_admin):
            raise NotAuthorized()


def policy_for(settings: Settings) -> PolicyEngine | None:
    if settings.auth_strategy == "keystone" or settings.enforce_policy:
        return engine(settings.policy_file)
    return None


def authenticate(headers: Mapping[str, str], settings: Settings) -> RequestContext:
    """The caller named by the request's headers (case-insensitive ``headers``), or NotAuthenticated.

    Headers only: a request is authenticated before a byte of its body is read. Under
    ``keystone`` this may call Keystone (a cache miss): use :func:`authenticate_request` on the loop.
    """
    policy = policy_for(settings)
    if settings.auth_strategy == "noauth":
        project = headers.get("X-Project-Id") or settings.noauth_project_id
        roles_header = headers.get("X-Roles")
        roles = tuple(r.strip() for r in roles_header.split(",") if r.strip()) if roles_header else ("admin",)
        return RequestContext(project_id=project, roles=roles, policy=policy)
    token = headers.get("X-Auth-Token", "")
    if settings.auth_strategy == "keystone":
        if not token:
            raise NotAuthenticated("Authentication required: a Keystone token (X-Auth-Token) is needed.")
        info = keystone.validator(settings).validate(token)
        return RequestContext(project_id=info.project_id, roles=info.roles, user_id=info.user_id, policy=policy)
    for known, entry in settings.tokens.items():
        if token and hmac.compare_digest(known.encode(), token.encode()):
            return RequestContext(project_id=entry.project_id, roles=tuple(entry.roles), policy=policy)
    raise NotAuthenticated("Authentication required: a valid X-Auth-Token is needed.")


async def authenticate_request(headers: Mapping[str, str], settings: Settings) -> RequestContext:
    """:func:`authenticate` without blocking the event loop on Keystone (cached tokens stay on the loop)."""
    if settings.auth_strategy == "keystone":
        token = headers.get("X-Auth-Token", "")
        if token and keystone.validator(settings).cached(token) is None:
            return await asyncio.to_thread(authenticate, headers, settings)
    return authenticate(headers, settings)
