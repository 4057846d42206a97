"""The response cache against a real SQLite database and its triggers: hits, invalidation, isolation."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest

from cohort.api.response_cache import ChangeCounter, ResponseCache, with_response_cache
from cohort.db import models as m
from cohort.db.session import make_engine, make_sessionmaker, upgrade

LB_PATH = "/v2/lbaas/loadbalancers/lb-1"


class CountingApp:
    """Answers with its call count, so a served-from-cache answer is recognisable."""

    def __init__(self, status: int = 200) -> None:
        self.calls = 0
        self.status = status

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.calls += 1
        await send({"type": "http.response.start", "status": self.status,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b'{"call": %d}' % self.calls})


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "cohort.db"
    upgrade(f"sqlite:///{path}")
    yield path


def get(cache: ResponseCache, path: str = LB_PATH, method: str = "GET", query: bytes = b"",
        headers: list[tuple[bytes, bytes]] | None = None) -> tuple[int, bytes]:
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "query_string": query,
             "headers": headers or [(b"host", b"api")]}
    asyncio.run(cache(scope, receive, send))
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


def write(database: Path, sql: str, *params: Any) -> None:
    with sqlite3.connect(database) as conn:
        conn.execute(sql, params)


def insert(database: Path, *objects: Any) -> None:
    engine = make_engine(f"sqlite:///{database}")
    with make_sessionmaker(engine)() as session:
        session.add_all(objects)
        session.commit()
    engine.dispose()


def test_a_repeated_read_is_served_until_a_shown_column_changes(database: Path) -> None:
    app = CountingApp()
    cache = ResponseCache(app, ChangeCounter(database))
    insert(database, m.LoadBalancer(id="lb-1", project_id="p", name="one", provisioning_status="ACTIVE",
                                    operating_status="ONLINE"))
    assert get(cache) == (200, b'{"call": 1}')
    assert get(cache) == (200, b'{"call": 1}')  # from the cache
    write(database, "UPDATE load_balancer SET lease_owner = 'me', attempts = 3")  # bookkeeping: not shown
    assert get(cache) == (200, b'{"call": 1}')
    write(database, "UPDATE load_balancer SET operating_status = 'DEGRADED'")
    assert get(cache) == (200, b'{"call": 2}')
    insert(database, m.Listener(id="l-1", project_id="p", load_balancer_id="lb-1", protocol="HTTP",
                                protocol_port=80, provisioning_status="ACTIVE", operating_status="ONLINE"))
    assert get(cache) == (200, b'{"call": 3}')
    write(database, "UPDATE listener SET provisioning_status = 'PENDING_UPDATE'")  # not in the LB's body
    assert get(cache) == (200, b'{"call": 3}')
    write(database, "DELETE FROM load_balancer")
    assert get(cache) == (200, b'{"call": 4}')
    assert (cache.hits, cache.misses) == (3, 4)


def test_answers_are_kept_per_identity_query_and_path(database: Path) -> None:
    app = CountingApp()
    cache = ResponseCache(app, ChangeCounter(database))
    tenant_a = [(b"host", b"api"), (b"x-project-id", b"a")]
    tenant_b = [(b"host", b"api"), (b"x-project-id", b"b")]
    assert get(cache, headers=tenant_a)[1] == b'{"call": 1}'
    assert get(cache, headers=tenant_b)[1] == b'{"call": 2}'  # never another project's answer
    assert get(cache, headers=[(b"host", b"api"), (b"x-auth-token", b"t")])[1] == b'{"call": 3}'
    assert get(cache, headers=[(b"host", b"other")])[1] == b'{"call": 4}'  # links carry the host
    assert get(cache, query=b"fields=id")[1] == b'{"call": 5}'
    assert get(cache, path="/v2/lbaas/loadbalancers")[1] == b'{"call": 6}'
    assert get(cache, headers=tenant_a)[1] == b'{"call": 1}'


@pytest.mark.parametrize("path,method", [
    ("/v2/lbaas/loadbalancers/lb-1/status", "GET"), ("/v2/lbaas/loadbalancers/lb-1/stats", "GET"),
    ("/v2/lbaas/listeners", "GET"), (LB_PATH, "HEAD"), (LB_PATH, "PUT"), (LB_PATH, "DELETE"),
])
def test_other_requests_always_go_through(database: Path, path: str, method: str) -> None:
    cache = ResponseCache(CountingApp(), ChangeCounter(database))
    assert get(cache, path=path, method=method)[1] == b'{"call": 1}'
    assert get(cache, path=path, method=method)[1] == b'{"call": 2}'


def test_errors_are_not_kept(database: Path) -> None:
    cache = ResponseCache(CountingApp(status=404), ChangeCounter(database))
    assert get(cache) == (404, b'{"call": 1}')
    assert get(cache) == (404, b'{"call": 2}')


def test_bounded_and_off_where_it_cannot_be_validated(tmp_path: Path, database: Path) -> None:
    cache = ResponseCache(CountingApp(), ChangeCounter(database), max_entries=2)
    for n in range(5):
        get(cache, path=f"/v2/lbaas/loadbalancers/lb-{n}")
    assert len(cache.entries) == 2
    missing = ResponseCache(CountingApp(), ChangeCounter(tmp_path / "absent.db"))
    assert [get(missing)[1] for _ in range(2)] == [b'{"call": 1}', b'{"call": 2}']
    app = CountingApp()
    assert with_response_cache(app, "postgresql://db/cohort") is app
    assert with_response_cache(app, f"sqlite:///{database}", enabled=False) is app
    assert isinstance(with_response_cache(app, f"sqlite:///{database}"), ResponseCache)
