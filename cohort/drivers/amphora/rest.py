"""The real amphora driver: the controller's HTTPS (mutual TLS) client of the amphora agent.

Renders configurations with ``haproxy_config``/``keepalived_config`` against the
paths the agent reports in ``/1.0/info`` and pushes them through the agent's
``/1.0`` API. Transport failures and agent 5xx are ``DriverError`` (retried);
a configuration the agent (HAProxy, keepalived) or the renderer refuses is
``PermanentDriverError`` carrying the reason.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from cohort.datamodel import Amphora, BgpSpeaker, LoadBalancer
from cohort.drivers.agent_client import AgentClient
from cohort.drivers.amphora.haproxy_config import cert_filename, render_haproxy
from cohort.drivers.amphora.keepalived_config import render_keepalived
from cohort.drivers.amphora.l4_config import render_l4
from cohort.drivers.errors import DriverError, PermanentDriverError
from cohort.drivers.network.base import PluggedPort
from cohort.pki import CertPaths

VRRP_ROLES = ("MASTER", "BACKUP")


class RestAmphoraDriver:
    def __init__(
        self, client_cert: CertPaths, port: int = 9443, timeout: float = 60.0, connect_timeout: float = 5.0
    ) -> None:
        # Reloads and config checks run HAProxy inside the agent: allow for them, but not for a dead peer.
        self._agent = AgentClient("amphora", client_cert, port, timeout, connect_timeout)

    @property
    def port(self) -> int:
        return self._agent.port

    def close(self) -> None:
        self._agent.close()

    # -- transport ------------------------------------------------------------------------------
    def _info(self, amphora: Amphora, timeout: float | None = None) -> dict[str, Any]:
        body = self._agent.request("GET", amphora, "/1.0/info", timeout=timeout).json()
        if not isinstance(body, dict):
            raise DriverError(f"amphora {amphora.id}: unexpected info {body!r}")
        return body

    # -- AmphoraDriver --------------------------------------------------------------------------
    def wait_ready(self, amphora: Amphora, timeout: float) -> dict[str, Any]:
        return self._agent.wait_ready(amphora, timeout, lambda t: self._info(amphora, timeout=t))

    def answers(self, amphora: Amphora, timeout: float) -> bool:
        return self._agent.answers(amphora, timeout)

    def post_vip_plug(self, amphora: Amphora, port: PluggedPort, vip: str, vip_mode: str) -> None:
        body = {
            "mac_address": port.mac_address,
            "address": port.address,
            "subnet_cidr": port.subnet_cidr,
            "gateway": port.gateway,
            "vip_mode": vip_mode,
        }
        # A 404 (the hot-plugged interface has not appeared yet) stays retryable.
        self._agent.request("POST", amphora, f"/1.0/plug/vip/{vip}", json=body)

    def post_network_plug(self, amphora: Amphora, port: PluggedPort) -> None:
        body = {"mac_address": port.mac_address, "address": port.address, "subnet_cidr": port.subnet_cidr}
        self._agent.request("POST", amphora, "/1.0/plug/network", json=body)

    def update(
        self,
        amphora: Amphora,
        lb: LoadBalancer,
        peers: Sequence[Amphora],
        certificates: Mapping[str, bytes],
    ) -> None:
        info = self._info(amphora)
        state_dir, cert_dir = self._layout(amphora, info, lb.id)
        base = f"/1.0/loadbalancer/{lb.id}"
        changed = False
        for ref, pem in sorted(certificates.items()):
            r = self._agent.request("PUT", amphora, f"{base}/certificates/{cert_filename(ref)}", content=pem)
            changed |= bool(r.json().get("changed", True))
        try:
            config = render_haproxy(lb, amphora, cert_dir, state_dir=state_dir, cluster=peers)
            l4 = render_l4(lb)
        except ValueError as e:
            raise PermanentDriverError(f"load balancer {lb.id}: {e}") from e
        r = self._agent.request("PUT", amphora, f"{base}/haproxy", content=config)
        result = r.json()
        changed |= bool(result.get("changed", True))
        if not result.get("running"):
            self._agent.request("PUT", amphora, f"{base}/start")
        elif changed:
            self._agent.request("PUT", amphora, f"{base}/reload")
        # UDP and SCTP listeners: the agent programs the kernel (an empty spec removes them).
        self._update_l4(amphora, base, l4)
        if lb.topology.name == "ACTIVE_STANDBY" and amphora.role in VRRP_ROLES:
            self._update_vrrp(amphora, lb, peers, info, state_dir)

    def _update_l4(self, amphora: Amphora, base: str, spec: dict[str, Any] | None) -> None:
        body = spec if spec is not None else {"listeners": []}
        r = self._agent.request("PUT", amphora, f"{base}/l4", json=body, allow=(400, 404))
        if r.status_code == 404 and spec is not None:
            raise PermanentDriverError(f"amphora {amphora.id}: its agent serves no UDP or SCTP")
        if r.status_code == 400:
            raise PermanentDriverError(f"amphora {amphora.id} refused the UDP/SCTP configuration: {r.text}")

    def _layout(self, amphora: Amphora, info: dict[str, Any], lb_id: str) -> tuple[str, str]:
        state_dir, template = info.get("haproxy_state_dir"), info.get("cert_dir_template")
        if not isinstance(state_dir, str) or not isinstance(template, str):
            raise PermanentDriverError(f"amphora {amphora.id}: agent does not report its directories")
        return state_dir, template.replace("{lb_id}", lb_id)

    def _update_vrrp(
        self, amphora: Amphora, lb: LoadBalancer, peers: Sequence[Amphora], info: dict[str, Any], state_dir: str
    ) -> None:
        interface = info.get("vip_interface") or "fe0"
        try:
            config = render_keepalived(lb, amphora, peers, interface=str(interface), state_dir=state_dir)
        except ValueError as e:
            raise PermanentDriverError(f"load balancer {lb.id} on amphora {amphora.id}: {e}") from e
        result = self._agent.request("PUT", amphora, "/1.0/vrrp/config", content=config).json()
        if not result.get("running"):
            self._agent.request("PUT", amphora, "/1.0/vrrp/start")
        elif result.get("changed", True):
            self._agent.request("PUT", amphora, "/1.0/vrrp/reload")

    def drain(self, amphora: Amphora, lb_id: str) -> None:
        self._agent.request("PUT", amphora, f"/1.0/loadbalancer/{lb_id}/drain", allow=(404,))

    def drained(self, amphora: Amphora, lb_id: str) -> bool:
        r = self._agent.request("GET", amphora, f"/1.0/loadbalancer/{lb_id}/stats", allow=(404,))
        if r.status_code == 404:
            return True
        body = r.json()
        # HAProxy has closed its connections, and the kernel's UDP flows and SCTP associations are gone.
        return not body.get("running", False) and not body.get("l4_active", 0)

    def remove_lb(self, amphora: Amphora, lb_id: str) -> None:
        self._agent.request("DELETE", amphora, f"/1.0/loadbalancer/{lb_id}", allow=(404,))
        if amphora.role in VRRP_ROLES:
            self._agent.request("PUT", amphora, "/1.0/vrrp/stop")

    def configure_bgp(self, amphora: Amphora, speaker: BgpSpeaker) -> None:
        if not amphora.vrrp_ip:
            raise DriverError(f"amphora {amphora.id} has no front-end address for its BGP sessions yet")
        body = {
            "local_as": speaker.local_as, "router_id": amphora.vrrp_ip, "local_address": amphora.vrrp_ip,
            "interface": "fe0",
            "peers": [{"peer_ip": p.peer_ip, "remote_as": p.remote_as, "password": p.password,
                       "ttl_hops": p.ttl_hops, "hold_time": p.hold_time, "keepalive_interval": p.keepalive_interval,
                       "bfd": None if p.bfd is None else dict(zip(("min_rx", "min_tx", "multiplier"), p.bfd,
                                                                 strict=True))}
                      for p in speaker.peers],
        }
        r = self._agent.request("PUT", amphora, "/1.0/bgp/speaker", json=body, allow=(400,))
        if r.status_code == 400:
            raise PermanentDriverError(f"amphora {amphora.id} refused the BGP speaker: {r.text}")

    def announce(self, amphora: Amphora, vip: str, lb_id: str, announce: bool, peers: Sequence[str] = ()) -> None:
        self._agent.request("PUT", amphora, f"/1.0/bgp/vips/{vip}",
                            json={"lb_id": lb_id, "announce": announce, "peers": list(peers)})

    def set_cluster_peers(self, amphora: Amphora, vip: str, lb_id: str, peers: Sequence[Amphora]) -> None:
        missing = [p.id for p in peers if not p.vrrp_ip or not p.frontend_mac]
        if missing:
            # A peer whose copies could not be told from a distributor's would have them copied again.
            raise DriverError(f"amphorae {', '.join(missing)} have no front-end address or MAC yet")
        body = {"lb_id": lb_id, "peers": [{"address": p.vrrp_ip, "mac_address": p.frontend_mac} for p in peers]}
        r = self._agent.request("PUT", amphora, f"/1.0/cluster/vips/{vip}", json=body, allow=(400,))
        if r.status_code == 400:
            raise PermanentDriverError(f"amphora {amphora.id} refused its cluster peers: {r.text}")

    def bgp_status(self, amphora: Amphora) -> dict[str, Any]:
        r = self._agent.request("GET", amphora, "/1.0/bgp", allow=(404,))
        return {} if r.status_code == 404 else dict(r.json())

    def get_config(self, amphora: Amphora, lb_id: str) -> str:
        """The installed HAProxy configuration, or "" when the amphora has none for ``lb_id``."""
        r = self._agent.request("GET", amphora, f"/1.0/loadbalancer/{lb_id}/haproxy", allow=(404,))
        return "" if r.status_code == 404 else r.text
