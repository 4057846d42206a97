"""In-memory network for unit tests: the address plan's subnets (``cohort.netplan``), no kernel objects.

It has the default-prefix lab's ``public-subnet`` (203.0.113.0/24, gateway .1) and
``private-subnet`` (192.0.2.0/24) with the same ids, hands out VIPs from .100 up and
instance ports from the same ranges as the local driver, with the same stable port ids and
MACs (derived from the address), so the API and the controller behave the same with either
driver. Project isolation has nothing to enforce here; each port's project is recorded.

Like Octavia's noop network driver, which API test suites run against, it also takes any subnet
or network UUID it has never heard of: such a subnet is a stand-in (``any_address``) on which a
VIP address of either family is taken as given, and addresses it picks itself come from
198.51.100.0/24. Names other than the plan's are still unknown.
"""

from __future__ import annotations

import ipaddress
import threading
import uuid
from dataclasses import dataclass

from cohort.drivers.errors import DriverError, PermanentDriverError
from cohort.drivers.network.base import PluggedPort, Subnet, VipPort
from cohort.netplan import (
    DEFAULT_PREFIX,
    PORT_RANGES,
    VIP_FIRST,
    AddressError,
    address_mac,
    check_address,
    network_key_of_subnet,
    pick_address,
    plan_subnets,
    stable_id,
)

STAND_IN_CIDR = "198.51.100.0/24"
STAND_IN_PORT_RANGE = (2, 99)


def _is_uuid(text: str) -> bool:
    try:
        return str(uuid.UUID(text)) == text.lower()
    except ValueError:
        return False


@dataclass(frozen=True)
class _Port:
    compute_id: str
    project_id: str
    port: PluggedPort


class NoopNetworkDriver:
    def __init__(self, prefix: str = DEFAULT_PREFIX) -> None:
        self.prefix = prefix
        self.subnets = plan_subnets(prefix)
        self.vips: dict[str, VipPort] = {}  # by lb_id
        self.ports: dict[str, _Port] = {}  # by port_id
        self._lock = threading.Lock()

    def get_subnet(self, name_or_id: str) -> Subnet | None:
        found = next((s for s in self.subnets if name_or_id in (s.id, s.name)), None)
        if found is None and _is_uuid(name_or_id):
            network_id = stable_id(self.prefix, "network", f"subnet:{name_or_id}")
            return Subnet(name_or_id, "", network_id, STAND_IN_CIDR, None, 4, any_address=True)
        return found

    def list_subnets(self) -> list[Subnet]:
        return list(self.subnets)

    def subnets_on_network(self, network_id: str) -> list[Subnet]:
        found = [s for s in self.subnets if s.network_id == network_id]
        if not found and _is_uuid(network_id):
            subnet_id = stable_id(self.prefix, "subnet", f"network:{network_id}")
            return [Subnet(subnet_id, "", network_id, STAND_IN_CIDR, None, 4, any_address=True)]
        return found

    def _subnet(self, subnet_id: str) -> Subnet:
        subnet = self.get_subnet(subnet_id)
        if subnet is None:
            raise PermanentDriverError(f"subnet {subnet_id} not found")
        return subnet

    def _taken(self, subnet: Subnet) -> set[str]:
        taken = {v.address for v in self.vips.values() if v.subnet_id == subnet.id}
        taken |= {p.port.address for p in self.ports.values() if p.port.subnet_id == subnet.id}
        return taken | ({subnet.gateway_ip} if subnet.gateway_ip else set())

    def allocate_vip(self, lb_id: str, subnet_id: str, address: str | None) -> VipPort:
        subnet = self._subnet(subnet_id)
        with self._lock:
            existing = self.vips.get(lb_id)
            if existing is not None:
                if existing.subnet_id != subnet.id or address not in (None, existing.address):
                    raise PermanentDriverError(f"load balancer {lb_id} already has VIP {existing.address}")
                return existing
            try:
                if address is None:
                    vip = pick_address(subnet.cidr, self._taken(subnet), VIP_FIRST, 254)
                elif subnet.any_address:
                    vip = str(ipaddress.ip_address(address))
                else:
                    vip = check_address(subnet.cidr, address)
                    if vip in self._taken(subnet):
                        raise AddressError(f"{vip} is already in use")
            except (AddressError, ValueError) as exc:
                raise PermanentDriverError(f"VIP address: {exc}") from exc
            port = VipPort(stable_id(self.prefix, "vip", lb_id), vip, subnet.id, subnet.network_id)
            self.vips[lb_id] = port
            return port

    def deallocate_vip(self, lb_id: str) -> None:
        with self._lock:
            self.vips.pop(lb_id, None)

    def plug_port(self, compute_id: str, subnet_id: str, project_id: str) -> PluggedPort:
        subnet = self._subnet(subnet_id)
        port_id = stable_id(self.prefix, "port", f"{compute_id}/{subnet.id}")
        with self._lock:
            existing = self.ports.get(port_id)
            if existing is not None:
                if existing.project_id != project_id:
                    raise PermanentDriverError(f"port {port_id} belongs to project {existing.project_id!r}")
                return existing.port
            first, last = PORT_RANGES.get(subnet.name, STAND_IN_PORT_RANGE)
            try:
                address = pick_address(subnet.cidr, self._taken(subnet), first, last)
            except AddressError as exc:
                raise DriverError(str(exc)) from exc
            if subnet.any_address:
                mac = ":".join(f"{b:02x}" for b in (0x02, 0x00, *ipaddress.IPv4Address(address).packed))
            else:
                mac = address_mac(network_key_of_subnet(subnet.name), address)
            port = PluggedPort(port_id, mac, address, subnet.id, subnet.cidr, subnet.gateway_ip)
            self.ports[port_id] = _Port(compute_id, project_id, port)
            return port

    def unplug_all(self, compute_id: str) -> None:
        with self._lock:
            for port_id in [pid for pid, p in self.ports.items() if p.compute_id == compute_id]:
                del self.ports[port_id]

    def ports_of(self, compute_id: str) -> list[PluggedPort]:
        with self._lock:
            return [p.port for p in self.ports.values() if p.compute_id == compute_id]
