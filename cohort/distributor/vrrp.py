"""Render keepalived's configuration for one member of an L2 distributor pair.

The pair shares every VIP; keepalived (VRRPv3) decides which member holds them. One
``vrrp_instance`` per front-end interface carries all the VIPs on it: the lowest in
``virtual_ipaddress`` (keepalived wants at least one there) and the others in
``virtual_ipaddress_excluded`` (left out of the advertisements, so their number is not bounded
by a VRRP packet). Both members start ``BACKUP`` with ``nopreempt`` and equal priority: a
member that joins (a replacement) hears the master's advertisements and stays BACKUP, so it
never takes the VIPs from a working master. VRRP is unicast to the other member's address on
the same network, and ``check_unicast_src`` ignores advertisements from anyone else (a
replaced member that comes back included). A member without a peer (a lone distributor)
is ``MASTER`` at once and advertises by multicast, to nobody in particular.

VRRPv3 takes ``advert_int`` in units of 10 ms: a silent master is replaced after about three
intervals (0.13-0.16 s at 0.05, 0.27-0.32 s at 0.1, measured here). Every value is validated
here again, whatever the agent's API already checked.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from cohort import validation

# Of the agent's own making, never a tenant's: kept to keepalived's plain word characters.
_ROUTER_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}\Z")
MIN_ADVERT_INT = 0.01
MAX_ADVERT_INT = 40.95  # VRRPv3's 12-bit field of centiseconds
DEFAULT_ADVERT_INT = 0.05
DEFAULT_VRID = 250
PRIORITY = 100


@dataclass(frozen=True)
class VrrpGroup:
    """The VIPs on one interface, and the pair's VRRP settings there."""

    interface: str
    own_address: str
    peer: str | None
    vips: tuple[str, ...]
    vrid: int = DEFAULT_VRID
    advert_int: float = DEFAULT_ADVERT_INT


def _ipv4(value: str, what: str) -> str:
    address = validation.ip_address(value, what)
    if address.version != 4:
        raise ValueError(f"{what} {value}: the L2 distributor pair serves IPv4 only")
    return address.compressed


def advert_int(value: float) -> float:
    """An advertisement interval in seconds, a whole number of VRRPv3's 10 ms units."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"advert_int {value!r} must be a number of seconds")
    centis = round(value * 100)
    if abs(centis - value * 100) > 1e-6 or not MIN_ADVERT_INT <= value <= MAX_ADVERT_INT:
        raise ValueError(f"advert_int {value} must be a multiple of 0.01 in {MIN_ADVERT_INT}..{MAX_ADVERT_INT}")
    return centis / 100


def vrid(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 255:
        raise ValueError(f"virtual router id {value!r} must be an integer in 1..255")
    return value


def _instance(group: VrrpGroup) -> list[str]:
    dev = validation.interface_name(group.interface)
    own = _ipv4(group.own_address, "own address")
    vips = sorted({_ipv4(v, "VIP") for v in group.vips}, key=lambda a: tuple(int(x) for x in a.split(".")))
    if not vips:
        raise ValueError(f"interface {dev}: a VRRP instance needs at least one VIP")
    if own in vips:
        raise ValueError(f"interface {dev}: own address {own} cannot be a VIP")
    peer = _ipv4(group.peer, "VRRP peer") if group.peer is not None else None
    if peer is not None and peer in (own, *vips):
        raise ValueError(f"interface {dev}: VRRP peer {peer} must be the other member's own address")
    lines = [
        f"vrrp_instance cohort_{dev} {{",
        # With a peer both start BACKUP: whoever is MASTER stays so while it advertises.
        f"    state {'BACKUP' if peer else 'MASTER'}",
        *(["    nopreempt"] if peer else []),
        f"    interface {dev}",
        f"    virtual_router_id {vrid(group.vrid)}",
        f"    priority {PRIORITY}",
        f"    advert_int {advert_int(group.advert_int):.2f}",
        "    version 3",
    ]
    if peer is not None:
        lines += [f"    unicast_src_ip {own}", "    check_unicast_src",
                  "    unicast_peer {", f"        {peer}", "    }"]
    lines += ["    virtual_ipaddress {", f"        {vips[0]}/32 dev {dev}", "    }"]
    if len(vips) > 1:
        lines += ["    virtual_ipaddress_excluded {", *(f"        {v}/32 dev {dev}" for v in vips[1:]), "    }"]
    lines.append("}")
    return lines


def render_keepalived(router_id: str, groups: Sequence[VrrpGroup]) -> str:
    """keepalived.conf for a distributor whose VIPs are ``groups`` (one per interface)."""
    if not _ROUTER_ID.match(router_id):
        raise ValueError(f"router id {router_id!r} is invalid")
    names = [g.interface for g in groups]
    if len(set(names)) != len(names):
        raise ValueError("one VRRP group per interface")
    if not groups:
        raise ValueError("no VRRP group to render")
    lines = [
        "# The distributor pair's VIPs; rendered by cohort, do not edit.",
        "global_defs {",
        f"    router_id {router_id}",
        # A new master announces at once and again a second later: a neighbour that ignored the
        # first announcement (Linux's ARP locktime) takes the second.
        "    vrrp_garp_master_delay 1",
        "    vrrp_garp_master_repeat 3",
        "    vrrp_garp_master_refresh 10",
        "    vrrp_garp_master_refresh_repeat 1",
        "}",
    ]
    for group in sorted(groups, key=lambda g: g.interface):
        lines += ["", *_instance(group)]
    return "\n".join(lines) + "\n"
