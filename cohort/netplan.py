"""The address plan of Cohort's local cloud, as pure data: networks, tenant subnets, host ranges,
stable ids and MACs.

The lab builds this plan in namespaces; the noop drivers imitate it in memory so that the API
and the controller behave alike with either. Both read it here, so neither imports the other
and importing it touches no kernel object. Only documentation and benchmark ranges are used.
"""

from __future__ import annotations

import ipaddress
import uuid
from dataclasses import dataclass

from cohort.datamodel import Subnet

DEFAULT_PREFIX = "cohort"
DEFAULT_MGMT_CIDR = "198.18.0.0/24"
MGMT_SUPERNET = ipaddress.ip_network("198.18.0.0/15")
CLIENT_CIDR = "198.51.100.0/24"
CLIENT_IP = "198.51.100.10"
CLIENT_GATEWAY = "198.51.100.1"
PUBLIC_CIDR = "203.0.113.0/24"
PUBLIC_GATEWAY = "203.0.113.1"
PRIVATE_CIDR = "192.0.2.0/24"

# (first, last) host numbers handed out in each network.
FRONTEND_PORT_RANGE = (2, 99)  # amphora / distributor own addresses on the public subnet
VIP_FIRST = 100  # VIPs are picked from here up
BACKEND_RANGE = (10, 254)  # members and back-end ports; .1-.9 stay free
MGMT_RANGE = (10, 254)  # agents; .1 is the host
PORT_RANGES = {"public-subnet": FRONTEND_PORT_RANGE, "private-subnet": BACKEND_RANGE}
NETWORK_MAC_TAG = {"public": 0x01, "private": 0x02, "mgmt": 0x03, "client": 0x04}


class AddressError(ValueError):
    """An address is outside its network, already taken, or the range is exhausted."""


@dataclass(frozen=True)
class PlanNetwork:
    key: str  # public | private | mgmt | client
    id: str
    name: str
    cidr: str
    bridge: str
    subnet_name: str | None
    gateway: str | None


def stable_id(prefix: str, kind: str, name: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"cohort-lab://{prefix}/{kind}/{name}"))


def plan_networks(prefix: str, mgmt_cidr: str) -> list[PlanNetwork]:
    def net(key: str, cidr: str, bridge: str, subnet: str | None, gw: str | None) -> PlanNetwork:
        return PlanNetwork(key, stable_id(prefix, "network", key), f"{key}-network", cidr, bridge, subnet, gw)

    return [
        net("public", PUBLIC_CIDR, "br-fe", "public-subnet", PUBLIC_GATEWAY),
        net("private", PRIVATE_CIDR, "br-be", "private-subnet", None),
        net("mgmt", mgmt_cidr, "br-mgmt", None, None),
        net("client", CLIENT_CIDR, "br-cl", None, CLIENT_GATEWAY),
    ]


def plan_subnets(prefix: str = DEFAULT_PREFIX) -> list[Subnet]:
    """The tenant-visible subnets; their ids depend only on the prefix."""
    return [
        Subnet(stable_id(prefix, "subnet", n.subnet_name), n.subnet_name, n.id, n.cidr, n.gateway, 4)
        for n in plan_networks(prefix, DEFAULT_MGMT_CIDR)
        if n.subnet_name
    ]


def network_key_of_subnet(subnet_name: str) -> str:
    return next(n.key for n in plan_networks(DEFAULT_PREFIX, DEFAULT_MGMT_CIDR) if n.subnet_name == subnet_name)


def host_ip(cidr: str, n: int) -> str:
    return str(ipaddress.ip_network(cidr)[n])


def check_address(cidr: str, address: str) -> str:
    """Normalise ``address``; AddressError unless it is a usable host address of ``cidr``."""
    net = ipaddress.ip_network(cidr)
    try:
        ip = ipaddress.ip_address(address)
    except ValueError as exc:
        raise AddressError(f"{address!r} is not an IP address") from exc
    if ip not in net or ip in (net.network_address, net.broadcast_address):
        raise AddressError(f"{address} is not a host address of {cidr}")
    return str(ip)


def pick_address(cidr: str, taken: set[str], first: int, last: int) -> str:
    net = ipaddress.ip_network(cidr)
    for n in range(first, min(last, net.num_addresses - 2) + 1):
        candidate = str(net[n])
        if candidate not in taken:
            return candidate
    raise AddressError(f"no free address left in {cidr} (.{first}-.{last})")


def address_mac(key: str, address: str) -> str:
    """The MAC of the port holding ``address`` on network ``key``: 02:<tag>:<the IPv4 bytes>.

    Tied to the address, not to the instance, so that a replacement that gets a released
    address back also gets its MAC, and the neighbour caches of the gateway, the members and
    the host stay right: no stale ARP entry delays a failover.
    """
    octets = ipaddress.IPv4Address(address).packed
    return ":".join(f"{b:02x}" for b in (0x02, NETWORK_MAC_TAG[key], *octets))
