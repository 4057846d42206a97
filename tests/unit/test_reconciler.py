"""The reconciler converges after a crash at any step, retries transient faults and reports final ones."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from cohort.config import Settings
from cohort.controller.reconciler import Reconciler
from cohort.controller.wiring import Drivers, make_drivers
from cohort.db import models as m
from cohort.db.session import make_engine, make_sessionmaker, upgrade
from cohort.drivers.errors import DriverError, PermanentDriverError
from tests.support import Api, free_port, running_cohort, wait_for


class Crash(Exception):
    """Stands for the process dying in the middle of a driver call."""


class FaultyProxy:
    """Wraps a driver; the call numbered ``fail_at`` (over all wrapped drivers) raises ``error``."""

    def __init__(self, inner: Any, counter: list[int], fail_at: int, error: Exception) -> None:
        self._inner, self._counter, self._fail_at, self._error = inner, counter, fail_at, error

    def __getattr__(self, name: str) -> Any:
        target = getattr(self._inner, name)
        if not callable(target):
            return target

        def call(*args: Any, **kwargs: Any) -> Any:
            self._counter[0] += 1
            if self._counter[0] == self._fail_at:
                raise self._error
            return target(*args, **kwargs)

        return call


def faulty(drivers: Drivers, fail_at: int, error: Exception) -> tuple[Drivers, list[int]]:
    counter = [0]
    return Drivers(
        compute=FaultyProxy(drivers.compute, counter, fail_at, error),  # type: ignore[arg-type]
        network=FaultyProxy(drivers.network, counter, fail_at, error),  # type: ignore[arg-type]
        amphora=FaultyProxy(drivers.amphora, counter, fail_at, error),  # type: ignore[arg-type]
        distributor=FaultyProxy(drivers.distributor, counter, fail_at, error),  # type: ignore[arg-type]
    ), counter


@pytest.fixture
def setup(tmp_path: Path) -> Any:
    settings = Settings(state_dir=tmp_path, drivers="noop")
    upgrade(settings.db_url)
    engine = make_engine(settings.db_url)
    yield settings, make_sessionmaker(engine)
    engine.dispose()


def add_lb(sessions: Any, topology: str) -> str:
    with sessions() as session, session.begin():
        lb = m.LoadBalancer(project_id="p", vip_subnet_id=make_drivers(Settings(drivers="noop")).network
                            .get_subnet("public-subnet").id, topology=topology)  # type: ignore[union-attr]
        session.add(lb)
        session.flush()
        listener = m.Listener(load_balancer=lb, project_id="p", protocol="HTTP", protocol_port=80)
        pool = m.Pool(load_balancer=lb, project_id="p", protocol="HTTP", lb_algorithm="ROUND_ROBIN")
        session.add_all([listener, pool])
        session.flush()
        listener.default_pool_id = pool.id
        session.add(m.Member(pool=pool, project_id="p", address="192.0.2.50", protocol_port=80))
        return lb.id


def amphorae(sessions: Any, lb_id: str) -> list[m.Amphora]:
    with sessions() as session:
        return list(session.scalars(select(m.Amphora).where(m.Amphora.load_balancer_id == lb_id,
                                                            m.Amphora.status != "DELETED")))


@pytest.mark.parametrize("topology,count", [("SINGLE", 1), ("ACTIVE_STANDBY", 2)])
def test_crash_at_every_step_converges_without_duplicates(setup: Any, topology: str, count: int) -> None:
    settings, sessions = setup
    # Count the driver calls of one clean pass, then crash at each of them in turn.
    clean, counter = faulty(make_drivers(settings), 0, Crash())
    probe = add_lb(sessions, topology)
    Reconciler(settings, sessions, clean, owner="probe").run_until_idle()
    calls = counter[0]
    assert calls > 3
    for fail_at in range(1, calls + 1):
        lb_id = add_lb(sessions, topology)
        drivers = make_drivers(settings)
        broken, _ = faulty(drivers, fail_at, Crash())
        with pytest.raises(Crash):
            Reconciler(settings, sessions, broken, owner="c1").reconcile(lb_id)
        # A new controller process (same host) picks up where the dead one stopped.
        Reconciler(settings, sessions, drivers, owner="c1").run_until_idle()
        with sessions() as session:
            lb = session.get(m.LoadBalancer, lb_id)
            assert lb is not None and lb.provisioning_status == "ACTIVE", (fail_at, lb.status_reason)
            assert all(obj.provisioning_status == "ACTIVE" for obj in [*lb.listeners, *lb.pools])
        amps = amphorae(sessions, lb_id)
        assert len(amps) == count, f"crash at call {fail_at}: {[(a.role, a.status) for a in amps]}"
        assert all(a.status == "ALLOCATED" for a in amps)
    assert len(amphorae(sessions, probe)) == count


def test_transient_fault_is_retried(setup: Any) -> None:
    settings, sessions = setup
    lb_id = add_lb(sessions, "SINGLE")
    broken, _ = faulty(make_drivers(settings), 2, DriverError("agent not answering yet"))
    reconciler = Reconciler(settings, sessions, broken, owner="c1")
    reconciler.reconcile(lb_id)
    with sessions() as session:
        lb = session.get(m.LoadBalancer, lb_id)
        assert lb is not None and lb.provisioning_status == "PENDING_CREATE"
        assert lb.attempts == 1 and "agent not answering" in (lb.status_reason or "")
    reconciler.run_until_idle()
    with sessions() as session:
        assert session.get(m.LoadBalancer, lb_id).provisioning_status == "ACTIVE"  # type: ignore[union-attr]


def test_permanent_fault_is_error_with_reason(setup: Any) -> None:
    settings, sessions = setup
    lb_id = add_lb(sessions, "SINGLE")
    broken, _ = faulty(make_drivers(settings), 5, PermanentDriverError("haproxy -c: bad config"))
    Reconciler(settings, sessions, broken, owner="c1").run_until_idle()
    with sessions() as session:
        lb = session.get(m.LoadBalancer, lb_id)
        assert lb is not None and lb.provisioning_status == "ERROR"
        assert lb.status_reason == "haproxy -c: bad config"
        assert all(obj.provisioning_status == "ERROR" for obj in [*lb.listeners, *lb.pools])


def _start(args: list[str], state: Path, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "cohort.cli", *args, "--state-dir", str(state),
                             "--drivers", "noop"], stdout=log.open("ab"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def test_separate_api_and_controller_survive_kill(tmp_path: Path) -> None:
    """`cohort api` and `cohort controller` on one database; the controller is killed -9 and restarted."""
    port = free_port()
    log = tmp_path / "log.txt"
    api_proc = _start(["api", "--port", str(port)], tmp_path, log)
    processes = [api_proc]
    try:
        api = Api(f"http://127.0.0.1:{port}")
        wait_for(lambda: _answers(api), timeout=30)
        ids = []
        for index in range(6):
            status, body = api.post("/v2/lbaas/loadbalancers", {"loadbalancer": {
                "name": f"k{index}", "vip_subnet_id": "public-subnet"}})
            assert status == 201
            ids.append(body["loadbalancer"]["id"])
        # Nothing reconciles without a controller: the objects wait, nothing is lost.
        time.sleep(0.5)
        assert all(api.get(f"/v2/lbaas/loadbalancers/{i}")[1]["loadbalancer"]["provisioning_status"]
                   == "PENDING_CREATE" for i in ids)
        controller = _start(["controller"], tmp_path, log)
        time.sleep(1.0)
        os.kill(controller.pid, signal.SIGKILL)
        controller.wait()
        controller = _start(["controller"], tmp_path, log)
        processes.append(controller)
        for lb_id in ids:
            assert api.wait_active(f"/v2/lbaas/loadbalancers/{lb_id}", "loadbalancer", timeout=30)[
                "provisioning_status"] == "ACTIVE"
        status, body = api.get("/v2/octavia/amphorae")
        per_lb = [a["loadbalancer_id"] for a in body["amphorae"]]
        assert sorted(per_lb) == sorted(ids), "one amphora per SINGLE load balancer, none duplicated"
    finally:
        for process in processes:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()


def _answers(api: Api) -> bool:
    try:
        return api.get("/")[0] == 200
    except Exception:  # noqa: BLE001 - not up yet
        return False


def test_operating_status_not_guessed(tmp_path: Path) -> None:
    with running_cohort(tmp_path, drivers="noop") as (_cohort, base):
        api = Api(base)
        _, body = api.post("/v2/lbaas/loadbalancers", {"loadbalancer": {
            "vip_subnet_id": "public-subnet", "admin_state_up": False}})
        lb = api.wait_active(f"/v2/lbaas/loadbalancers/{body['loadbalancer']['id']}", "loadbalancer")
        assert lb["operating_status"] == "OFFLINE"


def test_controllers_stand_in_for_each_other(setup: Any) -> None:
    """Two controllers on one database: the one that dies mid-pass holds its lease only for seconds,
    the other finishes the work; a live controller's lease is renewed and never taken over."""
    import threading

    settings, sessions = setup
    drivers = make_drivers(settings)
    lb_id = add_lb(sessions, "ACTIVE_STANDBY")
    dying, counter = faulty(drivers, fail_at=4, error=Crash("killed"))
    with pytest.raises(Crash):
        Reconciler(settings, sessions, dying, owner="controller-a").reconcile(lb_id)
    other = Reconciler(settings, sessions, drivers, owner="controller-b")
    assert other.due() == [] or not other._claim(lb_id)  # A's lease still holds
    with sessions() as session, session.begin():
        row = session.get(m.LoadBalancer, lb_id)
        assert row is not None and row.lease_owner == "controller-a"
        assert row.lease_expires - time.time() <= settings.reconcile_lease <= 10  # seconds, not minutes
        row.lease_expires = time.time() - 1  # ... and those seconds pass
    other.run_until_idle()
    assert len(amphorae(sessions, lb_id)) == 2  # finished, nothing duplicated
    with sessions() as session:
        row = session.get(m.LoadBalancer, lb_id)
        assert row is not None and row.provisioning_status == "ACTIVE" and row.lease_owner is None

    # A long pass keeps its lease: another controller cannot claim the load balancer meanwhile.
    lb2 = add_lb(sessions, "SINGLE")
    release = threading.Event()
    entered = threading.Event()

    class Slow:
        def __init__(self, inner: Any) -> None:
            self._inner = inner

        def __getattr__(self, name: str) -> Any:
            target = getattr(self._inner, name)
            if name != "build":
                return target

            def build(*args: Any, **kwargs: Any) -> Any:
                entered.set()
                release.wait(10)
                return target(*args, **kwargs)

            return build

    slow = Drivers(compute=Slow(drivers.compute), network=drivers.network,  # type: ignore[arg-type]
                   amphora=drivers.amphora, distributor=drivers.distributor)
    holder = Reconciler(settings, sessions, slow, owner="controller-a")
    holder.renew_every = 0.05
    try:
        worker = threading.Thread(target=holder.reconcile, args=(lb2,))
        worker.start()
        assert entered.wait(5)
        with sessions() as session, session.begin():
            row = session.get(m.LoadBalancer, lb2)
            assert row is not None
            row.lease_expires = time.time() - 1  # as if the lease ran out...
        time.sleep(0.3)  # ... the keeper renews it
        assert not other._claim(lb2)
        release.set()
        worker.join(10)
    finally:
        release.set()
    assert len(amphorae(sessions, lb2)) == 1


