"""The amphora seam: configure and query the load-balancing engine inside an amphora."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from cohort.datamodel import Amphora, BgpSpeaker, LoadBalancer
from cohort.drivers.network.base import PluggedPort


class AmphoraDriver(Protocol):
    def wait_ready(self, amphora: Amphora, timeout: float) -> dict[str, Any]:
        """Wait until the agent answers; return its info (version, haproxy version...)."""
        ...

    def answers(self, amphora: Amphora, timeout: float) -> bool:
        """Whether the agent answers over management within ``timeout``: alive, whatever its heartbeats say."""
        ...

    def post_vip_plug(self, amphora: Amphora, port: PluggedPort, vip: str, vip_mode: str) -> None:
        """Configure the front-end port and the VIP inside the amphora.

        ``vip_mode``: ``interface`` (SINGLE: VIP on the port, answers ARP), ``keepalived``
        (ACTIVE_STANDBY: keepalived owns the VIP) or ``loopback`` (ACTIVE_ACTIVE: VIP on lo,
        never answers ARP).
        """
        ...

    def post_network_plug(self, amphora: Amphora, port: PluggedPort) -> None:
        """Configure a member-network port inside the amphora."""
        ...

    def update(
        self,
        amphora: Amphora,
        lb: LoadBalancer,
        peers: Sequence[Amphora],
        certificates: Mapping[str, bytes],
    ) -> None:
        """Render and push the load balancer's configuration, then reload without dropping connections.

        ``peers`` are all amphorae of the load balancer (VRRP peers for ACTIVE_STANDBY).
        ``certificates`` maps container refs used by ``lb`` to PEM bundles.
        A configuration the engine rejects raises PermanentDriverError and leaves the running one.
        """
        ...

    def drain(self, amphora: Amphora, lb_id: str) -> None:
        """Stop taking connections and let the open ones finish (graceful close of idle keep-alives)."""
        ...

    def drained(self, amphora: Amphora, lb_id: str) -> bool:
        """True once the load balancer's engine on this amphora has no connection left."""
        ...

    def remove_lb(self, amphora: Amphora, lb_id: str) -> None:
        """Stop serving the load balancer and delete its configuration; idempotent."""
        ...

    def get_config(self, amphora: Amphora, lb_id: str) -> str:
        ...

    def configure_bgp(self, amphora: Amphora, speaker: BgpSpeaker) -> None:
        """Run the amphora's BGP speaker with ``speaker``'s sessions (idempotent; unchanged sessions stay)."""
        ...

    def announce(self, amphora: Amphora, vip: str, lb_id: str, announce: bool, peers: Sequence[str] = ()) -> None:
        """Announce ``vip`` (while the load balancer's HAProxy serves it) or withdraw it.

        ``peers``: the front-end addresses of the cluster's other amphorae, which get the packets
        of flows this one does not own (the router moved them when the cluster changed).
        """
        ...

    def set_cluster_peers(self, amphora: Amphora, vip: str, lb_id: str, peers: Sequence[Amphora]) -> None:
        """Tell an amphora of an L2 cluster the cluster's other amphorae (their front-end address and
        MAC): it copies them the packets of flows it does not own (a distributor that took the VIPs
        over sends some pinned flows elsewhere), and never copies again what comes from them."""
        ...

    def bgp_status(self, amphora: Amphora) -> dict[str, Any]:
        """``{"sessions": {peer: state}, "announced": [vip, ...], ...}`` as the speaker reports them."""
        ...
