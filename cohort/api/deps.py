"""Per-application state and the FastAPI dependencies every route uses."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session, sessionmaker

from cohort.api.auth import RequestContext, authenticate
from cohort.config import Settings
from cohort.drivers.network.base import NetworkDriver


@dataclass
class AppState:
    settings: Settings
    sessions: sessionmaker[Session]
    network: NetworkDriver
    # Called after a commit that leaves work for the reconciler (wakes it early in-process).
    on_change: Callable[[], None] = field(default=lambda: None)
    secrets_key: Path | None = None
    read_sessions: sessionmaker[Session] | None = None

    @property
    def secrets_key_file(self) -> Path:
        return self.secrets_key or self.settings.state_dir / "secrets.key"


def app_state(request: Request) -> AppState:
    state: AppState = request.app.state.cohort
    return state


def db_session(request: Request, state: Annotated[AppState, Depends(app_state)]) -> Iterator[Session]:
    factory = state.read_sessions if request.method in ("GET", "HEAD") and state.read_sessions else state.sessions
    with factory() as session:
        yield session


def request_context(request: Request, state: Annotated[AppState, Depends(app_state)]) -> RequestContext:
    return authenticate(request, state.settings)


async def raw_body(request: Request) -> bytes:
    """Read the body on the event loop so that handlers can be plain functions run in the thread pool.

    Handlers must never block the loop on the database: a writer waiting for SQLite's lock there
    would stall the very loop that lets the current lock holder finish.
    """
    return await request.body()


State = Annotated[AppState, Depends(app_state)]
RawBody = Annotated[bytes, Depends(raw_body)]
DB = Annotated[Session, Depends(db_session)]
Ctx = Annotated[RequestContext, Depends(request_context)]
