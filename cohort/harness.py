"""Start Cohort, wait until it answers, and remove everything it made: the one harness.

``cohort up``/``cohort down`` and the demo, the functional and end-to-end tests and every
benchmark start and stop Cohort through this module, so they wait the same way and tear down
the same things:

- :func:`private_settings` gives a run its own state directory, API port and lab (a unique
  ``cohort-<tag><hex>`` prefix and a management /24 of 198.19.0.0/16 no host interface uses),
  so runs coexist with each other and with the default lab;
- :func:`running` serves API and controller in threads of this process until the block ends;
- :func:`private_cohort` is both, on a lab that is built first and always torn down after;
- :func:`teardown` is ``cohort down``: every instance the database knows, then the lab (every
  namespace, process, cgroup and veth it made, recorded or left by a crash), then the files
  (database unless external, keys, certificates, agents' state and jails, logs).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from cohort import netns
from cohort.config import Settings
from cohort.layout import Layout

if TYPE_CHECKING:
    from cohort.lab import Lab
    from cohort.service import Cohort

# Test and benchmark labs take management /24s here; the default lab uses 198.18.0.0/24.
PRIVATE_MGMT_SUPERNET = "198.19."


class HarnessError(RuntimeError):
    """Cohort did not come up."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_mgmt_cidr() -> str:
    used = {cidr.split(".")[2] for _, cidr in netns.addresses() if cidr.startswith(PRIVATE_MGMT_SUPERNET)}
    return f"{PRIVATE_MGMT_SUPERNET}{random.choice([n for n in range(1, 255) if str(n) not in used])}.0/24"


def private_prefix(tag: str = "t") -> str:
    return f"cohort-{tag}{secrets.token_hex(3)}"


def private_settings(state_dir: Path, tag: str = "t", **overrides: Any) -> Settings:
    """Settings of a run of its own: ``state_dir``, a free API port and a unique lab prefix."""
    values: dict[str, Any] = {"state_dir": state_dir, "api_port": free_port(), "lab_prefix": private_prefix(tag)}
    values.update(overrides)
    return Settings(**values)


def wait_for_api(base: str, timeout: float = 60.0, alive: Callable[[], bool] = lambda: True) -> None:
    """Until ``base`` answers HTTP; HarnessError after ``timeout`` or once ``alive()`` is false."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(base + "/", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline or not alive():
            raise HarnessError(f"Cohort's API did not answer at {base} within {timeout:.0f}s")
        time.sleep(0.05)


def lab_for(settings: Settings, mgmt_cidr: str | None = None) -> Lab:
    from cohort.lab import Lab

    return Lab(Layout.of(settings).lab_dir, prefix=settings.lab_prefix, mgmt_cidr=mgmt_cidr)


@contextlib.contextmanager
def running(settings: Settings, timeout: float = 30.0) -> Iterator[tuple[Cohort, str]]:
    """API and controller in threads of this process; yields (cohort, base URL) once it answers."""
    from cohort.service import build, serve

    cohort = build(settings)
    loop = asyncio.new_event_loop()
    box: dict[str, asyncio.Task[None]] = {}

    def runner() -> None:
        asyncio.set_event_loop(loop)
        box["task"] = loop.create_task(serve(cohort))
        with contextlib.suppress(asyncio.CancelledError):
            loop.run_until_complete(box["task"])

    thread = threading.Thread(target=runner, name="cohort", daemon=True)
    thread.start()
    base = f"http://{settings.api_host}:{settings.api_port}"
    try:
        wait_for_api(base, timeout, alive=thread.is_alive)
        yield cohort, base
    finally:
        while "task" not in box and thread.is_alive():
            time.sleep(0.01)
        if "task" in box:
            loop.call_soon_threadsafe(box["task"].cancel)
        thread.join(timeout=20)
        cohort.engine.dispose()


@dataclass
class Instance:
    """A running Cohort of the harness: its settings, paths, service, API address and lab."""

    settings: Settings
    layout: Layout
    cohort: Cohort
    base: str
    lab: Lab | None


@contextlib.contextmanager
def private_cohort(state_dir: Path, tag: str = "t", **overrides: Any) -> Iterator[Instance]:
    """Cohort on a private lab (local drivers unless ``drivers`` says otherwise), torn down after.

    The teardown runs whatever happened in the block, and also when Cohort failed to start.
    """
    settings = private_settings(state_dir, tag, **{"drivers": "local", **overrides})
    local = "lab" in settings.seam_drivers().values()
    lab = lab_for(settings, free_mgmt_cidr()) if local else None
    try:
        if lab is not None:
            lab.up()
        with running(settings) as (cohort, base):
            yield Instance(settings, Layout.of(settings), cohort, base, lab)
    finally:
        teardown(settings)


def teardown(settings: Settings, say: Callable[[str], None] = lambda _line: None) -> None:
    """Remove every instance, the lab and the files Cohort made for ``settings`` (``cohort down``)."""
    layout = Layout.of(settings)
    if layout.lab_dir.exists() or "lab" in settings.seam_drivers().values():
        _destroy_instances(settings)
        lab_for(settings).down()
        say("Removed the amphorae and the lab network.")
    _remove_files(settings, layout)


def _destroy_instances(settings: Settings) -> None:
    from sqlalchemy.exc import OperationalError

    from cohort.controller.teardown import destroy_instances
    from cohort.controller.wiring import make_drivers
    from cohort.db.session import make_engine, make_sessionmaker

    if not settings.database_url and not Layout.of(settings).database.exists():
        return
    drivers = make_drivers(settings.model_copy(update={"drivers": "local", "compute_driver": "lab",
                                                       "network_driver": "lab"}))
    engine = make_engine(settings.db_url)
    try:
        with contextlib.suppress(OperationalError):  # no schema: nothing was ever built
            destroy_instances(make_sessionmaker(engine), drivers)
    finally:
        engine.dispose()


def _remove_files(settings: Settings, layout: Layout) -> None:
    """Everything Cohort wrote in the state directory; with an external database, its keys stay,
    since the secrets stored there cannot be read without them."""
    for path in (layout.instances_dir, layout.agents_dir, layout.lab_dir, layout.log_file, layout.pid_file,
                 layout.wake_socket):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    if settings.database_url:
        return
    db = layout.database
    for path in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        path.unlink(missing_ok=True)
    for path in (layout.secrets_key, layout.heartbeat_key):
        path.unlink(missing_ok=True)
    for directory in (layout.pki_dir, layout.agent_keys_dir):
        shutil.rmtree(directory, ignore_errors=True)
    with contextlib.suppress(OSError):
        layout.state_dir.rmdir()  # only when nothing else is in it
