"""The second chance's ruleset: copies of invalid VIP packets from routers go to peers only."""

from __future__ import annotations

from pathlib import Path

import pytest

from cohort.agents.amphora.bgp import router_macs
from cohort.agents.amphora.second_chance import render

ROUTER = "02:01:cb:00:71:01"


def test_copies_go_to_the_other_amphorae_and_only_for_router_packets() -> None:
    text = render({"203.0.113.100": ["203.0.113.3", "203.0.113.2", "203.0.113.100"]}, [ROUTER], "fe0")
    copy = next(line for line in text.splitlines() if "dup to" in line)
    assert "ct state invalid" in copy and f"ether saddr {{ {ROUTER} }}" in copy and copy.endswith("drop")
    assert copy.count("dup to") == 2 and "dup to 203.0.113.100" not in copy
    assert "ip daddr 203.0.113.100 ct state invalid drop" in text  # a copy invalid here too stops here


def test_without_a_known_router_nothing_is_copied_but_resets_are_avoided() -> None:
    text = render({"203.0.113.100": ["203.0.113.3"]}, [], "fe0")
    assert "dup to" not in text and "ip daddr 203.0.113.100 ct state invalid drop" in text


@pytest.mark.parametrize("args", [({"203.0.113.100": ["x"]}, [ROUTER], "fe0"),
                                  ({"203.0.113.100%1": []}, [ROUTER], "fe0"),
                                  ({"203.0.113.100": []}, ["zz:01"], "fe0"),
                                  ({"203.0.113.100": []}, [ROUTER], "fe0\n}")])
def test_bad_values_are_refused(args: tuple[dict[str, list[str]], list[str], str]) -> None:
    with pytest.raises(ValueError):
        render(*args)


def test_router_macs_come_from_complete_arp_entries(tmp_path: Path) -> None:
    arp = tmp_path / "arp"
    arp.write_text("IP address HW type Flags HW address Mask Device\n"
                   f"203.0.113.1 0x1 0x2 {ROUTER} * fe0\n"
                   "203.0.113.9 0x1 0x0 00:00:00:00:00:00 * fe0\n"
                   "203.0.113.7 0x1 0x2 02:01:cb:00:71:07 * fe0\n")
    assert router_macs(["203.0.113.1", "203.0.113.9"], str(arp)) == [ROUTER]


def test_only_the_vips_tcp_flows_are_tracked() -> None:
    text = render({"203.0.113.100": ["203.0.113.3"], "2001:db8::100": []}, [ROUTER], "fe0")
    assert "meta l4proto tcp ip daddr != { 203.0.113.100 } notrack" in text
    assert "meta l4proto tcp ip saddr != { 203.0.113.100 } notrack" in text
    assert "meta l4proto tcp ip6 daddr != { 2001:db8::100 } notrack" in text
    assert "priority raw" in text and "udp" not in text  # UDP and SCTP listeners' DNAT needs conntrack
