"""One pool as an HAProxy backend: balancing, persistence, health checks, members.

The backend is named after the pool and each server after its member, which is
how the agent's heartbeats map HAProxy's statistics back to Octavia objects.

Members are written in an order shuffled per amphora (seeded with the amphora
and pool ids), so that the amphorae of a cluster do not all start their round
robin on the same member. Each server gets an explicit ``id`` derived from its
member id: consistent hashing (SOURCE_IP, SOURCE_IP_PORT) keys servers by that
id, so every amphora sends a given client to the same member whatever its order.

PING health monitors run ``{state_dir}/ping-wrapper.sh`` through HAProxy's
external check; the agent installs that script (it pings ``$3``, the server
address HAProxy passes, and exits 0 on an answer).
"""

from __future__ import annotations

import hashlib
import posixpath
import random
from dataclasses import dataclass

from cohort import validation
from cohort.datamodel import HealthMonitor, Member, Pool, SessionPersistence
from cohort.drivers.amphora import haproxy_tls
from cohort.drivers.amphora import haproxy_values as v

PING_SCRIPT = "ping-wrapper.sh"
STICK_TABLE_SIZE = "100k"
_SERVER_ID_SPACE = 1 << 30
_BALANCE = {
    "ROUND_ROBIN": ["balance roundrobin"],
    "LEAST_CONNECTIONS": ["balance leastconn"],
    "SOURCE_IP": ["balance source", "hash-type consistent"],
    # HAProxy has no source-address-and-port algorithm; hash both, the port
    # through a variable because sample expressions cannot concatenate fetches.
    "SOURCE_IP_PORT": [
        "tcp-request content set-var(txn.cohort_sport) src_port",
        "balance hash src,concat(:,txn.cohort_sport)",
        "hash-type consistent",
    ],
}
_PROXY_PROTOCOL = {"PROXY": "send-proxy", "PROXYV2": "send-proxy-v2"}


@dataclass(frozen=True)
class BackendSettings:
    """What a backend takes from the listener(s) that route to it."""

    mode: str  # http | tcp
    timeout_connect_ms: int
    timeout_server_ms: int
    ipv6: bool  # the VIP's family, hence the clients'
    # The peers section stick tables are shared through (the amphorae of a cluster), if any.
    peers: str | None = None


def uses_ping(pool: Pool) -> bool:
    hm = pool.healthmonitor
    return hm is not None and hm.admin_state_up and hm.type == "PING"


def _active_monitor(pool: Pool) -> HealthMonitor | None:
    hm = pool.healthmonitor
    return hm if hm is not None and hm.admin_state_up else None


def expected_codes(codes: str) -> list[int]:
    """Octavia's ``expected_codes``: ``200``, ``200,202`` or ``200-204`` (and mixes)."""
    return validation.expected_codes(codes)


def _http_check(hm: HealthMonitor) -> list[str]:
    method = v.http_method(hm.http_method or "GET")
    send = f"http-check send meth {method} uri {v.url_path(hm.url_path or '/')}"
    if hm.http_version is not None:
        if hm.http_version not in (1.0, 1.1):
            raise ValueError(f"health monitor {hm.id}: http_version must be 1.0 or 1.1")
        send += f" ver HTTP/{hm.http_version:.1f}"
    if hm.domain_name:
        send += f" hdr Host {v.hostname(hm.domain_name, 'health monitor domain_name')}"
    codes = expected_codes(hm.expected_codes or "200")
    if len(codes) == 1:
        expect = f"http-check expect status {codes[0]}"
    else:
        expect = "http-check expect rstatus ^(" + "|".join(str(c) for c in codes) + ")$"
    return ["option httpchk", send, expect]


def _monitor_lines(hm: HealthMonitor | None, state_dir: str) -> list[str]:
    if hm is None:
        return []
    if hm.delay < 1 or hm.timeout < 1:
        raise ValueError(f"health monitor {hm.id}: delay and timeout must be at least 1 second")
    if not (1 <= hm.max_retries <= 10 and 1 <= hm.max_retries_down <= 10):
        raise ValueError(f"health monitor {hm.id}: max_retries and max_retries_down must be 1-10")
    lines = [f"timeout check {v.seconds(hm.timeout, f'health monitor {hm.id} timeout')}"]
    match hm.type:
        case "HTTP" | "HTTPS":
            lines += _http_check(hm)
        case "TLS-HELLO":
            lines.append("option ssl-hello-chk")
        case "PING":
            script = posixpath.join(state_dir, PING_SCRIPT)
            # HAProxy runs the command with an empty PATH unless told otherwise.
            lines += ["option external-check", f"external-check command {script}", "external-check path /usr/bin:/bin"]
        case "TCP":
            pass
        case _:
            raise ValueError(f"health monitor {hm.id}: type {hm.type} cannot monitor an HAProxy pool")
    return lines


def _netmask_bits(granularity: str, ipv6: bool) -> int:
    bits = validation.netmask_bits(granularity)
    if not 0 < bits <= (128 if ipv6 else 32):
        raise ValueError(f"persistence_granularity {granularity!r} is out of range")
    return bits


