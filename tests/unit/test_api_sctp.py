"""SCTP listeners, pools and monitors through the API: accepted as Octavia accepts them, refused as it refuses them."""

from __future__ import annotations

import json
from typing import Any

from tests.support import Api

LB = "/v2/lbaas/loadbalancers"


def _lb(api: Api, **extra: Any) -> dict[str, Any]:
    status, body = api.post(LB, {"loadbalancer": {"name": "sctp", "vip_subnet_id": "public-subnet", **extra}})
    assert status == 201, body
    return dict(api.wait_active(f"{LB}/{body['loadbalancer']['id']}", "loadbalancer"))


def _wait(api: Api, lb: dict[str, Any]) -> None:
    api.wait_active(f"{LB}/{lb['id']}", "loadbalancer")


def _fault(status: int, body: dict[str, Any], *words: str) -> None:
    assert status == 400 and body["faultcode"] == "Client", body
    for word in words:
        assert word in body["faultstring"], body


def test_sctp_tree_with_an_sctp_monitor_is_accepted(api: Api) -> None:
    pool = {"protocol": "SCTP", "lb_algorithm": "SOURCE_IP_PORT",
            "session_persistence": {"type": "SOURCE_IP", "persistence_timeout": 60,
                                    "persistence_granularity": "255.255.255.255"},
            "healthmonitor": {"type": "SCTP", "delay": 1, "timeout": 1, "max_retries": 2},
            "members": [{"address": "192.0.2.50", "protocol_port": 3868, "weight": 2},
                        {"address": "192.0.2.51", "protocol_port": 3868, "backup": True}]}
    lb = _lb(api, listeners=[{"protocol": "SCTP", "protocol_port": 3868, "connection_limit": 100,
                              "allowed_cidrs": ["198.51.100.0/24"], "default_pool": pool}])
    _wait(api, lb)
    tree = api.get(f"{LB}/{lb['id']}/status")[1]["statuses"]["loadbalancer"]
    assert tree["listeners"][0]["pools"][0]["health_monitor"]["type"] == "SCTP"
    # TCP and UDP listeners may share the SCTP listener's port, a second SCTP one may not.
    for protocol, expected in (("TCP", 201), ("UDP", 201), ("SCTP", 409)):
        status, body = api.post("/v2/lbaas/listeners", {"listener": {
            "loadbalancer_id": lb["id"], "protocol": protocol, "protocol_port": 3868}})
        assert status == expected, body
        if status == 201:
            _wait(api, lb)
    # Octavia's other monitor types on SCTP pools: UDP-CONNECT, TCP and HTTP.
    for monitor in ("UDP-CONNECT", "TCP", "HTTP"):
        status, pool_body = api.post("/v2/lbaas/pools", {"pool": {"loadbalancer_id": lb["id"], "protocol": "SCTP",
                                                                  "lb_algorithm": "LEAST_CONNECTIONS"}})
        assert status == 201, pool_body
        _wait(api, lb)
        status, body = api.post("/v2/lbaas/healthmonitors", {"healthmonitor": {
            "pool_id": pool_body["pool"]["id"], "type": monitor, "delay": 3, "timeout": 1, "max_retries": 1}})
        assert status == 201, body
        _wait(api, lb)


