"""The L2 distributor driver: the controller's HTTPS (mutual TLS) client of the distributor agent.

Transport failures, agent 5xx and 404 (a VIP not plugged yet, a hot-plugged interface that
has not appeared) are ``DriverError``, retried by the reconciler; input the agent refuses
(400) is ``PermanentDriverError`` carrying the agent's reason.
"""

from __future__ import annotations

import time
from typing import Any

import httpx

from cohort.drivers.distributor.base import ClusterMember, DistributorRef, DistributorVip
from cohort.drivers.errors import DriverError, PermanentDriverError
from cohort.pki import CertPaths, client_ssl_context


def _reason(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip() or response.reason_phrase
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return str(body["error"])
    return response.text.strip()


def vip_body(vip: DistributorVip) -> dict[str, Any]:
    return {
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
        self.port = port
        self._client = httpx.Client(
            verify=client_ssl_context(client_cert),
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
        )

    def close(self) -> None:
        self._client.close()

    def _url(self, distributor: DistributorRef, path: str) -> str:
        host = distributor.lb_network_ip
        if not host:
            raise DriverError(f"distributor {distributor.id} has no management address yet")
        if ":" in host:
            host = f"[{host}]"
        return f"https://{host}:{self.port}{path}"

    def _request(
        self,
        method: str,
        distributor: DistributorRef,
        path: str,
        *,
        json: Any = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        kwargs: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
        try:
            response = self._client.request(method, self._url(distributor, path), json=json, **kwargs)
        except httpx.TransportError as e:
            raise DriverError(f"distributor {distributor.id}: {method} {path}: {type(e).__name__}: {e}") from e
        if not response.is_success:
            reason = f"distributor {distributor.id}: {method} {path}: {response.status_code} {_reason(response)}"
            if response.status_code in (400, 405, 413, 422):
                raise PermanentDriverError(reason)
            raise DriverError(reason)
        try:
            body = response.json()
        except ValueError as e:
            raise DriverError(f"distributor {distributor.id}: {method} {path}: not JSON") from e
        if not isinstance(body, dict):
            raise DriverError(f"distributor {distributor.id}: {method} {path}: unexpected {body!r}")
        return body

    # -- DistributorDriver ------------------------------------------------------------------------
    def wait_ready(self, distributor: DistributorRef, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                return self._request("GET", distributor, "/1.0/info", timeout=max(0.5, min(5.0, remaining)))
            except PermanentDriverError:
                raise
            except DriverError as e:
                if time.monotonic() + 0.5 > deadline:
                    raise DriverError(f"distributor {distributor.id} not ready after {timeout:.0f}s: {e}") from e
            time.sleep(0.5)

    def add_vip(self, distributor: DistributorRef, vip: DistributorVip) -> None:
        self._request("POST", distributor, f"/1.0/vips/{vip.lb_id}", json=vip_body(vip))

    def remove_vip(self, distributor: DistributorRef, lb_id: str) -> None:
        self._request("DELETE", distributor, f"/1.0/vips/{lb_id}")

    def set_amphorae(self, distributor: DistributorRef, lb_id: str, members: list[ClusterMember]) -> None:
        self._request("PUT", distributor, f"/1.0/vips/{lb_id}/amphorae", json=members_body(members))

    def status(self, distributor: DistributorRef) -> dict[str, Any]:
        return self._request("GET", distributor, "/1.0/status")
