"""Cohort on PostgreSQL: the migrations, then the API (noop drivers) with the dialect-specific paths.

The tags filters (JSONB ``?`` here, ``json_each`` on SQLite), keyset pages with NULLs, and the
compare-and-set lock on the load balancer (one of N concurrent changes wins, the rest get 409)
are the parts where the two databases could disagree.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, inspect, text

from cohort.db.session import make_engine, normalise_url, upgrade
from tests.support import Api, running_cohort, wait_for

LB = "/v2/lbaas/loadbalancers"


def test_migrations(pg_url: str) -> None:
    upgrade(pg_url)
    upgrade(pg_url)  # idempotent: every start runs it
    engine = create_engine(normalise_url(pg_url))
    try:
        tables = set(inspect(engine).get_table_names())
        assert {"load_balancer", "listener", "pool", "member", "health_monitor", "l7policy", "l7rule", "amphora",
                "amphora_cluster", "flavor", "flavor_profile", "quota", "alembic_version"} <= tables
        with engine.connect() as conn:
            assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    finally:
        engine.dispose()
    engine = make_engine(pg_url)
    try:
        assert engine.dialect.name == "postgresql" and engine.dialect.driver == "psycopg"
    finally:
        engine.dispose()


def _walk(api: Api, path: str, key: str) -> list[str]:
    seen: list[str] = []
    url: str | None = path
    while url is not None:
        status, body = api.get(url)
        assert status == 200, body
        seen += [row["id"] for row in body[key]]
        url = next((link["href"] for link in body[f"{key}_links"] if link["rel"] == "next"), None)
    return seen


def test_api_lifecycle(pg_url: str, tmp_path: Path) -> None:
    upgrade(pg_url)
    with running_cohort(tmp_path, drivers="noop", database_url=pg_url) as (cohort, base):
        assert cohort.engine.dialect.name == "postgresql"
        api = Api(base)
        made = []
        for n, tags in enumerate([["red"], ["red", "blue"], ["blue"], [], ["red", "green"]]):
            status, body = api.post(LB, {"loadbalancer": {"name": f"lb{n}", "vip_subnet_id": "public-subnet",
                                                         "tags": tags}})
            assert status == 201, body
            made.append(body["loadbalancer"])
        lb_id = made[0]["id"]
        for lb in made:
            api.wait_active(f"{LB}/{lb['id']}", "loadbalancer")

        def names(query: str) -> list[str]:
            status, body = api.get(f"{LB}?{query}&sort=name")
            assert status == 200, body
            return [row["name"] for row in body["loadbalancers"]]

        assert names("tags=red") == ["lb0", "lb1", "lb4"]
        assert names("tags=red,blue") == ["lb1"]
        assert names("tags-any=blue,green") == ["lb1", "lb2", "lb4"]
        assert names("not-tags=red") == ["lb2", "lb3"]
        assert names("not-tags-any=red,blue") == ["lb3"]
        assert names("admin_state_up=true&provisioning_status=ACTIVE") == [f"lb{n}" for n in range(5)]
        assert _walk(api, f"{LB}?limit=2&sort=name:desc", "loadbalancers") == [lb["id"] for lb in made[::-1]]

        status, body = api.post("/v2/lbaas/listeners", {"listener": {
            "loadbalancer_id": lb_id, "protocol": "HTTP", "protocol_port": 80, "tags": ["web"]}})
        assert status == 201, body
        listener = body["listener"]
        api.wait_active(f"{LB}/{lb_id}", "loadbalancer")
        status, body = api.post("/v2/lbaas/pools", {"pool": {
            "listener_id": listener["id"], "protocol": "HTTP", "lb_algorithm": "ROUND_ROBIN",
            "session_persistence": {"type": "HTTP_COOKIE"}}})
        assert status == 201, body
        pool = body["pool"]
        api.wait_active(f"{LB}/{lb_id}", "loadbalancer")
        for n in range(5):
            status, body = api.post(f"/v2/lbaas/pools/{pool['id']}/members", {"member": {
                "address": f"192.0.2.{10 + n}", "protocol_port": 80, "weight": n + 1,
                **({"monitor_port": 9000 + n} if n % 2 else {}), "subnet_id": "private-subnet"}})
            assert status == 201, body
            api.wait_active(f"{LB}/{lb_id}", "loadbalancer")
        members = f"/v2/lbaas/pools/{pool['id']}/members"
        ordered = [row["monitor_port"] for row in api.get(f"{members}?sort=monitor_port,weight")[1]["members"]]
        assert ordered == [9001, 9003, None, None, None]  # NULLs last, as on SQLite
        everything = [row["id"] for row in api.get(f"{members}?sort=monitor_port:desc,weight:desc")[1]["members"]]
        assert _walk(api, f"{members}?sort=monitor_port:desc,weight:desc&limit=2", "members") == everything
        status, body = api.get(f"/v2/lbaas/listeners?tags=web&loadbalancer_id={lb_id}")
        assert [row["id"] for row in body["listeners"]] == [listener["id"]]
        status, body = api.get(f"{LB}/{lb_id}/status")
        assert len(body["statuses"]["loadbalancer"]["listeners"][0]["pools"][0]["members"]) == 5

        status, body = api.put(f"{members}/{api.get(members)[1]['members'][0]['id']}", {"member": {"weight": None}})
        assert status == 200 and body["member"]["weight"] == 1
        api.wait_active(f"{LB}/{lb_id}", "loadbalancer")

        assert api.delete(f"{LB}/{lb_id}")[0] == 400  # it has children
        assert api.delete(f"{LB}/{lb_id}?cascade=true")[0] == 204
        wait_for(lambda: api.get(f"{LB}/{lb_id}")[0] == 404, timeout=15)
        assert api.get(f"/v2/lbaas/listeners/{listener['id']}")[0] == 404
        assert api.get(members)[0] == 404
        assert len(api.get(LB)[1]["loadbalancers"]) == 4


def _race(base: str, lb_id: str, ports: list[int]) -> list[tuple[int, Any]]:
    """Create one listener per port, all released at the same instant from their own connections."""
    barrier = threading.Barrier(len(ports))
    results: list[tuple[int, Any]] = []

    def create(port: int) -> None:
        client = Api(base)
        barrier.wait()
        results.append(client.post("/v2/lbaas/listeners", {"listener": {
            "loadbalancer_id": lb_id, "protocol": "TCP", "protocol_port": port}}))

    threads = [threading.Thread(target=create, args=(port,)) for port in ports]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return results


def test_concurrent_changes_conflict(pg_url: str, tmp_path: Path) -> None:
    """Of N simultaneous changes to one load balancer exactly one wins; the others get 409."""
    upgrade(pg_url)
    with running_cohort(tmp_path, drivers="noop", database_url=pg_url) as (_, base):
        api = Api(base)
        status, body = api.post(LB, {"loadbalancer": {"vip_subnet_id": "public-subnet"}})
        lb_id = body["loadbalancer"]["id"]
        for attempt in range(3):
            api.wait_active(f"{LB}/{lb_id}", "loadbalancer")
            results = _race(base, lb_id, [1000 * (attempt + 1) + n for n in range(8)])
            codes = sorted(code for code, _ in results)
            assert codes == [201] + [409] * 7, results
            assert all("immutable" in body["faultstring"] for code, body in results if code == 409)
        api.wait_active(f"{LB}/{lb_id}", "loadbalancer")
        assert len(api.get(f"/v2/lbaas/listeners?loadbalancer_id={lb_id}")[1]["listeners"]) == 3


def test_operator_objects(pg_url: str, tmp_path: Path) -> None:
    """Catalogue and quota rows on PostgreSQL, including the unique flavor name (409, not 500)."""
    upgrade(pg_url)
    with running_cohort(tmp_path, drivers="noop", database_url=pg_url) as (_, base):
        api = Api(base)
        status, body = api.post("/v2/lbaas/flavorprofiles", {"flavorprofile": {
            "name": "aa", "provider_name": "amphora",
            "flavor_data": '{"loadbalancer_topology": "ACTIVE_ACTIVE", "amp_cluster_size": 2}'}})
        assert status == 201, body
        profile_id = body["flavorprofile"]["id"]
        status, body = api.post("/v2/lbaas/flavors", {"flavor": {"name": "aa2", "flavor_profile_id": profile_id}})
        assert status == 201, body
        flavor_id = body["flavor"]["id"]
        assert api.post("/v2/lbaas/flavors", {"flavor": {"name": "aa2", "flavor_profile_id": profile_id}})[0] == 409
        status, body = api.post(LB, {"loadbalancer": {"vip_subnet_id": "public-subnet", "flavor_id": flavor_id}})
        assert status == 201, body
        lb_id = body["loadbalancer"]["id"]
        api.wait_active(f"{LB}/{lb_id}", "loadbalancer")
        status, body = api.get(f"/v2/octavia/clusters?loadbalancer_id={lb_id}")
        assert [(c["desired_size"], c["actual_size"]) for c in body["clusters"]] == [(2, 2)]
        assert api.put("/v2/lbaas/quotas/p1", {"quota": {"loadbalancer": 1, "member": 5}})[0] == 202
        assert api.get("/v2/lbaas/quotas/p1")[1]["quota"]["member"] == 5
        assert api.post(LB, {"loadbalancer": {"vip_subnet_id": "public-subnet", "project_id": "p1"}})[0] == 201
        status, body = api.post(LB, {"loadbalancer": {"vip_subnet_id": "public-subnet", "project_id": "p1"}})
        assert status == 403 and "Quota has been met" in body["faultstring"]


def test_four_byte_asn(pg_url: str, tmp_path: Path) -> None:
    upgrade(pg_url)
    with running_cohort(tmp_path, drivers="noop", database_url=pg_url) as (_, base):
        api = Api(base)
        status, body = api.post("/v2/octavia/bgp_speakers", {"bgp_speaker": {"local_as": 4200000000}})
        assert status == 201, body
        status, body = Api(base).post("/v2/octavia/bgp_peers", {"bgp_peer": {
            "peer_ip": "203.0.113.1", "remote_as": 4294967295}})
        assert status == 201, body