def _persistence_lines(sp: SessionPersistence | None, settings: BackendSettings, pool_id: str) -> list[str]:
    if sp is None:
        return []
    expire = f" expire {v.seconds(sp.persistence_timeout, 'persistence_timeout')}" if sp.persistence_timeout else ""
    if settings.peers is not None:
        # The table is the cluster's: every amphora learns each entry, so a client's next
        # connection finds its member whichever amphora it lands on.
        expire += f" peers {v.name(settings.peers, 'peers section')}"
    if sp.type == "SOURCE_IP":
        table = "ipv6" if settings.ipv6 else "ip"
        key = "src"
        if sp.persistence_granularity:
            bits = _netmask_bits(sp.persistence_granularity, settings.ipv6)
            key += f",ipmask(32,{bits})" if settings.ipv6 else f",ipmask({bits})"
        return [f"stick-table type {table} size {STICK_TABLE_SIZE}{expire}", f"stick on {key}"]
    if settings.mode != "http":
        raise ValueError(f"pool {pool_id}: {sp.type} persistence needs an HTTP pool")
    if sp.type == "HTTP_COOKIE":
        cookie = v.token(sp.cookie_name or "SRV", "cookie_name")
        return [f"cookie {cookie} insert indirect nocache"]
    if sp.type == "APP_COOKIE":
        if not sp.cookie_name:
            raise ValueError(f"pool {pool_id}: APP_COOKIE persistence needs cookie_name")
        cookie = v.token(sp.cookie_name, "cookie_name")
        return [
            f"stick-table type string len 64 size {STICK_TABLE_SIZE}{expire}",
            f"stick store-response res.cook({cookie})",
            f"stick match req.cook({cookie})",
        ]
    raise ValueError(f"pool {pool_id}: unknown session persistence type {sp.type!r}")


def server_ids(members: tuple[Member, ...]) -> dict[str, int]:
    """Stable positive server ids, the same on every amphora for the same members."""
    ids: dict[str, int] = {}
    taken: set[int] = set()
    for member in sorted(members, key=lambda m: m.id):
        digest = hashlib.sha256(member.id.encode()).digest()
        sid = int.from_bytes(digest[:4], "big") % _SERVER_ID_SPACE + 1
        while sid in taken:
            sid = sid % _SERVER_ID_SPACE + 1
        taken.add(sid)
        ids[member.id] = sid
    return ids


def ordered_members(pool: Pool, amphora_id: str) -> list[Member]:
    members = sorted(pool.members, key=lambda m: m.id)
    random.Random(f"{amphora_id}/{pool.id}").shuffle(members)
    return members


def _server_line(member: Member, sid: int, pool: Pool, hm: HealthMonitor | None, tls: list[str]) -> str:
    if not 0 <= member.weight <= 256:
        raise ValueError(f"member {member.id}: weight {member.weight} is outside 0-256")
    words = [
        "server",
        v.name(member.id, "member id"),
        v.address_port(member.address, member.protocol_port, f"member {member.id}"),
        f"id {sid}",
        f"weight {member.weight}",
    ]
    if hm is not None:
        inter = v.seconds(hm.delay, f"health monitor {hm.id} delay")
        words.append(f"check inter {inter} fall {hm.max_retries_down} rise {hm.max_retries}")
        if hm.type == "HTTPS":
            # A pool without TLS of its own still checks over TLS; one with TLS
            # keeps its own verification for the checks too.
            words.append("check-ssl" if pool.tls_enabled else "check-ssl verify none")
        if member.monitor_address:
            words.append(f"addr {v.ip(member.monitor_address, f'member {member.id} monitor_address').compressed}")
        if member.monitor_port:
            words.append(f"port {v.port_number(member.monitor_port, f'member {member.id} monitor')}")
    sp = pool.session_persistence
    if sp is not None and sp.type == "HTTP_COOKIE":
        words.append(f"cookie {member.id}")
    if pool.protocol in _PROXY_PROTOCOL:
        words.append(_PROXY_PROTOCOL[pool.protocol])
    if member.backup:
        words.append("backup")
    if not member.admin_state_up:
        words.append("disabled")
    words += tls
    return " ".join(words)


def backend_lines(pool: Pool, settings: BackendSettings, amphora_id: str, cert_dir: str, state_dir: str) -> list[str]:
    """The ``backend`` section of an enabled pool, first line unindented."""
    if pool.lb_algorithm not in _BALANCE:
        raise ValueError(f"pool {pool.id}: unknown lb_algorithm {pool.lb_algorithm!r}")
    hm = _active_monitor(pool)
    body = [f"mode {settings.mode}"]
    body += _BALANCE[pool.lb_algorithm]
    body += _persistence_lines(pool.session_persistence, settings, pool.id)
    body += _monitor_lines(hm, state_dir)
    if any(member.backup for member in pool.members):
        body.append("option allbackups")
    body.append(f"timeout connect {v.milliseconds(settings.timeout_connect_ms, 'timeout_member_connect')}")
    body.append(f"timeout server {v.milliseconds(settings.timeout_server_ms, 'timeout_member_data')}")
    tls = haproxy_tls.server_options(pool, cert_dir)
    ids = server_ids(pool.members)
    for member in ordered_members(pool, amphora_id):
        body.append(_server_line(member, ids[member.id], pool, hm, tls))
    return [f"backend {v.name(pool.id, 'pool id')}"] + ["    " + line for line in body]
