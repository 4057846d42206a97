"""The distributor agent's ``/1.0`` API: request validation mapped onto ``DistributorService``.

Routes: ``GET /1.0/info``, ``POST``/``DELETE /1.0/vips/{lb_id}`` (a VIP, with the pair's VRRP
settings on its port), ``PUT /1.0/vips/{lb_id}/amphorae`` (the whole membership), ``GET
/1.0/status`` (with the member's VRRP role, every pinned flow counted afresh) and ``GET
/1.0/health`` (the same, with the flow counts of the last status, as heartbeats carry them: for
observers that ask often, since counting lists every pin). Bad input is
400, an unknown VIP or a port whose interface has not appeared yet 404 (the controller
retries), a failing kernel command 500.
"""

from __future__ import annotations

import ipaddress
import math
import socket
from typing import Any

from cohort import __version__
from cohort.agents.common.http import Request, Response, Route, Router
from cohort.agents.common.net import normalize_mac
from cohort.agents.common.proc import CommandFailed
from cohort.agents.distributor import AGENT_VERSION
from cohort.agents.distributor.service import DistributorService, MemberSpec, VipSpec
from cohort.agents.distributor.state import VrrpSettings
from cohort.distributor import vrrp
from cohort.distributor.nft import AFFINITIES
from cohort.distributor.probes import ProbeSettings

MEMBER_STATES = ("ACTIVE", "DRAINING")
MAX_MEMBERS = 512
ERRORS = (((ValueError, TypeError), 400), (LookupError, 404), (CommandFailed, 500))


def _str(body: dict[str, Any], name: str, default: str | None = None) -> str:
    value = body.get(name, default)
    if not isinstance(value, str) or not value:
        raise ValueError(f"field {name!r} must be a non-empty string")
    return value


def _int(body: dict[str, Any], name: str, default: int, lo: int, hi: int) -> int:
    value = body.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise ValueError(f"field {name!r} must be an integer in {lo}..{hi}")
    return value


def _ipv4(value: str, what: str) -> str:
    addr = ipaddress.ip_address(value)
    if addr.version != 4:
        raise ValueError(f"{what} {value}: the L2 distributor serves IPv4 VIPs only")
    return str(addr)


def parse_probe(raw: Any) -> ProbeSettings:
    if raw is None:
        return ProbeSettings()
    if not isinstance(raw, dict):
        raise ValueError("probe must be an object")
    defaults = ProbeSettings()
    values = {}
    for name in ("interval", "timeout"):
        v = raw.get(name, getattr(defaults, name))
        if not isinstance(v, int | float) or isinstance(v, bool):
            raise ValueError(f"probe {name} must be a number")
        values[name] = float(v)
    return ProbeSettings(
        interval=values["interval"],
        timeout=values["timeout"],
        fall=_int(raw, "fall", defaults.fall, 1, 10),
        rise=_int(raw, "rise", defaults.rise, 1, 10),
    ).validate()


