"""The spare distributor with noop drivers: kept ready for each type with a pair, it replaces a failed
member at once under the member's name, the next one is built, a dead spare is rebuilt, racing
controllers promote it once, and it serves nothing while it waits."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from cohort.db import models as m
from tests.support import Api, running_cohort, wait_for
from tests.unit.test_distributor_pair import heartbeat


@pytest.fixture
def cohort_lb(tmp_path: Path) -> Iterator[tuple[Any, Api, str]]:
    """A running Cohort (noop drivers, a spare distributor kept) with one ACTIVE_ACTIVE load balancer."""
    with running_cohort(tmp_path, drivers="noop", distributor_stale_after=5.0, distributor_spare=True) as (
            cohort, base):
        api = Api(base)
        flavor = api.flavor("aa", {"loadbalancer_topology": "ACTIVE_ACTIVE", "amp_cluster_size": 2})
        lb_id = api.post("/v2/lbaas/loadbalancers", {"loadbalancer": {
            "vip_subnet_id": "public-subnet", "flavor_id": flavor}})[1]["loadbalancer"]["id"]
        api.wait_active(f"/v2/lbaas/loadbalancers/{lb_id}", "loadbalancer")
        yield cohort, api, lb_id


def distributors(api: Api) -> dict[str, dict[str, Any]]:
    """The live distributors (members and spare) by name."""
    rows = api.get("/v2/octavia/distributors")[1]["distributors"]
    return {d["name"]: d for d in rows if d["status"] not in ("DELETED", "ERROR")}


def ready_spare(api: Api) -> dict[str, Any]:
    return wait_for(lambda: (s := distributors(api).get("distributor-l2-spare")) and s["status"] == "READY" and s,
                    timeout=10)


def test_the_spare_serves_nothing_and_replaces_a_silent_member_under_its_name(
        cohort_lb: tuple[Any, Api, str]) -> None:
    cohort, api, lb_id = cohort_lb
    spare = ready_spare(api)
    assert spare["loadbalancers"] == [] and spare["vip_port_ids"] == []
    assert all((spare["id"], lb) not in cohort.drivers.distributor.vips for lb in [lb_id])
    members = distributors(api)
    master, standby = members["distributor-l2-0"], members["distributor-l2-1"]
    for ident, role in ((master["id"], "MASTER"), (standby["id"], "BACKUP"), (spare["id"], None)):
        heartbeat(cohort, ident, role)
    with cohort.sessions() as session, session.begin():
        health = session.get(m.DistributorHealth, master["id"])
        assert health is not None
        health.last_update = time.time() - 10  # the master went silent ten seconds ago

    def replaced() -> dict[str, dict[str, Any]] | None:
        now = distributors(api)
        member = now.get("distributor-l2-0")
        return now if member is not None and member["id"] != master["id"] else None

    now = wait_for(replaced, timeout=10)
    assert now["distributor-l2-0"]["id"] == spare["id"]  # the spare, not a new build
    assert now["distributor-l2-0"]["compute_id"] == spare["compute_id"]
    api.wait_active(f"/v2/lbaas/loadbalancers/{lb_id}", "loadbalancer")
    driver = cohort.drivers.distributor
    assert driver.registered(spare["id"], lb_id) == driver.registered(standby["id"], lb_id)
    assert driver.vips[(spare["id"], lb_id)].vrrp.peer == driver.vips[(standby["id"], lb_id)].port.address
    wait_for(lambda: ("delete", master["compute_id"]) in cohort.drivers.compute.calls, timeout=10)
    next_spare = ready_spare(api)
    assert next_spare["id"] not in (spare["id"], master["id"], standby["id"])


def test_a_spare_whose_instance_died_is_rebuilt(cohort_lb: tuple[Any, Api, str]) -> None:
    cohort, api, _lb_id = cohort_lb
    spare = ready_spare(api)
    cohort.drivers.compute.delete(spare["compute_id"])
    rebuilt = wait_for(lambda: (s := ready_spare(api)) and s["id"] != spare["id"] and s, timeout=10)
    assert rebuilt["compute_id"] != spare["compute_id"]
    gone = api.get(f"/v2/octavia/distributors/{spare['id']}")[1]["distributor"]
    assert gone["status"] == "DELETED" and gone["status_reason"] == "its compute instance failed"
    assert set(distributors(api)) == {"distributor-l2-0", "distributor-l2-1", "distributor-l2-spare"}


def test_racing_controllers_promote_the_spare_once(cohort_lb: tuple[Any, Api, str]) -> None:
    """A missing member with a spare ready: four passes at once take the spare once, build nothing."""
    from cohort.controller.distributors import DistributorPair

    cohort, api, _lb_id = cohort_lb
    spare = ready_spare(api)
    cohort.distributor_spares.stop()  # no next spare: only what the passes do is counted
    time.sleep(1.5)  # a keeper pass under way ends
    member = distributors(api)["distributor-l2-1"]
    pair = DistributorPair(cohort.sessions, cohort.drivers)
    assert pair.fail(member["id"], "test")
    builds = [c for c in cohort.drivers.compute.calls if c[0] == "build"]
    barrier = threading.Barrier(4)
    refs: list[list[str]] = []

    def ensure() -> None:
        barrier.wait()
        refs.append([ref.id for ref in pair.ensure("L2")])

    threads = [threading.Thread(target=ensure) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(refs) == 4 and all(spare["id"] in r and len(r) == 2 for r in refs), refs
    assert [c for c in cohort.drivers.compute.calls if c[0] == "build"] == builds
    with cohort.sessions() as session:
        live = session.scalars(select(m.Distributor.name).where(m.Distributor.status == "ACTIVE")).all()
    assert sorted(live) == ["distributor-l2-0", "distributor-l2-1"]


def test_no_spare_without_a_pair_or_when_not_asked(tmp_path: Path) -> None:
    with running_cohort(tmp_path / "on", drivers="noop", distributor_spare=True) as (cohort, _base):
        cohort.distributor_spares.replenish()
        with cohort.sessions() as session:
            assert session.scalars(select(m.Distributor)).all() == []  # no L2 load balancer: no pair
    with running_cohort(tmp_path / "off", drivers="noop") as (cohort, base):
        api = Api(base)
        flavor = api.flavor("aa", {"loadbalancer_topology": "ACTIVE_ACTIVE", "amp_cluster_size": 2})
        lb_id = api.post("/v2/lbaas/loadbalancers", {"loadbalancer": {
            "vip_subnet_id": "public-subnet", "flavor_id": flavor}})[1]["loadbalancer"]["id"]
        api.wait_active(f"/v2/lbaas/loadbalancers/{lb_id}", "loadbalancer")
        time.sleep(1.5)  # the keeper's interval: it would have built one by now
        assert set(distributors(api)) == {"distributor-l2-0", "distributor-l2-1"}
