"""UDP/SCTP: the controller's L4 spec, the agent's parser, its nftables program and its prober's counting."""

from __future__ import annotations

from typing import Any

import pytest

from cohort.agents.amphora import l4_nft
from cohort.agents.amphora.l4_health import PoolProber, probe_udp
from cohort.agents.amphora.l4_spec import Member, Monitor, parse
from cohort.datamodel import HealthMonitor, Listener, LoadBalancer, SessionPersistence
from cohort.datamodel import Member as DMember
from cohort.datamodel import Pool as DPool
from cohort.drivers.amphora.l4_config import render_l4


def tree(**pool_kw: Any) -> LoadBalancer:
    members = (DMember(id="m1", address="192.0.2.10", protocol_port=53, weight=2),
               DMember(id="m2", address="192.0.2.11", protocol_port=53, weight=1, backup=True))
    pool = DPool(id="p1", protocol="UDP", lb_algorithm="ROUND_ROBIN", members=members, **pool_kw)
    return LoadBalancer(id="lb-1", project_id="p", vip_address="203.0.113.5", vip_subnet_id="s",
                        listeners=(Listener(id="li-1", protocol="UDP", protocol_port=53, default_pool_id="p1"),
                                   Listener(id="li-2", protocol="HTTP", protocol_port=80)),
                        pools=(pool,))


def test_controller_spec_carries_only_udp_listeners_with_octavia_defaults() -> None:
    spec = render_l4(tree(session_persistence=SessionPersistence(type="SOURCE_IP"),
                          healthmonitor=HealthMonitor(id="h", type="UDP-CONNECT", delay=3, timeout=1, max_retries=2)))
    assert spec is not None
    [listener] = spec["listeners"]
    assert listener["id"] == "li-1" and listener["vip"] == "203.0.113.5" and listener["connection_limit"] == -1
    assert listener["pool"]["persistence"] == {"timeout": 360, "granularity": 32}
    assert listener["pool"]["monitor"]["type"] == "UDP-CONNECT"
    assert [m["weight"] for m in listener["pool"]["members"]] == [2, 1]
    assert render_l4(LoadBalancer(id="lb", project_id="p", vip_address="203.0.113.5", vip_subnet_id="s")) is None


def test_controller_refuses_what_the_kernel_path_cannot_do() -> None:
    with pytest.raises(ValueError, match="cookie|HTTP_COOKIE"):
        render_l4(tree(session_persistence=SessionPersistence(type="HTTP_COOKIE")))
    with pytest.raises(ValueError, match="algorithm"):
        render_l4(_with_algorithm("WEIGHTED_RANDOM"))
    assert render_l4(_with_algorithm("LEAST_CONNECTIONS")) is not None
    bad = tree()
    bad = LoadBalancer(**{**bad.__dict__, "vip_address": "2001:db8::5"})
    with pytest.raises(ValueError, match="address family"):
        render_l4(bad)


def _with_algorithm(algorithm: str) -> LoadBalancer:
    lb = tree()
    pool = DPool(**{**lb.pools[0].__dict__, "lb_algorithm": algorithm})
    return LoadBalancer(**{**lb.__dict__, "pools": (pool,)})


GOOD = {"listeners": [{"id": "li", "protocol": "UDP", "vip": "203.0.113.5", "port": 53, "pool": {
    "id": "p", "algorithm": "ROUND_ROBIN", "members": [{"id": "m", "address": "192.0.2.10", "port": 53}]}}]}


@pytest.mark.parametrize("path,value", [
    (("vip",), "203.0.113.5; flush ruleset"),
    (("vip",), "0.0.0.0"),
    (("port",), 0),
    (("port",), "53"),
    (("protocol",), "TCP"),
    (("id",), "li } ; drop"),
    (("pool", "algorithm"), "LEASTCONN"),
    (("allowed_cidrs",), ["198.51.100.0/24 } ; flush ruleset ; {"]),
    (("allowed_cidrs",), ["2001:db8::/32"]),
    (("allowed_cidrs",), "198.51.100.0/24"),
    (("allowed_cidrs",), ["fe80::%eth0/64"]),
    (("pool", "members", 0, "address"), "192.0.2.10 . 1"),
    (("pool", "members", 0, "weight"), 257),
    (("pool", "members", 0, "weight"), True),
    (("pool", "persistence"), {"timeout": 0, "granularity": 32}),
    (("pool", "persistence"), {"timeout": 60, "granularity": 33}),
    (("pool", "monitor"), {"type": "PING", "delay": 1, "timeout": 1, "max_retries": 1}),
    (("pool", "monitor"), {"type": "HTTP", "delay": 1, "timeout": 1, "max_retries": 1, "url_path": "a b"}),
])
def test_agent_parser_refuses_anything_but_the_shapes_it_renders(path: tuple[Any, ...], value: Any) -> None:
    import copy

    body: Any = copy.deepcopy(GOOD)
    target = body["listeners"][0]
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(ValueError):
        parse(body)
    assert parse(GOOD).to_json() == parse(parse(GOOD).to_json()).to_json()


