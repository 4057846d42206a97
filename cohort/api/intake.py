"""What a request must be before the API reads its body: authenticated, and no larger than allowed.

An ASGI middleware in front of the application. It authenticates from the headers alone and
answers 401 to an unauthenticated request that carries a body before reading any of it
(requests without a body go on, so version discovery stays public and the routes answer 401
as before). A body is counted as it arrives, chunked or not, and cut off with a 413 the moment
it passes ``api_max_body_bytes``: a declared Content-Length over the limit is refused before a
byte is read, and no more than the limit plus one received chunk is ever held.

After such an answer the connection is closed. Closed at once, with the client still sending,
the kernel would answer the unread bytes with a reset that can destroy the answer before the
client reads it; so, as web servers do, the rest is read and thrown away for a moment first,
within :data:`DRAIN_SECONDS` and :data:`DRAIN_BYTES`, and never kept.
"""

from __future__ import annotations

import asyncio
import json
import time

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cohort.api.auth import CONTEXT_KEY, authenticate_request
from cohort.api.errors import APIFault, NotAuthenticated
from cohort.config import Settings

DRAIN_SECONDS = 1.0
DRAIN_BYTES = 16 * 1024 * 1024


class RequestTooLarge(Exception):
    """Raised from ``receive`` past the limit; not an APIFault, so that it reaches :class:`RequestIntake`."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"Request body is larger than the {limit} bytes allowed.")


class RequestIntake:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        declared = headers.get("content-length")
        has_body = "transfer-encoding" in headers or declared not in (None, "0")
        try:
            scope[CONTEXT_KEY] = await authenticate_request(headers, self.settings)
        except NotAuthenticated as exc:
            if has_body:
                await _refuse(401, exc.message, receive, send)
                return
        except APIFault as exc:  # the identity service is unreachable: a 503, whatever the request
            await _refuse(exc.status_code, exc.message, receive, send)
            return
        limit = self.settings.api_max_body_bytes
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _refuse(413, str(RequestTooLarge(limit)), receive, send)
            return
        received = 0
        body_done = not has_body

        async def counted() -> Message:
            nonlocal received, body_done
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if received > limit:
                    raise RequestTooLarge(limit)
            return message

        started = False

        async def closing_early(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if not body_done:
                    # Answered before the body was read to its end (a 413, a 404): the rest of
                    # it must not be read as the next request, nor waited for.
                    message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        try:
            await self.app(scope, counted, closing_early)
        except RequestTooLarge as exc:
            if started:
                raise
            await _refuse(413, str(exc), receive, send)


async def _refuse(status: int, message: str, receive: Receive, send: Send) -> None:
    """Answer with a fault, then close the connection (after a bounded drain: see the module docstring)."""
    body = json.dumps({"faultcode": "Client", "faultstring": message, "debuginfo": None}).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"connection", b"close")]})
    # The answer goes out now; the response ends (and the connection closes) after the drain.
    await send({"type": "http.response.body", "body": body, "more_body": True})
    await _drain(receive)
    await send({"type": "http.response.body", "body": b""})


async def _drain(receive: Receive) -> None:
    deadline = time.monotonic() + DRAIN_SECONDS
    thrown = 0
    while thrown < DRAIN_BYTES:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        try:
            message = await asyncio.wait_for(receive(), remaining)
        except TimeoutError:
            return
        if message["type"] != "http.request" or not message.get("more_body", False):
            return
        thrown += len(message.get("body", b""))
