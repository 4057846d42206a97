"""UDP listeners, pools and monitors through the API, with Octavia's rules and faults (SCTP: test_api_sctp).

The last tests mirror what the upstream API suite (octavia-tempest-plugin) asserts for UDP pools with
LEAST_CONNECTIONS and UDP listeners with ``allowed_cidrs``.
"""

from __future__ import annotations

import json
from typing import Any

from tests.support import Api

LB = "/v2/lbaas/loadbalancers"


def _lb(api: Api, **extra: Any) -> dict[str, Any]:
    status, body = api.post(LB, {"loadbalancer": {"name": "udp", "vip_subnet_id": "public-subnet", **extra}})
    assert status == 201, body
    return dict(api.wait_active(f"{LB}/{body['loadbalancer']['id']}", "loadbalancer"))


def _wait(api: Api, lb: dict[str, Any]) -> None:
    api.wait_active(f"{LB}/{lb['id']}", "loadbalancer")


def _fault(status: int, body: dict[str, Any], *words: str) -> None:
    assert status == 400 and body["faultcode"] == "Client", body
    for word in words:
        assert word in body["faultstring"], body


def test_udp_tree_is_accepted_as_octavia_takes_it(api: Api) -> None:
    pool = {"protocol": "UDP", "lb_algorithm": "SOURCE_IP",
            "session_persistence": {"type": "SOURCE_IP", "persistence_timeout": 120,
                                    "persistence_granularity": "255.255.255.0"},
            "healthmonitor": {"type": "UDP-CONNECT", "delay": 3, "timeout": 2, "max_retries": 2},
            "members": [{"address": "192.0.2.50", "protocol_port": 53, "weight": 3, "backup": True}]}
    lb = _lb(api, listeners=[{"protocol": "UDP", "protocol_port": 53, "connection_limit": 1000,
                              "default_pool": pool}])
    _wait(api, lb)
    tree = api.get(f"{LB}/{lb['id']}/status")[1]["statuses"]["loadbalancer"]
    assert tree["listeners"][0]["pools"][0]["health_monitor"]["type"] == "UDP-CONNECT"
    # A TCP listener may share the port (DNS over both), a second UDP one may not.
    status, body = api.post("/v2/lbaas/listeners", {"listener": {"loadbalancer_id": lb["id"], "protocol": "TCP",
                                                                 "protocol_port": 53}})
    assert status == 201, body
    _wait(api, lb)
    status, body = api.post("/v2/lbaas/listeners", {"listener": {"loadbalancer_id": lb["id"], "protocol": "UDP",
                                                                 "protocol_port": 53}})
    assert status == 409, body
    for monitor in ("TCP", "HTTP"):
        status, pool_body = api.post("/v2/lbaas/pools", {"pool": {"loadbalancer_id": lb["id"], "protocol": "UDP",
                                                                  "lb_algorithm": "ROUND_ROBIN"}})
        assert status == 201, pool_body
        _wait(api, lb)
        status, body = api.post("/v2/lbaas/healthmonitors", {"healthmonitor": {
            "pool_id": pool_body["pool"]["id"], "type": monitor, "delay": 1, "timeout": 1, "max_retries": 1}})
        assert status == 201, body
        _wait(api, lb)


