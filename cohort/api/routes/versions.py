"""API discovery: ``GET /`` lists versions; ``/v2`` and ``/v2.0`` answer with a version document."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from cohort.api.routing import JSONRoute

router = APIRouter(route_class=JSONRoute)

LATEST_MINOR = 27
UPDATED = "2023-03-01T00:00:00Z"


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/")


@router.get("/")
def versions(request: Request) -> dict[str, Any]:
    base = _base(request)
    entries = []
    for minor in range(LATEST_MINOR + 1):
        entries.append({
            "id": f"v2.{minor}",
            "status": "CURRENT" if minor == LATEST_MINOR else "SUPPORTED",
            "updated": UPDATED,
            "links": [{"href": f"{base}/v2", "rel": "self"}],
        })
    return {"versions": entries}


@router.get("/v2")
@router.get("/v2/")
@router.get("/v2.0")
@router.get("/v2.0/")
def version(request: Request) -> dict[str, Any]:
    return {"version": {"id": "v2.0", "status": "CURRENT", "updated": UPDATED,
                        "links": [{"href": f"{_base(request)}/v2.0", "rel": "self"}],
                        "min_version": "2.0", "version": f"2.{LATEST_MINOR}"}}
