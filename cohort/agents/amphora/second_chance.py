"""The second chance: packets of flows an L3 amphora does not own go to the cluster peer that does.

A router with plain (hash-threshold) ECMP moves some open flows to another next hop whenever the
number of next hops changes: an amphora joins, leaves or drains. The amphora that receives a
packet of a flow it never saw must not answer it with a reset. So, in each L3 amphora:

- ``net.netfilter.nf_conntrack_tcp_loose = 0``: a mid-flow TCP packet of an unknown connection is
  ``ct state invalid`` instead of being picked up as established;
- such a packet for a VIP, arriving from a router (its source MAC is a BGP peer's), is copied
  (``dup``) to every other amphora of the cluster and dropped here; only the owner's conntrack
  knows the flow, so only the owner accepts its copy and answers, straight to the router;
- a copy (its source MAC is a peer amphora's, not a router's) that is invalid here too is
  dropped, never copied again, so nothing loops.

New flows (SYN) are ``ct state new`` and served where they land; nothing is copied in steady
state. The ruleset is one table per IP family, ``cohort_second_chance``, replaced atomically.

Only the VIP's flows need conntrack for this. HAProxy's own TCP connections to members (and the
agent's management traffic) are ``notrack``ed, so the amphora does not pay conntrack on every one of
its back-end packets: that was a measurable part of an L3 amphora's CPU next to an L2 one's. UDP
and SCTP are left tracked: their listeners' DNAT needs conntrack on both sides.
"""

from __future__ import annotations

import re

from cohort import validation

TABLE = "cohort_second_chance"
INTERFACE = re.compile(r"^[A-Za-z0-9_.-]{1,15}\Z")
_MAC = "0123456789abcdef:"


def _mac(value: str) -> str:
    mac = value.lower()
    if len(mac) != 17 or set(mac) - set(_MAC) or mac.count(":") != 5:
        raise ValueError(f"{value!r} is not a MAC address")
    return mac


def render(vips: dict[str, list[str]], router_macs: list[str], interface: str) -> str:
    """The tables for ``vips`` (VIP -> the other amphorae's front-end addresses), one per IP family."""
    if not INTERFACE.match(interface):
        raise ValueError(f"interface {interface!r} is invalid")
    macs = sorted({_mac(m) for m in router_macs})
    rules: dict[str, list[str]] = {"ip": [], "ip6": []}
    addresses: dict[str, set[str]] = {"ip": set(), "ip6": set()}
    for vip, peers in sorted(vips.items()):
        address = validation.ip_address(vip, "VIP")
        family = "ip" if address.version == 4 else "ip6"
        addresses[family].add(address.compressed)
        others = sorted({validation.canonical_ip(p, "peer address") for p in peers} - {address.compressed})
        others = [peer for peer in others if validation.ip_address(peer).version == address.version]
        if others and macs:
            copies = " ".join(f'dup to {peer} device "{interface}"' for peer in others)
            routers = ", ".join(macs)
            rules[family].append(f"    {family} daddr {address.compressed} ct state invalid "
                                 f"ether saddr {{ {routers} }} {copies} drop")
        rules[family].append(f"    {family} daddr {address.compressed} ct state invalid drop")
    lines: list[str] = []
    for family, family_rules in rules.items():
        lines += [f"add table {family} {TABLE}", f"delete table {family} {TABLE}"]
        if family_rules:
            tracked = ", ".join(sorted(addresses[family]))
            lines += [f"table {family} {TABLE} {{",
                      # Before conntrack (-200): TCP that is not the VIP's is never tracked.
                      "  chain untracked_in {", "    type filter hook prerouting priority raw; policy accept;",
                      f"    meta l4proto tcp {family} daddr != {{ {tracked} }} notrack", "  }",
                      "  chain untracked_out {", "    type filter hook output priority raw; policy accept;",
                      f"    meta l4proto tcp {family} saddr != {{ {tracked} }} notrack", "  }",
                      # After conntrack, which tells a flow this amphora owns from one it never saw.
                      "  chain prerouting {",
                      "    type filter hook prerouting priority filter; policy accept;", *family_rules, "  }", "}"]
    return "\n".join(lines) + "\n"