def test_what_octavia_refuses_for_udp_is_a_400_naming_it(api: Api) -> None:
    lb = _lb(api)
    listener = {"loadbalancer_id": lb["id"], "protocol": "UDP", "protocol_port": 53}
    status, body = api.post("/v2/lbaas/listeners", {"listener": {**listener, "insert_headers": {
        "X-Forwarded-For": "true"}}})
    _fault(status, body, "insert_headers")
    status, body = api.post("/v2/lbaas/listeners", {"listener": {**listener, "default_tls_container_ref": "x"}})
    _fault(status, body, "default_tls_container_ref")
    status, body = api.post("/v2/lbaas/listeners", {"listener": listener})
    assert status == 201, body
    udp_listener = body["listener"]["id"]
    _wait(api, lb)
    status, body = api.post("/v2/lbaas/l7policies", {"l7policy": {"listener_id": udp_listener, "action": "REJECT"}})
    _fault(status, body, "L7 policies")
    pool = {"listener_id": udp_listener, "protocol": "UDP", "lb_algorithm": "ROUND_ROBIN"}
    for persistence, word in (({"type": "HTTP_COOKIE"}, "HTTP_COOKIE"),
                              ({"type": "APP_COOKIE", "cookie_name": "c"}, "APP_COOKIE")):
        status, body = api.post("/v2/lbaas/pools", {"pool": {**pool, "session_persistence": persistence}})
        _fault(status, body, word)
    status, body = api.post("/v2/lbaas/pools", {"pool": {**pool, "tls_enabled": True}})
    _fault(status, body, "tls_enabled")
    # The pool protocol must match the listener's, both ways.
    status, body = api.post("/v2/lbaas/pools", {"pool": {**pool, "protocol": "TCP"}})
    _fault(status, body, "pool protocol")
    status, body = api.post("/v2/lbaas/pools", {"pool": pool})
    assert status == 201, body
    udp_pool = body["pool"]["id"]
    _wait(api, lb)
    status, body = api.post("/v2/lbaas/listeners", {"listener": {
        "loadbalancer_id": lb["id"], "protocol": "TCP", "protocol_port": 80, "default_pool_id": udp_pool}})
    _fault(status, body, "pool protocol")
    monitor = {"pool_id": udp_pool, "delay": 3, "timeout": 1, "max_retries": 1}
    status, body = api.post("/v2/lbaas/healthmonitors", {"healthmonitor": {**monitor, "type": "PING"}})
    _fault(status, body, "UDP-CONNECT/SCTP/TCP/HTTP")
    status, body = api.post("/v2/lbaas/healthmonitors", {"healthmonitor": {**monitor, "type": "UDP-CONNECT",
                                                                          "delay": 2}})
    _fault(status, body, "delay value 2")
    status, body = api.post("/v2/lbaas/healthmonitors", {"healthmonitor": {**monitor, "type": "UDP-CONNECT"}})
    assert status == 201, body
    _wait(api, lb)
    status, body = api.put(f"/v2/lbaas/healthmonitors/{body['healthmonitor']['id']}", {"healthmonitor": {
        "delay": 1}})
    _fault(status, body, "delay value 1")
    # UDP-CONNECT on a TCP pool.
    status, body = api.post("/v2/lbaas/pools", {"pool": {"loadbalancer_id": lb["id"], "protocol": "TCP",
                                                         "lb_algorithm": "ROUND_ROBIN"}})
    assert status == 201
    _wait(api, lb)
    status, body = api.post("/v2/lbaas/healthmonitors", {"healthmonitor": {
        **monitor, "pool_id": body["pool"]["id"], "type": "UDP-CONNECT"}})
    _fault(status, body, "only supported for pools of type UDP/SCTP")


def test_active_active_takes_udp_and_refuses_persistence_its_amphorae_cannot_share(api: Api) -> None:
    def flavor(name: str, data: dict[str, str]) -> str:
        profile = api.post("/v2/lbaas/flavorprofiles", {"flavorprofile": {
            "name": name, "provider_name": "amphora", "flavor_data": json.dumps({
                "loadbalancer_topology": "ACTIVE_ACTIVE", "amp_cluster_size": 2, **data})}})[1]["flavorprofile"]
        return str(api.post("/v2/lbaas/flavors", {"flavor": {"name": name, "flavor_profile_id": profile["id"]}})[1][
            "flavor"]["id"])

    persistent = {"protocol": "UDP", "lb_algorithm": "ROUND_ROBIN", "session_persistence": {"type": "SOURCE_IP"}}
    # The L2 distributor with SOURCE_IP affinity keeps a client on one amphora: its persistence table holds.
    status, body = api.post(LB, {"loadbalancer": {"vip_subnet_id": "public-subnet", "flavor_id": flavor("aa", {}),
                                                  "listeners": [{"protocol": "UDP", "protocol_port": 53,
                                                                 "default_pool": persistent}]}})
    assert status == 201, body
    # SOURCE_IP_PORT affinity spreads one client's flows over amphorae that keep their tables apart.
    spread = flavor("aa-port", {"distributor_affinity": "SOURCE_IP_PORT"})
    status, body = api.post(LB, {"loadbalancer": {"vip_subnet_id": "public-subnet", "flavor_id": spread,
                                                  "listeners": [{"protocol": "UDP", "protocol_port": 53,
                                                                 "default_pool": persistent}]}})
    _fault(status, body, "session_persistence", "SOURCE_IP affinity")
    status, body = api.post(LB, {"loadbalancer": {"vip_subnet_id": "public-subnet", "flavor_id": spread,
                                                  "listeners": [{"protocol": "UDP", "protocol_port": 53,
                                                                 "default_pool": {**persistent,
                                                                                  "session_persistence": None}}]}})
    assert status == 201, body
    lb = body["loadbalancer"]
    _wait(api, lb)
    pool_id = api.get(f"/v2/lbaas/pools?loadbalancer_id={lb['id']}")[1]["pools"][0]["id"]
    status, body = api.put(f"/v2/lbaas/pools/{pool_id}", {"pool": {"session_persistence": {"type": "SOURCE_IP"}}})
    _fault(status, body, "session_persistence")
    assert api.put(f"/v2/lbaas/pools/{pool_id}", {"pool": {"name": "renamed"}})[0] == 200


