"""API worker processes: several processes answer on one listening socket, so the API uses every core.

One Python process serves requests on one core at a time (the GIL), so ``api_workers`` > 1
starts that many API processes. The parent binds the socket once and hands it to each worker
(spawned, not forked: the parent runs threads); the kernel queues connections until a worker
accepts them, so the port answers from the moment it is bound. The controller (reconciler,
health, failover) stays single, in the parent; workers wake it with a datagram
(:mod:`cohort.wake`). The parent restarts a worker that dies and stops them all, by pid, when
it stops. A worker whose parent is gone (killed with SIGKILL) stops itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
from multiprocessing.process import BaseProcess

import uvicorn

from cohort.config import Settings

log = logging.getLogger(__name__)

BACKLOG = 2048
RESTART_PAUSE = 1.0  # seconds between restarts of a worker that keeps dying


def bind_listener(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP, and
    # without it a response written in two parts waits for the client's delayed ACK (40 ms).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(BACKLOG)
    sock.set_inheritable(True)
    return sock


def _worker_main(settings_json: str, sock: socket.socket, parent_pid: int) -> None:
    from cohort.api.app import create_app
    from cohort.api.deps import AppState
    from cohort.api.response_cache import with_response_cache
    from cohort.controller.wiring import make_network
    from cohort.db.session import make_engine, make_sessionmaker
    from cohort.layout import Layout
    from cohort.wake import WakeSender

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings.model_validate_json(settings_json)
    engine = make_engine(settings.db_url)
    fastapi_app = create_app(AppState(settings, make_sessionmaker(engine), make_network(settings),
                              on_change=WakeSender(Layout.of(settings).wake_socket),
                              read_sessions=make_sessionmaker(engine, writer=False)))
    app = with_response_cache(fastapi_app, settings.db_url, settings.api_response_cache)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))

    async def run() -> None:
        async def watch_parent() -> None:
            while os.getppid() == parent_pid:
                await asyncio.sleep(1.0)
            server.should_exit = True

        watcher = asyncio.create_task(watch_parent())
        try:
            await server.serve(sockets=[sock])
        finally:
            watcher.cancel()

    asyncio.run(run())


class WorkerPool:
    """The API worker processes of one parent, started and stopped by pid."""

    def __init__(self, settings: Settings, sock: socket.socket) -> None:
        self.settings_json = settings.model_dump_json()
        self.sock = sock
        self.count = settings.api_workers
        self.context = multiprocessing.get_context("spawn")
        self.processes: list[BaseProcess] = []
        self._last_restart = 0.0

    def _start_one(self) -> BaseProcess:
        process = self.context.Process(target=_worker_main, name="cohort-api-worker",
                                       args=(self.settings_json, self.sock, os.getpid()), daemon=True)
        process.start()
        return process

    def start(self) -> None:
        self.processes = [self._start_one() for _ in range(self.count)]
        log.info("API workers started: pids %s", [p.pid for p in self.processes])

    def replace_dead(self) -> None:
        for index, process in enumerate(self.processes):
            if process.is_alive() or time.monotonic() - self._last_restart < RESTART_PAUSE:
                continue
            log.warning("API worker %s exited with %s; starting another", process.pid, process.exitcode)
            self._last_restart = time.monotonic()
            self.processes[index] = self._start_one()

    def stop(self, timeout: float = 10.0) -> None:
        for process in self.processes:
            if process.is_alive():
                process.terminate()  # SIGTERM: uvicorn finishes the requests in flight
        deadline = time.monotonic() + timeout
        for process in self.processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join(5)


async def serve_api_workers(settings: Settings, ready: threading.Event | None = None) -> None:
    """Serve the API from ``settings.api_workers`` processes until SIGTERM/SIGINT or cancellation."""
    sock = bind_listener(settings.api_host, settings.api_port)
    pool = WorkerPool(settings, sock)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    handled: list[signal.Signals] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(RuntimeError, ValueError):  # not the main thread: the caller cancels us
            loop.add_signal_handler(sig, stop.set)
            handled.append(sig)
    try:
        await asyncio.to_thread(pool.start)
        if ready is not None:
            ready.set()
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)
            pool.replace_dead()
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
        pool.stop()
        sock.close()