def test_what_octavia_refuses_for_sctp_is_a_400_naming_it(api: Api) -> None:
    lb = _lb(api)
    listener = {"loadbalancer_id": lb["id"], "protocol": "SCTP", "protocol_port": 3868}
    status, body = api.post("/v2/lbaas/listeners", {"listener": {**listener, "insert_headers": {
        "X-Forwarded-For": "true"}}})
    _fault(status, body, "insert_headers")
    status, body = api.post("/v2/lbaas/listeners", {"listener": {**listener, "default_tls_container_ref": "x"}})
    _fault(status, body, "default_tls_container_ref")
    status, body = api.post("/v2/lbaas/listeners", {"listener": listener})
    assert status == 201, body
    sctp_listener = body["listener"]["id"]
    _wait(api, lb)
    status, body = api.post("/v2/lbaas/l7policies", {"l7policy": {"listener_id": sctp_listener, "action": "REJECT"}})
    _fault(status, body, "L7 policies")
    pool = {"listener_id": sctp_listener, "protocol": "SCTP", "lb_algorithm": "ROUND_ROBIN"}
    for persistence, word in (({"type": "HTTP_COOKIE"}, "HTTP_COOKIE"),
                              ({"type": "APP_COOKIE", "cookie_name": "c"}, "APP_COOKIE")):
        status, body = api.post("/v2/lbaas/pools", {"pool": {**pool, "session_persistence": persistence}})
        _fault(status, body, word)
    status, body = api.post("/v2/lbaas/pools", {"pool": {**pool, "tls_enabled": True}})
    _fault(status, body, "tls_enabled")
    for other in ("UDP", "TCP"):  # the pool protocol must be the listener's
        status, body = api.post("/v2/lbaas/pools", {"pool": {**pool, "protocol": other}})
        _fault(status, body, "pool protocol")
    status, body = api.post("/v2/lbaas/pools", {"pool": pool})
    assert status == 201, body
    sctp_pool = body["pool"]["id"]
    _wait(api, lb)
    monitor = {"pool_id": sctp_pool, "delay": 3, "timeout": 1, "max_retries": 1}
    for kind in ("PING", "HTTPS", "TLS-HELLO"):
        status, body = api.post("/v2/lbaas/healthmonitors", {"healthmonitor": {**monitor, "type": kind}})
        _fault(status, body, "SCTP", "UDP-CONNECT/SCTP/TCP/HTTP")
    status, body = api.post("/v2/lbaas/healthmonitors", {"healthmonitor": {**monitor, "type": "SCTP",
                                                                          "url_path": "/x"}})
    _fault(status, body, "url_path")
    # An SCTP monitor on a TCP pool, an SCTP pool under a TCP listener.
    status, body = api.post("/v2/lbaas/pools", {"pool": {"loadbalancer_id": lb["id"], "protocol": "TCP",
                                                         "lb_algorithm": "ROUND_ROBIN"}})
    assert status == 201
    _wait(api, lb)
    status, body = api.post("/v2/lbaas/healthmonitors", {"healthmonitor": {
        **monitor, "pool_id": body["pool"]["id"], "type": "SCTP"}})
    _fault(status, body, "only supported for pools of type UDP/SCTP")
    status, body = api.post("/v2/lbaas/listeners", {"listener": {
        "loadbalancer_id": lb["id"], "protocol": "TCP", "protocol_port": 80, "default_pool_id": sctp_pool}})
    _fault(status, body, "pool protocol")


def test_active_active_takes_sctp_and_refuses_persistence_its_amphorae_cannot_share(api: Api) -> None:
    profile = api.post("/v2/lbaas/flavorprofiles", {"flavorprofile": {
        "name": "aa-sctp", "provider_name": "amphora", "flavor_data": json.dumps({
            "loadbalancer_topology": "ACTIVE_ACTIVE", "amp_cluster_size": 2,
            "distributor_affinity": "SOURCE_IP_PORT"})}})[1]["flavorprofile"]
    flavor = api.post("/v2/lbaas/flavors", {"flavor": {"name": "aa-sctp", "flavor_profile_id": profile["id"]}})[1]
    pool = {"protocol": "SCTP", "lb_algorithm": "SOURCE_IP_PORT"}
    body = {"vip_subnet_id": "public-subnet", "flavor_id": flavor["flavor"]["id"],
            "listeners": [{"protocol": "SCTP", "protocol_port": 3868, "default_pool": pool}]}
    status, created = api.post(LB, {"loadbalancer": body})
    assert status == 201, created
    persistent = {**pool, "session_persistence": {"type": "SOURCE_IP"}}
    status, refused = api.post(LB, {"loadbalancer": {**body, "listeners": [{**body["listeners"][0],
                                                                            "default_pool": persistent}]}})
    _fault(status, refused, "session_persistence", "SCTP")
