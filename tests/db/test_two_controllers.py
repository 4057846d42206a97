"""Two controllers (and two API processes) on one PostgreSQL stand in for each other.

Either controller is killed with SIGKILL while it holds leases on load balancers in the middle of
creates, scale events and failovers (the noop drivers take ``noop_delay`` per build, wait and
update, so the kill lands mid-operation); the other finishes everything: every load balancer
ACTIVE, each with exactly its amphorae, one distributor pair, no orphaned noop instance. The
killed controller is restarted and the next round kills the other one. Then the failover
watchers of two controllers scan one stale amphora and one silent distributor concurrently, many
times: each failure is acted on exactly once.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event, select

from cohort.config import Settings
from cohort.controller.cluster import ClusterManager
from cohort.controller.failover import FailoverWatcher
from cohort.controller.reconciler import Reconciler
from cohort.controller.wiring import make_drivers
from cohort.db import models as m
from cohort.db.session import make_engine, make_sessionmaker, upgrade
from cohort.drivers.compute.noop import NoopComputeDriver
from cohort.layout import Layout
from tests.db.fleet import Fleet, lease_holders, problems, wait_converged
from tests.support import Api, wait_for

LB = "/v2/lbaas/loadbalancers"
ENV = {"COHORT_NOOP_DELAY": "0.3", "COHORT_NOOP_SHARED_STATE": "true", "COHORT_DRAIN_TIMEOUT": "2"}
CONVERGE_WITHIN = 60.0
STATEMENT_DELAY = 0.02


@pytest.fixture
def fleet(pg_url: str, tmp_path: Path) -> Iterator[tuple[Fleet, Engine]]:
    upgrade(pg_url)
    fleet = Fleet(tmp_path / "state", pg_url, ENV)
    engine = make_engine(pg_url)
    try:
        fleet.start_controller("a")
        fleet.start_controller("b")
        fleet.start_api("api-1")
        fleet.start_api("api-2")
        yield fleet, engine
    finally:
        fleet.stop()
        engine.dispose()


class Tenant:
    """Requests spread over both API processes; VIPs given, so that no two load balancers share one
    (each process's noop network hands out addresses of its own)."""

    def __init__(self, apis: list[Api]) -> None:
        self.apis = apis
        self.calls = 0
        self.vips = iter(range(150, 250))

    @property
    def api(self) -> Api:
        self.calls += 1
        return self.apis[self.calls % len(self.apis)]

    def create(self, name: str, flavor: str | None = None) -> str:
        body: dict[str, Any] = {"name": name, "vip_subnet_id": "public-subnet",
                                "vip_address": f"203.0.113.{next(self.vips)}"}
        if flavor is not None:
            body["flavor_id"] = flavor
        status, answer = self.api.post(LB, {"loadbalancer": body})
        assert status == 201, answer
        return str(answer["loadbalancer"]["id"])

    def scale(self, lb_id: str, size: int) -> None:
        cluster = self.api.get(f"/v2/octavia/clusters?loadbalancer_id={lb_id}")[1]["clusters"][0]
        status, answer = self.api.put(f"/v2/octavia/clusters/{cluster['id']}", {"cluster": {"desired_size": size}})
        assert status == 200, answer

    def amphorae(self, lb_id: str) -> list[dict[str, Any]]:
        rows = self.api.get(f"/v2/octavia/amphorae?loadbalancer_id={lb_id}")[1]["amphorae"]
        return [row for row in rows if row["status"] == "ALLOCATED"]

    def fail_amphora(self, amphora_id: str) -> None:
        status, answer = self.api.put(f"/v2/octavia/amphorae/{amphora_id}/failover", None)
        assert status == 202, answer

    def fail_lb(self, lb_id: str) -> None:
        status, answer = self.api.put(f"{LB}/{lb_id}/failover", None)
        assert status == 202, answer


def crash(fleet: Fleet, compute_id: str) -> None:
    """The instance's agent dies: only the controllers' failover watchers can notice."""
    NoopComputeDriver(state_file=Layout(fleet.state_dir).noop_compute).crash(compute_id)


def held_by(engine: Engine, pid: int) -> list[str]:
    """Load balancers whose lease names controller ``pid``, expired or not."""
    with engine.connect() as conn:
        return list(conn.scalars(select(m.LoadBalancer.id).where(m.LoadBalancer.lease_owner.like(f"%:{pid}:%"))))


def kill_mid_work(fleet: Fleet, engine: Engine, name: str) -> list[str]:
    """SIGKILL controller ``name`` as soon as it holds a lease on a pending load balancer; the load
    balancers it left pending under its lease (so the kill really landed in the middle of a pass)."""
    pid = fleet.pid(name)
    wait_for(lambda: lease_holders(engine).get(pid), timeout=20, interval=0.02)
    fleet.kill(name)
    stranded = lease_holders(engine).get(pid, [])
    assert stranded, f"controller {name} finished its passes before the kill landed"
    return stranded


def test_either_controller_killed_mid_work_the_other_finishes(fleet: tuple[Fleet, Engine]) -> None:
    cohort, engine = fleet
    tenant = Tenant(cohort.apis)
    aa = cohort.apis[0].flavor("aa3", {"loadbalancer_topology": "ACTIVE_ACTIVE", "amp_cluster_size": 3})
    ha = cohort.apis[0].flavor("ha", {"loadbalancer_topology": "ACTIVE_STANDBY"})
    times: list[float] = []

    def round_(victim: str) -> None:
        pid = cohort.pid(victim)
        stranded = kill_mid_work(cohort, engine, victim)
        killed = time.monotonic()
        try:
            wait_for(lambda: not set(stranded) & set(held_by(engine, pid)), timeout=CONVERGE_WITHIN, interval=0.05)
            taken_over = time.monotonic() - killed
            wait_converged(engine, cohort.state_dir, CONVERGE_WITHIN)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{cohort.logs()}") from exc
        times.append(time.monotonic() - killed)
        print(f"controller {victim} killed mid-pass on {len(stranded)} load balancers; taken over "
              f"{taken_over:.2f}s later, converged {times[-1]:.2f}s later")
        cohort.start_controller(victim)

    # Creates of every topology; controller a dies.
    single = [tenant.create(f"single{n}") for n in range(2)]
    standby = [tenant.create(f"ha{n}", ha) for n in range(2)]
    active = [tenant.create(f"aa{n}", aa) for n in range(2)]
    round_("a")

    # Scale out and in, failovers by API and by a dead instance, a create; controller b dies.
    tenant.scale(active[0], 4)
    tenant.scale(active[1], 2)
    tenant.fail_amphora(next(a["id"] for a in tenant.amphorae(standby[0]) if a["role"] == "MASTER"))
    tenant.fail_lb(single[0])
    crash(cohort, tenant.amphorae(single[1])[0]["compute_name"])
    single.append(tenant.create("single2"))
    round_("b")

    # And again the other way round, with a delete among the work.
    tenant.scale(active[0], 2)
    tenant.fail_amphora(tenant.amphorae(active[1])[0]["id"])
    tenant.fail_lb(standby[1])
    crash(cohort, tenant.amphorae(standby[0])[0]["compute_name"])
    assert tenant.api.delete(f"{LB}/{single[2]}")[0] == 204
    round_("a")

    assert tenant.api.get(f"{LB}/{single[2]}")[0] == 404
    with engine.connect() as conn:
        replaced = conn.execute(select(m.Amphora.id).where(m.Amphora.status == "DELETED")).all()
    # Every failover and scale-in retired exactly the amphorae it meant to, no more. Round 2: 1 scaled in,
    # 3 failed over; round 3: 2 scaled in, 4 failed over (the deleted load balancer's rows went with it).
    assert len(replaced) == 10, replaced
    print(f"kill -> converged: {', '.join(f'{t:.2f}s' for t in times)}; median {statistics.median(times):.2f}s")
    assert max(times) < CONVERGE_WITHIN


class Controller:
    """A controller's failover watcher and reconciler in this process, with a database pool of its own.

    Every statement takes ``STATEMENT_DELAY`` longer, as over a slow link: a read-then-write that
    two controllers can both pass shows up as double action instead of hiding in a narrow window."""

    def __init__(self, settings: Settings, url: str, owner: str) -> None:
        self.engine = make_engine(url)
        event.listen(self.engine, "after_cursor_execute", lambda *_args: time.sleep(STATEMENT_DELAY))
        self.sessions = make_sessionmaker(self.engine)
        drivers = make_drivers(settings)
        self.reconciler = Reconciler(settings, self.sessions, drivers, owner=owner)
        self.watcher = FailoverWatcher(settings, self.sessions, drivers, on_change=lambda: None)
        self.cluster = ClusterManager(self.sessions, drivers, 1.0)


def _together(barrier: threading.Barrier, work: list[Any]) -> list[int]:
    """Run each callable in a thread of its own, all released at once; their results."""
    results: list[int] = []
    lock = threading.Lock()

    def run(call: Any) -> None:
        barrier.wait(10)
        outcome = call()
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=run, args=(call,)) for call in work]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(results) == len(work)
    return results


