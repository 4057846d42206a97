"""The second chance's ruleset and its owner in the agent: copies of invalid VIP packets from
upstream (routers in L3, anything but a peer amphora in L2) go to the peers only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cohort.agents.amphora import second_chance
from cohort.agents.amphora.bgp import router_macs
from cohort.agents.amphora.second_chance import Cluster, SecondChance, interfaces, render, switched_record
from cohort.controller.cluster import peers_of
from cohort.datamodel import Amphora

ROUTER = "02:01:cb:00:71:01"
PEER_B, PEER_C = "02:00:00:00:00:0b", "02:00:00:00:00:0c"
VIP = "203.0.113.100"
UNOWNED = "meta mark 0x40000000"  # what the BPF program marks: no connection here owns the packet


def routed(peers: list[str], routers: list[str], interface: str = "fe0") -> Cluster:
    return Cluster(peers=tuple(peers), interface=interface, routers=tuple(routers))


def switched(peers: dict[str, str], interface: str = "fe0") -> Cluster:
    return Cluster(peers=tuple(peers), interface=interface, peer_macs=tuple(peers.values()))


def test_copies_go_to_the_other_amphorae_and_only_for_router_packets() -> None:
    text = render({VIP: routed(["203.0.113.3", "203.0.113.2", VIP], [ROUTER])})
    copy = next(line for line in text.splitlines() if "dup to" in line)
    assert UNOWNED in copy and f"ether saddr {{ {ROUTER} }}" in copy and copy.endswith("drop")
    assert copy.count("dup to") == 2 and f"dup to {VIP}" not in copy
    assert f"ip daddr {VIP} {UNOWNED} drop" in text  # a copy invalid here too stops here


def test_without_a_known_router_nothing_is_copied_but_resets_are_avoided() -> None:
    text = render({VIP: routed(["203.0.113.3"], [])})
    assert "dup to" not in text and f"ip daddr {VIP} {UNOWNED} drop" in text


def test_l2_copies_what_does_not_come_from_a_peer() -> None:
    text = render({VIP: switched({"203.0.113.12": PEER_B.upper(), "203.0.113.13": PEER_C})})
    copy = next(line for line in text.splitlines() if "dup to" in line)
    assert f"ip daddr {VIP} {UNOWNED} ether saddr != {{ {PEER_B}, {PEER_C} }}" in copy
    assert 'counter dup to 203.0.113.12 device "fe0" dup to 203.0.113.13 device "fe0" drop' in copy
    assert f"ip daddr {VIP} {UNOWNED} drop" in text  # a peer's copy invalid here too stops here


def test_l2_alone_drops_invalid_packets_and_copies_nothing() -> None:
    text = render({VIP: switched({})})
    assert "dup to" not in text and f"ip daddr {VIP} {UNOWNED} drop" in text


def test_l2_and_l3_vips_share_the_table() -> None:
    text = render({VIP: switched({"203.0.113.12": PEER_B}), "203.0.113.101": routed(["203.0.113.3"], [ROUTER])})
    assert text.count("add table ip cohort_second_chance") == 1
    assert f"ether saddr != {{ {PEER_B} }}" in text and f"ether saddr {{ {ROUTER} }}" in text
    assert f"ip daddr {VIP} {UNOWNED} drop" in text and f"ip daddr 203.0.113.101 {UNOWNED} drop" in text


@pytest.mark.parametrize("vips", [
    {VIP: routed(["x"], [ROUTER])},
    {"203.0.113.100%1": routed([], [ROUTER])},
    {VIP: routed([], ["zz:01"])},
    {VIP: routed([], [ROUTER], "fe0\n}")},
    {VIP: switched({"203.0.113.12": "02:00:00:00:00:0b } accept"})},
    {VIP: switched({"203.0.113.12": "02:00:00:00:000:b"})},
    # "Not a peer" with a peer's MAC missing would copy that peer's copies again.
    {VIP: Cluster(peers=("203.0.113.12", "203.0.113.13"), interface="fe0", peer_macs=(PEER_B,))},
    {VIP: Cluster(peers=("203.0.113.12",), interface="fe0", peer_macs=(PEER_B,), routers=(ROUTER,))},
])
def test_bad_values_are_refused(vips: dict[str, Cluster]) -> None:
    with pytest.raises(ValueError):
        render(vips)


def test_router_macs_come_from_complete_arp_entries(tmp_path: Path) -> None:
    arp = tmp_path / "arp"
    arp.write_text("IP address HW type Flags HW address Mask Device\n"
                   f"203.0.113.1 0x1 0x2 {ROUTER} * fe0\n"
                   "203.0.113.9 0x1 0x0 00:00:00:00:00:00 * fe0\n"
                   "203.0.113.7 0x1 0x2 02:01:cb:00:71:07 * fe0\n")
    assert router_macs(["203.0.113.1", "203.0.113.9"], str(arp)) == [ROUTER]


def test_no_tcp_is_tracked_and_only_the_programs_mark_decides() -> None:
    text = render({VIP: routed(["203.0.113.3"], [ROUTER]), "2001:db8::100": routed([], [ROUTER], "fe1")})
    for family in ("ip", "ip6"):
        table = text.split(f"table {family} cohort_second_chance {{")[1].split("\n}")[0]
        assert table.count("meta l4proto tcp notrack") == 2 and table.count("priority raw") == 2
    assert "udp" not in text and "ct " not in text  # UDP and SCTP listeners' DNAT needs conntrack
    assert f"ip6 daddr 2001:db8::100 {UNOWNED} drop" in text
    assert interfaces({VIP: routed([], [ROUTER]), "2001:db8::100": routed([], [ROUTER], "fe1")}) == {"fe0", "fe1"}


def test_the_programs_mark_is_the_one_the_rules_match() -> None:
    source = (Path(second_chance.__file__).parent / "second_chance.bpf.c").read_text()
    assert f"#define UNOWNED_MARK {second_chance.UNOWNED_MARK:#x}" in source


# -- what the controller sends for an L2 VIP -------------------------------------------------------

def peer(address: str, mac: str) -> dict[str, str]:
    return {"address": address, "mac_address": mac}


def test_a_switched_record_is_canonical_and_leaves_the_vip_out() -> None:
    address, record = switched_record("203.0.113.100", "lb-1", "fe0", [
        peer("203.0.113.13", PEER_C.upper()), peer("203.0.113.12", PEER_B), peer(VIP, PEER_B)])
    assert address == VIP
    assert record == {"lb_id": "lb-1", "interface": "fe0",
                      "peers": [peer("203.0.113.12", PEER_B), peer("203.0.113.13", PEER_C)]}


@pytest.mark.parametrize(("vip", "lb_id", "interface", "peers"), [
    ("203.0.113.100 ", "lb", "fe0", []),
    (VIP, "lb\n", "fe0", []),
    (VIP, "", "fe0", []),
    (VIP, "lb", "fe0;", []),
    (VIP, "lb", "fe0", "203.0.113.12"),
    (VIP, "lb", "fe0", ["203.0.113.12"]),
    (VIP, "lb", "fe0", [{"address": "203.0.113.12"}]),
    (VIP, "lb", "fe0", [{**peer("203.0.113.12", PEER_B), "extra": "x"}]),
    (VIP, "lb", "fe0", [peer("203.0.113.12", "02:00:00:00:00")]),
    (VIP, "lb", "fe0", [peer("203.0.113.0/24", PEER_B)]),
    (VIP, "lb", "fe0", [peer(f"203.0.113.{i}", PEER_B) for i in range(65)]),
])
def test_a_bad_switched_record_is_refused(vip: str, lb_id: str, interface: str, peers: Any) -> None:
    with pytest.raises(ValueError):
        switched_record(vip, lb_id, interface, peers)


# -- the table's one owner in the agent --------------------------------------------------------------

class Loader:
    def __init__(self, fail: bool = False) -> None:
        self.loaded: list[str] = []
        self.ports: list[tuple[set[str], set[str]]] = []
        self.fail = fail

    def __call__(self, text: str, watched: set[str], unwatched: set[str]) -> None:
        if self.fail:
            raise OSError("nft failed")
        self.loaded.append(text)
        self.ports.append((watched, unwatched))


def test_l2_and_l3_vips_are_applied_together_and_only_on_change(tmp_path: Path) -> None:
    loader = Loader()
    owner = SecondChance(tmp_path / "second_chance.json", loader)
    assert owner.set_switched(VIP, "lb-1", "fe0", [peer("203.0.113.12", PEER_B)]) is True
    assert owner.set_switched(VIP, "lb-1", "fe0", [peer("203.0.113.12", PEER_B)]) is False
    owner.set_routed({"203.0.113.101": routed(["203.0.113.3"], [ROUTER])})
    owner.set_routed({"203.0.113.101": routed(["203.0.113.3"], [ROUTER])})
    assert len(loader.loaded) == 2
    assert f"ether saddr != {{ {PEER_B} }}" in loader.loaded[-1] and ROUTER in loader.loaded[-1]
    owner.remove_lb("lb-1")
    assert VIP not in loader.loaded[-1] and "ether saddr !=" not in loader.loaded[-1] and ROUTER in loader.loaded[-1]
    assert owner.status() == {"applied": True, "vips": {}}
    owner.set_routed({})
    # The program leaves the port with the last VIP.
    assert loader.ports == [({"fe0"}, set()), ({"fe0"}, {"fe0"}), ({"fe0"}, {"fe0"}), (set(), {"fe0"})]


def test_a_restarted_agent_applies_what_it_was_told(tmp_path: Path) -> None:
    record = tmp_path / "second_chance.json"
    first = Loader()
    SecondChance(record, first).set_switched(VIP, "lb-1", "fe0", [peer("203.0.113.12", PEER_B)])
    again = Loader()
    owner = SecondChance(record, again)
    owner.resume()
    assert again.loaded == first.loaded
    owner.resume()
    assert len(again.loaded) == 1


def test_nothing_is_applied_for_an_amphora_with_no_cluster(tmp_path: Path) -> None:
    loader = Loader()
    SecondChance(tmp_path / "second_chance.json", loader).resume()
    assert loader.loaded == [] and not (tmp_path / "second_chance.json").exists()


def test_a_bad_record_on_disk_is_ignored(tmp_path: Path) -> None:
    record = tmp_path / "second_chance.json"
    record.write_text(json.dumps({VIP: {"lb_id": "lb-1", "interface": "fe0", "peers": [peer("x", PEER_B)]},
                                  "203.0.113.101": ["not", "a", "record"]}))
    loader = Loader()
    owner = SecondChance(record, loader)
    owner.resume()
    assert loader.loaded == [] and owner.status()["vips"] == {}


def test_a_refused_value_changes_nothing_and_a_failed_load_is_tried_again(tmp_path: Path) -> None:
    loader = Loader(fail=True)
    owner = SecondChance(tmp_path / "second_chance.json", loader)
    with pytest.raises(ValueError):
        owner.set_routed({VIP: routed([], ["bad"])})
    with pytest.raises(OSError):
        owner.set_switched(VIP, "lb-1", "fe0", [peer("203.0.113.12", PEER_B)])
    assert owner.status() == {"applied": False, "vips": {VIP: {
        "lb_id": "lb-1", "interface": "fe0", "peers": [peer("203.0.113.12", PEER_B)]}}}
    loader.fail = False
    assert owner.set_switched(VIP, "lb-1", "fe0", [peer("203.0.113.12", PEER_B)]) is True
    assert len(loader.loaded) == 1 and owner.status()["applied"] is True


# -- who an amphora's peers are (the controller, L2 and L3 alike) ----------------------------------

def test_peers_are_the_others_with_a_front_end_address() -> None:
    a = Amphora("a", "lb", "IN_CLUSTER", vrrp_ip="203.0.113.11")
    b = Amphora("b", "lb", "IN_CLUSTER", vrrp_ip="203.0.113.12")
    unplugged = Amphora("c", "lb", "IN_CLUSTER")
    assert peers_of(a, [a, b, unplugged]) == [b]
    assert peers_of(b, [a, b]) == [a]
    assert peers_of(a, [a]) == []
