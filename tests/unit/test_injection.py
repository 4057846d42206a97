"""No tenant value can write a line the renderers did not: a property-based run over every field.

A load balancer using every feature is rendered once with plain sentinel values; then one
tenant-controlled field at a time gets an arbitrary value (random text, the sentinel followed by
a newline, a quote, a ``#``, a zone id...). Either the renderer refuses it with ValueError, or
the configuration has the same lines, each starting with the same keyword and made of the same
number of words as HAProxy's parser splits them. Also: the issue's member-address injection
through the public API is a 400 and stores nothing.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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
from cohort.distributor import nft
from cohort.drivers.amphora.haproxy_config import render_haproxy
from cohort.drivers.amphora.keepalived_config import render_keepalived
from tests.support import Api

SENTINELS: dict[str, Any] = {
    "lb_id": "lb-1",
    "vip_address": "203.0.113.50",
    "listener_id": "lis-tls",
    "pool_id": "pool-1",
    "member_id": "m1",
    "member_address": "192.0.2.11",
    "member_port": 8080,
    "member_weight": 5,
    "monitor_address": "192.0.2.111",
    "monitor_port": 9000,
    "cookie_name": "JSESSIONID",
    "persistence_timeout": 120,
    "granularity": "255.255.255.0",
    "delay": 5,
    "timeout": 3,
    "max_retries": 3,
    "http_method": "GET",
    "url_path": "/health",
    "domain_name": "www.example.com",
    "expected_codes": "200",
    "pool_ciphers": "ECDHE+AESGCM",
    "pool_alpn": "h2",
    "pool_tls_version": "TLSv1.2",
    "pool_cert_ref": "pool-cert",
    "listener_ciphers": "ECDHE+AESGCM",
    "listener_alpn": "http/1.1",
    "listener_tls_version": "TLSv1.3",
    "default_tls_ref": "default-cert",
    "sni_ref": "sni-cert",
    "client_ca_ref": "client-ca",
    "crl_ref": "client-crl",
    "client_authentication": "MANDATORY",
    "allowed_cidr": "198.51.100.0/24",
    "connection_limit": 1000,
    "timeout_client_data": 50000,
    "timeout_member_connect": 5000,
    "timeout_member_data": 50000,
    "timeout_tcp_inspect": 100,
    "hsts_max_age": 31536000,
    "listener_port": 443,
    "policy_id": "pol-1",
    "rule_id": "rule-1",
    "host_value": "www.example.com",
    "path_value": "/api",
    "regex_value": "^/v[0-9]+/",
    "file_type_value": "jpg",
    "header_key": "X-Tenant",
    "header_value": "blue green",
    "cookie_key": "session",
    "cookie_value": "abc",
    "dn_key": "CN",
    "dn_value": "client",
    "verify_value": "0",
    "redirect_url": "https://example.org/moved",
    "redirect_prefix": "https://example.org",
    "redirect_code": 301,
    "position": 1,
    "insert_header_value": "true",
}
# Values that switch a line on or off are drawn where the line stays; the rest may be anything.
POSITIVE_INTS = {"connection_limit", "monitor_port", "persistence_timeout", "timeout_tcp_inspect"}
INJECTIONS = ["\n", "\r", "\r\n", "'", '"', "#", " ", "\t", "%", "%eth0", "\\", "$HOME", "\x00", "\x7f", "\u2028"]
AMP = Amphora(id="amp-1", load_balancer_id="lb-1", role="STANDALONE", compute_flavor={"cpu": 1})


def build(values: dict[str, Any]) -> LoadBalancer:
    """A load balancer using every feature the HAProxy renderer has, from one value per field."""
    val = values.__getitem__
    hm = HealthMonitor(
        id="hm-1", type="HTTPS", delay=val("delay"), timeout=val("timeout"), max_retries=val("max_retries"),
        http_method=val("http_method"), url_path=val("url_path"), expected_codes=val("expected_codes"),
        http_version=1.1, domain_name=val("domain_name"),
    )
    members = (
        Member(id=val("member_id"), address=val("member_address"), protocol_port=val("member_port"),
               weight=val("member_weight"), monitor_address=val("monitor_address"),
               monitor_port=val("monitor_port")),
        Member(id="m2", address="192.0.2.12", protocol_port=8080, backup=True),
    )
    web = Pool(
        id=val("pool_id"), protocol="HTTP", lb_algorithm="ROUND_ROBIN", members=members, healthmonitor=hm,
        session_persistence=SessionPersistence(type="APP_COOKIE", cookie_name=val("cookie_name"),
                                               persistence_timeout=val("persistence_timeout")),
        tls_enabled=True, tls_container_ref=val("pool_cert_ref"), ca_tls_container_ref="pool-ca",
        crl_container_ref="pool-crl", tls_ciphers=val("pool_ciphers"), tls_versions=(val("pool_tls_version"),),
        alpn_protocols=(val("pool_alpn"),),
    )
    sticky = Pool(
        id="pool-2", protocol="HTTP", lb_algorithm="SOURCE_IP",
        members=(Member(id="m3", address="192.0.2.13", protocol_port=80),),
        session_persistence=SessionPersistence(type="SOURCE_IP", persistence_granularity=val("granularity"),
                                               persistence_timeout=60),
    )

    def rule(rid: str, rtype: str, compare: str, value: str, key: str | None = None) -> L7Rule:
        return L7Rule(id=rid, type=rtype, compare_type=compare, value=value, key=key)

    http_policies = (
        L7Policy(id=val("policy_id"), action="REJECT", position=val("position"), rules=(
            rule(val("rule_id"), "HOST_NAME", "EQUAL_TO", val("host_value")),
            rule("r-path", "PATH", "STARTS_WITH", val("path_value")),
            rule("r-regex", "PATH", "REGEX", val("regex_value")),
            rule("r-file", "FILE_TYPE", "EQUAL_TO", val("file_type_value")),
            rule("r-header", "HEADER", "CONTAINS", val("header_value"), key=val("header_key")),
            rule("r-cookie", "COOKIE", "ENDS_WITH", val("cookie_value"), key=val("cookie_key")),
        )),
        L7Policy(id="pol-url", action="REDIRECT_TO_URL", position=2, redirect_url=val("redirect_url"),
                 redirect_http_code=val("redirect_code"), rules=(rule("r-u", "PATH", "EQUAL_TO", "/old"),)),
        L7Policy(id="pol-prefix", action="REDIRECT_PREFIX", position=3, redirect_prefix=val("redirect_prefix"),
                 rules=(rule("r-p", "PATH", "EQUAL_TO", "/older"),)),
        L7Policy(id="pol-pool", action="REDIRECT_TO_POOL", position=4, redirect_pool_id="pool-2",
                 rules=(rule("r-s", "PATH", "STARTS_WITH", "/sticky"),)),
    )
    tls_policies = (
        L7Policy(id="pol-tls", action="REJECT", position=1, rules=(
            rule("r-dn", "SSL_DN_FIELD", "EQUAL_TO", val("dn_value"), key=val("dn_key")),
            rule("r-verify", "SSL_VERIFY_RESULT", "EQUAL_TO", val("verify_value")),
            rule("r-cert", "SSL_CONN_HAS_CERT", "EQUAL_TO", "True"),
        )),
    )
    tls = Listener(
        id=val("listener_id"), protocol="TERMINATED_HTTPS", protocol_port=val("listener_port"),
        default_pool_id=val("pool_id"), connection_limit=val("connection_limit"),
        insert_headers={"X-Forwarded-For": val("insert_header_value"), "X-SSL-Client-CN": "true"},
        timeout_client_data=val("timeout_client_data"), timeout_member_connect=val("timeout_member_connect"),
        timeout_member_data=val("timeout_member_data"), timeout_tcp_inspect=val("timeout_tcp_inspect"),
        allowed_cidrs=(val("allowed_cidr"), "2001:db8::/32"), default_tls_container_ref=val("default_tls_ref"),
        sni_container_refs=(val("sni_ref"),), client_ca_tls_container_ref=val("client_ca_ref"),
        client_authentication=val("client_authentication"), client_crl_container_ref=val("crl_ref"),
        tls_ciphers=val("listener_ciphers"), tls_versions=(val("listener_tls_version"),),
        alpn_protocols=(val("listener_alpn"),), hsts_max_age=val("hsts_max_age"), hsts_include_subdomains=True,
        l7policies=tls_policies,
    )
    plain = Listener(id="lis-http", protocol="HTTP", protocol_port=80, default_pool_id=val("pool_id"),
                     l7policies=http_policies)
    return LoadBalancer(id=val("lb_id"), project_id="p", vip_address=val("vip_address"), vip_subnet_id="s",
                        listeners=(tls, plain), pools=(web, sticky))


def haproxy_words(line: str) -> list[str]:
    """The words HAProxy 2.6's parser makes of a line (single quotes, backslash escapes, comments)."""
    words: list[str] = []
    current: str | None = None
    quoted = False
    index = 0
    while index < len(line):
        char = line[index]
        if quoted:
            if char == "'":
                quoted = False
            else:
                current = (current or "") + char
        elif char == "'":
            quoted, current = True, current or ""
        elif char == '"':
            raise AssertionError(f"a double quote (variable expansion) in {line!r}")
        elif char == "\\":
            assert index + 1 < len(line), f"a trailing backslash in {line!r}"
            index += 1
            current = (current or "") + line[index]
        elif char == "#":
            break
        elif char in " \t":
            if current is not None:
                words.append(current)
                current = None
        else:
            current = (current or "") + char
        index += 1
    assert not quoted, f"an unterminated quote in {line!r}"
    if current is not None:
        words.append(current)
    return words


