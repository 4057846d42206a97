"""The distributor seam: spread a VIP's flows over the amphorae of its cluster, with flow affinity.

Calls are level-triggered where they can be: ``set_amphorae`` states the whole membership of a
VIP (with positions, weights and DRAINING marks), so a retried or replayed call is harmless.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from cohort.datamodel import CLUSTER_HEALTH_PORT
from cohort.distributor.vrrp import DEFAULT_ADVERT_INT, DEFAULT_VRID
from cohort.drivers.network.base import PluggedPort


@dataclass(frozen=True)
class DistributorRef:
    id: str
    lb_network_ip: str  # where its agent listens


@dataclass(frozen=True)
class ClusterMember:
    """One amphora as the distributor sees it: where to forward, and its place in the table."""

    amphora_id: str
    mac_address: str
    frontend_ip: str
    position: int
    weight: int = 1
    state: str = "ACTIVE"  # ACTIVE: gets new flows | DRAINING: keeps its open flows only


@dataclass(frozen=True)
class VrrpPeer:
    """The pair's VRRP on the VIP's port: the other member's address on that network (None: alone)."""

    peer: str | None
    vrid: int = DEFAULT_VRID
    advert_int: float = DEFAULT_ADVERT_INT


@dataclass(frozen=True)
class DistributorVip:
    lb_id: str
    vip_address: str
    port: PluggedPort  # the distributor's own interface on this load balancer's front-end network
    affinity: str = "SOURCE_IP"  # SOURCE_IP | SOURCE_IP_PORT
    health_port: int = CLUSTER_HEALTH_PORT  # amphora front-end port the distributor probes
    vrrp: VrrpPeer | None = None  # None: the agent keeps what the port has


class DistributorDriver(Protocol):
    def wait_ready(self, distributor: DistributorRef, timeout: float) -> dict[str, Any]:
        ...

    def answers(self, distributor: DistributorRef, timeout: float) -> bool:
        """Whether the agent answers over management within ``timeout``: alive, whatever its heartbeats say."""
        ...

    def add_vip(self, distributor: DistributorRef, vip: DistributorVip) -> None:
        """Plug the VIP on ``vip.port`` (held there while this member is the pair's VRRP MASTER) and
        prepare its (empty) table. Idempotent."""
        ...

    def remove_vip(self, distributor: DistributorRef, lb_id: str) -> None:
        ...

    def set_amphorae(self, distributor: DistributorRef, lb_id: str, members: list[ClusterMember]) -> None:
        """Make ``members`` the VIP's whole membership; absent amphorae are unregistered."""
        ...

    def status(self, distributor: DistributorRef, timeout: float | None = None,
               count_flows: bool = True) -> dict[str, Any]:
        """Per VIP: members with probe health, open flows and counters; ``vrrp``: the member's role.
        ``timeout``: seconds for the whole call (None: the driver's own). ``count_flows=False``:
        the flow counts of the last count, for callers that ask often (counting lists every pin)."""
        ...
