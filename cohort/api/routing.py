"""The route class every router uses: plain JSON answers, and reads run on the event loop.

*Plain JSON.* The views (``cohort.api.views``) already produce only JSON types, so FastAPI's
response handling is pure cost here: with a ``dict`` return annotation it validates and
re-serialises the whole body with a response model, and for a plain-function endpoint it does
that validation in the thread pool, one more hand-over between threads per request. Routes of
this class have no response model; a dict result becomes a ``JSONResponse`` with the route's
status code, and a ``Response`` a handler builds itself (204, 202) goes out as it is.

*Reads on the loop.* A plain-function GET handler is called on the event loop instead of in
the thread pool. Under load, the hand-over of the GIL between the loop and the pool's threads
(each database call releases it and must win it back, up to a switch interval later) costs
more than the reads themselves, and serves requests unfairly. GET handlers only read through
the read-only sessions (on SQLite in WAL mode a reader never waits for a lock), so a read holds
the loop for its own queries only: well under a millisecond for a show or a page, the longest
being an unpaged list of ``api_max_page`` objects. Writes stay in the thread pool: a writer may
wait for SQLite's write lock, and must not wait on the loop that lets the lock holder finish.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.responses import Response

READ_METHODS = {"GET", "HEAD"}


def _respond(result: Any, status_code: int) -> Any:
    if isinstance(result, Response):
        return result
    return JSONResponse(result, status_code=status_code)


def plain_json(endpoint: Callable[..., Any], status_code: int, on_loop: bool) -> Callable[..., Any]:
    """Wrap ``endpoint`` (keeping its signature, so dependencies resolve as before) to answer with JSON.

    ``on_loop``: make a plain-function endpoint a coroutine function, so FastAPI calls it on the loop.
    """
    if getattr(endpoint, "_plain_json", False):  # already wrapped (a router included into another)
        return endpoint
    wrapped: Callable[..., Any]
    if inspect.iscoroutinefunction(endpoint):
        @functools.wraps(endpoint)
        async def run_async(*args: Any, **kwargs: Any) -> Any:
            return _respond(await endpoint(*args, **kwargs), status_code)

        wrapped = run_async
    elif on_loop:
        @functools.wraps(endpoint)
        async def run_on_loop(*args: Any, **kwargs: Any) -> Any:
            return _respond(endpoint(*args, **kwargs), status_code)

        wrapped = run_on_loop
    else:
        @functools.wraps(endpoint)
        def run(*args: Any, **kwargs: Any) -> Any:
            return _respond(endpoint(*args, **kwargs), status_code)

        wrapped = run
    setattr(wrapped, "_plain_json", True)  # noqa: B010 - a marker on a function object
    return wrapped


class JSONRoute(APIRoute):
    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        kwargs["response_model"] = None
        methods = {m.upper() for m in kwargs.get("methods") or ("GET",)}
        on_loop = methods <= READ_METHODS
        super().__init__(path, plain_json(endpoint, kwargs.get("status_code") or 200, on_loop), **kwargs)
