"""The network seam: subnets, VIP addresses and hot-plugging ports into amphorae.

As with Neutron and Nova in Octavia, this seam only *attaches* ports (the
"NIC" appears inside the amphora); the amphora agent then configures the
addresses, the VIP and the routes through its own API (``post_vip_plug``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from cohort.datamodel import Subnet

__all__ = ["NetworkDriver", "PluggedPort", "Subnet", "VipPort"]


@dataclass(frozen=True)
class VipPort:
    port_id: str
    address: str
    subnet_id: str
    network_id: str


@dataclass(frozen=True)
class PluggedPort:
    """A port attached to an amphora: the agent finds it by MAC and configures it."""

    port_id: str
    mac_address: str
    address: str  # the amphora's own address on that subnet
    subnet_id: str
    subnet_cidr: str
    gateway: str | None


class NetworkDriver(Protocol):
    def get_subnet(self, name_or_id: str) -> Subnet | None:
        """Find a subnet by id or by name; None when there is none."""
        ...

    def list_subnets(self) -> list[Subnet]:
        ...

    def subnets_on_network(self, network_id: str) -> list[Subnet]:
        """The subnets of one network (empty when the network is unknown)."""
        ...

    def allocate_vip(self, lb_id: str, subnet_id: str, address: str | None) -> VipPort:
        """Reserve the VIP (the given address, or a free one). Idempotent per ``lb_id``.

        Raises PermanentDriverError when the address is outside the subnet or taken.
        """
        ...

    def deallocate_vip(self, lb_id: str) -> None:
        ...

    def plug_port(self, compute_id: str, subnet_id: str, project_id: str) -> PluggedPort:
        """Attach a port on ``subnet_id`` to the amphora (idempotent per compute_id and subnet)."""
        ...

    def unplug_all(self, compute_id: str) -> None:
        """Release every port the amphora holds; idempotent."""
        ...
