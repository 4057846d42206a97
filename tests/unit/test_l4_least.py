"""UDP LEAST_CONNECTIONS and allowed_cidrs: the water-filling table, its nftables rendering, the agent's refill."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from cohort.agents.amphora import l4, l4_least, l4_nft
from cohort.agents.amphora.l4_spec import Member, parse
from cohort.agents.common import nft_netlink
from cohort.datamodel import Listener, LoadBalancer
from cohort.drivers.amphora.l4_config import render_l4

A = Member(id="a", address="192.0.2.10", port=53)
B = Member(id="b", address="192.0.2.11", port=53)
C = Member(id="c", address="192.0.2.12", port=53, weight=2)


def _ids(members: list[Member]) -> Counter[str]:
    return Counter(m.id for m in members)


def test_new_flows_go_to_the_member_with_fewest_active_flows() -> None:
    # A holds 40 flows, B none: every slot is B's, as LVS's lc sends every new flow to B.
    assert _ids(l4_least.table([A, B], {"a": 40, "b": 0}, 2, 64)) == {"b": 64}
    # Even when 30 flows are expected before the next refill: they all fit below A's level.
    assert _ids(l4_least.table([A, B], {"a": 40, "b": 0}, 30, 64)) == {"b": 64}
    # 60 expected: B is raised to 40 first, the last 20 split evenly (B 50, A 10 of 60 flows).
    shares = l4_least.shares([A, B], {"a": 40, "b": 0}, 60)
    assert shares == [10.0, 50.0]
    # Equal loads share evenly, interleaved, so that a short burst alternates too.
    table = l4_least.table([A, B], {"a": 5, "b": 5}, 2, 64)
    assert _ids(table) == {"a": 32, "b": 32} and {m.id for m in table[:2]} == {"a", "b"}


def test_weights_count_as_in_wlc_and_three_members_level_out() -> None:
    # C has weight 2: at 10 flows it is as loaded as A at 5; equal levels share 1:1:2.
    assert _ids(l4_least.table([A, B, C], {"a": 5, "b": 5, "c": 10}, 4, 64)) == {"a": 16, "b": 16, "c": 32}
    # B is the least loaded by far, then A; C (20/2 = 10) takes nothing until B and A reach its level.
    shares = l4_least.shares([A, B, C], {"a": 8, "b": 0, "c": 20}, 10)
    assert shares == [1.0, 9.0, 0.0]
    assert _ids(l4_least.table([A, B, C], {"a": 8, "b": 0, "c": 20}, 10, 64)) == {"b": 58, "a": 6}
    assert len(l4_least.table([A], {}, 1, 64)) == 64 and l4_least.table([], {}, 1, 64) == []


LC = {"listeners": [{"id": "li", "protocol": "UDP", "vip": "203.0.113.5", "port": 53,
                     "allowed_cidrs": ["198.51.100.0/25", "198.51.100.128/25", "10.0.0.0/8", "10.1.0.0/16"],
                     "pool": {"id": "p", "algorithm": "LEAST_CONNECTIONS", "members": [
                         {"id": "a", "address": "192.0.2.10", "port": 53},
                         {"id": "b", "address": "192.0.2.11", "port": 53}]}}]}


def test_allowed_cidrs_are_collapsed_validated_and_filter_before_nat() -> None:
    spec = parse(LC)
    assert spec.listeners[0].allowed_cidrs == ("10.0.0.0/8", "198.51.100.0/24")
    assert parse(spec.to_json()) == spec
    script = l4_nft.render("lb-1", spec, {"li": 1}, {"li": {"a": 1, "b": 2}}, {}).script
    assert "type filter hook prerouting priority mangle" in script
    assert "ip daddr 203.0.113.5 udp dport 53 ip saddr != { 10.0.0.0/8, 198.51.100.0/24 } drop" in script
    lb = LoadBalancer(id="lb", project_id="p", vip_address="203.0.113.5", vip_subnet_id="s", listeners=(
        Listener(id="li", protocol="UDP", protocol_port=53, allowed_cidrs=("198.51.100.7/24",)),))
    spec_json = render_l4(lb)
    assert spec_json is not None and spec_json["listeners"][0]["allowed_cidrs"] == ["198.51.100.0/24"]
    with pytest.raises(ValueError, match="CIDR"):
        render_l4(LoadBalancer(**{**lb.__dict__, "listeners": (
            Listener(id="li", protocol="UDP", protocol_port=53, allowed_cidrs=("198.51.100.0/24\ndrop",)),)}))


def test_least_connections_renders_a_named_table_the_agent_refills() -> None:
    spec = parse(LC)
    pool = spec.listeners[0].pool
    assert pool is not None
    leaning = {"li": l4_least.table(list(pool.members), {"a": 40}, 2, l4_least.size(pool))}
    script = l4_nft.render("lb-1", spec, {"li": 1}, {"li": {"a": 1, "b": 2}}, {}, least=leaning).script
    assert "ct mark set numgen inc mod 64 map @lc1" in script
    assert "0 : 0x10002, 1 : 0x10002" in script and "0x10001, " not in script.split("lc1 {")[-1].split("}")[0]
    # A member the monitor took out is never in the table, whatever table the caller had.
    down = l4_nft.render("lb-1", spec, {"li": 1}, {"li": {"a": 1, "b": 2}}, {"li": {"b": False}},
                         least=leaning).script
    assert "0x10002" not in down.split("add element inet cohort_l4_lb_1 lc1")[1].split("\n")[0]
    refill = l4_nft.least_script("lb-1", 1, leaning["li"], {"a": 0x10001, "b": 0x10002})
    assert refill.startswith("flush map inet cohort_l4_lb_1 lc1\nadd element inet cohort_l4_lb_1 lc1 { 0 : 0x10002")


class FakeKernel:
    """What the agent's L4 manager asks of nft and conntrack, recorded."""

    def __init__(self) -> None:
        self.scripts: list[str] = []
        self.flows: Counter[int] = Counter()
        self.new_flows = 0

    def nft(self, *args: str, stdin: str | None = None, **_: Any) -> str:
        if stdin is not None:
            self.scripts.append(stdin)
            return ""
        return json.dumps({"nftables": []})

    def counters(self, family: str, table: str) -> dict[str, nft_netlink.Counter]:
        assert (family, table) == ("inet", "cohort_l4_lb_1")
        return {"l1_new": nft_netlink.Counter(packets=self.new_flows, bytes=0)}