def shape(config: str) -> list[tuple[tuple[bool, str, int], list[tuple[bool, str, int]]]]:
    """Per section, in order: its first line and its other lines (in any order: member order
    is shuffled by ids), each as indented or not, its first word and how many words it has."""
    assert not any(c < " " and c != "\n" or c == "\x7f" for c in config), "a control character was written"
    sections: list[tuple[tuple[bool, str, int], list[tuple[bool, str, int]]]] = []
    for line in config.split("\n"):
        words = haproxy_words(line)
        line_shape = (line.startswith(" "), words[0] if words else "", len(words))
        if not line_shape[0] or not sections:
            sections.append((line_shape, []))
        else:
            sections[-1][1].append(line_shape)
    return [(head, sorted(body)) for head, body in sections]


BASELINE = shape(render_haproxy(build(SENTINELS), AMP, "/certs", "/state"))


def test_the_baseline_uses_every_feature() -> None:
    keywords = {first for _, (_, first, _) in ((None, head) for head, _ in BASELINE)}
    keywords |= {first for _, body in BASELINE for _, first, _ in body}
    for expected in ("bind", "acl", "http-request", "redirect", "use_backend", "server", "stick-table",
                     "stick", "http-check", "maxconn", "tcp-request", "http-response", "nbthread"):
        assert expected in keywords, expected


