"""The L2 distributor driver: the controller's HTTPS (mutual TLS) client of the distributor agent.

Transport failures, agent 5xx and 404 (a VIP not plugged yet, a hot-plugged interface that
has not appeared) are ``DriverError``, retried by the reconciler; input the agent refuses
(400) is ``PermanentDriverError`` carrying the agent's reason.
"""

from __future__ import annotations

from typing import Any

from cohort.drivers.agent_client import AgentClient
from cohort.drivers.distributor.base import ClusterMember, DistributorRef, DistributorVip
from cohort.pki import CertPaths


def vip_body(vip: DistributorVip) -> dict[str, Any]:
    vrrp = {} if vip.vrrp is None else {
        "vrrp": {"peer": vip.vrrp.peer, "vrid": vip.vrrp.vrid, "advert_int": vip.vrrp.advert_int}}
    return {
        **vrrp,
        "vip_address": vip.vip_address,
        "port": {
            "mac_address": vip.port.mac_address,
            "address": vip.port.address,
            "subnet_cidr": vip.port.subnet_cidr,
            "gateway": vip.port.gateway,
        },
        "affinity": vip.affinity,
        "health_port": vip.health_port,
    }


def members_body(members: list[ClusterMember]) -> dict[str, Any]:
    return {
        "amphorae": [
            {
                "amphora_id": m.amphora_id,
                "mac_address": m.mac_address,
                "frontend_ip": m.frontend_ip,
                "position": m.position,
                "weight": m.weight,
                "state": m.state,
            }
            for m in members
        ]
    }


class RestDistributorDriver:
    def __init__(
        self, client_cert: CertPaths, port: int = 9443, timeout: float = 30.0, connect_timeout: float = 5.0
    ) -> None:
        self._agent = AgentClient("distributor", client_cert, port, timeout, connect_timeout)

    @property
    def port(self) -> int:
        return self._agent.port

    def close(self) -> None:
        self._agent.close()

    # -- DistributorDriver ------------------------------------------------------------------------
    def wait_ready(self, distributor: DistributorRef, timeout: float) -> dict[str, Any]:
        return self._agent.wait_ready(
            distributor, timeout, lambda t: self._agent.request_json("GET", distributor, "/1.0/info", timeout=t)
        )

    def answers(self, distributor: DistributorRef, timeout: float) -> bool:
        return self._agent.answers(distributor, timeout)

    def add_vip(self, distributor: DistributorRef, vip: DistributorVip) -> None:
        self._agent.request_json("POST", distributor, f"/1.0/vips/{vip.lb_id}", json=vip_body(vip))

    def remove_vip(self, distributor: DistributorRef, lb_id: str) -> None:
        self._agent.request_json("DELETE", distributor, f"/1.0/vips/{lb_id}")

    def set_amphorae(self, distributor: DistributorRef, lb_id: str, members: list[ClusterMember]) -> None:
        self._agent.request_json("PUT", distributor, f"/1.0/vips/{lb_id}/amphorae", json=members_body(members))

    def status(self, distributor: DistributorRef, timeout: float | None = None,
               count_flows: bool = True) -> dict[str, Any]:
        path = "/1.0/status" if count_flows else "/1.0/health"
        return self._agent.request_json("GET", distributor, path, timeout=timeout)
