"""The distributor's kernel configuration and what it is derived from, without root.

The rendered nft script and ip batch, their parsers, the plans built from the agent's
state, the agent's service against a recording kernel (marks, draining, health, restarts),
request validation and the probes' bookkeeping.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from cohort.agents.common.proc import CommandFailed
from cohort.agents.distributor.api import parse_members, parse_vip
from cohort.agents.distributor.dataplane import DataPlane
from cohort.agents.distributor.service import DistributorService, MemberSpec, VipSpec, plan_of
from cohort.agents.distributor.state import MemberState, StateStore, VipState
from cohort.distributor import nft
from cohort.distributor.nft import Forward, Routing, VipPlan
from cohort.distributor.probes import Prober, ProbeSettings, ProbeTarget, probe_many

T = "ip cohort_dist"


def plan(lb_id: str = "lb-a", affinity: str = "SOURCE_IP", **kw: object) -> VipPlan:
    fields: dict[str, object] = dict(
        lb_id=lb_id,
        vip="203.0.113.100",
        ifname="fe0",
        own_address="203.0.113.2",
        gateway="203.0.113.1",
        reply_table=1000,
        affinity=affinity,
        forwards=(
            Forward(1001, "203.0.113.11", "02:01:cb:00:71:0b"),
            Forward(1002, "203.0.113.12", "02:01:cb:00:71:0c"),
        ),
        buckets=(1001, 1002, 1001, 1002, 1001),
    )
    fields.update(kw)
    return VipPlan(**fields)  # type: ignore[arg-type]


def rules_of(script: str, chain: str) -> list[str]:
    prefix = f"add rule {T} {chain} "
    return [line[len(prefix) :] for line in script.splitlines() if line.startswith(prefix)]


def test_source_ip_affinity_hashes_the_address_only() -> None:
    p = plan()
    rules = rules_of(nft.render_nft([p]), f"vip_{p.key}")
    hashing = [r for r in rules if "jhash" in r]
    assert hashing == [
        f"meta mark 0 meta mark set jhash ip saddr mod 5 seed 0x{nft.hash_seed('lb-a'):08x} map @buckets_{p.key}"
    ]
    assert rules[0] == f'counter name "bytes_{p.key}" notrack'


def test_source_ip_port_affinity_hashes_address_and_port_with_an_address_fallback() -> None:
    p = plan(affinity="SOURCE_IP_PORT")
    hashing = [r for r in rules_of(nft.render_nft([p]), f"vip_{p.key}") if "jhash" in r]
    assert hashing[0].startswith("meta mark 0 meta mark set jhash ip saddr . tcp sport mod 5 ")
    assert hashing[1].startswith("meta mark 0 meta mark set jhash ip saddr . udp sport mod 5 ")
    assert hashing[2].startswith("meta mark 0 meta mark set jhash ip saddr . sctp sport mod 5 ")
    assert hashing[3].startswith("meta mark 0 meta mark set jhash ip saddr mod 5 ")  # no port: fragments, ICMP


def test_udp_and_sctp_are_pinned_by_address_and_port_with_source_ip_port_affinity() -> None:
    p = plan(affinity="SOURCE_IP_PORT", flow_timeout=600, udp_timeout=90)
    rules = rules_of(nft.render_nft([p]), f"vip_{p.key}")
    k = p.key
    init = rules.index(f"sctp chunk init exists delete @sflows_{k} {{ ip saddr . sctp sport : meta mark }}")
    udp = rules.index(f"meta mark set ip saddr . udp sport map @uflows_{k}")
    sctp = rules.index(f"meta mark set ip saddr . sctp sport map @sflows_{k}")
    stale = rules.index("meta l4proto { udp, sctp } meta mark != 0 meta mark != { 1001, 1002 } meta mark set 0")
    first_hash = next(i for i, r in enumerate(rules) if "jhash" in r)
    assert init < udp < stale and sctp < stale < first_hash
    assert f"meta l4proto udp meta mark != 0 update @uflows_{k} {{ ip saddr . udp sport timeout 90s : meta mark }}" \
        in rules
    assert f"meta l4proto sctp meta mark != 0 update @sflows_{k} {{ ip saddr . sctp sport timeout 600s : meta mark }}" \
        in rules
    assert not any("aflows" in r for r in rules)
    new = rules.index(f'meta mark 0 meta l4proto {{ udp, sctp }} counter name "l4new_{k}"')
    assert stale < new < first_hash


def test_udp_and_sctp_are_pinned_by_address_alone_with_source_ip_affinity() -> None:
    p = plan()
    rules = rules_of(nft.render_nft([p]), f"vip_{p.key}")
    k = p.key
    assert f"meta l4proto {{ udp, sctp }} meta mark set ip saddr map @aflows_{k}" in rules
    # One pin holds every flow of the client: an INIT must not move the client's other associations.
    assert not any("sctp chunk init" in r or "uflows" in r or "sflows" in r for r in rules)
    assert f"meta l4proto udp meta mark != 0 update @aflows_{k} {{ ip saddr timeout 120s : meta mark }}" in rules
    assert f"meta l4proto sctp meta mark != 0 update @aflows_{k} {{ ip saddr timeout 300s : meta mark }}" in rules


def test_udp_and_sctp_pins_without_any_routed_amphora_are_all_stale() -> None:
    p = plan(forwards=(), buckets=())
    rules = rules_of(nft.render_nft([p]), f"vip_{p.key}")
    assert "meta l4proto { udp, sctp } meta mark != 0 meta mark set 0" in rules


def test_udp_and_sctp_pin_maps_are_made_once_and_removed_with_the_vip() -> None:
    p = plan()
    script = nft.render_nft([p])
    for name, key in (("uflows", "ip saddr . udp sport"), ("sflows", "ip saddr . sctp sport"), ("aflows", "ip saddr")):
        assert f"add map {T} {name}_{p.key} {{ typeof {key} : meta mark; flags dynamic,timeout; " in script
        assert f"flush map {T} {name}_" not in script
    stale = nft.render_nft([], stale_keys=[p.key]).splitlines()
    for name in ("uflows", "sflows", "aflows"):
        assert f"delete map {T} {name}_{p.key}" in stale
    assert f"delete counter {T} l4new_{p.key}" in stale
    assert nft.object_keys([f"uflows_{p.key}", f"l4new_{p.key}"]) == {p.key}


@pytest.mark.parametrize("bad", [dict(udp_timeout=0), dict(flow_timeout=10**9), dict(flow_size=True),
                                 dict(ifname="fe0\nadd"), dict(buckets=(0,)), dict(udp_timeout="5")])
def test_numbers_and_names_of_a_plan_are_validated(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        nft.render_nft([plan(**bad)])
    with pytest.raises(ValueError):
        nft.render_buckets(plan(**bad))


def test_pinned_flows_come_first_and_every_packet_refreshes_its_pin() -> None:
    p = plan(flow_timeout=120)
    rules = rules_of(nft.render_nft([p]), f"vip_{p.key}")
    syn = next(i for i, r in enumerate(rules) if "delete @flows_" in r)
    lookup = rules.index(f"meta mark set ip saddr . tcp sport map @flows_{p.key}")
    first_hash = next(i for i, r in enumerate(rules) if "jhash" in r)
    assert syn < lookup < first_hash
    assert rules[syn].startswith("tcp flags & (syn | ack) == syn ")
    assert rules[-1] == f"meta mark != 0 update @flows_{p.key} {{ ip saddr . tcp sport timeout 120s : meta mark }}"


def test_bucket_map_is_refilled_atomically_and_flows_are_never_flushed() -> None:
    p = plan()
    script = nft.render_nft([p], stale_keys=["0123456789ab"])
    lines = script.splitlines()
    flush = lines.index(f"flush map {T} buckets_{p.key}")
    assert lines[flush + 1] == f"add element {T} buckets_{p.key} {{ 0 : 1001, 1 : 1002, 2 : 1001, 3 : 1002, 4 : 1001 }}"
    assert not any(re.match(rf"flush map {T} flows_", line) for line in lines)
    assert f"add map {T} flows_{p.key} {{ typeof ip saddr . tcp sport : meta mark; flags dynamic,timeout; " in script


def test_buckets_for_limits_which_tables_are_rewritten() -> None:
    a, b = plan("lb-a"), plan("lb-b", vip="203.0.113.101")
    script = nft.render_nft([a, b], buckets_for={"lb-b"})
    assert f"flush map {T} buckets_{a.key}" not in script
    assert f"flush map {T} buckets_{b.key}" in script
    assert "flush map" not in nft.render_nft([a, b], buckets_for=()).replace(f"flush map {T} vips", "")


def test_no_member_taking_new_flows_means_no_hashing_and_an_empty_bucket_map() -> None:
    p = plan(buckets=())
    script = nft.render_nft([p])
    assert "jhash" not in script
    assert f"flush map {T} buckets_{p.key}" in script
    assert f"add element {T} buckets_{p.key}" not in script


def test_a_vip_is_served_on_its_own_interface_only_and_forwarded_to_its_own_marks() -> None:
    a = plan("lb-a")
    b = plan("lb-b", vip="203.0.113.101", ifname="fe1", own_address="203.0.113.3",
             forwards=(Forward(1004, "203.0.113.21", "02:01:cb:00:71:15"),), buckets=(1004,))  # fmt: skip
    script = nft.render_nft([a, b])
    assert (
        f'add element {T} vips {{ 203.0.113.100 . "fe0" : jump vip_{a.key}, '
        f'203.0.113.101 . "fe1" : jump vip_{b.key} }}'
    ) in script
    assert rules_of(script, "forward") == [
        'iifname "fe0" oifname "fe0" ip daddr 203.0.113.100 meta mark { 1001, 1002 } accept',
        'iifname "fe1" oifname "fe1" ip daddr 203.0.113.101 meta mark { 1004 } accept',
    ]
    assert f"add chain {T} forward {{ type filter hook forward priority filter; policy drop; }}" in script
    assert rules_of(script, "input") == [
        'iifname "fe0" ip daddr { 203.0.113.2, 203.0.113.100 } accept',
        'iifname "fe1" ip daddr { 203.0.113.3, 203.0.113.101 } accept',
        'iifname { "fe0", "fe1" } drop',
    ]


def test_vips_sharing_an_interface_share_its_input_rule() -> None:
    script = nft.render_nft([plan("lb-a"), plan("lb-b", vip="203.0.113.101")])
    assert rules_of(script, "input") == [
        'iifname "fe0" ip daddr { 203.0.113.2, 203.0.113.100, 203.0.113.101 } accept',
        'iifname { "fe0" } drop',
    ]


def test_stale_objects_are_removed_after_the_vmap_stops_jumping_to_them() -> None:
    p, stale = plan(), "0123456789ab"
    lines = nft.render_nft([p], stale_keys=[stale, p.key]).splitlines()
    vmap_flush = lines.index(f"flush map {T} vips")
    delete_chain = lines.index(f"delete chain {T} vip_{stale}")
    assert vmap_flush < lines.index(f"flush chain {T} vip_{stale}") < delete_chain
    assert f"delete map {T} flows_{stale}" in lines[delete_chain:]
    assert f"delete chain {T} vip_{p.key}" not in lines  # a live VIP is never taken for stale


def test_object_keys_are_recognised_from_names() -> None:
    k = nft.object_key("lb-a")
    names = [f"vip_{k}", f"flows_{k}", "prerouting", "vips", "vip_short", f"bytes_{nft.object_key('x')}"]
    assert nft.object_keys(names) == {k, nft.object_key("x")}


def test_unknown_affinity_is_refused() -> None:
    with pytest.raises(ValueError, match="affinity"):
        nft.render_nft([plan(affinity="ROUND_ROBIN")])


# --- policy routing ---------------------------------------------------------------------------

EMPTY = Routing(frozenset(), frozenset(), frozenset())


def test_routing_for_a_fresh_vip() -> None:
    before, after = nft.render_ip_batch([plan()], EMPTY)
    assert before == [
        "neigh replace 203.0.113.11 lladdr 02:01:cb:00:71:0b dev fe0 nud permanent",
        "neigh replace 203.0.113.12 lladdr 02:01:cb:00:71:0c dev fe0 nud permanent",
        "route replace default via 203.0.113.1 dev fe0 table 1000",
        "route replace 203.0.113.100/32 via 203.0.113.11 dev fe0 table 1001",
        "route replace 203.0.113.100/32 via 203.0.113.12 dev fe0 table 1002",
        "rule add pref 100 fwmark 1001 lookup 1001",
        "rule add pref 100 fwmark 1002 lookup 1002",
        "rule add pref 200 from 203.0.113.100 lookup 1000",
    ]
    assert after == []


def test_routing_reconciles_against_what_exists() -> None:
    p = plan(forwards=(Forward(1001, "203.0.113.11", "02:01:cb:00:71:0b"),), buckets=(1001,))
    existing = Routing(
        frozenset({nft.Rule(100, "fwmark 1001", 1001), nft.Rule(100, "fwmark 1002", 1002),
                   nft.Rule(200, "from 203.0.113.100", 1000)}),
        frozenset({nft.Route(1001, "203.0.113.100/32", "via 203.0.113.11 dev fe0"),
                   nft.Route(1001, "203.0.113.99/32", "via 203.0.113.11 dev fe0"),
                   nft.Route(1002, "203.0.113.100/32", "via 203.0.113.12 dev fe0"),
                   nft.Route(1007, "203.0.113.100/32", "via 203.0.113.17 dev fe0")}),
        frozenset({nft.Neighbour("fe0", "203.0.113.12", "02:01:cb:00:71:0c"),
                   nft.Neighbour("mgmt0", "198.18.0.1", "02:03:c6:12:00:01")}),
    )  # fmt: skip
    before, after = nft.render_ip_batch([p], existing)
    assert not [line for line in before if line.startswith("rule add")]
    assert after == [
        "rule del pref 100 fwmark 1002 lookup 1002",
        "route flush table 1002",
        "route flush table 1007",
        "route del 203.0.113.99/32 table 1001",
        "neigh del 203.0.113.12 dev fe0",  # not mgmt0's: that interface is not ours
    ]


def test_no_gateway_means_no_reply_route() -> None:
    before, _ = nft.render_ip_batch([plan(gateway=None)], EMPTY)
    assert not [line for line in before if "from 203.0.113.100" in line or "default" in line]


def test_drift_is_what_a_flapped_link_lost_and_nothing_when_in_sync() -> None:
    p = plan()
    applied = nft.desired_routing([p])
    foreign = nft.Neighbour("mgmt0", "198.18.0.1", "02:03:c6:12:00:01")  # not our interface: never drift
    assert nft.routing_drift([p], Routing(applied.rules, applied.routes, applied.neighbours | {foreign})) == []
    # fe0 went down: the kernel dropped its routes and permanent neighbours, the rules stayed.
    flapped = Routing(applied.rules, frozenset(r for r in applied.routes if "dev fe0" not in r.spec), frozenset())
    drift = nft.routing_drift([p], flapped)
    assert drift == [
        "missing route Route(table=1000, dst='default', spec='via 203.0.113.1 dev fe0')",
        "missing route Route(table=1001, dst='203.0.113.100/32', spec='via 203.0.113.11 dev fe0')",
        "missing route Route(table=1002, dst='203.0.113.100/32', spec='via 203.0.113.12 dev fe0')",
        "missing neighbour Neighbour(ifname='fe0', address='203.0.113.11', mac='02:01:cb:00:71:0b')",
        "missing neighbour Neighbour(ifname='fe0', address='203.0.113.12', mac='02:01:cb:00:71:0c')",
    ]
    stray = nft.Route(1007, "203.0.113.100/32", "via 203.0.113.17 dev fe0")
    assert nft.routing_drift([p], Routing(applied.rules, applied.routes | {stray}, applied.neighbours)) == [
        f"stale route {stray}"]
    # A table that is not ours any more is drift on the interface being left, not elsewhere.
    old = nft.Neighbour("fe1", "203.0.113.11", "02:01:cb:00:71:0b")
    with_old = Routing(applied.rules, applied.routes, applied.neighbours | {old})
    assert nft.routing_drift([p], with_old) == []
    assert nft.routing_drift([p], with_old, managed_ifaces={"fe1"}) == [f"stale neighbour {old}"]


def test_parsers_read_ip_json() -> None:
    rules = [
        {"priority": 100, "src": "all", "fwmark": "0x3e9", "table": "1001"},
        {"priority": 200, "src": "203.0.113.100", "table": "1000"},
        {"priority": 1000, "src": "all", "table": "local"},
        {"priority": 32766, "src": "all", "table": "main"},
    ]
    assert nft.parse_rules(rules) == {nft.Rule(100, "fwmark 1001", 1001), nft.Rule(200, "from 203.0.113.100", 1000)}
    routes = [
        {"dst": "203.0.113.100", "gateway": "203.0.113.11", "dev": "fe0", "table": "1001", "flags": []},
        {"dst": "default", "gateway": "203.0.113.1", "dev": "fe0", "table": "1000", "flags": []},
        {"dst": "203.0.113.0/24", "dev": "fe0", "protocol": "kernel", "scope": "link", "flags": []},
        {"type": "local", "dst": "203.0.113.2", "dev": "fe0", "table": "local", "flags": []},
    ]
    assert nft.parse_routes(routes) == {
        nft.Route(1001, "203.0.113.100/32", "via 203.0.113.11 dev fe0"),
        nft.Route(1000, "default", "via 203.0.113.1 dev fe0"),
    }
    neigh = [
        {"dst": "203.0.113.12", "dev": "fe0", "lladdr": "96:e0:98:8b:ed:62", "state": ["PERMANENT"]},
        {"dst": "203.0.113.1", "dev": "fe0", "lladdr": "96:7d:fb:2f:3e:31", "state": ["STALE"]},
    ]
    assert nft.parse_neighbours(neigh) == {nft.Neighbour("fe0", "203.0.113.12", "96:e0:98:8b:ed:62")}


def test_counters_and_flows_are_read_from_the_table_listing() -> None:
    k = nft.object_key("lb-a")
    listing = {"nftables": [
        {"metainfo": {"version": "1.0.6"}},
        {"counter": {"family": "ip", "name": f"bytes_{k}", "table": "cohort_dist", "packets": 70, "bytes": 4490}},
        {"counter": {"family": "ip", "name": f"syn_{k}", "table": "cohort_dist", "packets": 10, "bytes": 600}},
        {"map": {"family": "ip", "name": f"flows_{k}", "table": "cohort_dist", "map": "mark", "elem": [
            [{"elem": {"val": {"concat": ["198.51.100.10", 39462]}, "expires": 298}}, 1001],
            [{"elem": {"val": {"concat": ["198.51.100.10", 39464]}, "expires": 298}}, 1002],
            [{"elem": {"val": {"concat": ["198.51.100.10", 39470]}, "expires": 297}}, 1001],
        ]}},
        {"map": {"family": "ip", "name": f"buckets_{k}", "table": "cohort_dist", "elem": [[0, 1001]]}},
    ]}  # fmt: skip
    c = nft.parse_table(listing)[k]
    assert (c.packets, c.bytes, c.connections, c.flows) == (70, 4490, 10, {1001: 2, 1002: 1})


def test_udp_and_sctp_pins_and_new_flows_count_with_tcp_ones() -> None:
    k = nft.object_key("lb-a")
    listing = {"nftables": [
        {"counter": {"family": "ip", "name": f"syn_{k}", "table": "cohort_dist", "packets": 10, "bytes": 600}},
        {"counter": {"family": "ip", "name": f"l4new_{k}", "table": "cohort_dist", "packets": 5, "bytes": 300}},
        {"map": {"family": "ip", "name": f"flows_{k}", "table": "cohort_dist", "elem": [
            [{"elem": {"val": {"concat": ["198.51.100.10", 39462]}}}, 1001]]}},
        {"map": {"family": "ip", "name": f"uflows_{k}", "table": "cohort_dist", "elem": [
            [{"elem": {"val": {"concat": ["198.51.100.10", 5000]}}}, 1001],
            [{"elem": {"val": {"concat": ["198.51.100.10", 5001]}}}, 1002]]}},
        {"map": {"family": "ip", "name": f"aflows_{k}", "table": "cohort_dist", "elem": [
            [{"elem": {"val": "198.51.100.11"}}, 1002]]}},
    ]}  # fmt: skip
    c = nft.parse_table(listing)[k]
    assert (c.connections, c.flows) == (15, {1001: 2, 1002: 2})


# --- plans from the agent's state -------------------------------------------------------------


def vip_state(*members: MemberState) -> VipState:
    return VipState(
        lb_id="lb-a", vip_address="203.0.113.100", mac_address="02:01:cb:00:71:02", address="203.0.113.2",
        subnet_cidr="203.0.113.0/24", gateway="203.0.113.1", affinity="SOURCE_IP", health_port=8008,
        reply_table=1000, table_size=1021, interface="fe0", members={m.amphora_id: m for m in members},
    )  # fmt: skip


def member(n: int, **kw: object) -> MemberState:
    fields: dict[str, object] = dict(
        amphora_id=f"amp-{n}", mac_address=f"02:01:cb:00:71:{n:02x}", frontend_ip=f"203.0.113.{10 + n}",
        position=n, weight=1, state="ACTIVE", mark=1000 + n,
    )  # fmt: skip
    fields.update(kw)
    return MemberState(**fields)  # type: ignore[arg-type]


def test_plan_spreads_new_flows_over_healthy_active_members_only() -> None:
    p = plan_of(vip_state(member(1), member(2), member(3, healthy=False), member(4, state="DRAINING")))
    counts = Counter(p.buckets)
    assert set(counts) == {1001, 1002} and len(p.buckets) == 1021
    assert abs(counts[1001] - counts[1002]) <= 1
    # The unhealthy and the draining amphora keep their routes: their pinned flows go on.
    assert [f.mark for f in p.forwards] == [1001, 1002, 1003, 1004]


def test_plan_fails_open_when_no_member_answers_probes() -> None:
    p = plan_of(vip_state(member(1, healthy=False), member(2, healthy=False)))
    assert set(p.buckets) == {1001, 1002}


def test_a_drained_member_loses_its_route() -> None:
    p = plan_of(vip_state(member(1), member(2, state="DRAINING", drained=True)))
    assert [f.mark for f in p.forwards] == [1001]
    assert set(p.buckets) == {1001}


def test_healthy_members_keep_nearly_all_their_slots_when_another_fails() -> None:
    ms = [member(n) for n in range(1, 5)]
    before = plan_of(vip_state(*ms)).buckets
    ms[3] = member(4, healthy=False)
    after = plan_of(vip_state(*ms)).buckets
    assert 1004 not in after
    churn = sum(b != a for b, a in zip(before, after, strict=True) if b != 1004) / len(before)
    assert churn <= 0.03


# --- the agent's service against a recording kernel -------------------------------------------


class RecordingKernel:
    def __init__(self) -> None:
        self.interfaces = {"02:01:cb:00:71:02": "fe0", "02:01:cb:00:71:03": "fe1"}
        self.applied: list[tuple[list[VipPlan], set[str], set[str] | None]] = []
        self.bucket_updates: list[VipPlan] = []
        self.released: list[tuple[str, list[str]]] = []
        self.introduced: list[tuple[str, str, str]] = []  # (ifname, own, peer) before keepalived starts
        self.addrs: dict[str, set[str]] = {}
        self.flows: dict[str, dict[int, int]] = {}
        self.counter_calls: list[list[str] | None] = []  # flows_of of each listing (None: everything)
        self.drifts: list[list[str]] = []  # what drift() answers, in turn (then: in sync)
        self.drift_asked: list[tuple[list[VipPlan], set[str], set[str]]] = []

    def prepare(self) -> None:
        pass

    def find_interface(self, mac: str) -> str:
        if mac not in self.interfaces:
            raise LookupError(f"no interface with MAC {mac}")
        return self.interfaces[mac]

    def configure_interface(self, ifname: str, address: str, prefixlen: int) -> None:
        self.addrs.setdefault(ifname, set()).add(address)

    def addresses(self, ifname: str) -> set[str]:
        return set(self.addrs.get(ifname, set()))

    def introduce(self, ifname: str, own: str, peer: str) -> bool:
        self.introduced.append((ifname, own, peer))
        return True

    def release_addresses(self, ifname: str, cidrs: Iterable[str]) -> None:
        self.released.append((ifname, list(cidrs)))
        for cidr in cidrs:
            self.addrs.get(ifname, set()).discard(cidr.split("/")[0])

    def apply(self, plans: Sequence[VipPlan], keep_keys: Iterable[str], managed_ifaces: Iterable[str],
              buckets_for: Iterable[str] | None) -> None:  # fmt: skip
        self.applied.append((list(plans), set(keep_keys), None if buckets_for is None else set(buckets_for)))

    def apply_buckets(self, plan: VipPlan) -> None:
        self.bucket_updates.append(plan)

    def drift(self, plans: Sequence[VipPlan], keep_keys: Iterable[str], managed_ifaces: Iterable[str]) -> list[str]:
        self.drift_asked.append((list(plans), set(keep_keys), set(managed_ifaces)))
        return self.drifts.pop(0) if self.drifts else []

    def counters(self, flows_of: Iterable[str] | None = None) -> dict[str, nft.VipCounters]:
        self.counter_calls.append(None if flows_of is None else sorted(flows_of))
        return {k: nft.VipCounters(flows=f if flows_of is None or k in flows_of else {})
                for k, f in self.flows.items()}

    def plan(self, lb_id: str) -> VipPlan:
        return next(p for p in self.applied[-1][0] if p.lb_id == lb_id)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


VIP_SPEC = VipSpec("lb-a", "203.0.113.100", "02:01:cb:00:71:02", "203.0.113.2", "203.0.113.0/24", "203.0.113.1",
                   drain_timeout=60)  # fmt: skip


def specs(*names: str, draining: tuple[str, ...] = ()) -> list[MemberSpec]:
    return [
        MemberSpec(n, f"02:01:cb:00:71:{10 + i:02x}", f"203.0.113.{10 + i}", i,
                   state="DRAINING" if n in draining else "ACTIVE")
        for i, n in enumerate(names)
    ]  # fmt: skip


class FakeKeepalived:
    """keepalived as the service sees it: its configuration, and whether it runs."""

    def __init__(self) -> None:
        self.config: str | None = None
        self.alive = False
        self.reloads = 0

    def put_config(self, text: str) -> bool:
        changed, self.config = text != self.config, text
        return changed

    def running(self) -> bool:
        return self.alive

    def reload(self) -> None:
        self.alive = True
        self.reloads += 1

    def stop(self) -> None:
        self.alive = False


def service(tmp_path: Path, kernel: RecordingKernel, clock: Clock | None = None,
            keepalived: FakeKeepalived | None = None) -> DistributorService:
    return DistributorService("dist-1", StateStore(tmp_path), kernel, keepalived or FakeKeepalived(), clock or Clock())


def test_marks_are_unique_and_a_restarted_agent_reapplies_the_same_plan(tmp_path: Path) -> None:
    kernel = RecordingKernel()
    svc = service(tmp_path, kernel)
    svc.plug_vip(VIP_SPEC)
    svc.plug_vip(VipSpec("lb-b", "203.0.113.101", "02:01:cb:00:71:03", "203.0.113.3", "203.0.113.0/24", None))
    svc.set_members("lb-a", specs("x", "y", "z"))
    svc.set_members("lb-b", specs("x", "w"))  # the same amphora id in another load balancer: its own mark
    marks = [f.mark for p in kernel.applied[-1][0] for f in p.forwards]
    replies = [p.reply_table for p in kernel.applied[-1][0]]
    assert len(set(marks + replies)) == 7
    assert kernel.applied[-1][2] == {"lb-b"}  # only lb-b's bucket map is rewritten
    before = kernel.plan("lb-a")

    again = RecordingKernel()
    service(tmp_path, again).start()
    assert again.applied[-1][2] is None  # every bucket map rewritten, with identical content
    assert again.plan("lb-a") == before


def test_draining_keeps_the_route_until_no_pinned_flow_is_left(tmp_path: Path) -> None:
    kernel = RecordingKernel()
    svc = service(tmp_path, kernel)
    svc.plug_vip(VIP_SPEC)
    svc.set_members("lb-a", specs("x", "y", "z"))
    mark_z = svc.state.vips["lb-a"].members["z"].mark
    svc.set_members("lb-a", specs("x", "y", "z", draining=("z",)))
    plan = kernel.plan("lb-a")
    assert mark_z in {f.mark for f in plan.forwards} and mark_z not in plan.buckets
    kernel.flows = {nft.object_key("lb-a"): {mark_z: 3}}
    svc.housekeeping()
    assert not svc.state.vips["lb-a"].members["z"].drained
    kernel.flows = {}
    svc.housekeeping()
    assert svc.state.vips["lb-a"].members["z"].drained
    assert mark_z not in {f.mark for f in kernel.plan("lb-a").forwards}
    svc.set_members("lb-a", specs("x", "y", "z", draining=("z",)))  # the controller repeats itself
    assert svc.state.vips["lb-a"].members["z"].drained
    svc.set_members("lb-a", specs("x", "y", "z"))  # back to ACTIVE: routed again, same mark
    assert mark_z in kernel.plan("lb-a").buckets


def test_flow_maps_are_listed_only_for_status_and_draining_never_for_heartbeats(tmp_path: Path) -> None:
    kernel = RecordingKernel()
    svc = service(tmp_path, kernel)
    now = [100.0]
    svc.monotonic = lambda: now[0]
    svc.plug_vip(VIP_SPEC)
    svc.set_members("lb-a", specs("x", "y"))
    key = nft.object_key("lb-a")
    kernel.flows = {key: {svc.state.vips["lb-a"].members["x"].mark: 7}}
    svc.housekeeping()
    assert kernel.counter_calls == []  # nothing draining: no listing at all
    for _ in range(3):
        now[0] += 5.0
        assert svc.heartbeat_body()["vips"]["lb-a"]["members"]["x"]["flows"] == 0  # not counted yet
    assert None not in kernel.counter_calls  # heartbeats list counters only, never the flow maps
    assert svc.status(max_age=0)["vips"]["lb-a"]["members"]["x"]["flows"] == 7  # the API counts afresh
    assert kernel.counter_calls[-1] is None
    now[0] += 60.0
    calls = len(kernel.counter_calls)
    assert svc.heartbeat_body()["vips"]["lb-a"]["members"]["x"]["flows"] == 7  # the last count, carried on
    assert kernel.counter_calls[calls:] == [[]]
    svc.set_members("lb-a", specs("x", "y", draining=("y",)))
    svc.housekeeping()
    assert kernel.counter_calls[-1] == [key]  # only the draining VIP's flow map


def test_a_drain_ends_at_its_timeout_even_with_flows(tmp_path: Path) -> None:
    kernel, clock = RecordingKernel(), Clock()
    svc = service(tmp_path, kernel, clock)
    svc.plug_vip(VIP_SPEC)
    svc.set_members("lb-a", specs("x", "y", draining=("y",)))
    kernel.flows = {nft.object_key("lb-a"): {svc.state.vips["lb-a"].members["y"].mark: 5}}
    clock.now += 59
    svc.housekeeping()
    assert not svc.state.vips["lb-a"].members["y"].drained
    clock.now += 2
    svc.housekeeping()
    assert svc.state.vips["lb-a"].members["y"].drained


def test_health_changes_rewrite_only_the_bucket_map_and_survive_a_restart(tmp_path: Path) -> None:
    kernel = RecordingKernel()
    svc = service(tmp_path, kernel)
    svc.plug_vip(VIP_SPEC)
    svc.set_members("lb-a", specs("x", "y"))
    applies = len(kernel.applied)
    mark_y = svc.state.vips["lb-a"].members["y"].mark
    svc.on_health({("lb-a", "y"): False, ("lb-a", "gone"): False, ("lb-zz", "y"): False})
    assert len(kernel.applied) == applies and len(kernel.bucket_updates) == 1
    assert mark_y not in kernel.bucket_updates[0].buckets
    svc.on_health({("lb-a", "y"): False})  # no change, no write
    assert len(kernel.bucket_updates) == 1
    assert not service(tmp_path, RecordingKernel()).state.vips["lb-a"].members["y"].healthy


def test_plugging_a_vip_again_as_it_stands_redoes_nothing(tmp_path: Path) -> None:
    kernel = RecordingKernel()
    svc = service(tmp_path, kernel)
    svc.plug_vip(VIP_SPEC)
    svc.set_members("lb-a", specs("x", "y"))
    applied = len(kernel.applied)
    svc.plug_vip(VIP_SPEC)  # every controller pass does this
    assert len(kernel.applied) == applied
    svc.plug_vip(replace(VIP_SPEC, flow_timeout=VIP_SPEC.flow_timeout + 1))  # a change is applied
    assert len(kernel.applied) == applied + 1


def test_the_heartbeat_says_how_long_a_member_has_been_down(tmp_path: Path) -> None:
    svc = service(tmp_path, RecordingKernel())
    now = [500.0]
    svc.monotonic = lambda: now[0]
    svc.plug_vip(VIP_SPEC)
    svc.set_members("lb-a", specs("x", "y"))
    svc.on_health({("lb-a", "y"): False})
    now[0] += 1.25
    members = svc.heartbeat_body()["vips"]["lb-a"]["members"]
    assert members["y"]["down_for"] == 1.25 and "down_for" not in members["x"]
    svc.on_health({("lb-a", "y"): True})
    assert "down_for" not in svc.heartbeat_body()["vips"]["lb-a"]["members"]["y"]


def test_a_heartbeat_does_not_wait_behind_a_slow_change(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cohort.agents.distributor import service as service_module
    monkeypatch.setattr(service_module, "HEARTBEAT_LOCK_WAIT", 0.05)
    svc = service(tmp_path, RecordingKernel())
    svc.plug_vip(VIP_SPEC)
    svc.set_members("lb-a", specs("x", "y"))
    before = svc.heartbeat_body()
    holding, release = threading.Event(), threading.Event()

    def slow_change() -> None:
        with svc._lock:  # as a change that waits on nft or keepalived under load
            holding.set()
            release.wait(10)

    worker = threading.Thread(target=slow_change)
    worker.start()
    try:
        assert holding.wait(5)
        started = time.monotonic()
        assert svc.heartbeat_body() == before  # the last body again, at once
        assert time.monotonic() - started < 1.0
    finally:
        release.set()
        worker.join(10)
    svc.on_health({("lb-a", "y"): False})
    assert "down_for" in svc.heartbeat_body()["vips"]["lb-a"]["members"]["y"]  # fresh once it is free


class SlowReadingKernel(RecordingKernel):
    """A kernel whose listings and address checks take as long as the test says (nft under load)."""

    def __init__(self) -> None:
        super().__init__()
        self.reading, self.release = threading.Event(), threading.Event()
        self.release.set()

    def _slow(self) -> None:
        self.reading.set()
        assert self.release.wait(10)

    def counters(self, flows_of: Iterable[str] | None = None) -> dict[str, nft.VipCounters]:
        self._slow()
        return super().counters(flows_of)

    def addresses(self, ifname: str) -> set[str]:
        self._slow()
        return super().addresses(ifname)


def test_a_probe_verdict_does_not_wait_behind_a_heartbeat_reading_the_kernel(tmp_path: Path) -> None:
    kernel = SlowReadingKernel()
    svc = service(tmp_path, kernel, keepalived=FakeKeepalived())
    svc.plug_vip(VIP_SPEC)
    svc.set_members("lb-a", specs("x", "y"))
    kernel.reading.clear()
    kernel.release.clear()
    worker = threading.Thread(target=svc.heartbeat_body)
    worker.start()
    try:
        assert kernel.reading.wait(5)  # the reader is inside a kernel listing now
        started = time.monotonic()
        svc.on_health({("lb-a", "y"): False})
        assert time.monotonic() - started < 1.0
        mark_y = svc.state.vips["lb-a"].members["y"].mark
        assert kernel.bucket_updates and mark_y not in kernel.bucket_updates[-1].buckets
    finally:
        kernel.release.set()
        worker.join(10)
    assert not worker.is_alive()


def test_unplugging_keeps_addresses_another_vip_still_uses(tmp_path: Path) -> None:
    kernel = RecordingKernel()
    svc = service(tmp_path, kernel)
    svc.plug_vip(VIP_SPEC)
    svc.plug_vip(VipSpec("lb-b", "203.0.113.101", VIP_SPEC.mac_address, VIP_SPEC.address, "203.0.113.0/24", None))
    svc.unplug_vip("lb-b")
    assert kernel.released == [("fe0", ["203.0.113.101/32"])]
    assert kernel.applied[-1][1] == {nft.object_key("lb-a")}
    assert "lb-b" not in StateStore(tmp_path).load().vips
    svc.unplug_vip("lb-b")  # idempotent


def test_heartbeats_carry_health_and_rotate_through_vips_that_do_not_fit(tmp_path: Path) -> None:
    kernel = RecordingKernel()
    svc = service(tmp_path, kernel)
    lb_ids = [f"lb-{n:02d}" for n in range(12)]
    for n, lb_id in enumerate(lb_ids):
        svc.plug_vip(VipSpec(lb_id, f"203.0.113.{100 + n}", VIP_SPEC.mac_address, VIP_SPEC.address,
                             "203.0.113.0/24", None))  # fmt: skip
    svc.set_members("lb-00", specs("x", "y"))
    kernel.flows = {nft.object_key("lb-00"): {svc.state.vips["lb-00"].members["x"].mark: 4}}
    svc.status(max_age=0)  # an API request counted the flows; heartbeats carry that count
    whole = svc.heartbeat_body()
    assert whole["distributor"] is True and "partial" not in whole and set(whole["vips"]) == set(lb_ids)
    assert whole["vips"]["lb-00"]["members"]["x"] == {"healthy": True, "flows": 4, "drained": False}
    seen: set[str] = set()
    for _ in range(4):
        body = svc.heartbeat_body(budget=900)
        assert body["partial"] is True and body["vips_total"] == 12 and len(json.dumps(body)) <= 900
        seen |= set(body["vips"])
    assert seen == set(lb_ids)


def test_replugging_a_vip_releases_only_what_changed(tmp_path: Path) -> None:
    kernel = RecordingKernel()
    svc = service(tmp_path, kernel)
    svc.plug_vip(VIP_SPEC)
    svc.set_members("lb-a", specs("x"))
    mark = svc.state.vips["lb-a"].members["x"].mark
    svc.plug_vip(VIP_SPEC)  # the controller repeats itself
    assert kernel.released == []
    svc.plug_vip(VipSpec("lb-a", "203.0.113.120", VIP_SPEC.mac_address, VIP_SPEC.address, "203.0.113.0/24", None))
    assert kernel.released == [("fe0", ["203.0.113.100/32"])]
    assert kernel.plan("lb-a").forwards[0].mark == mark  # members and marks survive a re-plug


def test_membership_errors(tmp_path: Path) -> None:
    svc = service(tmp_path, RecordingKernel())
    with pytest.raises(LookupError):
        svc.set_members("lb-a", specs("x"))
    with pytest.raises(LookupError):
        svc.plug_vip(VipSpec("lb-a", "203.0.113.100", "02:00:00:00:00:99", "203.0.113.2", "203.0.113.0/24", None))
    svc.plug_vip(VIP_SPEC)
    with pytest.raises(ValueError, match="not in"):
        svc.set_members("lb-a", [MemberSpec("x", "02:00:00:00:00:01", "192.0.2.10", 0)])


# --- request validation -----------------------------------------------------------------------

PORT = {"mac_address": "02:01:CB:00:71:02", "address": "203.0.113.2", "subnet_cidr": "203.0.113.0/24",
        "gateway": "203.0.113.1"}  # fmt: skip


def test_vip_requests_are_validated() -> None:
    spec = parse_vip("lb-a", {"vip_address": "203.0.113.100", "port": PORT})
    assert (spec.affinity, spec.health_port, spec.mac_address) == ("SOURCE_IP", 8008, "02:01:cb:00:71:02")
    assert spec.drain_timeout == spec.flow_timeout == 300 and spec.probe == ProbeSettings()
    cases: list[tuple[dict[str, Any], str]] = [
        ({"vip_address": "2001:db8::1", "port": PORT}, "IPv4"),
        ({"vip_address": "198.51.100.5", "port": PORT}, "not in"),
        ({"vip_address": "203.0.113.100", "port": {**PORT, "gateway": "192.0.2.1"}}, "not in"),
        ({"vip_address": "203.0.113.100", "port": PORT, "affinity": "LEAST_CONNECTIONS"}, "affinity"),
        ({"vip_address": "203.0.113.100", "port": PORT, "health_port": 0}, "health_port"),
        ({"vip_address": "203.0.113.100", "port": PORT, "probe": {"interval": 0.1, "timeout": 0.5}}, "timeout"),
        ({"vip_address": "203.0.113.100"}, "port"),
    ]
    for body, message in cases:
        with pytest.raises(ValueError, match=message):
            parse_vip("lb-a", body)


def test_membership_requests_are_validated() -> None:
    one = {"amphora_id": "x", "mac_address": "02:01:cb:00:71:0a", "frontend_ip": "203.0.113.10", "position": 0}
    assert parse_members({"amphorae": [one]}) == [MemberSpec("x", "02:01:cb:00:71:0a", "203.0.113.10", 0)]
    cases: list[tuple[dict[str, Any], str]] = [
        ({"amphorae": [one, one]}, "twice"),
        ({"amphorae": [{**one, "state": "DOWN"}]}, "state"),
        ({"amphorae": [{**one, "weight": 300}]}, "weight"),
        ({"amphorae": [{**one, "mac_address": "nonsense"}]}, "MAC"),
        ({"amphorae": "x"}, "list"),
    ]
    for body, message in cases:
        with pytest.raises(ValueError, match=message):
            parse_members(body)


# --- probes -----------------------------------------------------------------------------------


def target(healthy: bool = True, port: int = 1) -> ProbeTarget:
    return ProbeTarget(("lb", "x"), "127.0.0.1", port, None, healthy, ProbeSettings(interval=0.2, fall=2, rise=2))


def test_probe_verdicts_change_after_fall_and_rise_with_fast_reprobes() -> None:
    prober = Prober(lambda: [], lambda changes: None)
    t = target()
    assert prober.step(10.0, {t.key: False}, [t]) == {}
    assert prober.due([t], 10.03) == [t]  # settling: probed again after interval / 8
    assert prober.step(10.03, {t.key: False}, [t]) == {t.key: False}
    down = target(healthy=False)
    assert prober.step(11.0, {t.key: True}, [down]) == {}
    assert prober.step(11.03, {t.key: True}, [down]) == {t.key: True}
    assert prober.due([down], 11.1) == []  # settled: next probe a full interval later


def test_probes_tell_a_listening_port_from_a_closed_one() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        open_port = listener.getsockname()[1]
        with socket.socket() as spare:
            spare.bind(("127.0.0.1", 0))
            closed_port = spare.getsockname()[1]  # bound, never listening: refused
            up = ProbeTarget("up", "127.0.0.1", open_port, None, True)
            down = ProbeTarget("down", "127.0.0.1", closed_port, None, True)
            assert probe_many([up, down]) == {"up": True, "down": False}


# --- the noop driver --------------------------------------------------------------------------


def test_noop_driver_records_membership_and_reports_like_the_agent() -> None:
    from cohort.drivers.distributor.base import ClusterMember, DistributorRef, DistributorVip
    from cohort.drivers.distributor.noop import NoopDistributorDriver
    from cohort.drivers.errors import DriverError
    from cohort.drivers.network.base import PluggedPort

    d, ref = NoopDistributorDriver(), DistributorRef("dist-1", "198.18.0.10")
    port = PluggedPort("p", "02:01:cb:00:71:02", "203.0.113.2", "s", "203.0.113.0/24", "203.0.113.1")
    with pytest.raises(DriverError):
        d.set_amphorae(ref, "lb-a", [])
    d.add_vip(ref, DistributorVip("lb-a", "203.0.113.100", port))
    members = [ClusterMember("x", "02:01:cb:00:71:0a", "203.0.113.10", 0),
               ClusterMember("y", "02:01:cb:00:71:0b", "203.0.113.11", 1, state="DRAINING")]  # fmt: skip
    d.set_amphorae(ref, "lb-a", members)
    assert d.registered("dist-1", "lb-a") == members
    status = d.status(ref)["vips"]["lb-a"]
    assert status["members"]["y"] == {"healthy": True, "state": "DRAINING", "drained": False, "flows": 0}
    d.remove_vip(ref, "lb-a")
    assert d.status(ref)["vips"] == {} and d.registered("dist-1", "lb-a") == []


def test_converge_reapplies_only_when_the_kernel_drifted(tmp_path: Path) -> None:
    kernel = RecordingKernel()
    svc = service(tmp_path, kernel)
    svc.plug_vip(VIP_SPEC)
    svc.set_members("lb-a", specs("x", "y"))
    applied = len(kernel.applied)
    assert svc.converge() == [] and len(kernel.applied) == applied  # in sync: nothing is touched
    plans, keep, managed = kernel.drift_asked[-1]
    assert [p.lb_id for p in plans] == ["lb-a"] and keep == {nft.object_key("lb-a")} and managed == {"fe0"}

    kernel.drifts = [["missing route x"]]  # a link flapped: routes back, bucket maps (and pins) untouched
    assert svc.converge() == ["missing route x"]
    assert len(kernel.applied) == applied + 1 and kernel.applied[-1][2] == set()
    assert kernel.applied[-1][0] == kernel.applied[-2][0]  # the same plan as the state's

    kernel.drifts = [["nft " + nft.object_key("lb-a")]]  # our table is gone: every bucket map refilled
    svc.converge()
    assert kernel.applied[-1][2] is None

    # A difference re-applying does not cure is re-applied once, not on every event after.
    applied = len(kernel.applied)
    kernel.drifts = [["stale route y"]] * 4
    for _ in range(3):
        assert svc.converge() == ["stale route y"]
    assert len(kernel.applied) == applied + 1
    kernel.drifts = [["stale route y", "missing route z"]]  # it changed: tried again
    svc.converge()
    assert len(kernel.applied) == applied + 2


def test_converge_survives_a_link_still_down_and_retries(tmp_path: Path) -> None:
    kernel = RecordingKernel()
    svc = service(tmp_path, kernel)
    svc.plug_vip(VIP_SPEC)
    svc.set_members("lb-a", specs("x"))

    def refused(*_args: object) -> None:
        raise CommandFailed(["ip", "-batch", "-"], 2, "Error: Nexthop device is not up.")

    kernel.apply = refused  # type: ignore[method-assign]
    kernel.drifts = [["missing route x"], ["missing route x"]]
    assert svc.converge() == ["missing route x"]  # logged, not raised
    del kernel.apply  # the link is up again
    applied = len(kernel.applied)
    assert svc.converge() == ["missing route x"] and len(kernel.applied) == applied + 1


def test_kernel_events_wake_converge_and_the_monitor_is_restarted(tmp_path: Path) -> None:
    kernel = RecordingKernel()
    svc = service(tmp_path, kernel)
    svc.plug_vip(VIP_SPEC)
    stop = threading.Event()
    converger = threading.Thread(target=svc.run_converge, args=(stop, 60.0), daemon=True)
    converger.start()
    dataplane = DataPlane()
    dataplane.MONITOR = ("sh", "-c", "echo 2: fe0: <BROADCAST,MULTICAST,UP,LOWER_UP>")  # then it exits
    dataplane.RESTART_DELAY = 0.05
    events: list[float] = []

    def changed() -> None:
        events.append(time.monotonic())
        svc.drifted()
        if len(events) >= 4:  # (start, line) twice: the monitor was started again
            stop.set()

    dataplane.watch(changed, stop)
    converger.join(timeout=2)
    assert len(events) == 4 and not converger.is_alive()
    assert kernel.drift_asked  # the period is 60 s: only the events made it check
