"""The ``lab`` network driver: the local lab's subnets, VIP reservations and hot-plugged ports.

A thin adapter over :class:`cohort.lab.ports.LabPorts` (veth ports, VIP reservations, tenant
isolation in the lab's switch): it maps the lab's records onto the network seam's types and
the lab's errors onto the driver's (``LabNotReady`` is retryable, other ``LabError`` permanent).
"""

from __future__ import annotations

from cohort.drivers.errors import DriverError, PermanentDriverError
from cohort.drivers.network.base import PluggedPort, Subnet, VipPort
from cohort.lab import Lab, LabError, LabNotReady, LabPort


def _plugged(port: LabPort) -> PluggedPort:
    subnet = port.subnet
    return PluggedPort(port.port_id, port.mac_address, port.address, subnet.id, subnet.cidr, subnet.gateway_ip)


class LabNetworkDriver:
    def __init__(self, lab: Lab) -> None:
        self.lab = lab

    def get_subnet(self, name_or_id: str) -> Subnet | None:
        return self.lab.subnet(name_or_id)

    def list_subnets(self) -> list[Subnet]:
        return self.lab.subnets()

    def subnets_on_network(self, network_id: str) -> list[Subnet]:
        return [subnet for subnet in self.lab.subnets() if subnet.network_id == network_id]

    def allocate_vip(self, lb_id: str, subnet_id: str, address: str | None) -> VipPort:
        try:
            vip = self.lab.ports.reserve_vip(lb_id, subnet_id, address)
        except LabError as exc:
            raise PermanentDriverError(str(exc)) from exc
        return VipPort(vip.port_id, vip.address, vip.subnet.id, vip.subnet.network_id)

    def deallocate_vip(self, lb_id: str) -> None:
        self.lab.ports.release_vip(lb_id)

    def plug_port(self, compute_id: str, subnet_id: str, project_id: str) -> PluggedPort:
        try:
            return _plugged(self.lab.ports.plug(compute_id, subnet_id, project_id))
        except LabNotReady as exc:
            raise DriverError(str(exc)) from exc
        except LabError as exc:
            raise PermanentDriverError(str(exc)) from exc

    def unplug_all(self, compute_id: str) -> None:
        self.lab.ports.unplug_all(compute_id)

    def ports_of(self, compute_id: str) -> list[PluggedPort]:
        """The ports recorded for an instance (a helper for tests and the CLI)."""
        return [_plugged(port) for port in self.lab.ports.ports_of(compute_id)]
