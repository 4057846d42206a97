"""Test helpers shared by unit, functional and end-to-end tests: Cohort through the harness, a JSON client."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from cohort import harness
from cohort.config import Settings
from cohort.harness import free_port
from cohort.service import Cohort

__all__ = ["Api", "free_port", "local_cohort", "running_cohort", "wait_for"]


@contextmanager
def running_cohort(state_dir: Path, **overrides: Any) -> Iterator[tuple[Cohort, str]]:
    """Start API + reconciler on a free port; yield (cohort, base_url); stop on exit."""
    settings = Settings(state_dir=state_dir, api_port=free_port(), **overrides)
    with harness.running(settings) as (cohort, base):
        yield cohort, base


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last value: {last!r})")


class Api:
    """A thin client for tests: JSON in, (status, JSON) out."""

    def __init__(self, base: str, headers: dict[str, str] | None = None) -> None:
        self.base = base.rstrip("/")
        self.client = httpx.Client(base_url=self.base, headers=headers or {}, timeout=30)

    def call(self, method: str, path: str, body: Any = None, raw: bytes | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, Any]:
        if raw is not None:
            response = self.client.request(method, path, content=raw, headers={
                "Content-Type": "application/json", **(headers or {})})
        else:
            response = self.client.request(method, path, json=body, headers=headers)
        try:
            data = response.json() if response.content else None
        except ValueError:
            data = response.text
        return response.status_code, data

    def get(self, path: str, **kw: Any) -> tuple[int, Any]:
        return self.call("GET", path, **kw)

    def post(self, path: str, body: Any, **kw: Any) -> tuple[int, Any]:
        return self.call("POST", path, body, **kw)

    def put(self, path: str, body: Any, **kw: Any) -> tuple[int, Any]:
        return self.call("PUT", path, body, **kw)

    def delete(self, path: str, **kw: Any) -> tuple[int, Any]:
        return self.call("DELETE", path, **kw)

    def wait_active(self, path: str, key: str, timeout: float = 15.0) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            status, body = self.get(path)
            if status == 200 and body[key]["provisioning_status"] in ("ACTIVE", "ERROR"):
                return dict(body[key])
            return None

        return dict(wait_for(done, timeout))

    def flavor(self, name: str, data: dict[str, Any]) -> str:
        """A flavor of provider ``amphora`` (and its profile) carrying ``data``; returns its id."""
        status, profile = self.post("/v2/lbaas/flavorprofiles", {"flavorprofile": {
            "name": name, "provider_name": "amphora", "flavor_data": json.dumps(data)}})
        assert status == 201, profile
        status, flavor = self.post("/v2/lbaas/flavors", {"flavor": {
            "name": name, "flavor_profile_id": profile["flavorprofile"]["id"]}})
        assert status == 201, flavor
        return str(flavor["flavor"]["id"])


@contextmanager
def local_cohort(state_dir: Path, **overrides: Any) -> Iterator[tuple[Cohort, str, Any]]:
    """A private lab plus Cohort with local drivers; every instance, the lab and the files go afterwards."""
    with harness.private_cohort(state_dir, **overrides) as instance:
        yield instance.cohort, instance.base, instance.lab
