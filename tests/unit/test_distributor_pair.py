"""The distributor pair with noop drivers: both members get everything, a failed one is replaced and
destroyed (again, if it heartbeats after), controllers racing build one pair, the API shows roles."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from cohort.db import models as m
from tests.support import Api, running_cohort, wait_for


@pytest.fixture
def cohort_lb(tmp_path: Path) -> Iterator[tuple[Any, Api, str]]:
    """A running Cohort (noop drivers) with one ACTIVE_ACTIVE load balancer of two amphorae."""
    with running_cohort(tmp_path, drivers="noop", distributor_stale_after=5.0) as (cohort, base):
        api = Api(base)
        flavor = api.flavor("aa", {"loadbalancer_topology": "ACTIVE_ACTIVE", "amp_cluster_size": 2})
        lb_id = api.post("/v2/lbaas/loadbalancers", {"loadbalancer": {
            "vip_subnet_id": "public-subnet", "flavor_id": flavor}})[1]["loadbalancer"]["id"]
        api.wait_active(f"/v2/lbaas/loadbalancers/{lb_id}", "loadbalancer")
        yield cohort, api, lb_id


def live(api: Api) -> list[dict[str, Any]]:
    rows = api.get("/v2/octavia/distributors")[1]["distributors"]
    return sorted((d for d in rows if d["status"] not in ("DELETED", "ERROR")), key=lambda d: d["name"])


def heartbeat(cohort: Any, distributor_id: str, role: str | None) -> None:
    cohort.health.on_heartbeat({"id": distributor_id, "distributor": True, "seq": time.time_ns(), "role": role})


def test_both_members_get_every_vip_with_the_other_as_peer_and_the_same_members(
        cohort_lb: tuple[Any, Api, str]) -> None:
    cohort, api, lb_id = cohort_lb
    pair = live(api)
    assert [d["name"] for d in pair] == ["distributor-l2-0", "distributor-l2-1"]
    driver = cohort.drivers.distributor
    first, second = (driver.vips[(d["id"], lb_id)] for d in pair)
    assert first.vrrp.peer == second.port.address and second.vrrp.peer == first.port.address
    assert first.port.address != second.port.address and first.vrrp.advert_int == 0.05
    assert driver.registered(pair[0]["id"], lb_id) == driver.registered(pair[1]["id"], lb_id)
    assert len(driver.registered(pair[0]["id"], lb_id)) == 2
    for d in pair:
        assert {lb["id"] for lb in d["loadbalancers"]} == {lb_id}


def test_roles_and_health_are_shown(cohort_lb: tuple[Any, Api, str]) -> None:
    cohort, api, _lb_id = cohort_lb
    pair = live(api)
    assert {d["operating_status"] for d in pair} == {"OFFLINE"} and {d["role"] for d in pair} == {None}
    heartbeat(cohort, pair[0]["id"], "MASTER")
    heartbeat(cohort, pair[1]["id"], "BACKUP")
    heartbeat(cohort, pair[1]["id"], "SOMETHING")  # not a role: stored as unknown
    shown = {d["id"]: d for d in live(api)}
    assert shown[pair[0]["id"]]["role"] == "MASTER" and shown[pair[1]["id"]]["role"] is None
    assert shown[pair[0]["id"]]["operating_status"] == "ONLINE" and shown[pair[0]["id"]]["last_heartbeat"]
    one = api.get(f"/v2/octavia/distributors/{pair[0]['id']}")[1]["distributor"]
    assert one["role"] == "MASTER" and one["operating_status"] == "ONLINE"


def test_a_silent_member_is_destroyed_and_replaced_and_destroyed_again_if_it_comes_back(
        cohort_lb: tuple[Any, Api, str]) -> None:
    cohort, api, lb_id = cohort_lb
    master, standby = live(api)
    heartbeat(cohort, master["id"], "MASTER")
    heartbeat(cohort, standby["id"], "BACKUP")
    with cohort.sessions() as session, session.begin():
        health = session.get(m.DistributorHealth, master["id"])
        assert health is not None
        health.last_update = time.time() - 10  # the master went silent ten seconds ago
    calls = cohort.drivers.compute.calls
    wait_for(lambda: ("delete", master["compute_id"]) in calls, timeout=10)
    replaced = wait_for(lambda: (pair := live(api)) and len(pair) == 2 and master["id"] not in {d["id"] for d in pair}
                        and pair, timeout=10)
    api.wait_active(f"/v2/lbaas/loadbalancers/{lb_id}", "loadbalancer")
    newcomer = next(d for d in replaced if d["id"] != standby["id"])
    assert newcomer["name"] == master["name"] and newcomer["compute_id"] != master["compute_id"]
    old = api.get(f"/v2/octavia/distributors/{master['id']}")[1]["distributor"]
    assert old["status"] == "DELETED" and "no heartbeat" in old["status_reason"]
    # The newcomer has the VIP and the registrations; the survivor now advertises to it.
    driver = cohort.drivers.distributor
    survivor_vip, newcomer_vip = driver.vips[(standby["id"], lb_id)], driver.vips[(newcomer["id"], lb_id)]
    assert survivor_vip.vrrp.peer == newcomer_vip.port.address
    assert newcomer_vip.vrrp.peer == survivor_vip.port.address
    assert driver.registered(newcomer["id"], lb_id) == driver.registered(standby["id"], lb_id)
    # The survivor, older, was told before the newcomer: the newcomer's keepalived hears a MASTER at once.
    adds = [d for verb, d in driver.calls if verb == "add_vip"]
    assert adds[-2:] == [standby["id"], newcomer["id"]]

    # The replaced master was only cut off: it heartbeats again, and is destroyed again.
    deletes = calls.count(("delete", master["compute_id"]))
    heartbeat(cohort, master["id"], "MASTER")
    wait_for(lambda: calls.count(("delete", master["compute_id"])) > deletes, timeout=10)
    assert api.get(f"/v2/octavia/distributors/{master['id']}")[1]["distributor"]["status"] == "DELETED"
    heartbeat(cohort, standby["id"], "MASTER")  # alive all along (a slow run must not make it look silent)
    assert cohort.failover.scan_distributors() == 0  # the newcomer is judged by its own heartbeats


def test_a_member_whose_instance_died_is_replaced(cohort_lb: tuple[Any, Api, str]) -> None:
    cohort, api, lb_id = cohort_lb
    _master, standby = live(api)
    cohort.drivers.compute.delete(standby["compute_id"])  # its processes were killed
    wait_for(lambda: len(pair := live(api)) == 2 and standby["id"] not in {d["id"] for d in pair}, timeout=10)
    api.wait_active(f"/v2/lbaas/loadbalancers/{lb_id}", "loadbalancer")
    # The failed member stays ERROR until the failover scan destroys it, which may come after the
    # pair is whole again (the reconciler completes it in its own thread).
    wait_for(lambda: api.get(f"/v2/octavia/distributors/{standby['id']}")[1]["distributor"]["status"] == "DELETED",
             timeout=10)
    status = api.get(f"/v2/octavia/distributors/{standby['id']}")[1]["distributor"]
    assert status["status"] == "DELETED" and status["status_reason"] == "its compute instance failed"


def test_deleting_the_load_balancer_removes_its_vip_from_both(cohort_lb: tuple[Any, Api, str]) -> None:
    cohort, api, lb_id = cohort_lb
    pair = live(api)
    assert api.delete(f"/v2/lbaas/loadbalancers/{lb_id}?cascade=true")[0] == 204
    wait_for(lambda: api.get(f"/v2/lbaas/loadbalancers/{lb_id}")[0] == 404, timeout=10)
    assert all((d["id"], lb_id) not in cohort.drivers.distributor.vips for d in pair)


def test_racing_controllers_make_one_pair(tmp_path: Path) -> None:
    """Several controllers building the pair at once end up with two members, the same two for all."""
    from cohort.config import Settings
    from cohort.controller.cluster import ClusterManager
    from cohort.controller.wiring import make_drivers
    from cohort.db.session import make_engine, make_sessionmaker, upgrade

    settings = Settings(state_dir=tmp_path, drivers="noop")
    upgrade(settings.db_url)
    engine = make_engine(settings.db_url)
    sessions = make_sessionmaker(engine)
    drivers = make_drivers(settings)
    barrier = threading.Barrier(4)
    refs: list[list[str]] = []

    def build() -> None:
        manager = ClusterManager(sessions, drivers, 1.0)
        barrier.wait()
        refs.append([ref.id for ref in manager.ensure_pair("L2")])

    threads = [threading.Thread(target=build) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    with sessions() as session:
        rows = session.scalars(select(m.Distributor)).all()
    engine.dispose()
    assert len(rows) == 2 and {r.status for r in rows} == {"ACTIVE"}, [(r.name, r.status) for r in rows]
    assert len(refs) == 4 and all(set(r) == {row.id for row in rows} for r in refs), refs


def test_the_admin_distributor_view_is_json(cohort_lb: tuple[Any, Api, str]) -> None:
    _cohort, api, _lb_id = cohort_lb
    json.dumps(api.get("/v2/octavia/distributors")[1])


def test_cohort_status_shows_each_members_role_and_health(cohort_lb: tuple[Any, Api, str]) -> None:
    from rich.console import Console

    from cohort.status_view import render_status

    cohort, api, _lb_id = cohort_lb
    master, _standby = live(api)
    heartbeat(cohort, master["id"], "MASTER")
    console = Console(record=True, width=250)
    render_status(cohort.settings, console)
    text = console.export_text()
    row = next(line for line in text.splitlines() if master["id"][:8] in line and "distributor-l2-0" in line)
    assert "MASTER" in row and "ONLINE" in row
    other = next(line for line in text.splitlines() if "distributor-l2-1" in line)
    assert "OFFLINE" in other