def test_weights_backups_and_health_choose_the_dispatch_slots() -> None:
    spec = parse({"listeners": [{"id": "li", "protocol": "UDP", "vip": "203.0.113.5", "port": 53, "pool": {
        "id": "p", "algorithm": "ROUND_ROBIN", "members": [
            {"id": "a", "address": "192.0.2.10", "port": 53, "weight": 4},
            {"id": "b", "address": "192.0.2.11", "port": 53, "weight": 2},
            {"id": "c", "address": "192.0.2.12", "port": 53, "backup": True},
            {"id": "d", "address": "192.0.2.13", "port": 53, "enabled": False}]}}]})
    pool = spec.listeners[0].pool
    assert pool is not None
    slots = l4_nft.weighted_slots(l4_nft.dispatch_members(pool, {}))
    assert [m.id for m in slots] == ["a", "b", "a"]  # 4:2 reduced to 2:1, interleaved
    assert [m.id for m in l4_nft.dispatch_members(pool, {"a": False, "b": False})] == ["c"]
    script = l4_nft.render("lb-1", spec, {"li": 1}, {"li": {"a": 1, "b": 2, "c": 3, "d": 4}}, {"li": {"a": False}},
                           existing=[("chain", "l9"), ("counter", "l9_new")]).script
    assert "ip daddr 203.0.113.5 udp dport 53 jump l1" in script
    assert "numgen inc mod 1 map { 0 : 0x10002 }" in script  # a is down: b alone
    assert "0x10004 : 192.0.2.13 . 53" in script  # disabled members keep their target (open flows' mark)
    assert "delete chain inet cohort_l4_lb_1 l9" in script and "delete counter inet cohort_l4_lb_1 l9_new" in script
    assert "masquerade" in script


def test_source_ip_hash_seed_is_the_same_on_every_amphora() -> None:
    body = {"listeners": [{"id": "li", "protocol": "UDP", "vip": "203.0.113.5", "port": 53, "pool": {
        "id": "p", "algorithm": "SOURCE_IP", "persistence": {"timeout": 60, "granularity": 24},
        "members": [{"id": "a", "address": "192.0.2.10", "port": 53}]}}]}
    first = l4_nft.render("lb-1", parse(body), {"li": 1}, {"li": {"a": 1}}, {}).script
    assert first == l4_nft.render("lb-1", parse(body), {"li": 1}, {"li": {"a": 1}}, {}).script
    assert "jhash ip saddr mod 1 seed" in first and "ip saddr & 255.255.255.0 map @p1_60_24_ip" in first


def test_prober_needs_consecutive_results_to_flip() -> None:
    monitor = Monitor(type="UDP-CONNECT", delay=3, timeout=1, max_retries=2, max_retries_down=3)
    prober = PoolProber(monitor, (Member(id="a", address="192.0.2.10", port=53),), lambda: None)
    assert [prober._record("a", False) for _ in range(3)] == [False, False, True] and not prober.up["a"]
    assert [prober._record("a", True), prober._record("a", False), prober._record("a", True),
            prober._record("a", True)] == [False, False, False, True]
    assert prober.up["a"]


def test_udp_probe_fails_on_a_closed_port_and_passes_on_silence() -> None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as quiet:
        quiet.bind(("127.0.0.1", 0))
        assert probe_udp("127.0.0.1", quiet.getsockname()[1], 0.2)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as gone:
        gone.bind(("127.0.0.1", 0))
        port = gone.getsockname()[1]
    assert not probe_udp("127.0.0.1", port, 0.5)
