"""Interface plumbing inside the amphora: address its hot-plugged ports and place the VIP.

The three VIP modes match the topologies: ``interface`` (SINGLE: the VIP on the
port, announced with gratuitous ARP), ``keepalived`` (ACTIVE_STANDBY: VRRP moves
the VIP) and ``loopback`` (ACTIVE_ACTIVE: the VIP on ``lo`` and the namespace never
answers ARP for it, since the Distributor or the routers own the VIP).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from cohort.agents.common.net import find_interface, gratuitous_arp, ip_json, normalize_mac, set_sysctl
from cohort.agents.common.proc import run

VIP_MODES = ("interface", "keepalived", "loopback")


@dataclass(frozen=True)
class PortSpec:
    mac_address: str
    address: str
    subnet_cidr: str
    gateway: str | None = None

    def validate(self) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
        """Return the parsed address and prefix length; ValueError on nonsense."""
        net = ipaddress.ip_network(self.subnet_cidr, strict=False)
        addr = ipaddress.ip_address(self.address)
        if addr not in net:
            raise ValueError(f"{addr} is not in {net}")
        if self.gateway is not None and ipaddress.ip_address(self.gateway) not in net:
            raise ValueError(f"gateway {self.gateway} is not in {net}")
        normalize_mac(self.mac_address)
        return addr, net.prefixlen


def list_interfaces() -> list[dict[str, Any]]:
    out = []
    for link in ip_json("addr", "show"):
        addrs = [f"{a['local']}/{a['prefixlen']}" for a in link.get("addr_info", []) if "local" in a]
        out.append(
            {
                "name": link.get("ifname"),
                "mac_address": link.get("address"),
                "state": link.get("operstate"),
                "addresses": addrs,
            }
        )
    return out


def _configure_port(spec: PortSpec) -> str:
    addr, prefix = spec.validate()
    ifname = find_interface(spec.mac_address)
    run(["ip", "link", "set", "dev", ifname, "up"])
    run(["ip", "addr", "replace", f"{addr}/{prefix}", "dev", ifname])
    if addr.version == 4:
        # A port's address may have been another port's a moment ago (a replaced amphora's): the
        # router and the cluster peers would send to the old MAC until their entry ages out.
        gratuitous_arp(ifname, str(addr))
    return ifname


def plug_network(spec: PortSpec) -> str:
    """Address a member-network port; returns its interface name."""
    return _configure_port(spec)


def plug_vip(spec: PortSpec, vip: str, vip_mode: str) -> str:
    """Address the front-end port, route through its gateway and place the VIP per ``vip_mode``."""
    if vip_mode not in VIP_MODES:
        raise ValueError(f"vip_mode must be one of {', '.join(VIP_MODES)}")
    vip_addr = ipaddress.ip_address(vip)
    ifname = _configure_port(spec)
    v6 = vip_addr.version == 6
    host_prefix = 128 if v6 else 32
    if spec.gateway is not None:
        run(["ip", "-6" if v6 else "-4", "route", "replace", "default", "via", spec.gateway, "dev", ifname])
    if vip_mode == "interface":
        extra = ["nodad"] if v6 else []
        run(["ip", "addr", "replace", f"{vip_addr}/{host_prefix}", "dev", ifname, *extra])
        if not v6:
            gratuitous_arp(ifname, str(vip_addr))
    elif vip_mode == "loopback":
        if not v6:
            set_sysctl("net.ipv4.conf.all.arp_ignore", "1")
            set_sysctl("net.ipv4.conf.all.arp_announce", "2")
            # The kernel applies max(all, <if>) to rp_filter, so every level must be 0.
            for scope in ("all", "default", ifname, "lo"):
                set_sysctl(f"net.ipv4.conf.{scope}.rp_filter", "0")
        run(["ip", "link", "set", "dev", "lo", "up"])
        run(["ip", "addr", "replace", f"{vip_addr}/{host_prefix}", "dev", "lo"])
    return ifname
