"""One set of rules for the API and the renderers, and the inputs that used to be a 500.

The API tests go through the public API (noop drivers): each bad value is a 400 in Octavia's
fault format and leaves the load balancer ACTIVE, never ERROR.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from cohort import validation
from cohort.datamodel import (
    Amphora,
    HealthMonitor,
    L7Policy,
    L7Rule,
    Listener,
    LoadBalancer,
    Member,
    Pool,
    SessionPersistence,
)
from cohort.drivers.amphora.haproxy_config import render_haproxy
from tests.support import Api

LB = "/v2/lbaas/loadbalancers"


# --- the shared rules ----------------------------------------------------------------------------


@pytest.mark.parametrize("value", [
    "fe80::1%eth0", "fe80::1%x\nglobal", "192.0.2.1\n", " 192.0.2.1", "192.0.2.1 ", "192.0.2.1\t", "", "::1%1",
    "192.0.2.1\x00", "1.2.3.4/32",
])
def test_addresses_refuse_zone_ids_and_control_characters(value: str) -> None:
    with pytest.raises(ValueError):
        validation.ip_address(value)


def test_addresses_and_networks_come_out_canonical() -> None:
    assert validation.canonical_ip("2001:DB8:0:0::0:1") == "2001:db8::1"
    assert validation.canonical_cidr("2001:DB8::1/32") == "2001:db8::/32"
    assert validation.canonical_cidr("192.0.2.7/255.255.255.0") == "192.0.2.0/24"
    for bad in ("fe80::%x/64", "192.0.2.0/24\n", "192.0.2.0/24 ", "192.0.2.0/33"):
        with pytest.raises(ValueError):
            validation.ip_network(bad)


def test_netmask_bits() -> None:
    assert validation.netmask_bits("255.255.255.0") == 24
    assert validation.netmask_bits("/64") == 64
    for bad in ("255.0.255.0", "0.0.0.0", "ffff::", "255.255.255.0%x", "0", "129"):
        with pytest.raises(ValueError):
            validation.netmask_bits(bad)


@pytest.mark.parametrize("pattern", [
    "a{4294967296}",  # OverflowError in Python's re
    "(" * 5000 + ")" * 5000,  # RecursionError in Python's re
    "a{70000}",  # Python accepts, PCRE2 does not
    "(unclosed", "a**", "\\u0041", "\\x{100}", "x\ny", "x\ty", "",
])
def test_regexes_are_checked_as_haproxy_checks_them(pattern: str) -> None:
    with pytest.raises(ValueError):
        validation.regex(pattern)


@pytest.mark.parametrize("pattern", ["^/api/v[0-9]+/", "(?i)\\.jpe?g$", "\\p{L}+", "(?<name>a)\\k<name>", "a b"])
def test_pcre_regexes_python_would_refuse_are_fine(pattern: str) -> None:
    assert validation.regex(pattern) == pattern


def test_expected_codes_rules() -> None:
    assert validation.expected_codes("200-202,301") == [200, 201, 202, 301]
    assert validation.api_expected_codes("200, 202") == "200, 202"
    for bad in ("999", "300-200", "099", "200-600", "2OO", "200\n", "200,", "200-202,301", "٢٠٠"):
        with pytest.raises(ValueError):
            validation.api_expected_codes(bad)


@pytest.mark.parametrize(("rule_type", "compare", "key", "value"), [
    ("HEADER", "EQUAL_TO", "X A", "v"),
    ("HEADER", "EQUAL_TO", "X-A\n", "v"),
    ("HEADER", "EQUAL_TO", None, "v"),
    ("COOKIE", "EQUAL_TO", "a=b", "v"),
    ("PATH", "EQUAL_TO", None, ""),
    ("PATH", "EQUAL_TO", None, "\t"),
    ("PATH", "EQUAL_TO", None, "/a b"),
    ("PATH", "EQUAL_TO", "X", "/a"),
    ("FILE_TYPE", "EQUAL_TO", None, "."),
    ("FILE_TYPE", "CONTAINS", None, "jpg"),
    ("SSL_VERIFY_RESULT", "EQUAL_TO", None, "²"),
    ("SSL_VERIFY_RESULT", "EQUAL_TO", None, "99999999999999999999"),
    ("SSL_CONN_HAS_CERT", "EQUAL_TO", None, "yes"),
    ("PATH", "REGEX", None, "a{4294967296}"),
])
def test_l7_rules_the_renderer_would_refuse(rule_type: str, compare: str, key: str | None, value: str) -> None:
    with pytest.raises(ValueError):
        validation.l7_rule(rule_type, compare, key, value)


def test_durations_are_capped_to_what_haproxy_holds() -> None:
    assert validation.haproxy_ms(31536000000) == 2**31 - 1
    assert validation.haproxy_seconds(2**31 - 1) == 2147483
    assert validation.haproxy_seconds(5) == 5


def test_rendered_extremes_pass_haproxy_check(tmp_path: Path) -> None:
    """The largest values the API takes render into a configuration HAProxy loads."""
    if shutil.which("haproxy") is None:
        pytest.skip("haproxy is not installed")
    most, year_ms = 2**31 - 1, 31536000000
    monitor = HealthMonitor(id="hm", type="HTTP", delay=most, timeout=most, max_retries=10, expected_codes="100-599")
    pool = Pool(id="pool", protocol="HTTP", lb_algorithm="SOURCE_IP", healthmonitor=monitor,
                members=(Member(id="m", address="192.0.2.10", protocol_port=80),),
                session_persistence=SessionPersistence(type="SOURCE_IP", persistence_timeout=most,
                                                       persistence_granularity="255.255.255.0"))
    rule = L7Rule(id="r", type="PATH", compare_type="REGEX", value="^/\\p{L}+(?<n>x)\\k<n>")
    listener = Listener(id="lis", protocol="HTTP", protocol_port=80, default_pool_id="pool", connection_limit=most,
                        timeout_client_data=year_ms, timeout_member_connect=year_ms, timeout_member_data=year_ms,
                        timeout_tcp_inspect=year_ms,
                        l7policies=(L7Policy(id="p", action="REJECT", position=1, rules=(rule,)),))
    balancer = LoadBalancer(id="lb", project_id="p", vip_address="127.0.0.1", vip_subnet_id="s",
                            listeners=(listener,), pools=(pool,))
    amphora = Amphora(id="amp", load_balancer_id="lb", role="STANDALONE", compute_flavor={"cpu": 64.0})
    path = tmp_path / "haproxy.cfg"
    path.write_text(render_haproxy(balancer, amphora, str(tmp_path), str(tmp_path)))
    proc = subprocess.run(["haproxy", "-c", "-f", str(path)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stdout + proc.stderr + path.read_text()


# --- through the API -----------------------------------------------------------------------------


def _active_tree(api: Api) -> dict[str, str]:
    status, body = api.post(LB, {"loadbalancer": {"name": "lb", "vip_subnet_id": "public-subnet"}})
    assert status == 201, body
    lb_id = body["loadbalancer"]["id"]
    api.wait_active(f"{LB}/{lb_id}", "loadbalancer")
    status, body = api.post("/v2/lbaas/listeners", {"listener": {
        "loadbalancer_id": lb_id, "protocol": "HTTP", "protocol_port": 80}})
    assert status == 201, body
    listener_id = body["listener"]["id"]
    api.wait_active(f"{LB}/{lb_id}", "loadbalancer")
    status, body = api.post("/v2/lbaas/pools", {"pool": {
        "listener_id": listener_id, "protocol": "HTTP", "lb_algorithm": "ROUND_ROBIN"}})
    assert status == 201, body
    pool_id = body["pool"]["id"]
    api.wait_active(f"{LB}/{lb_id}", "loadbalancer")
    status, body = api.post("/v2/lbaas/l7policies", {"l7policy": {
        "listener_id": listener_id, "action": "REJECT"}})
    assert status == 201, body
    policy_id = body["l7policy"]["id"]
    api.wait_active(f"{LB}/{lb_id}", "loadbalancer")
    return {"lb": lb_id, "listener": listener_id, "pool": pool_id, "policy": policy_id}


def _refused(status: int, body: Any, field: str) -> None:
    assert status == 400, (field, status, body)
    assert body["faultcode"] == "Client" and body["debuginfo"] is None, body
    assert field in body["faultstring"], (field, body)


def test_values_the_renderer_refuses_are_a_400(api: Api) -> None:
    ids = _active_tree(api)
    rules = f"/v2/lbaas/l7policies/{ids['policy']}/rules"
    for rule in (
        {"type": "HEADER", "compare_type": "EQUAL_TO", "key": "X Tenant", "value": "v"},
        {"type": "PATH", "compare_type": "EQUAL_TO", "value": ""},
        {"type": "PATH", "compare_type": "EQUAL_TO", "value": "\t"},
        {"type": "HEADER", "compare_type": "EQUAL_TO", "key": "X-A", "value": "a\tb"},
        {"type": "PATH", "compare_type": "REGEX", "value": "a{4294967296}"},
        {"type": "PATH", "compare_type": "REGEX", "value": "a{70000}"},
        {"type": "FILE_TYPE", "compare_type": "EQUAL_TO", "value": "."},
    ):
        status, body = api.post(rules, {"rule": rule})
        _refused(status, body, "Invalid input for field/attribute")
    status, body = api.post(rules, {"rule": {"type": "PATH", "compare_type": "REGEX", "value": "^/api/v[0-9]+"}})
    assert status == 201, body
    api.wait_active(f"{LB}/{ids['lb']}", "loadbalancer")
    rule_path = f"{rules}/{body['rule']['id']}"
    status, body = api.put(rule_path, {"rule": {"compare_type": "REGEX", "value": "a{9999999}"}})
    _refused(status, body, "rule")
    # Only the value changes: the stored compare_type decides how it is checked, never a 500.
    for value in ("a{4294967296}", "a{70000}", "(" * 120 + "a"):
        status, body = api.put(rule_path, {"rule": {"value": value}})
        _refused(status, body, "rule")
    status, body = api.put(rule_path, {"rule": {"value": r"^/\p{L}+(?<n>x)"}})  # PCRE2, not Python's re
    assert status == 200, body
    api.wait_active(f"{LB}/{ids['lb']}", "loadbalancer")

    listener = f"/v2/lbaas/listeners/{ids['listener']}"
    pool = f"/v2/lbaas/pools/{ids['pool']}"
    for path, wrapper, fields, field in (
        (listener, "listener", {"alpn_protocols": ["h2;x"]}, "alpn_protocols"),
        (listener, "listener", {"allowed_cidrs": ["fe80::%x\nglobal/64"]}, "allowed_cidrs"),
        (listener, "listener", {"allowed_cidrs": ["192.0.2.0/24 "]}, "allowed_cidrs"),
        (listener, "listener", {"connection_limit": 10**30}, "connection_limit"),
        (listener, "listener", {"connection_limit": 2**63}, "connection_limit"),
        (listener, "listener", {"hsts_max_age": 2**64}, "hsts_max_age"),
        (pool, "pool", {"alpn_protocols": ["h2,http/1.1"]}, "alpn_protocols"),
        (pool, "pool", {"session_persistence": {"type": "APP_COOKIE", "cookie_name": "a=b"}}, "cookie_name"),
        (pool, "pool", {"session_persistence": {"type": "SOURCE_IP", "persistence_timeout": 2**64}},
         "persistence_timeout"),
        (pool, "pool", {"session_persistence": {"type": "SOURCE_IP", "persistence_granularity": "255.0.255.0"}},
         "persistence_granularity"),
        (pool, "pool", {"session_persistence": {"type": "SOURCE_IP",
                                                "persistence_granularity": "255.255.255.0%x"}},
         "persistence_granularity"),
    ):
        status, body = api.put(path, {wrapper: fields})
        _refused(status, body, field)

    monitor = {"pool_id": ids["pool"], "type": "HTTP", "delay": 5, "timeout": 3, "max_retries": 3}
    for fields, field in (
        ({"expected_codes": "999"}, "expected_codes"),
        ({"expected_codes": "300-200"}, "expected_codes"),
        ({"domain_name": "-bad..name", "http_version": 1.1}, "domain_name"),
        ({"url_path": "/a b"}, "url_path"),
        ({"delay": 0, "timeout": 0}, "delay"),
    ):
        status, body = api.post("/v2/lbaas/healthmonitors", {"healthmonitor": {**monitor, **fields}})
        _refused(status, body, field)
    status, body = api.get(f"{LB}/{ids['lb']}")
    assert body["loadbalancer"]["provisioning_status"] == "ACTIVE", body


def test_addresses_with_zone_ids_are_refused_everywhere(api: Api) -> None:
    for fields, field in (
        ({"vip_address": "fe80::1%eth0"}, "vip_address"),
        ({"vip_address": "203.0.113.9\n"}, "vip_address"),
        ({"additional_vips": [{"subnet_id": "public-subnet", "ip_address": "fe80::1%x"}]}, "ip_address"),
    ):
        status, body = api.post(LB, {"loadbalancer": {"vip_subnet_id": "public-subnet", **fields}})
        _refused(status, body, field)
    status, body = api.post("/v2/octavia/bgp_peers", {"bgp_peer": {"peer_ip": "fe80::1%x\nrouter", "remote_as": 1}})
    _refused(status, body, "peer_ip")
    status, body = api.get(LB)
    assert status == 200 and body["loadbalancers"] == []


def test_deep_and_huge_bodies_are_a_400(api: Api) -> None:
    deep = b'{"loadbalancer": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    status, body = api.call("POST", LB, raw=deep)
    assert status == 400 and body["faultcode"] == "Client", body
    status, body = api.call("POST", LB, raw=b'{"loadbalancer": ' + b'{"a":' * 200 + b"1" + b"}" * 201)
    assert status == 400 and body["faultcode"] == "Client", body
    for data in ('{"compute_flavor": {"cpu": Infinity}}', '{"compute_flavor": {"cpu": NaN}}',
                 '{"compute_flavor": {"cpu": 1e400}}', '{"compute_flavor": {"cpu": 1000}}',
                 "[" * 1500 + "]" * 1500):
        status, body = api.post("/v2/lbaas/flavorprofiles", {"flavorprofile": {
            "name": "p", "provider_name": "amphora", "flavor_data": data}})
        assert status == 400 and body["faultcode"] == "Client", (data[:40], body)
    status, body = api.post("/v2/lbaas/flavorprofiles", {"flavorprofile": {
        "name": "p", "provider_name": "amphora", "flavor_data": json.dumps({"compute_flavor": {"cpu": 0.5}})}})
    assert status == 201, body
