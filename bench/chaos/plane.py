"""Cohort under chaos: its API and controllers as processes of their own, so a controller can die.

``bench.common.bench_env`` runs API and controller in threads of the benchmark, where a
``kill -9`` of the controller would kill the benchmark. Here the private lab and settings come
from ``cohort.harness`` as for every benchmark, but ``cohort api`` and one or two ``cohort
controller`` processes are started from one TOML file (the same state directory and SQLite
database); their output goes to log files. Two controllers share the database through their
leases and compare-and-set claims (``reconcile_lease``) and the heartbeat port through
SO_REUSEPORT; the README documents that on PostgreSQL, the benchmark runs it on SQLite (WAL,
``BEGIN IMMEDIATE`` writers), and ``controllers=1`` runs one. The benchmark process builds the
same ``Cohort`` without serving it (schema, keys and CA made before any process starts) for the
distributor driver's status calls. On the way out, also after a failure or SIGTERM, every
process started here is stopped by its pid and ``harness.teardown`` removes the lab, the
amphorae and the files.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from bench.common import Api, BenchEnv, BenchError
from cohort import harness
from cohort.config import Settings, load_settings
from cohort.layout import Layout
from cohort.service import build

COHORT = Path(sys.executable).parent / "cohort"


def toml_value(value: Any) -> str:
    """A TOML value of a string, number, bool or flat table (JSON's quoting is TOML's for these)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))


@dataclass
class ControlPlane:
    """``cohort api`` and named ``cohort controller`` processes of one configuration file."""

    settings: Settings
    config: Path
    logs: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _files: list[TextIO] = field(default_factory=list)
    starts: dict[str, int] = field(default_factory=dict)

    def start(self, name: str) -> int:
        """Start ``api`` or controller ``name`` (any other name); its pid."""
        part = "api" if name == "api" else "controller"
        self.starts[name] = self.starts.get(name, 0) + 1
        log = (self.logs / f"{name}.{self.starts[name]}.log").open("w")
        self._files.append(log)
        proc = subprocess.Popen([str(COHORT), part, "--config", str(self.config)], stdout=log,
                                stderr=subprocess.STDOUT)
        self.procs[name] = proc
        return proc.pid

    def alive(self, name: str) -> bool:
        proc = self.procs.get(name)
        return proc is not None and proc.poll() is None

    def controllers(self) -> list[str]:
        return sorted(n for n in self.procs if n != "api")

    def kill(self, name: str) -> int:
        """SIGKILL to controller (or API) ``name`` by its pid; the pid."""
        proc = self.procs[name]
        with suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        return proc.pid

    def by_pid(self, pid: int) -> str | None:
        return next((n for n, p in self.procs.items() if p.pid == pid and p.poll() is None), None)

    def lease_holder(self, lb_id: str) -> str | None:
        """The controller whose reconciler holds a lease on ``lb_id`` (its pass is running), if one does.

        Only to aim the kill: read from the database (read-only), since no API shows leases.
        The owner is ``host:pid:token`` (``cohort.controller.reconciler.controller_id``).
        """
        path = Layout.of(self.settings).database
        try:
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as db:
                row = db.execute("SELECT lease_owner, lease_expires FROM load_balancer WHERE id = ?",
                                 (lb_id,)).fetchone()
        except sqlite3.Error:
            return None
        if not row or not row[0] or (row[1] is not None and float(row[1]) < time.time()):
            return None
        parts = str(row[0]).split(":")
        return self.by_pid(int(parts[1])) if len(parts) >= 2 and parts[1].isdigit() else None

    def stop(self) -> None:
        """SIGTERM to every process started here, SIGKILL to any still running after 10 s."""
        for proc in self.procs.values():
            if proc.poll() is None:
                with suppress(ProcessLookupError):
                    proc.terminate()
        deadline = time.monotonic() + 10
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for log in self._files:
            log.close()


def write_config(path: Path, settings: Settings, fields: tuple[str, ...]) -> None:
    values = settings.model_dump()
    path.write_text("".join(f"{name} = {toml_value(values[name])}\n" for name in fields))


@contextmanager
def chaos_env(tag: str, controllers: int, overrides: dict[str, Any]) -> Iterator[tuple[BenchEnv, ControlPlane]]:
    """A private lab, Cohort's API and ``controllers`` controllers as processes; all removed on exit."""
    state_dir = Path(tempfile.mkdtemp(prefix=f"cohort-bench-{tag}-"))
    logs = Path(tempfile.gettempdir()) / "cohort-bench" / f"chaos-logs-{state_dir.name}"
    logs.mkdir(parents=True, exist_ok=True)
    base = harness.private_settings(state_dir, tag, drivers="local", **overrides)
    config = state_dir / "cohort.toml"
    write_config(config, base, ("state_dir", "api_port", "lab_prefix", "drivers", *overrides))
    settings = load_settings(config)
    lab = harness.lab_for(settings, harness.free_mgmt_cidr())
    plane = ControlPlane(settings, config, logs)
    cohort = None
    try:
        lab.up()
        cohort = build(settings)  # schema, keys and CA before any process starts
        plane.start("api")
        url = f"http://{settings.api_host}:{settings.api_port}"
        harness.wait_for_api(url, 60, alive=lambda: plane.alive("api"))
        for k in range(controllers):
            plane.start(f"controller-{'ab'[k]}")
            time.sleep(1.0)
            if not plane.alive(f"controller-{'ab'[k]}"):
                raise BenchError(f"controller-{'ab'[k]} exited; see {logs}")
        yield BenchEnv(lab, cohort, Api(url), state_dir), plane
    finally:
        plane.stop()
        if cohort is not None:
            cohort.engine.dispose()
        harness.teardown(settings)
        shutil.rmtree(state_dir, ignore_errors=True)
