"""Octavia's fault format: every error a client sees is ``{faultcode, faultstring, debuginfo}``."""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)


class APIFault(Exception):
    status_code = 500
    faultcode = "Server"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(APIFault):
    status_code = 400
    faultcode = "Client"


class NotAuthorized(APIFault):
    status_code = 403
    faultcode = "Client"

    def __init__(self, message: str = "Policy does not allow this request to be performed.") -> None:
        super().__init__(message)


class NotAuthenticated(APIFault):
    status_code = 401
    faultcode = "Client"


class NotFound(APIFault):
    status_code = 404
    faultcode = "Client"

    def __init__(self, resource: str, ident: str) -> None:
        super().__init__(f"{resource} {ident} could not be found.")


class Conflict(APIFault):
    status_code = 409
    faultcode = "Client"


class Immutable(Conflict):
    def __init__(self, resource: str, ident: str) -> None:
        super().__init__(f"{resource} {ident} is immutable and cannot be updated.")


class QuotaExceeded(APIFault):
    status_code = 403
    faultcode = "Client"

    def __init__(self, resource: str) -> None:
        super().__init__(f"Quota has been met for resources: {resource}")


def fault_response(status_code: int, faultcode: str, faultstring: str) -> JSONResponse:
    return JSONResponse(
        status_code=status_code,
        content={"faultcode": faultcode, "faultstring": faultstring, "debuginfo": None},
    )


def describe_validation_error(error: ValidationError | RequestValidationError, wrapper: str = "") -> str:
    """One sentence naming each offending field, e.g. ``Invalid input for field/attribute protocol_port``."""
    parts = []
    for item in error.errors():
        location = [str(p) for p in item.get("loc", ()) if p not in ("body", wrapper)]
        field = ".".join(location) or wrapper or "body"
        message = str(item.get("msg", "invalid value"))
        if item.get("type") == "extra_forbidden":
            parts.append(f"Unknown attribute for argument {wrapper or 'body'}: {field}")
        else:
            parts.append(f"Invalid input for field/attribute {field}. Value: {_shown(item.get('input'))}. {message}")
    return "; ".join(parts)


def _shown(value: Any) -> str:
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class UnexpectedErrors:
    """Answer an unexpected exception with a 500 fault and keep the connection open.

    Starlette's outermost error middleware re-raises after sending its 500, and uvicorn then drops
    the keep-alive connection, so a client's *next* request on it fails with a reset. Caught here,
    inside that middleware, the 500 is an ordinary response.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            if started:
                raise
            log.exception("unhandled error")
            await fault_response(500, "Server", "An unknown exception occurred.")(scope, receive, send)


def install_handlers(app: FastAPI) -> None:
    app.add_middleware(UnexpectedErrors)

    @app.exception_handler(APIFault)
    async def _fault(_request: Request, exc: APIFault) -> JSONResponse:
        return fault_response(exc.status_code, exc.faultcode, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return fault_response(400, "Client", describe_validation_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = "Client" if exc.status_code < 500 else "Server"
        detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        return fault_response(exc.status_code, code, detail)

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return fault_response(500, "Server", "An unknown exception occurred.")
