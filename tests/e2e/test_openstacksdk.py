"""openstacksdk, unmodified, against Cohort (noop drivers): connect without Keystone, build, read, change, delete."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

openstack = pytest.importorskip("openstack")


def _connect(base: str) -> Any:
    return openstack.connect(auth_type="none", auth={"endpoint": base},
                             load_balancer_endpoint_override=base + "/v2.0")


def test_sdk_lifecycle(cohort_base: str) -> None:
    conn = _connect(cohort_base)
    lb_api = conn.load_balancer

    def settle(lb_id: str) -> Any:
        return lb_api.wait_for_load_balancer(lb_id, status="ACTIVE", failures=["ERROR"], interval=0.1, wait=30)

    lb = lb_api.create_load_balancer(name="sdk-lb", vip_subnet_id="public-subnet", description="made by the sdk",
                                     tags=["sdk"])
    assert lb.provisioning_status == "PENDING_CREATE"
    lb = settle(lb.id)
    assert lb.provisioning_status == "ACTIVE" and lb.vip_address.startswith("203.0.113.")
    assert lb.operating_status == "OFFLINE"

    listener = lb_api.create_listener(name="sdk-http", protocol="HTTP", protocol_port=8080,
                                      load_balancer_id=lb.id, connection_limit=50)
    settle(lb.id)
    pool = lb_api.create_pool(name="sdk-pool", protocol="HTTP", lb_algorithm="ROUND_ROBIN",
                              listener_id=listener.id)
    settle(lb.id)
    member = lb_api.create_member(pool, address="192.0.2.20", protocol_port=80, weight=3,
                                  subnet_id="private-subnet")
    settle(lb.id)
    monitor = lb_api.create_health_monitor(pool_id=pool.id, type="HTTP", delay=5, timeout=2, max_retries=2,
                                           url_path="/ping")
    settle(lb.id)

    # Reads: lists (also filtered), finds by name, gets by id.
    assert [x.id for x in lb_api.load_balancers(name="sdk-lb")] == [lb.id]
    assert [x.id for x in lb_api.load_balancers(tags="sdk")] == [lb.id]
    assert [x.id for x in lb_api.listeners(load_balancer_id=lb.id)] == [listener.id]
    assert [x.id for x in lb_api.pools()] == [pool.id]
    assert [x.address for x in lb_api.members(pool)] == ["192.0.2.20"]
    assert [x.id for x in lb_api.health_monitors()] == [monitor.id]
    assert lb_api.find_load_balancer("sdk-lb").id == lb.id
    got = lb_api.get_listener(listener.id)
    assert (got.protocol_port, got.connection_limit, got.default_pool_id) == (8080, 50, pool.id)
    assert lb_api.get_pool(pool.id).health_monitor_id == monitor.id
    assert lb_api.get_health_monitor(monitor.id).url_path == "/ping"
    assert lb_api.get_member(member, pool).subnet_id not in (None, "private-subnet")

    # Updates.
    lb_api.update_load_balancer(lb, name="sdk-lb2", description="renamed")
    settle(lb.id)
    lb_api.update_listener(listener, name="renamed", connection_limit=10)
    settle(lb.id)
    lb_api.update_member(member, pool, weight=7, backup=True)
    settle(lb.id)
    lb_api.update_health_monitor(monitor, delay=9)
    settle(lb.id)
    assert lb_api.get_load_balancer(lb.id).name == "sdk-lb2"
    assert (lb_api.get_listener(listener.id).name, lb_api.get_listener(listener.id).connection_limit) == (
        "renamed", 10)
    got_member = lb_api.get_member(member, pool)
    assert (got_member.weight, got_member.backup) == (7, True)
    assert lb_api.get_health_monitor(monitor.id).delay == 9

    stats = lb_api.get_load_balancer_statistics(lb.id)
    assert (stats.bytes_in, stats.total_connections) == (0, 0)
    assert lb_api.get_quota("sdk-project").load_balancers == -1
    assert {p.name for p in lb_api.providers()} >= {"amphora"}
    assert [a.loadbalancer_id for a in lb_api.amphorae(loadbalancer_id=lb.id)] == [lb.id]

    # Delete the whole tree in one call.
    lb_api.delete_load_balancer(lb.id, cascade=True)
    lb_api.wait_for_delete(lb, interval=0.1, wait=30)
    assert lb_api.find_load_balancer(lb.id) is None
    assert list(lb_api.listeners(load_balancer_id=lb.id)) == []


def test_sdk_with_clouds_yaml(cohort_base: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clouds = tmp_path / "clouds.yaml"
    clouds.write_text(
        "clouds:\n"
        "  cohort:\n"
        "    auth_type: none\n"
        f"    auth: {{endpoint: {cohort_base}}}\n"
        f"    load_balancer_endpoint_override: {cohort_base}/v2.0\n"
    )
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(clouds))
    conn = openstack.connect(cloud="cohort")
    flavors_before = list(conn.load_balancer.flavors())
    profile = conn.load_balancer.create_flavor_profile(
        name="sdk-profile", provider_name="amphora", flavor_data='{"loadbalancer_topology": "SINGLE"}')
    flavor = conn.load_balancer.create_flavor(name="sdk-flavor", flavor_profile_id=profile.id, enabled=True)
    assert conn.load_balancer.find_flavor("sdk-flavor").id == flavor.id
    assert len(list(conn.load_balancer.flavors())) == len(flavors_before) + 1
    conn.load_balancer.delete_flavor(flavor)
    conn.load_balancer.delete_flavor_profile(profile)
    assert conn.load_balancer.find_flavor("sdk-flavor") is None
