"""A response cache for the hottest reads, validated against the database on every request.

Clients poll ``GET /v2/lbaas/loadbalancers[/{id}]`` (waiting for ACTIVE, dashboards, the
``openstack`` CLI) far more often than anything changes. Each process keeps the bodies it
answered, keyed by everything the answer depends on: the path and query, the identity headers
(``X-Auth-Token``, ``X-Project-Id``, ``X-Roles``) and ``Host`` (page links carry it). An entry
is stamped with the database's change counter read *before* the answer was built; SQLite
triggers bump that counter in the same transaction as any change a load balancer's body shows
(migration 0002). Every request reads the counter first (one indexed row) and serves the
entry only if it is unchanged, so an answer is never older than the last committed change:
a client that changed something and reads it back sees its change, from any API process.

Only complete 200 answers are kept; the cache holds at most ``max_entries`` (least recently
used go first) of at most ``max_body`` bytes each. SQLite only: on another database, or when
the counter cannot be read, every request goes through.
"""

from __future__ import annotations

import logging
import re
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

CACHED_PATHS = re.compile(r"^/v2(?:\.0)?/lbaas/loadbalancers(?:/[^/]+)?/?$")
KEY_HEADERS = (b"host", b"x-auth-token", b"x-project-id", b"x-roles")
COUNTER_SQL = "SELECT counter FROM api_change WHERE id = 1"


@dataclass(frozen=True)
class Entry:
    counter: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


class ChangeCounter:
    """Reads the change counter over this process's own read-only SQLite connection."""

    def __init__(self, database: Path) -> None:
        self.database = database
        self._local = threading.local()

    def read(self) -> int | None:
        try:
            conn = getattr(self._local, "conn", None)
            if conn is None:
                conn = sqlite3.connect(f"file:{self.database}?mode=ro", uri=True, isolation_level=None,
                                       check_same_thread=False, timeout=5)
                self._local.conn = conn
            row = conn.execute(COUNTER_SQL).fetchone()
        except sqlite3.Error as e:
            log.debug("change counter unreadable, not caching: %s", e)
            return None
        return int(row[0]) if row else None


def sqlite_path(database_url: str) -> Path | None:
    prefix = "sqlite:///"
    if not database_url.startswith(prefix):
        return None
    path = database_url.removeprefix(prefix).split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


class ResponseCache:
    """ASGI middleware in front of the application; see the module docstring."""

    def __init__(self, app: ASGIApp, counter: ChangeCounter, max_entries: int = 4096,
                 max_body: int = 1 << 20) -> None:
        self.app = app
        self.counter = counter
        self.max_entries = max_entries
        self.max_body = max_body
        self.entries: OrderedDict[tuple[Any, ...], Entry] = OrderedDict()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def _key(scope: Scope) -> tuple[Any, ...] | None:
        if scope["type"] != "http" or scope["method"] != "GET" or not CACHED_PATHS.match(scope["path"]):
            return None
        wanted = {name: value for name, value in scope["headers"] if name in KEY_HEADERS}
        return (scope["path"], scope["query_string"], *(wanted.get(name) for name in KEY_HEADERS))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        key = self._key(scope)
        counter = self.counter.read() if key is not None else None
        if key is None or counter is None:
            await self.app(scope, receive, send)
            return
        entry = self.entries.get(key)
        if entry is not None and entry.counter == counter:
            self.entries.move_to_end(key)
            self.hits += 1
            await send({"type": "http.response.start", "status": 200, "headers": entry.headers})
            await send({"type": "http.response.body", "body": entry.body})
            return
        self.misses += 1
        await self._answer_and_keep(key, counter, scope, receive, send)

    async def _answer_and_keep(self, key: tuple[Any, ...], counter: int, scope: Scope, receive: Receive,
                               send: Send) -> None:
        status = 0
        headers: list[tuple[bytes, bytes]] = []
        chunks: list[bytes] = []
        size = 0
        complete = False

        async def keep(message: Message) -> None:
            nonlocal status, headers, size, complete
            if message["type"] == "http.response.start":
                status, headers = message["status"], list(message.get("headers", []))
            elif message["type"] == "http.response.body":
                body = message.get("body", b"")
                size += len(body)
                if status == 200 and size <= self.max_body:
                    chunks.append(body)
                complete = not message.get("more_body", False)
            await send(message)

        await self.app(scope, receive, keep)
        if status == 200 and complete and size <= self.max_body:
            self.entries[key] = Entry(counter, headers, b"".join(chunks))
            self.entries.move_to_end(key)
            while len(self.entries) > self.max_entries:
                self.entries.popitem(last=False)


def with_response_cache(app: ASGIApp, database_url: str, enabled: bool = True) -> ASGIApp:
    """``app`` behind a :class:`ResponseCache` when it is enabled and the database is SQLite."""
    path = sqlite_path(database_url)
    if not enabled or path is None:
        return app
    return ResponseCache(app, ChangeCounter(path))
