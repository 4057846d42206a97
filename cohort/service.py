"""Assemble and run Cohort's processes: API, reconciler and health manager, together or apart."""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass
from typing import Any

import uvicorn
from fastapi import FastAPI
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from cohort.api.app import create_app
from cohort.api.deps import AppState
from cohort.api.response_cache import with_response_cache
from cohort.config import Settings
from cohort.controller.distributor_spares import DistributorSpares
from cohort.controller.failover import FailoverWatcher
from cohort.controller.health import HealthManager
from cohort.controller.heartbeat_queue import LatestPerSender
from cohort.controller.reconciler import Reconciler
from cohort.controller.spares import SparePool
from cohort.controller.wiring import Drivers, heartbeat_key, make_drivers
from cohort.db.session import make_engine, make_sessionmaker, upgrade
from cohort.layout import Layout
from cohort.secrets import certificates_for
from cohort.statedir import make_private
from cohort.wake import WakeListener, WakeSender
from cohort.workers import serve_api_workers

log = logging.getLogger(__name__)


@dataclass
class Cohort:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    drivers: Drivers
    reconciler: Reconciler
    health: HealthManager
    failover: FailoverWatcher
    app: FastAPI
    spares: SparePool
    distributor_spares: DistributorSpares
    receiver: Any = None  # the heartbeat receiver while the controller runs (its counters)


def build(settings: Settings) -> Cohort:
    make_private(settings.state_dir)
    upgrade(settings.db_url, secrets_key=settings.secrets_key_file)
    engine = make_engine(settings.db_url)
    sessions = make_sessionmaker(engine)
    readers = make_sessionmaker(engine, writer=False)
    drivers = make_drivers(settings)
    reconciler = Reconciler(settings, sessions, drivers,
                            certificates=lambda session, lb_id: certificates_for(session, settings, lb_id),
                            read_sessions=readers)
    app = create_app(AppState(settings, sessions, drivers.network, on_change=reconciler.wake,
                              read_sessions=readers))
    failover = FailoverWatcher(settings, sessions, drivers, on_change=reconciler.wake)
    return Cohort(settings, engine, sessions, drivers, reconciler, HealthManager(sessions), failover, app,
                  SparePool(settings, sessions, drivers), DistributorSpares(settings, sessions, drivers))


async def _heartbeats(cohort: Cohort) -> tuple[Any, LatestPerSender]:
    from cohort.health.heartbeat import HeartbeatReceiver, HeartbeatVerifier

    host, _, port = cohort.drivers.heartbeat_target.rpartition(":")
    # Sequences accepted before a restart stay refused after it.
    verifier = HeartbeatVerifier(heartbeat_key(cohort.settings),
                                 last_seq=await asyncio.to_thread(cohort.health.last_sequences))
    queue = LatestPerSender(cohort.health.on_heartbeat)
    threading.Thread(target=queue.run, name="heartbeats", daemon=True).start()
    receiver = HeartbeatReceiver((host, int(port)), verifier, queue.put)
    try:
        await receiver.start()
    except BaseException:
        queue.stop()
        raise
    return receiver, queue


async def serve(cohort: Cohort, api: bool = True, controller: bool = True,
                ready: threading.Event | None = None) -> None:
    """Run the selected parts until cancelled; the reconciler runs in its own thread.

    With ``api_workers`` > 1 the API runs in that many worker processes instead of this one.
    """
    workers: list[threading.Thread] = []
    receiver = None
    heartbeats: LatestPerSender | None = None
    waker = WakeListener(Layout.of(cohort.settings).wake_socket, cohort.reconciler.wake)
    if controller:
        workers = [threading.Thread(target=cohort.reconciler.run, name="reconciler", daemon=True),
                   threading.Thread(target=cohort.failover.run, name="failover", daemon=True)]
        if cohort.settings.spare_amphora_pool_size:
            workers.append(threading.Thread(target=cohort.spares.run, name="spares", daemon=True))
        if cohort.settings.distributor_spare:
            workers.append(threading.Thread(target=cohort.distributor_spares.run, name="distributor-spares",
                                            daemon=True))
        for worker in workers:
            worker.start()
        if cohort.drivers.heartbeat_target:
            receiver, heartbeats = await _heartbeats(cohort)
            cohort.receiver = receiver
        waker.start()
    else:
        cohort.app.state.cohort.on_change = WakeSender(waker.path)
    try:
        if api and cohort.settings.api_workers > 1:
            await serve_api_workers(cohort.settings, ready)
        elif api:
            app = with_response_cache(cohort.app, cohort.settings.db_url, cohort.settings.api_response_cache)
            config = uvicorn.Config(app, host=cohort.settings.api_host, port=cohort.settings.api_port,
                                    log_level="warning", access_log=False, lifespan="off")
            server = uvicorn.Server(config)
            if ready is not None:
                asyncio.get_running_loop().call_later(0.5, ready.set)
            await server.serve()
        else:
            if ready is not None:
                ready.set()
            await asyncio.Event().wait()
    finally:
        waker.close()
        cohort.reconciler.stop()
        cohort.failover.stop()
        cohort.spares.stop()
        cohort.distributor_spares.stop()
        if receiver is not None:
            receiver.close()
        if heartbeats is not None:
            heartbeats.stop()
        for worker in workers:
            worker.join(timeout=10)
