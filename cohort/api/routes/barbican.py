"""Barbican's wire format, shared by the key-manager routes (secrets, containers, ACLs).

*Faults.* python-barbicanclient reads an error's ``title`` and ``description``
(``{"code", "title", "description"}``, as Barbican's pecan hook writes them) and fails on any
other body. Its requests carry the ``OpenStack-API-Version: key-manager 1.x`` header (the
client's microversion), so a fault is written Barbican's way for them and in Cohort's Octavia
fault format for everything else, which is what Cohort's own clients and tests parse.

*References and pages.* A secret is ``<base>/v1/secrets/<id>``, a container
``<base>/v1/containers/<id>``; lists page with ``limit`` (10 by default, at most 100) and
``offset``, say the ``total`` and link the ``previous`` and ``next`` pages, keeping the filters.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from datetime import datetime
from http import HTTPStatus
from typing import Any
from urllib.parse import urlencode

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.responses import Response

from cohort.api.errors import APIFault, describe_validation_error, fault_response
from cohort.api.routing import JSONRoute

DEFAULT_LIMIT = 10
MAX_LIMIT = 100
MIN_VERSION, MAX_VERSION = "1.0", "1.1"


class BarbicanFault(APIFault):
    """An error with Barbican's status code and description (``faultcode`` follows the status)."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.faultcode = "Client" if status_code < 500 else "Server"


def from_key_manager_client(request: Request) -> bool:
    return "key-manager" in request.headers.get("openstack-api-version", "").lower()


def fault(request: Request, status_code: int, message: str) -> JSONResponse:
    if from_key_manager_client(request):
        return JSONResponse(status_code=status_code, content={
            "code": status_code, "title": HTTPStatus(status_code).phrase, "description": message})
    return fault_response(status_code, "Client" if status_code < 500 else "Server", message)


class BarbicanRoute(JSONRoute):
    """A JSON route whose faults (its own, its dependencies', the body parser's) a key-manager client can read."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def answer(request: Request) -> Response:
            try:
                return await handler(request)
            except APIFault as exc:
                return fault(request, exc.status_code, exc.message)
            except RequestValidationError as exc:
                return fault(request, 400, describe_validation_error(exc))

        return answer


def base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def href(request: Request, collection: str, ident: str) -> str:
    return f"{base_url(request)}/v1/{collection}/{ident}"


def isotime(value: datetime | None) -> str | None:
    return value.replace(microsecond=0).isoformat() if value is not None else None


def paging(request: Request) -> tuple[int, int]:
    """Barbican's (offset, limit): a value that is not a number takes its default, both are clamped."""
    offset = _number(request.query_params.get("offset"), 0)
    limit = _number(request.query_params.get("limit"), DEFAULT_LIMIT) or DEFAULT_LIMIT
    return max(offset, 0), min(max(limit, 1), MAX_LIMIT)


def _number(text: str | None, default: int) -> int:
    try:
        return int(text) if text else default
    except ValueError:
        return default


def page(request: Request, collection: str, rows: list[dict[str, Any]], total: int, offset: int,
         limit: int) -> dict[str, Any]:
    """``{collection: rows, total}`` and Barbican's ``previous``/``next`` links, where they lead somewhere."""
    body: dict[str, Any] = {collection: rows, "total": total}
    if not rows:
        return body
    kept = [(key, value) for key, value in request.query_params.multi_items() if key not in ("limit", "offset")]

    def link(at: int) -> str:
        query = urlencode([("limit", limit), ("offset", at), *kept])
        return f"{base_url(request)}/v1/{collection}?{query}"

    if offset > 0:
        body["previous"] = link(max(0, offset - limit))
    if total > offset + limit:
        body["next"] = link(offset + limit)
    return body


def version_document(request: Request) -> dict[str, Any]:
    """Barbican's ``GET /v1``: what python-barbicanclient's microversion discovery reads."""
    return {"version": {
        "id": "v1", "status": "CURRENT", "min_version": MIN_VERSION, "max_version": MAX_VERSION,
        "links": [{"rel": "self", "href": f"{base_url(request)}/v1/"},
                  {"rel": "describedby", "type": "text/html", "href": "https://docs.openstack.org/"}]}}
