"""Engines, sessions and schema upgrades for SQLite (embedded default) and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
WRITER = "cohort_writer"
# The PostgreSQL advisory lock every upgrade holds (any fixed number; "cohort" in ASCII).
UPGRADE_LOCK = 0x636F686F7274


def normalise_url(url: str) -> str:
    """Accept plain ``postgresql://`` URLs and use the psycopg 3 driver for them."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def make_engine(url: str) -> Engine:
    url = normalise_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, pool_size=20)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            # Let SQLAlchemy, not the driver, open transactions (see _begin).
            dbapi_conn.isolation_level = None
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _begin(conn: Any) -> None:
            # A writer takes SQLite's write lock up front: a deferred transaction that reads, then
            # writes, fails at once with "database is locked" when another writer got there first,
            # instead of waiting its turn.
            conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(WRITER) else "BEGIN")

        return engine
    return create_engine(url, pool_size=20, max_overflow=20, pool_pre_ping=True)


def make_sessionmaker(engine: Engine, writer: bool = True) -> sessionmaker[Session]:
    """Sessions that write (the default) or only read; on SQLite only writers serialize."""
    bind = engine.execution_options(**{WRITER: True}) if writer else engine
    return sessionmaker(bind, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session that commits on success and rolls back on any exception."""
    with factory() as session, session.begin():
        yield session


def alembic_config(url: str, secrets_key: Path | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", normalise_url(url).replace("%", "%%"))
    # Migrations that encrypt or decrypt stored values (0004) find the secrets key here.
    config.attributes["secrets_key_file"] = secrets_key
    return config


def upgrade(url: str, revision: str = "head", secrets_key: Path | None = None) -> None:
    """Bring the schema to ``revision``; safe to run on every start."""
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    if not normalise_url(url).startswith("postgresql"):
        command.upgrade(alembic_config(url, secrets_key), revision)
        return
    # Controllers and API processes starting together each upgrade on start: one at a time, or two
    # would create the same tables. The lock goes with its connection, also when its process dies.
    engine = create_engine(normalise_url(url), poolclass=NullPool)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": UPGRADE_LOCK})
            try:
                command.upgrade(alembic_config(url, secrets_key), revision)
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": UPGRADE_LOCK})
    finally:
        engine.dispose()