def _tenant_value(field: str) -> st.SearchStrategy[Any]:
    sentinel = SENTINELS[field]
    if isinstance(sentinel, int):
        low = 1 if field in POSITIVE_INTS else None
        return st.one_of(st.integers(min_value=low), st.sampled_from([0, -1, 2**31, 2**63, 10**30]).filter(
            lambda n: low is None or n >= low))
    # Non-empty: an empty optional value legitimately leaves its option out.
    return st.one_of(
        st.text(min_size=1, max_size=40),
        st.builds(lambda inj, tail: f"{sentinel}{inj}{tail}", st.sampled_from(INJECTIONS), st.text(max_size=20)),
        st.builds(lambda inj, tail: f"{inj}{tail}", st.sampled_from(INJECTIONS),
                  st.sampled_from(["    server evil 203.0.113.9:80", "frontend x", "global", "x init-addr none"])),
    )


@st.composite
def one_field(draw: st.DrawFn) -> tuple[str, Any]:
    field = draw(st.sampled_from(sorted(SENTINELS)))
    return field, draw(_tenant_value(field))


@settings(max_examples=1500, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(one_field())
def test_no_tenant_value_adds_or_changes_a_line(change: tuple[str, Any]) -> None:
    field, value = change
    try:
        config = render_haproxy(build({**SENTINELS, field: value}), AMP, "/certs", "/state")
    except ValueError:
        return
    if field == "insert_header_value":
        # Only whether the header is on changes anything, and that by lines the renderer owns.
        return
    assert shape(config) == BASELINE, (field, value, config)


def test_the_issue_member_address_is_refused_by_the_renderer() -> None:
    address = ("fe80::1%x init-addr none\nfrontend leak\n    bind :8081\nglobal\n"
               "    stats socket ipv4@0.0.0.0:9999 level admin\n#")
    with pytest.raises(ValueError, match="not a valid IP address"):
        render_haproxy(build({**SENTINELS, "member_address": address}), AMP, "/certs", "/state")
    with pytest.raises(ValueError):
        render_haproxy(build({**SENTINELS, "monitor_address": "fe80::1%eth0"}), AMP, "/certs", "/state")
    with pytest.raises(ValueError):
        render_haproxy(build({**SENTINELS, "allowed_cidr": "fe80::%x\nglobal/64"}), AMP, "/certs", "/state")


KEEPALIVED_AMPS = (
    Amphora(id="amp-a", load_balancer_id="lb-1", role="MASTER", vrrp_ip="203.0.113.11", vrrp_id=7),
    Amphora(id="amp-b", load_balancer_id="lb-1", role="BACKUP", vrrp_ip="203.0.113.12", vrrp_id=7),
)


@settings(max_examples=300, deadline=None, database=None)
@given(st.sampled_from(["vip", "vrrp_ip", "peer_ip"]), _tenant_value("vip_address"))
def test_keepalived_addresses_are_bare_literals(field: str, value: str) -> None:
    balancer = LoadBalancer(id="lb-1", project_id="p", vip_address="203.0.113.50", vip_subnet_id="s")
    me, peer = KEEPALIVED_AMPS
    if field == "vip":
        balancer = dataclasses.replace(balancer, vip_address=value)
    elif field == "vrrp_ip":
        me = dataclasses.replace(me, vrrp_ip=value)
    else:
        peer = dataclasses.replace(peer, vrrp_ip=value)
    baseline = render_keepalived(dataclasses.replace(balancer, vip_address="203.0.113.50"), *KEEPALIVED_AMPS[:1],
                                 KEEPALIVED_AMPS)
    try:
        config = render_keepalived(balancer, me, (me, peer))
    except ValueError:
        return
    assert config.count("\n") == baseline.count("\n")
    assert "%" not in config and "\r" not in config


@settings(max_examples=300, deadline=None, database=None)
@given(st.sampled_from(["vip", "own_address", "gateway", "forward"]), _tenant_value("vip_address"))
def test_nftables_and_routes_take_bare_addresses_only(field: str, value: str) -> None:
    forward = nft.Forward(mark=1001, address="198.51.100.11", mac="02:00:00:00:00:01")
    plan = nft.VipPlan(lb_id="lb-1", vip="203.0.113.50", ifname="vip0", own_address="203.0.113.2",
                       gateway="203.0.113.1", reply_table=1500, affinity="SOURCE_IP", forwards=(forward,),
                       buckets=(1001,) * 7)
    if field == "forward":
        plan = dataclasses.replace(plan, forwards=(dataclasses.replace(forward, address=value),))
    else:
        plan = dataclasses.replace(plan, **{field: value})
    try:
        ruleset = nft.render_nft([plan])
        before, after = nft.render_ip_batch([plan], nft.Routing(frozenset(), frozenset(), frozenset()))
    except ValueError:
        return
    text = ruleset + "\n".join(before + after)
    assert "%" not in text and "\r" not in text and "\x00" not in text
    assert all("\n" not in line for line in before + after)


ISSUE_ADDRESS = (
    "fe80::1%x init-addr none\nfrontend leak\n    bind :8081\n"
    "    http-request return status 200 file \\x2fvar\\x2flib\\x2fcohort\\x2fsecrets.key\n"
    "global\n    stats socket ipv4@0.0.0.0:9999 level admin\n#"
)


def test_member_address_injection_through_the_api_is_a_400_and_stores_nothing(api: Api) -> None:
    lbs = "/v2/lbaas/loadbalancers"
    status, body = api.post(lbs, {"loadbalancer": {"name": "lb", "vip_subnet_id": "public-subnet"}})
    assert status == 201, body
    lb_id = body["loadbalancer"]["id"]
    api.wait_active(f"{lbs}/{lb_id}", "loadbalancer")
    status, body = api.post("/v2/lbaas/pools", {"pool": {
        "loadbalancer_id": lb_id, "protocol": "HTTP", "lb_algorithm": "ROUND_ROBIN"}})
    assert status == 201, body
    pool_id = body["pool"]["id"]
    api.wait_active(f"{lbs}/{lb_id}", "loadbalancer")
    members = f"/v2/lbaas/pools/{pool_id}/members"
    for fields in (
        {"address": ISSUE_ADDRESS},
        {"address": "fe80::1%eth0"},
        {"address": "192.0.2.10", "monitor_address": "fe80::1%x\nfrontend leak"},
        {"address": "192.0.2.10", "monitor_address": "192.0.2.10\n"},
    ):
        status, body = api.post(members, {"member": {"protocol_port": 80, **fields}})
        assert status == 400, (fields, body)
        assert body["faultcode"] == "Client" and body["debuginfo"] is None
        assert "address" in body["faultstring"]
    status, body = api.put(members, {"members": [{"address": ISSUE_ADDRESS, "protocol_port": 80}]})
    assert status == 400, body
    status, body = api.get(members)
    assert status == 200 and body["members"] == []
    status, body = api.get(f"{lbs}/{lb_id}")
    assert body["loadbalancer"]["provisioning_status"] == "ACTIVE"
    # A valid address is stored as sent, as Octavia returns it; renderers parse it again.
    status, body = api.post(members, {"member": {"address": "2001:DB8:0:0::0:1", "protocol_port": 80}})
    assert status == 201 and body["member"]["address"] == "2001:DB8:0:0::0:1", body
