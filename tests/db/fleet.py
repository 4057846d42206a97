"""Several Cohort processes on one PostgreSQL database: API and controller processes started as real
OS processes (so a test can SIGKILL one by its pid), the leases they hold, and whether the
database has converged (nothing pending, no duplicate, no orphaned noop instance).

The processes share one state directory (its keys, and the noop compute's instances with
``noop_shared_state``) as controllers on one host would, and every one of them is stopped by its
pid when the fleet stops, also when a test fails.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine, select

from cohort.controller.distributors import LIVE as LIVE_DISTRIBUTOR
from cohort.db import models as m
from cohort.drivers.compute.noop import read_state
from cohort.layout import Layout
from tests.support import Api, free_port, wait_for

# Seats each topology asks for (ACTIVE_ACTIVE: the cluster's desired size of IN_CLUSTER).
SEATS = {"SINGLE": {"STANDALONE": 1}, "ACTIVE_STANDBY": {"MASTER": 1, "BACKUP": 1}}


@dataclass
class Fleet:
    state_dir: Path
    db_url: str
    env: dict[str, str]
    apis: list[Api] = field(default_factory=list)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def _start(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = (self.state_dir.parent / f"{name}.log").open("ab")
        process = subprocess.Popen(
            [sys.executable, "-m", "cohort.cli", *args, "--state-dir", str(self.state_dir), "--db", self.db_url,
             "--drivers", "noop"], stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **self.env},
            start_new_session=True)
        log.close()
        self.processes[name] = process
        return process

    def start_api(self, name: str) -> Api:
        port = free_port()
        self._start(name, ["api", "--port", str(port)])
        api = Api(f"http://127.0.0.1:{port}")
        wait_for(lambda: _answers(api), timeout=60, interval=0.2)
        self.apis.append(api)
        return api

    def start_controller(self, name: str) -> None:
        self._start(name, ["controller"])

    def pid(self, name: str) -> int:
        return self.processes[name].pid

    def kill(self, name: str) -> None:
        """SIGKILL, as a crash: no handler runs, nothing is released."""
        process = self.processes.pop(name)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)

    def stop(self) -> None:
        for process in self.processes.values():
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                process.wait(timeout=10)
        self.processes.clear()

    def logs(self, lines: int = 30) -> str:
        parts = []
        for path in sorted(self.state_dir.parent.glob("*.log")):
            parts.append(f"--- {path.name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(parts)


def _answers(api: Api) -> bool:
    try:
        return api.get("/")[0] == 200
    except Exception:  # noqa: BLE001 - not up yet
        return False


def lease_holders(engine: Engine) -> dict[int, list[str]]:
    """Live leases on pending load balancers, by the holding controller's pid (``controller_id``)."""
    now = time.time()
    with engine.connect() as conn:
        rows = conn.execute(select(m.LoadBalancer.id, m.LoadBalancer.lease_owner).where(
            m.LoadBalancer.provisioning_status.like("PENDING%"), m.LoadBalancer.lease_owner.is_not(None),
            m.LoadBalancer.lease_expires > now)).all()
    held: dict[int, list[str]] = {}
    for lb_id, owner in rows:
        held.setdefault(int(str(owner).split(":")[1]), []).append(lb_id)
    return held


def problems(engine: Engine, state_dir: Path) -> list[str]:
    """What keeps the database from having converged; empty once every load balancer is ACTIVE with
    exactly its seats filled, there is one live distributor pair per type in use, and the noop cloud
    holds exactly the instances the database knows."""
    found: list[str] = []
    with engine.connect() as conn:
        lbs = conn.execute(select(m.LoadBalancer.id, m.LoadBalancer.topology,
                                  m.LoadBalancer.provisioning_status)).all()
        clusters = {row.load_balancer_id: row for row in conn.execute(select(m.AmphoraCluster)).all()}
        amphorae = conn.execute(select(m.Amphora.id, m.Amphora.load_balancer_id, m.Amphora.role,
                                       m.Amphora.status, m.Amphora.compute_id)).all()
        distributors = conn.execute(select(m.Distributor)).all()
        registrations = conn.execute(select(m.AmphoraRegistration)).all()
    live = [a for a in amphorae if a.status != "DELETED"]
    for lb_id, topology, status in lbs:
        if status != "ACTIVE":
            found.append(f"load balancer {lb_id[:8]} is {status}")
        seats = dict(SEATS.get(topology, {}))
        if topology == "ACTIVE_ACTIVE":
            cluster = clusters.get(lb_id)
            seats = {"IN_CLUSTER": cluster.desired_size if cluster is not None else -1}
            registered = [r for r in registrations if r.load_balancer_id == lb_id]
            if len(registered) != seats["IN_CLUSTER"] or any(r.state != "ACTIVE" for r in registered):
                found.append(f"load balancer {lb_id[:8]} has {len(registered)} registrations")
        mine = [a for a in live if a.load_balancer_id == lb_id]
        if Counter(a.role for a in mine) != Counter(seats):
            found.append(f"load balancer {lb_id[:8]} has amphorae {Counter(a.role for a in mine)}, wants {seats}")
        found += [f"amphora {a.id[:8]} is {a.status}" for a in mine if a.status != "ALLOCATED"]
    types = {row.cluster_type for row in clusters.values()}
    for distributor_type in types:
        pair = [d for d in distributors if d.distributor_type == distributor_type and d.status in LIVE_DISTRIBUTOR]
        if sorted(d.name for d in pair) != [f"distributor-{distributor_type.lower()}-{n}" for n in (0, 1)] or \
                any(d.status != "ACTIVE" for d in pair):
            found.append(f"{distributor_type} distributors: {[(d.name, d.status) for d in pair]}")
    found += [f"distributor {d.name} is {d.status}" for d in distributors if d.status == "ERROR"]
    known = {a.compute_id for a in live} | {d.compute_id for d in distributors if d.status in LIVE_DISTRIBUTOR}
    instances = read_state(Layout(state_dir).noop_compute)
    cloud = set(instances)
    if cloud != known - {None}:
        found.append(f"noop instances {sorted(cloud - known)} unknown, {sorted(known - cloud - {None})} missing")
    found += [f"noop instance {ident} is {inst.status}" for ident, inst in instances.items() if inst.status != "ACTIVE"]
    return found


def wait_converged(engine: Engine, state_dir: Path, timeout: float) -> float:
    """Seconds until ``problems`` is empty; AssertionError with the last problems after ``timeout``."""
    started = time.monotonic()
    last: list[str] = []
    while time.monotonic() - started < timeout:
        last = problems(engine, state_dir)
        if not last:
            return time.monotonic() - started
        time.sleep(0.1)
    raise AssertionError(f"not converged within {timeout:.0f}s: {last}")
