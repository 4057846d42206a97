"""ACTIVE_ACTIVE control flow with noop drivers: cluster size, registrations, scaling and failover."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.support import Api, running_cohort, wait_for


def registrations(cohort: Any, lb_id: str) -> dict[str, tuple[int, str]]:
    driver = cohort.drivers.distributor
    for (_, registered_lb), members in driver.members.items():
        if registered_lb == lb_id:
            return {m.amphora_id: (m.position, m.state) for m in members}
    return {}


def assert_peers_told(cohort: Any, api: Api, lb_id: str) -> None:
    """Every amphora of the cluster was told the others, for the second chance (and nothing else)."""
    vip = api.get(f"/v2/lbaas/loadbalancers/{lb_id}")[1]["loadbalancer"]["vip_address"]
    ids = {a["id"] for a in api.get(f"/v2/octavia/amphorae?loadbalancer_id={lb_id}")[1]["amphorae"]}
    told = cohort.drivers.amphora.cluster_peers
    assert {a: told.get((a, vip)) for a in ids} == {a: sorted(ids - {a}) for a in ids}


def test_cluster_scales_and_keeps_positions(tmp_path: Path) -> None:
    with running_cohort(tmp_path, drivers="noop", drain_timeout=1.0) as (cohort, base):
        api = Api(base)
        _, profile = api.post("/v2/lbaas/flavorprofiles", {"flavorprofile": {
            "name": "aa", "provider_name": "amphora",
            "flavor_data": json.dumps({"loadbalancer_topology": "ACTIVE_ACTIVE", "amp_cluster_size": 3})}})
        _, flavor = api.post("/v2/lbaas/flavors", {"flavor": {
            "name": "aa", "flavor_profile_id": profile["flavorprofile"]["id"]}})
        _, body = api.post("/v2/lbaas/loadbalancers", {"loadbalancer": {
            "vip_subnet_id": "public-subnet", "flavor_id": flavor["flavor"]["id"]}})
        lb_id = body["loadbalancer"]["id"]
        assert api.wait_active(f"/v2/lbaas/loadbalancers/{lb_id}", "loadbalancer")["provisioning_status"] == "ACTIVE"
        amphorae = api.get(f"/v2/octavia/amphorae?loadbalancer_id={lb_id}")[1]["amphorae"]
        assert [a["role"] for a in amphorae] == ["IN_CLUSTER"] * 3
        first = registrations(cohort, lb_id)
        assert sorted(p for p, _ in first.values()) == [0, 1, 2]
        assert_peers_told(cohort, api, lb_id)
        clusters = api.get(f"/v2/octavia/clusters?loadbalancer_id={lb_id}")[1]["clusters"]
        assert clusters[0]["desired_size"] == 3 and clusters[0]["actual_size"] == 3
        cluster_id = clusters[0]["id"]
        distributors = api.get("/v2/octavia/distributors")[1]["distributors"]
        assert distributors[0]["loadbalancers"][0]["id"] == lb_id

        status, body = api.put(f"/v2/octavia/clusters/{cluster_id}", {"cluster": {"desired_size": 4}})
        assert status == 200, body
        api.wait_active(f"/v2/lbaas/loadbalancers/{lb_id}", "loadbalancer")
        grown = registrations(cohort, lb_id)
        assert len(grown) == 4
        assert all(grown[a] == first[a] for a in first), "existing amphorae keep their positions"
        assert_peers_told(cohort, api, lb_id)

        status, _ = api.put(f"/v2/octavia/clusters/{cluster_id}", {"cluster": {"desired_size": 2}})
        assert status == 200
        api.wait_active(f"/v2/lbaas/loadbalancers/{lb_id}", "loadbalancer", timeout=20)
        shrunk = registrations(cohort, lb_id)
        assert len(shrunk) == 2 and all(state == "ACTIVE" for _, state in shrunk.values())
        assert len(api.get(f"/v2/octavia/amphorae?loadbalancer_id={lb_id}")[1]["amphorae"]) == 2
        assert_peers_told(cohort, api, lb_id)  # the drained ones are forgotten

        status, fault = api.put(f"/v2/octavia/clusters/{cluster_id}", {"cluster": {"min_size": 3}})
        assert status == 400 and "min_size" in fault["faultstring"]

        victim = next(iter(shrunk))
        assert api.put(f"/v2/octavia/amphorae/{victim}/failover", None)[0] == 202
        api.wait_active(f"/v2/lbaas/loadbalancers/{lb_id}", "loadbalancer")
        replaced = registrations(cohort, lb_id)
        assert victim not in replaced and len(replaced) == 2
        assert sorted(p for p, _ in replaced.values()) == sorted(p for p, _ in shrunk.values()), \
            "the replacement takes the failed amphora's position"
        assert_peers_told(cohort, api, lb_id)

        assert api.delete(f"/v2/lbaas/loadbalancers/{lb_id}")[0] == 204
        wait_for(lambda: api.get(f"/v2/lbaas/loadbalancers/{lb_id}")[0] == 404)
        assert registrations(cohort, lb_id) == {}


def test_operating_status_follows_cluster_size(tmp_path: Path) -> None:
    from sqlalchemy import select

    from cohort.db import models as m

    with running_cohort(tmp_path, drivers="noop") as (cohort, base):
        api = Api(base)
        _, profile = api.post("/v2/lbaas/flavorprofiles", {"flavorprofile": {
            "name": "aa", "provider_name": "amphora",
            "flavor_data": json.dumps({"loadbalancer_topology": "ACTIVE_ACTIVE", "amp_cluster_size": 3,
                                       "amp_cluster_min_size": 2})}})
        _, flavor = api.post("/v2/lbaas/flavors", {"flavor": {"name": "aa",
                                                              "flavor_profile_id": profile["flavorprofile"]["id"]}})
        _, body = api.post("/v2/lbaas/loadbalancers", {"loadbalancer": {
            "vip_subnet_id": "public-subnet", "flavor_id": flavor["flavor"]["id"]}})
        lb_id = body["loadbalancer"]["id"]
        api.wait_active(f"/v2/lbaas/loadbalancers/{lb_id}", "loadbalancer")
        with cohort.sessions() as session:
            ids = list(session.scalars(select(m.Amphora.id).where(m.Amphora.load_balancer_id == lb_id)))

        def report_and_read(dead: list[str]) -> str:
            with cohort.sessions() as session, session.begin():
                for amphora_id in dead:
                    session.get(m.Amphora, amphora_id).status = "ERROR"  # type: ignore[union-attr]
            cohort.health.on_heartbeat({"id": ids[-1], "listeners": {}, "pools": {}})
            return str(api.get(f"/v2/lbaas/loadbalancers/{lb_id}")[1]["loadbalancer"]["operating_status"])

        assert report_and_read([]) == "ONLINE"
        assert report_and_read(ids[:1]) == "DEGRADED"  # below desired size
        assert report_and_read(ids[:2]) == "ERROR"  # below min size
