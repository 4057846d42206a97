"""The one thing the API asks of the network: a read-only catalogue of subnets.

Subnet names and ids in requests (``vip_subnet_id``, a member's ``subnet_id``) and the Neutron
look-ups of the ``openstack`` CLI are answered from it. Any network driver satisfies it; the
API processes are given one without a CA, keys or any write access to the network.
"""

from __future__ import annotations

from typing import Protocol

from cohort.datamodel import Subnet


class SubnetCatalog(Protocol):
    def get_subnet(self, name_or_id: str) -> Subnet | None:
        """A subnet by id or by name; None when there is none."""
        ...

    def list_subnets(self) -> list[Subnet]:
        ...

    def subnets_on_network(self, network_id: str) -> list[Subnet]:
        """The subnets of one network (empty when the network is unknown)."""
        ...
