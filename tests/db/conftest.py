"""One throwaway PostgreSQL server per test session, and a fresh database for each test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.pg import ThrowawayPostgres, throwaway_postgres, unavailable_reason


@pytest.fixture(scope="session")
def postgres() -> Iterator[ThrowawayPostgres]:
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    with throwaway_postgres() as server:
        yield server


@pytest.fixture
def pg_url(postgres: ThrowawayPostgres) -> Iterator[str]:
    url = postgres.create_database()
    try:
        yield url
    finally:
        postgres.drop_database(url.rsplit("/", 1)[1])
