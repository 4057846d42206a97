"""The agent's ``/1.0`` API, modelled on Octavia's amphora agent, mapped onto the managers.

Errors map to statuses here: bad input and configurations HAProxy or keepalived
refuse are 400 (with the tool's own message), unknown things 404, failing
commands 500.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

from cryptography import x509

from cohort import __version__
from cohort.agents.amphora import AGENT_VERSION, interfaces, stats
from cohort.agents.amphora.bgp import BgpManager
from cohort.agents.amphora.haproxy import HaproxyManager, check_id, haproxy_version
from cohort.agents.amphora.keepalived import KeepalivedManager
from cohort.agents.amphora.l4 import L4Manager
from cohort.agents.amphora.second_chance import SecondChance
from cohort.agents.common.files import atomic_write
from cohort.agents.common.http import HttpError, Request, Response, Route, Router
from cohort.agents.common.proc import CommandFailed

ACTIONS = ("start", "stop", "reload")
LB_ACTIONS = (*ACTIONS, "drain")
ERRORS = ((ValueError, 400), (LookupError, 404), (CommandFailed, 500))


def _field(body: dict[str, Any], name: str, required: bool = True) -> str | None:
    value = body.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise HttpError(400, f"field {name!r} must be a non-empty string")
    return value


def _port_spec(body: dict[str, Any]) -> interfaces.PortSpec:
    return interfaces.PortSpec(
        mac_address=str(_field(body, "mac_address")),
        address=str(_field(body, "address")),
        subnet_cidr=str(_field(body, "subnet_cidr")),
        gateway=_field(body, "gateway", required=False),
    )


def _ok(**extra: Any) -> Response:
    return Response(200, {"message": "OK", **extra})


class AmphoraApi:
    def __init__(
        self, amphora_id: str, state_dir: Path, haproxy: HaproxyManager, keepalived: KeepalivedManager,
        bgp: BgpManager | None = None, l4: L4Manager | None = None, second_chance: SecondChance | None = None,
    ) -> None:
        self.amphora_id = amphora_id
        self._vip_file = state_dir / "vip.json"
        self.haproxy = haproxy
        self.keepalived = keepalived
        self.bgp = bgp
        self.l4 = l4
        self.second_chance = second_chance
        self._haproxy_version = haproxy_version()
        # HAProxy outlives an agent; the metrics proxies of the instances it left running do not.
        haproxy.resume()

    def router(self) -> Router:
        routes: list[Route] = [
            ("GET", "/1.0/info", self.info),
            ("GET", "/1.0/details", self.details),
            ("POST", "/1.0/plug/vip/{vip}", self.plug_vip),
            ("POST", "/1.0/plug/network", self.plug_network),
            ("PUT", "/1.0/loadbalancer/{lb_id}/haproxy", self.put_haproxy),
            ("GET", "/1.0/loadbalancer/{lb_id}/haproxy", self.get_haproxy),
            ("GET", "/1.0/loadbalancer/{lb_id}/stats", self.lb_stats),
            ("PUT", "/1.0/loadbalancer/{lb_id}/certificates/{filename}", self.put_certificate),
            ("PUT", "/1.0/loadbalancer/{lb_id}/l4", self.put_l4),
            ("GET", "/1.0/loadbalancer/{lb_id}/l4", self.get_l4),
            ("PUT", "/1.0/loadbalancer/{lb_id}/{action}", self.lb_action),
            ("DELETE", "/1.0/loadbalancer/{lb_id}", self.delete_lb),
            ("PUT", "/1.0/vrrp/config", self.put_vrrp),
            ("GET", "/1.0/vrrp/config", self.get_vrrp),
            ("PUT", "/1.0/vrrp/{action}", self.vrrp_action),
            ("PUT", "/1.0/bgp/speaker", self.put_bgp_speaker),
            ("GET", "/1.0/bgp", self.get_bgp),
            ("PUT", "/1.0/bgp/vips/{vip}", self.put_bgp_vip),
            ("DELETE", "/1.0/bgp/vips/{vip}", self.delete_bgp_vip),
            ("GET", "/1.0/cluster", self.get_cluster),
            ("PUT", "/1.0/cluster/vips/{vip}", self.put_cluster_vip),
            ("DELETE", "/1.0/cluster/vips/{vip}", self.delete_cluster_vip),
        ]
        return Router(routes, ERRORS)

    def info(self, req: Request) -> Response:
        return Response(
            200,
            {
                "hostname": socket.gethostname(),
                "amphora_id": self.amphora_id,
                "api_version": AGENT_VERSION,
                "agent_version": __version__,
                "haproxy_version": self._haproxy_version,
                # What the controller renders configurations against (see haproxy_config).
                # As HAProxy sees them in its jail: these are the paths a configuration names.
                "haproxy_state_dir": self.haproxy.inner_dir,
                "cert_dir_template": self.haproxy.inner_certs_root + "/{lb_id}",
                "vip_interface": self._vip_record().get("interface"),
            },
        )

    def _vip_record(self) -> dict[str, Any]:
        try:
            data = json.loads(self._vip_file.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def details(self, req: Request) -> Response:
        lbs = {}
        all_listeners: dict[str, str] = {}
        for lb_id in self.haproxy.lb_ids():
            listeners, pools = stats.summarize(self.haproxy.show_stat(lb_id))
            statuses = {k: str(v["status"]) for k, v in listeners.items()}
            all_listeners.update(statuses)
            lbs[lb_id] = {
                "running": self.haproxy.running(lb_id),
                "listeners": statuses,
                "pools": {k: v["status"] for k, v in pools.items()},
            }
        body = self.info(req).body
        body.update(
            load=list(os.getloadavg()),
            interfaces=interfaces.list_interfaces(),
            listeners=all_listeners,
            loadbalancers=lbs,
            keepalived_running=self.keepalived.running(),
        )
        return Response(200, body)

    def plug_vip(self, req: Request) -> Response:
        body = req.json()
        mode = body.get("vip_mode", "interface")
        if not isinstance(mode, str):
            raise HttpError(400, "vip_mode must be a string")
        ifname = interfaces.plug_vip(_port_spec(body), req.params["vip"], mode)
        # Remembered for info: keepalived's configuration names the front-end interface.
        record = {"vip": req.params["vip"], "interface": ifname, "vip_mode": mode}
        atomic_write(self._vip_file, json.dumps(record))
        return _ok(interface=ifname)

    def plug_network(self, req: Request) -> Response:
        return _ok(interface=interfaces.plug_network(_port_spec(req.json())))

    def put_haproxy(self, req: Request) -> Response:
        lb_id = req.params["lb_id"]
        changed = self.haproxy.put_config(lb_id, req.text())
        return _ok(changed=changed, running=self.haproxy.running(lb_id))

    def get_haproxy(self, req: Request) -> Response:
        return Response(200, self.haproxy.get_config(req.params["lb_id"]))

    def lb_stats(self, req: Request) -> Response:
        lb_id = req.params["lb_id"]
        self.haproxy.get_config(lb_id)
        listeners, pools = stats.summarize(self.haproxy.show_stat(lb_id))
        l4_active = 0
        if self.l4 is not None:
            l4_listeners, l4_pools = self.l4.stats(lb_id)
            listeners.update(l4_listeners)
            pools.update(l4_pools)
            l4_active = sum(int(v.get("active_connections", 0)) for v in l4_listeners.values())
        # l4_active: UDP flows and SCTP associations the kernel still carries, which a drain waits for.
        return Response(200, {"running": self.haproxy.running(lb_id), "listeners": listeners, "pools": pools,
                              "l4_active": l4_active})

    def lb_action(self, req: Request) -> Response:
        lb_id, action = req.params["lb_id"], req.params["action"]
        if action not in LB_ACTIONS:
            raise HttpError(404, f"unknown action {action!r}")
        if action in ("stop", "drain") and self.bgp is not None:
            # Withdraw first: the fabric stops sending new flows before HAProxy stops taking them.
            self.bgp.withdraw_lb(lb_id)
        if action == "stop":
            self.haproxy.stop(lb_id)
        elif action == "drain":
            self.haproxy.drain(lb_id)
        else:
            # start and reload both need an installed configuration.
            self.haproxy.get_config(lb_id)
            self.haproxy.start(lb_id) if action == "start" else self.haproxy.reload(lb_id)
            if self.bgp is not None:
                self.bgp.wake()  # a new master to watch
        return _ok(running=self.haproxy.running(lb_id))

    def delete_lb(self, req: Request) -> Response:
        if self.bgp is not None:
            self.bgp.remove_lb(req.params["lb_id"])
        if self.second_chance is not None:
            self.second_chance.remove_lb(req.params["lb_id"])
        self.haproxy.delete(req.params["lb_id"])
        if self.l4 is not None:
            self.l4.delete(req.params["lb_id"])
        return _ok()

    def _l4(self) -> L4Manager:
        if self.l4 is None:
            raise HttpError(404, "this amphora serves no UDP or SCTP")
        return self.l4

    def put_l4(self, req: Request) -> Response:
        """The load balancer's UDP and SCTP listeners (``l4_spec``), applied to the kernel at once."""
        lb_id = check_id(req.params["lb_id"], "load balancer id")
        return _ok(changed=self._l4().put(lb_id, req.json()))

    def get_l4(self, req: Request) -> Response:
        return Response(200, self._l4().get(check_id(req.params["lb_id"], "load balancer id")))

    def _speaker(self) -> BgpManager:
        if self.bgp is None:
            raise HttpError(404, "this amphora has no BGP speaker")
        return self.bgp

    def put_bgp_speaker(self, req: Request) -> Response:
        changed = self._speaker().put_speaker(req.json())
        return _ok(changed=changed)

    def get_bgp(self, req: Request) -> Response:
        return Response(200, self._speaker().status())

    def put_bgp_vip(self, req: Request) -> Response:
        body = req.json()
        if not isinstance(body, dict):
            raise HttpError(400, "body must be an object")
        lb_id, announce, peers = body.get("lb_id"), body.get("announce"), body.get("peers", [])
        if not isinstance(lb_id, str) or not isinstance(announce, bool) or not isinstance(peers, list) \
                or not all(isinstance(p, str) for p in peers) or len(peers) > 64:
            raise HttpError(400, 'body must be {"lb_id": string, "announce": boolean, "peers": [address, ...]}')
        check_id(lb_id, "load balancer id")
        self._speaker().set_vip(req.params["vip"], lb_id, announce, peers)
        return _ok()

    def delete_bgp_vip(self, req: Request) -> Response:
        self._speaker().remove_vip(req.params["vip"])
        return _ok()

    def _second_chance(self) -> SecondChance:
        if self.second_chance is None:
            raise HttpError(404, "this amphora has no second chance")
        return self.second_chance

    def get_cluster(self, req: Request) -> Response:
        return Response(200, self._second_chance().status())

    def put_cluster_vip(self, req: Request) -> Response:
        """An L2 cluster's VIP and the other amphorae of the cluster (``second_chance``): invalid
        packets of the VIP from a distributor are copied to them; the copies leave by the VIP's port."""
        body = req.json()
        if not isinstance(body, dict) or set(body) != {"lb_id", "peers"}:
            raise HttpError(400, 'body must be {"lb_id": string, "peers": [{"address": ..., "mac_address": ...}]}')
        interface = self._vip_record().get("interface")
        if not isinstance(interface, str):
            raise HttpError(409, "the VIP is not plugged yet")
        changed = self._second_chance().set_switched(req.params["vip"], body["lb_id"], interface, body["peers"])
        return _ok(changed=changed)

    def delete_cluster_vip(self, req: Request) -> Response:
        self._second_chance().remove_switched(req.params["vip"])
        return _ok()

    def put_certificate(self, req: Request) -> Response:
        try:
            certs = x509.load_pem_x509_certificates(req.body)
        except ValueError as e:
            raise HttpError(400, f"not a PEM certificate bundle: {e}") from e
        if not certs:
            raise HttpError(400, "no certificate in the body")
        path, changed = self.haproxy.put_certificate(req.params["lb_id"], req.params["filename"], req.body)
        return _ok(path=str(path), changed=changed)

    def put_vrrp(self, req: Request) -> Response:
        changed = self.keepalived.put_config(req.text())
        return _ok(changed=changed, running=self.keepalived.running())

    def get_vrrp(self, req: Request) -> Response:
        return Response(200, self.keepalived.get_config())

    def vrrp_action(self, req: Request) -> Response:
        action = req.params["action"]
        if action not in ACTIONS:
            raise HttpError(404, f"unknown action {action!r}")
        getattr(self.keepalived, action)()
        return _ok(running=self.keepalived.running())