def test_concurrent_failure_scans_act_once(pg_url: str, tmp_path: Path) -> None:
    upgrade(pg_url)
    settings = Settings(state_dir=tmp_path, database_url=pg_url, drivers="noop", noop_shared_state=True)
    one, other = Controller(settings, pg_url, "controller-1"), Controller(settings, pg_url, "controller-2")
    try:
        with one.sessions() as session, session.begin():
            lb = m.LoadBalancer(project_id="p", vip_subnet_id=make_drivers(settings).network
                                .get_subnet("public-subnet").id, topology="ACTIVE_STANDBY")  # type: ignore[union-attr]
            session.add(lb)
            session.flush()
            lb_id = lb.id
        one.reconciler.run_until_idle()
        with one.sessions() as session, session.begin():
            victim = session.scalars(select(m.Amphora).where(m.Amphora.load_balancer_id == lb_id)).first()
            assert victim is not None and victim.status == "ALLOCATED"
            victim_id = victim.id
            session.add(m.AmphoraHealth(amphora_id=victim_id, last_update=time.time() - 60, busy=False))
        refs = one.cluster.ensure_pair("L2")
        with one.sessions() as session, session.begin():
            session.add(m.DistributorHealth(distributor_id=refs[0].id, last_update=time.time() - 60, busy=False))

        acted = []
        for round_ in range(12):
            barrier = threading.Barrier(4)
            acted += _together(barrier, [one.watcher.scan_amphorae, other.watcher.scan_amphorae,
                                         one.watcher.scan_distributors, other.watcher.scan_distributors])
            if round_ == 5:  # the failover completes half way through; later scans find nothing
                other.reconciler.run_until_idle()
        assert sum(acted) == 2, acted
        assert one.watcher.failovers + other.watcher.failovers == 1
        other.reconciler.run_until_idle()
        with one.sessions() as session:
            rows = session.scalars(select(m.Amphora).where(m.Amphora.load_balancer_id == lb_id)).all()
            distributors = session.scalars(select(m.Distributor)).all()
            lb_row = session.get(m.LoadBalancer, lb_id)
            assert lb_row is not None and lb_row.provisioning_status == "ACTIVE"
        assert sorted(row.status for row in rows) == ["ALLOCATED", "ALLOCATED", "DELETED"], "one rebuild"
        assert next(row.status for row in rows if row.id == victim_id) == "DELETED"
        assert sorted(d.status for d in distributors) == ["ACTIVE", "DELETED"], "one member failed, once"
        assert problems(one.engine, tmp_path) == []
    finally:
        one.engine.dispose()
        other.engine.dispose()


def test_processes_starting_together_upgrade_one_database(postgres: Any, tmp_path: Path) -> None:
    """Every process upgrades the schema when it starts; several starting at once on a new database
    take turns (an advisory lock) instead of creating the same tables twice."""
    url = postgres.create_database()
    try:
        runs = [subprocess.Popen([sys.executable, "-m", "cohort.cli", "db", "upgrade", "--db", url,
                                  "--state-dir", str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                for _ in range(3)]
        outputs = [run.communicate(timeout=120)[0].decode(errors="replace") for run in runs]
        assert [run.returncode for run in runs] == [0, 0, 0], outputs
    finally:
        postgres.drop_database(url.rsplit("/", 1)[1])