def parse_vrrp(raw: Any, net: ipaddress.IPv4Network | ipaddress.IPv6Network, own: str) -> VrrpSettings | None:
    """``{"peer": the other member's address on this port's network (null: alone), "vrid", "advert_int"}``."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ValueError("vrrp must be an object")
    peer = raw.get("peer")
    if peer is not None:
        peer = _ipv4(_str(raw, "peer"), "VRRP peer")
        if ipaddress.ip_address(peer) not in net or peer == own:
            raise ValueError(f"VRRP peer {peer} must be another address in {net}")
    return VrrpSettings(peer=peer, vrid=vrrp.vrid(raw.get("vrid", vrrp.DEFAULT_VRID)),
                        advert_int=vrrp.advert_int(raw.get("advert_int", vrrp.DEFAULT_ADVERT_INT)))


def parse_vip(lb_id: str, body: dict[str, Any]) -> VipSpec:
    port = body.get("port")
    if not isinstance(port, dict):
        raise ValueError("field 'port' must be an object with mac_address, address, subnet_cidr, gateway")
    net = ipaddress.ip_network(_str(port, "subnet_cidr"), strict=False)
    if net.version != 4:
        raise ValueError("the L2 distributor serves IPv4 subnets only")
    address = _ipv4(_str(port, "address"), "port address")
    vip = _ipv4(_str(body, "vip_address"), "VIP")
    gateway = port.get("gateway")
    for what, value in (("port address", address), ("VIP", vip), ("gateway", gateway)):
        if value is not None and ipaddress.ip_address(str(value)) not in net:
            raise ValueError(f"{what} {value} is not in {net}")
    affinity = _str(body, "affinity", "SOURCE_IP")
    if affinity not in AFFINITIES:
        raise ValueError(f"affinity must be one of {', '.join(AFFINITIES)}")
    flow_timeout = _int(body, "flow_timeout", 300, 10, 86400)
    return VipSpec(
        lb_id=lb_id,
        vip_address=vip,
        mac_address=normalize_mac(_str(port, "mac_address")),
        address=address,
        subnet_cidr=str(net),
        gateway=None if gateway is None else _ipv4(str(gateway), "gateway"),
        affinity=affinity,
        health_port=_int(body, "health_port", 8008, 1, 65535),
        flow_timeout=flow_timeout,
        drain_timeout=_int(body, "drain_timeout", flow_timeout, 0, 86400),
        probe=parse_probe(body.get("probe")),
        vrrp=parse_vrrp(body.get("vrrp"), net, address),
    )


def parse_members(body: dict[str, Any]) -> list[MemberSpec]:
    raw = body.get("amphorae")
    if not isinstance(raw, list) or len(raw) > MAX_MEMBERS:
        raise ValueError(f"field 'amphorae' must be a list of at most {MAX_MEMBERS} objects")
    members, seen = [], set()
    for item in raw:
        if not isinstance(item, dict):
            raise ValueError("each amphora must be an object")
        amphora_id = _str(item, "amphora_id")
        if amphora_id in seen:
            raise ValueError(f"amphora {amphora_id} is listed twice")
        seen.add(amphora_id)
        state = _str(item, "state", "ACTIVE")
        if state not in MEMBER_STATES:
            raise ValueError(f"amphora {amphora_id}: state must be one of {', '.join(MEMBER_STATES)}")
        members.append(
            MemberSpec(
                amphora_id=amphora_id,
                mac_address=normalize_mac(_str(item, "mac_address")),
                frontend_ip=_ipv4(_str(item, "frontend_ip"), f"amphora {amphora_id} front-end IP"),
                position=_int(item, "position", 0, 0, 2**31 - 1),
                weight=_int(item, "weight", 1, 0, 256),
                state=state,
            )
        )
    return members


class DistributorApi:
    def __init__(self, service: DistributorService) -> None:
        self.service = service

    def router(self) -> Router:
        routes: list[Route] = [
            ("GET", "/1.0/info", self.info),
            ("GET", "/1.0/status", self.status),
            ("GET", "/1.0/health", self.health),
            ("POST", "/1.0/vips/{lb_id}", self.plug_vip),
            ("DELETE", "/1.0/vips/{lb_id}", self.unplug_vip),
            ("PUT", "/1.0/vips/{lb_id}/amphorae", self.set_amphorae),
        ]
        return Router(routes, ERRORS)

    def info(self, req: Request) -> Response:
        return Response(
            200,
            {
                "hostname": socket.gethostname(),
                "distributor_id": self.service.distributor_id,
                "api_version": AGENT_VERSION,
                "agent_version": __version__,
                "distributor_type": "L2",
                "vips": sorted(self.service.state.vips),
            },
        )

    def status(self, req: Request) -> Response:
        return Response(200, self.service.status(max_age=0))

    def health(self, req: Request) -> Response:
        return Response(200, self.service.status(max_age=0, flows_max_age=math.inf))

    def plug_vip(self, req: Request) -> Response:
        ifname = self.service.plug_vip(parse_vip(req.params["lb_id"], req.json()))
        return Response(200, {"message": "OK", "interface": ifname})

    def unplug_vip(self, req: Request) -> Response:
        self.service.unplug_vip(req.params["lb_id"])
        return Response(200, {"message": "OK"})

    def set_amphorae(self, req: Request) -> Response:
        self.service.set_members(req.params["lb_id"], parse_members(req.json()))
        return Response(200, {"message": "OK"})
