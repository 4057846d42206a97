"""Kernel networking inside an agent's own namespace: ``ip -j`` queries, interfaces by MAC, sysctls, ARP.

Both agents find hot-plugged ports by MAC address and announce the addresses they take
over with gratuitous ARP; every helper touches only the namespace the agent runs in.
"""

from __future__ import annotations

import json
import socket
import struct
from typing import Any

from cohort.agents.common.proc import run

ETH_P_ARP = 0x0806


def normalize_mac(mac: str) -> str:
    parts = mac.strip().lower().replace("-", ":").split(":")
    if len(parts) != 6 or not all(len(p) == 2 and int(p, 16) >= 0 for p in parts):
        raise ValueError(f"invalid MAC address {mac!r}")
    return ":".join(parts)


def ip_json(*args: str) -> list[dict[str, Any]]:
    """The objects ``ip -j <args>`` lists (none when it prints nothing)."""
    data = json.loads(run(["ip", "-j", *args]) or "[]")
    return data if isinstance(data, list) else []


def find_interface(mac: str) -> str:
    """The name of the interface with ``mac``; LookupError if it is not (yet) there."""
    wanted = normalize_mac(mac)
    for link in ip_json("link", "show"):
        if str(link.get("address", "")).lower() == wanted:
            return str(link["ifname"])
    raise LookupError(f"no interface with MAC {wanted}")


def set_sysctl(name: str, value: str) -> None:
    # /proc/sys/net is per network namespace: this touches only the agent's.
    with open("/proc/sys/" + name.replace(".", "/"), "w") as f:
        f.write(value)


def _mac_bytes(mac: str) -> bytes:
    return bytes(int(p, 16) for p in normalize_mac(mac).split(":"))


def gratuitous_arp(ifname: str, ip: str, count: int = 2) -> None:
    """Broadcast ARP requests for ``ip`` from ``ifname`` so neighbours update their caches.

    Done with a packet socket rather than ``arping`` so the agent needs no extra package.
    """
    links = ip_json("link", "show", "dev", ifname)
    mac = _mac_bytes(str(links[0]["address"]))
    ip_b = socket.inet_aton(ip)
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + mac + ip_b + b"\x00" * 6 + ip_b
    frame = b"\xff" * 6 + mac + struct.pack("!H", ETH_P_ARP) + arp
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP)) as s:
        s.bind((ifname, ETH_P_ARP))
        for _ in range(count):
            s.send(frame)
