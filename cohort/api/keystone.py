"""Keystone tokens: validated against Keystone's v3 API with keystoneauth, and cached.

A token is validated with ``GET /v3/auth/tokens`` (``X-Subject-Token``). With service
credentials configured (``keystone_username`` ...), Cohort authenticates as that service user,
as keystonemiddleware does; without them it presents the token itself, which Keystone's default
policy lets a token's owner validate. What a token grants (project, user, roles) is cached until
``keystone_cache_seconds`` pass or the token expires, whichever is first, so Keystone sees one
validation per token and period, not one per request. A revoked token may be served until its
cache entry expires: that window is the setting (keystonemiddleware's ``token_cache_time`` is the
same trade).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from keystoneauth1 import exceptions as ksa_exceptions
from keystoneauth1 import session as ksa_session
from keystoneauth1.identity import v3

from cohort.api.errors import APIFault, NotAuthenticated
from cohort.config import Settings

CACHE_ENTRIES = 10_000


class KeystoneUnavailable(APIFault):
    status_code = 503
    faultcode = "Server"


@dataclass(frozen=True)
class TokenInfo:
    project_id: str
    user_id: str
    roles: tuple[str, ...]
    expires_at: float  # epoch seconds


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def parse_token(body: dict[str, Any]) -> TokenInfo:
    """The parts of Keystone's token document Cohort uses; NotAuthenticated unless project-scoped."""
    token = body.get("token")
    if not isinstance(token, dict):
        raise NotAuthenticated("Keystone returned no token document.")
    project = token.get("project")
    if not isinstance(project, dict) or not project.get("id"):
        raise NotAuthenticated("A project-scoped token is required.")
    roles = tuple(str(role["name"]) for role in token.get("roles", []) if isinstance(role, dict) and "name" in role)
    user = token.get("user") or {}
    return TokenInfo(str(project["id"]), str(user.get("id", "")), roles, _epoch(str(token["expires_at"])))


class TokenValidator:
    def __init__(self, settings: Settings) -> None:
        if not settings.keystone_auth_url:
            raise ValueError("auth_strategy 'keystone' needs keystone_auth_url (e.g. http://keystone:5000/v3)")
        self.url = settings.keystone_auth_url.rstrip("/")
        if not self.url.endswith("/v3"):
            self.url += "/v3"
        self.ttl = settings.keystone_cache_seconds
        auth = None
        if settings.keystone_username:
            auth = v3.Password(auth_url=self.url, username=settings.keystone_username,
                               password=settings.keystone_password, project_name=settings.keystone_project_name,
                               user_domain_name=settings.keystone_user_domain_name,
                               project_domain_name=settings.keystone_project_domain_name)
        self.session = ksa_session.Session(auth=auth, timeout=settings.keystone_timeout)
        self.as_service = auth is not None
        self._cache: OrderedDict[str, tuple[TokenInfo, float]] = OrderedDict()
        self._lock = threading.Lock()
        self.validations = 0  # calls to Keystone, for tests and logs

    def cached(self, token: str) -> TokenInfo | None:
        key = hashlib.sha256(token.encode()).hexdigest()
        with self._lock:
            entry = self._cache.get(key)
            if entry is None:
                return None
            info, until = entry
            if time.time() >= until:
                del self._cache[key]
                return None
            self._cache.move_to_end(key)
            return info

    def validate(self, token: str) -> TokenInfo:
        """The token's grant, from the cache or from Keystone (blocking: call it off the event loop)."""
        found = self.cached(token)
        if found is not None:
            return found
        headers = {"X-Subject-Token": token}
        if not self.as_service:
            headers["X-Auth-Token"] = token
        try:
            response = self.session.get(f"{self.url}/auth/tokens", headers=headers, authenticated=self.as_service,
                                        raise_exc=False)
        except ksa_exceptions.ClientException as exc:
            raise KeystoneUnavailable(f"The identity service could not be reached: {exc}") from exc
        self.validations += 1
        if response.status_code in (401, 403, 404):
            raise NotAuthenticated("Authentication required: the token is invalid or expired.")
        if response.status_code != 200:
            raise KeystoneUnavailable(f"The identity service answered {response.status_code} to a token check.")
        info = parse_token(response.json())
        until = min(time.time() + self.ttl, info.expires_at)
        if until > time.time():
            with self._lock:
                self._cache[hashlib.sha256(token.encode()).hexdigest()] = (info, until)
                while len(self._cache) > CACHE_ENTRIES:
                    self._cache.popitem(last=False)
        return info


_VALIDATORS: dict[tuple[Any, ...], TokenValidator] = {}
_VALIDATORS_LOCK = threading.Lock()


def validator(settings: Settings) -> TokenValidator:
    """One validator (session and cache) per Keystone configuration per process."""
    key = (settings.keystone_auth_url, settings.keystone_username, settings.keystone_password,
           settings.keystone_project_name, settings.keystone_cache_seconds)
    with _VALIDATORS_LOCK:
        found = _VALIDATORS.get(key)
        if found is None:
            found = _VALIDATORS[key] = TokenValidator(settings)
        return found