def test_udp_least_connections_pools_as_the_upstream_suite_makes_them(api: Api) -> None:
    # test_pool: UDP_LC_pool_standalone_create / with_listener_create / update / show / list.
    lb = _lb(api)
    status, body = api.post("/v2/lbaas/listeners", {"listener": {"loadbalancer_id": lb["id"], "protocol": "UDP",
                                                                 "protocol_port": 19}})
    assert status == 201, body
    listener_id = body["listener"]["id"]
    _wait(api, lb)
    for owner in ({"listener_id": listener_id}, {"loadbalancer_id": lb["id"]}):
        status, body = api.post("/v2/lbaas/pools", {"pool": {
            **owner, "protocol": "UDP", "lb_algorithm": "LEAST_CONNECTIONS", "name": "lc",
            "session_persistence": {"type": "SOURCE_IP"}}})
        assert status == 201, body
        assert body["pool"]["lb_algorithm"] == "LEAST_CONNECTIONS"
        assert body["pool"]["session_persistence"]["type"] == "SOURCE_IP"
        _wait(api, lb)
    pool_id = body["pool"]["id"]
    listed = api.get("/v2/lbaas/pools?lb_algorithm=LEAST_CONNECTIONS")[1]["pools"]
    assert len(listed) == 2 and {p["protocol"] for p in listed} == {"UDP"}
    for algorithm in ("ROUND_ROBIN", "LEAST_CONNECTIONS"):
        status, body = api.put(f"/v2/lbaas/pools/{pool_id}", {"pool": {"lb_algorithm": algorithm}})
        assert status == 200 and body["pool"]["lb_algorithm"] == algorithm, body
        _wait(api, lb)
    # test_member / test_healthmonitor: members (IPv6 too on an IPv6 VIP) and a monitor on such a pool.
    status, body = api.post(f"/v2/lbaas/pools/{pool_id}/members", {"member": {
        "address": "192.0.2.60", "protocol_port": 53, "monitor_address": "192.0.2.61", "monitor_port": 54}})
    assert status == 201, body
    _wait(api, lb)
    status, body = api.post("/v2/lbaas/healthmonitors", {"healthmonitor": {
        "pool_id": pool_id, "type": "UDP-CONNECT", "delay": 3, "timeout": 2, "max_retries": 2}})
    assert status == 201, body
    _wait(api, lb)
    assert api.get(f"/v2/lbaas/pools/{pool_id}")[1]["pool"]["lb_algorithm"] == "LEAST_CONNECTIONS"


def test_udp_listener_allowed_cidrs_as_the_upstream_suite_sets_them(api: Api) -> None:
    # test_listener: udp_listener_create / show / update: CIDRs kept as sent, of the VIP's version only.
    lb = _lb(api)
    listener = {"loadbalancer_id": lb["id"], "protocol": "UDP", "protocol_port": 8103, "connection_limit": 200,
                "timeout_client_data": 1000, "timeout_member_connect": 1000, "timeout_member_data": 1000,
                "timeout_tcp_inspect": 50}
    status, body = api.post("/v2/lbaas/listeners", {"listener": {
        **listener, "allowed_cidrs": ["192.0.1.0/24", "2001:db8:a0b:12f0::/64"]}})
    _fault(status, body, "IP version")
    status, body = api.post("/v2/lbaas/listeners", {"listener": {**listener, "allowed_cidrs": ["192.0.1.0/24"]}})
    assert status == 201 and body["listener"]["allowed_cidrs"] == ["192.0.1.0/24"], body
    listener_id = body["listener"]["id"]
    _wait(api, lb)
    assert api.get(f"/v2/lbaas/listeners/{listener_id}")[1]["listener"]["allowed_cidrs"] == ["192.0.1.0/24"]
    status, body = api.put(f"/v2/lbaas/listeners/{listener_id}", {"listener": {
        "allowed_cidrs": ["192.0.2.0/24", "2001:db8::/6"]}})
    _fault(status, body, "IP version")
    status, body = api.put(f"/v2/lbaas/listeners/{listener_id}", {"listener": {"allowed_cidrs": ["192.0.2.0/24"]}})
    assert status == 200 and body["listener"]["allowed_cidrs"] == ["192.0.2.0/24"], body
    _wait(api, lb)
    stats = api.get(f"/v2/lbaas/listeners/{listener_id}/stats")
    assert stats[0] == 200, stats