def test_a_pass_that_lost_its_lease_stops_and_finalises_nothing(setup: Any) -> None:
    """A controller whose lease was taken over (it could not renew it in time) stops at its next
    step and leaves the load balancer to the new holder: two passes at once would build twice."""
    import threading

    settings, sessions = setup
    drivers = make_drivers(settings)
    lb_id = add_lb(sessions, "ACTIVE_STANDBY")
    entered, release, builds = threading.Event(), threading.Event(), []

    class Held:
        def __init__(self, inner: Any) -> None:
            self._inner = inner

        def __getattr__(self, name: str) -> Any:
            target = getattr(self._inner, name)
            if name != "build":
                return target

            def build(*args: Any, **kwargs: Any) -> Any:
                builds.append(args[0])
                entered.set()
                release.wait(10)
                return target(*args, **kwargs)

            return build

    held = Drivers(compute=Held(drivers.compute), network=drivers.network,  # type: ignore[arg-type]
                   amphora=drivers.amphora, distributor=drivers.distributor)
    holder = Reconciler(settings, sessions, held, owner="controller-a")
    holder.renew_every = 0.05
    try:
        worker = threading.Thread(target=holder.reconcile, args=(lb_id,))
        worker.start()
        assert entered.wait(5)
        with sessions() as session, session.begin():
            row = session.get(m.LoadBalancer, lb_id)
            assert row is not None and row.lease_owner == "controller-a"
            row.lease_owner, row.lease_expires = "controller-b", time.time() + 60
        time.sleep(0.3)  # A's keeper finds the lease gone
        release.set()
        worker.join(10)
    finally:
        release.set()
    assert len(builds) == 1, "no step after the lost lease"
    with sessions() as session:
        row = session.get(m.LoadBalancer, lb_id)
        assert row is not None and row.provisioning_status == "PENDING_CREATE" and row.lease_owner == "controller-b"


def test_controller_ids_are_unique_per_process() -> None:
    from cohort.controller.reconciler import controller_id

    assert controller_id() != controller_id()


def test_a_pass_says_where_its_time_went() -> None:
    from cohort.controller.reconciler import Phases

    clock = Phases()
    clock.mark("build")
    time.sleep(0.02)
    clock.mark("configure")
    text = str(clock)
    assert text.endswith(")") and "build 0.0" in text and "configure 0.0" in text
    assert float(text.split("s (")[0]) >= 0.02
