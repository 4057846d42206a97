"""The L4 (UDP/SCTP) specification of one load balancer, as the controller sends it and the agent applies it.

The controller renders it from its datamodel (``cohort.drivers.amphora.l4_config``) and the agent
parses it again here before anything reaches nftables: every value is checked against a closed
set of shapes (literal addresses, ports, bounded integers, ids), so a spec that parses can only
render the nftables rules it means. ``parse`` raises ValueError naming the field otherwise.

Shape (JSON)::

    {"listeners": [{"id", "protocol": "UDP"|"SCTP", "vip", "port", "connection_limit", "enabled",
                    "allowed_cidrs": [CIDR of the VIP's family, ...] (empty: any source),
                    "pool": null | {"id", "algorithm", "enabled",
                                    "persistence": null | {"timeout": s, "granularity": bits},
                                    "monitor": null | {"type", "delay", "timeout", "max_retries",
                                                       "max_retries_down", "http_method", "url_path",
                                                       "expected_codes", "enabled"},
                                    "members": [{"id", "address", "port", "weight", "backup",
                                                 "enabled", "monitor_address", "monitor_port"}]}}]}
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any

from cohort import validation

PROTOCOLS = ("UDP", "SCTP")
ALGORITHMS = ("ROUND_ROBIN", "LEAST_CONNECTIONS", "SOURCE_IP", "SOURCE_IP_PORT")
MONITOR_TYPES = ("UDP-CONNECT", "SCTP", "TCP", "HTTP")
# Bounds that keep every rendered table small: marks hold a listener and a member number in 16 bits each.
MAX_LISTENERS = 256
MAX_MEMBERS = 1024
MAX_WEIGHT = 256
MAX_SECONDS = 365 * 24 * 3600
MAX_CIDRS = 65536
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}\Z")


@dataclass(frozen=True)
class Monitor:
    type: str
    delay: int
    timeout: int
    max_retries: int
    max_retries_down: int
    http_method: str = "GET"
    url_path: str = "/"
    expected_codes: tuple[int, ...] = (200,)
    enabled: bool = True


@dataclass(frozen=True)
class Member:
    id: str
    address: str
    port: int
    weight: int = 1
    backup: bool = False
    enabled: bool = True
    monitor_address: str | None = None
    monitor_port: int | None = None

    @property
    def probe_target(self) -> tuple[str, int]:
        return self.monitor_address or self.address, self.monitor_port or self.port


@dataclass(frozen=True)
class Persistence:
    timeout: int
    granularity: int  # prefix length of the source address kept


@dataclass(frozen=True)
class Pool:
    id: str
    algorithm: str
    members: tuple[Member, ...]
    persistence: Persistence | None = None
    monitor: Monitor | None = None
    enabled: bool = True


@dataclass(frozen=True)
class Listener:
    id: str
    protocol: str
    vip: str
    port: int
    pool: Pool | None = None
    connection_limit: int = -1
    enabled: bool = True
    allowed_cidrs: tuple[str, ...] = ()  # canonical networks, collapsed; empty: every source

    @property
    def version(self) -> int:
        return validation.ip_address(self.vip).version


@dataclass(frozen=True)
class Spec:
    listeners: tuple[Listener, ...]

    def to_json(self) -> dict[str, Any]:
        """The wire form (what ``parse`` reads back to an equal Spec)."""
        def member(m: Member) -> dict[str, Any]:
            return {"id": m.id, "address": m.address, "port": m.port, "weight": m.weight, "backup": m.backup,
                    "enabled": m.enabled, "monitor_address": m.monitor_address, "monitor_port": m.monitor_port}

        def pool(p: Pool) -> dict[str, Any]:
            mon = p.monitor
            return {"id": p.id, "algorithm": p.algorithm, "enabled": p.enabled,
                    "persistence": None if p.persistence is None else
                    {"timeout": p.persistence.timeout, "granularity": p.persistence.granularity},
                    "monitor": None if mon is None else
                    {"type": mon.type, "delay": mon.delay, "timeout": mon.timeout, "max_retries": mon.max_retries,
                     "max_retries_down": mon.max_retries_down, "http_method": mon.http_method,
                     "url_path": mon.url_path, "expected_codes": list(mon.expected_codes), "enabled": mon.enabled},
                    "members": [member(m) for m in p.members]}

        return {"listeners": [
            {"id": li.id, "protocol": li.protocol, "vip": li.vip, "port": li.port,
             "connection_limit": li.connection_limit, "enabled": li.enabled,
             "allowed_cidrs": list(li.allowed_cidrs),
             "pool": None if li.pool is None else pool(li.pool)} for li in self.listeners]}


def _obj(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{what} must be an object")
    return value


def _int(body: dict[str, Any], name: str, low: int, high: int, what: str, default: int | None = None) -> int:
    value = body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{what}.{name} must be an integer from {low} to {high}")
    return value


def _bool(body: dict[str, Any], name: str, what: str, default: bool = True) -> bool:
    value = body.get(name, default)
    if not isinstance(value, bool):
        raise ValueError(f"{what}.{name} must be a boolean")
    return value


def _id(body: dict[str, Any], name: str, what: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not _ID.match(value):
        raise ValueError(f"{what}.{name} must be an id (letters, digits, '-', '_')")
    return value


def _choice(body: dict[str, Any], name: str, choices: tuple[str, ...], what: str) -> str:
    value = body.get(name)
    if value not in choices:
        raise ValueError(f"{what}.{name} must be one of {', '.join(choices)}")
    return str(value)


def _address(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be an IP address")
    address = validation.ip_address(value, what)
    if address.is_unspecified or address.is_multicast or address.is_loopback:
        raise ValueError(f"{what} {value!r} cannot be load balanced to")
    return address.compressed


def _monitor(body: dict[str, Any]) -> Monitor:
    what = "monitor"
    kind = _choice(body, "type", MONITOR_TYPES, what)
    method = body.get("http_method", "GET")
    path = body.get("url_path", "/")
    codes = body.get("expected_codes", [200])
    if not isinstance(method, str) or not isinstance(path, str):
        raise ValueError("monitor.http_method and url_path must be strings")
    if not isinstance(codes, list) or not codes or len(codes) > 500 or not all(
            isinstance(c, int) and not isinstance(c, bool) and 100 <= c <= 599 for c in codes):
        raise ValueError("monitor.expected_codes must be a list of HTTP status codes")
    return Monitor(type=kind, delay=_int(body, "delay", 1, MAX_SECONDS, what),
                   timeout=_int(body, "timeout", 1, MAX_SECONDS, what),
                   max_retries=_int(body, "max_retries", 1, 10, what),
                   max_retries_down=_int(body, "max_retries_down", 1, 10, what, 3),
                   http_method=validation.http_method(method), url_path=validation.url_path(path),
                   expected_codes=tuple(codes), enabled=_bool(body, "enabled", what))


def _member(body: dict[str, Any], version: int) -> Member:
    what = "member"
    address = _address(body.get("address"), "member.address")
    if validation.ip_address(address).version != version:
        raise ValueError(f"member {address} is not of the VIP's address family (IPv{version})")
    monitor_address = body.get("monitor_address")
    monitor_port = body.get("monitor_port")
    return Member(id=_id(body, "id", what), address=address, port=_int(body, "port", 1, 65535, what),
                  weight=_int(body, "weight", 0, MAX_WEIGHT, what, 1), backup=_bool(body, "backup", what, False),
                  enabled=_bool(body, "enabled", what),
                  monitor_address=None if monitor_address is None else _address(monitor_address,
                                                                                  "member.monitor_address"),
                  monitor_port=None if monitor_port is None else _int(body, "monitor_port", 1, 65535, what))


def _pool(body: dict[str, Any], version: int) -> Pool:
    what = "pool"
    members = body.get("members", [])
    if not isinstance(members, list) or len(members) > MAX_MEMBERS:
        raise ValueError(f"pool.members must be a list of at most {MAX_MEMBERS}")
    parsed = tuple(_member(_obj(m, "member"), version) for m in members)
    if len({m.id for m in parsed}) != len(parsed):
        raise ValueError("pool.members: member ids must be unique")
    persistence = body.get("persistence")
    monitor = body.get("monitor")
    sp = None
    if persistence is not None:
        sp_body = _obj(persistence, "pool.persistence")
        sp = Persistence(timeout=_int(sp_body, "timeout", 1, MAX_SECONDS, "persistence"),
                         granularity=_int(sp_body, "granularity", 1, 32 if version == 4 else 128, "persistence"))
    return Pool(id=_id(body, "id", what), algorithm=_choice(body, "algorithm", ALGORITHMS, what), members=parsed,
                persistence=sp, monitor=None if monitor is None else _monitor(_obj(monitor, "pool.monitor")),
                enabled=_bool(body, "enabled", what))


def _cidrs(value: Any, version: int) -> tuple[str, ...]:
    """The allowed sources as the fewest canonical networks (an nftables interval set refuses overlaps)."""
    if not isinstance(value, list) or len(value) > MAX_CIDRS:
        raise ValueError(f"listener.allowed_cidrs must be a list of at most {MAX_CIDRS}")
    v4: list[ipaddress.IPv4Network] = []
    v6: list[ipaddress.IPv6Network] = []
    for cidr in value:
        network = validation.ip_network(cidr, "listener.allowed_cidrs")
        if network.version != version:
            raise ValueError(f"listener.allowed_cidrs: {network} is not of the VIP's address family (IPv{version})")
        if isinstance(network, ipaddress.IPv4Network):
            v4.append(network)
        else:
            v6.append(network)
    collapsed = ipaddress.collapse_addresses(v4) if version == 4 else ipaddress.collapse_addresses(v6)
    return tuple(n.compressed for n in collapsed)


def _listener(body: dict[str, Any]) -> Listener:
    what = "listener"
    vip = _address(body.get("vip"), "listener.vip")
    version = validation.ip_address(vip).version
    pool = body.get("pool")
    return Listener(id=_id(body, "id", what), protocol=_choice(body, "protocol", PROTOCOLS, what), vip=vip,
                    port=_int(body, "port", 1, 65535, what),
                    connection_limit=_int(body, "connection_limit", -1, validation.INT32_MAX, what, -1),
                    enabled=_bool(body, "enabled", what),
                    allowed_cidrs=_cidrs(body.get("allowed_cidrs", []), version),
                    pool=None if pool is None else _pool(_obj(pool, "listener.pool"), version))


def parse(body: Any) -> Spec:
    """The spec in ``body`` (decoded JSON), every value checked; ValueError names the first bad one."""
    listeners = _obj(body, "spec").get("listeners")
    if not isinstance(listeners, list) or len(listeners) > MAX_LISTENERS:
        raise ValueError(f"spec.listeners must be a list of at most {MAX_LISTENERS}")
    parsed = tuple(_listener(_obj(li, "listener")) for li in listeners)
    if len({li.id for li in parsed}) != len(parsed):
        raise ValueError("spec.listeners: listener ids must be unique")
    seen: set[tuple[str, str, int]] = set()
    for li in parsed:
        key = (li.vip, li.protocol, li.port)
        if key in seen:
            raise ValueError(f"two {li.protocol} listeners on {li.vip} port {li.port}")
        seen.add(key)
    return Spec(parsed)