class DownProber:
    def __init__(self, up: dict[str, bool]) -> None:
        self.up = up

    def stop(self) -> None:
        pass


def test_agent_refills_the_table_from_conntrack_counts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kernel = FakeKernel()
    monkeypatch.setattr(l4, "run_nft", kernel.nft)
    monkeypatch.setattr(l4.nft_netlink, "counters", kernel.counters)
    monkeypatch.setattr(l4, "set_sysctl", lambda *_: None)
    monkeypatch.setattr(l4.conntrack, "marks", lambda: kernel.flows)
    monkeypatch.setattr(l4_least, "INTERVAL", 3600.0)  # rounds are driven by the test
    manager = l4.L4Manager(tmp_path)
    body = json.loads(json.dumps(LC))
    body["listeners"][0]["pool"]["members"].append({"id": "c", "address": "192.0.2.12", "port": 53})
    manager.put("lb-1", body)
    first = kernel.scripts[-1]
    assert "numgen inc mod 64 map @lc1" in first
    a, b, c = (l4_nft.mark(1, n) for n in (1, 2, 3))
    kernel.flows.update({a: 40, b: 2, c: 40})
    kernel.scripts.clear()
    manager._refill()
    assert _slots(kernel.scripts) == {hex(b): 64}
    manager._refill()  # nothing changed: nothing written
    assert kernel.scripts == []
    # A busy interval (60 new flows): the next table raises b to 40 and shares the rest 1:1:1.
    kernel.new_flows = 60
    manager._refill()
    assert _slots(kernel.scripts) == {hex(b): 48, hex(a): 8, hex(c): 8}
    # b's monitor fails: the table is rewritten with the spec at once, without b.
    manager._probers["lb-1"] = {"li": DownProber({"b": False})}  # type: ignore[dict-item]
    manager._health_changed("lb-1")
    table = kernel.scripts.pop().split("add element inet cohort_l4_lb_1 lc1 { ")[1].split(" }")[0]
    assert hex(b) not in table and hex(a) in table and hex(c) in table
    manager.close()


def _slots(scripts: list[str]) -> Counter[str]:
    [script] = scripts
    scripts.clear()
    assert script.startswith("flush map inet cohort_l4_lb_1 lc1\n")
    return Counter(part.split(" : ")[1] for part in script.split("{ ")[1].split(" }")[0].split(", "))


def test_active_flows_are_counted_by_mark_from_the_proc_table(tmp_path: Path) -> None:
    from cohort.agents.amphora import conntrack

    entry = ("ipv4     2 udp      17 28 src=198.51.100.10 dst=203.0.113.5 sport={p} dport=53 src=192.0.2.10 "
             "dst=192.0.2.200 sport=53 dport={p} {flags}mark={mark} zone=0 use=2\n")
    table = tmp_path / "nf_conntrack"
    table.write_text("".join(entry.format(p=1000 + i, flags="[ASSURED] " if i % 2 else "", mark=mark)
                             for i, mark in enumerate([65537, 65537, 65538, 0, 131073])))
    assert conntrack.marks(str(table)) == {65537: 2, 65538: 1, 131073: 1}
    assert conntrack.marks(str(tmp_path / "absent")) == {}


def test_ended_sctp_associations_are_not_counted(tmp_path: Path) -> None:
    from cohort.agents.amphora import conntrack

    entry = ("ipv4     2 sctp     132 {expiry} {state} src=198.51.100.10 dst=203.0.113.5 sport={p} dport=3868 "
             "src=192.0.2.10 dst=192.0.2.200 sport=3868 dport={p} [ASSURED] mark={mark} zone=0 use=2\n")
    states = [("ESTABLISHED", 65537), ("HEARTBEAT_SENT", 65537), ("COOKIE_WAIT", 65538), ("CLOSED", 65538),
              ("SHUTDOWN_SENT", 65538), ("SHUTDOWN_RECD", 65537), ("SHUTDOWN_ACK_SENT", 65537), ("CLOSED", 65539)]
    udp = "ipv4     2 udp      17 28 src=198.51.100.10 dst=203.0.113.5 sport=9 dport=53 mark=65539 zone=0 use=2\n"
    table = tmp_path / "nf_conntrack"
    table.write_text(udp + "".join(entry.format(expiry=200 - i, state=state, p=1000 + i, mark=mark)
                                   for i, (state, mark) in enumerate(states)))
    # Open associations (established, probing, in their handshake) count; shut down or aborted ones do not.
    assert conntrack.marks(str(table)) == {65537: 2, 65538: 1, 65539: 1}
