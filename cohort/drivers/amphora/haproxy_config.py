"""Render the HAProxy configuration of one load balancer on one amphora.

One HAProxy process serves one load balancer. The agent relies on these names:

- ``{state_dir}/{lb.id}.sock``: admin stats socket (``expose-fd listeners`` for
  seamless reloads); ``{state_dir}/{lb.id}.pid``: the master's pid file, which
  keepalived's track script watches.
- ``{state_dir}/{lb.id}.state``: server state file; the agent saves
  ``show servers state`` there before each reload so members found down stay
  down across it (HAProxy warns, harmlessly, while the file does not exist).
- frontend = listener id, backend = pool id, server = member id.
- TLS material at ``{cert_dir}/{cert_filename(ref)}`` (see haproxy_tls).
- PING monitors run ``{state_dir}/ping-wrapper.sh`` (see haproxy_backend);
  PROMETHEUS listeners use two unix sockets (see haproxy_prometheus).

Non-local VIP: in ACTIVE_STANDBY, binds carry ``transparent``
(IP_TRANSPARENT/IP_FREEBIND), so HAProxy starts on a backup that does not hold
the VIP (keepalived moves it); no sysctl is needed. An ACTIVE_ACTIVE amphora
holds the VIP on ``lo`` from the moment it is plugged, before any listener is
configured, so its binds are plain: a transparent listener's connections cost
the capped amphora measurably more per new connection (bench/active_active.py).

No global ``maxconn``: HAProxy derives it from the RLIMIT_NOFILE it starts
with (two descriptors per proxied connection plus listeners and checks), about
50000 under the agent's 100000. An explicit value above what the limit allows
makes HAProxy refuse to start, and the controller cannot know the amphora's
limit. Listeners without a connection_limit inherit the global value.

UDP and SCTP listeners and their pools are not HAProxy's: they are left out here and
served by the amphora's kernel (``l4_config`` renders them).
"""

from __future__ import annotations

import math
import posixpath
from collections.abc import Iterable, Sequence
from dataclasses import replace

from cohort import validation
from cohort.datamodel import CLUSTER_HEALTH_PORT, Amphora, Listener, LoadBalancer, Pool
from cohort.drivers.amphora import haproxy_backend, haproxy_frontend, haproxy_prometheus
from cohort.drivers.amphora import haproxy_values as v
from cohort.drivers.amphora.haproxy_prometheus import rename_prometheus_metrics
from cohort.drivers.amphora.haproxy_tls import cert_filename

__all__ = ["cert_filename", "rename_prometheus_metrics", "render_haproxy"]

# Stick tables of an ACTIVE_ACTIVE cluster are shared between its amphorae over this section.
PEERS_SECTION = "cohort_peers"
PEER_PORT = 1025
DEFAULT_STATE_DIR = "/var/lib/cohort-amphora"
_UNSUPPORTED = frozenset({"UDP", "SCTP"})
# Octavia's listener -> pool protocol compatibility.
_POOL_PROTOCOLS = {
    "TCP": {"HTTP", "HTTPS", "PROXY", "PROXYV2", "TCP"},
    "HTTP": {"HTTP", "PROXY", "PROXYV2"},
    "HTTPS": {"HTTPS", "PROXY", "PROXYV2", "TCP"},
    "TERMINATED_HTTPS": {"HTTP", "PROXY", "PROXYV2"},
    "PROMETHEUS": set(),
}
_POOL_MODES = {"HTTP": "http", "HTTPS": "tcp", "TCP": "tcp"}


def _check_protocols(lb: LoadBalancer) -> None:
    ports: set[int] = set()
    for listener in lb.listeners:
        if listener.protocol in _UNSUPPORTED:
            raise ValueError(
                f"listener {listener.id}: {listener.protocol} listeners are not supported by the HAProxy amphora driver"
            )
        if listener.protocol not in _POOL_PROTOCOLS:
            raise ValueError(f"listener {listener.id}: unknown protocol {listener.protocol!r}")
        if listener.protocol_port in ports:
            raise ValueError(f"two listeners use port {listener.protocol_port}")
        ports.add(listener.protocol_port)


def _routed_pool_ids(listener: Listener) -> list[str]:
    ids = [listener.default_pool_id] if listener.default_pool_id else []
    ids += [
        p.redirect_pool_id
        for p in sorted(listener.l7policies, key=lambda p: (p.position, p.id))
        if p.admin_state_up and p.action == "REDIRECT_TO_POOL" and p.redirect_pool_id
    ]
    return ids


def _pool_users(lb: LoadBalancer) -> dict[str, list[Listener]]:
    """Enabled pools routed to by at least one listener, with those listeners (default pool first)."""
    users: dict[str, list[Listener]] = {}
    for listener in lb.listeners:
        for pool_id in _routed_pool_ids(listener):
            pool = lb.pool(pool_id)
            if pool is None:
                raise ValueError(f"listener {listener.id} routes to unknown pool {pool_id}")
            if pool.protocol not in _POOL_PROTOCOLS[listener.protocol]:
                raise ValueError(
                    f"listener {listener.id} ({listener.protocol}) cannot use pool {pool.id} ({pool.protocol})"
                )
            if pool.admin_state_up and listener not in users.setdefault(pool_id, []):
                users[pool_id].append(listener)
    for pool_id, listeners in users.items():
        listeners.sort(key=lambda li: li.default_pool_id != pool_id)
    return users


def _backend_settings(pool: Pool, listeners: list[Listener], ipv6: bool,
                      peers: str | None = None) -> haproxy_backend.BackendSettings:
    modes = {haproxy_frontend.MODES[li.protocol] for li in listeners}
    # An HTTP frontend cannot hand over to a TCP backend; the reverse upgrades.
    mode = _POOL_MODES.get(pool.protocol, "http" if "http" in modes else "tcp")
    owner = listeners[0]
    return haproxy_backend.BackendSettings(
        mode=mode,
        timeout_connect_ms=owner.timeout_member_connect,
        timeout_server_ms=owner.timeout_member_data,
        ipv6=ipv6,
        peers=peers,
    )


def _threads(amphora: Amphora) -> list[str]:
    """One thread per CPU the amphora may use: more threads than its cgroup quota only contend."""
    cpu = amphora.compute_flavor.get("cpu") if amphora.compute_flavor else None
    if isinstance(cpu, bool) or not isinstance(cpu, int | float) or not math.isfinite(cpu) or cpu <= 0:
        return []
    return [f"    nbthread {min(validation.HAPROXY_MAX_THREADS, max(1, math.ceil(cpu)))}"]


def _global_lines(lb: LoadBalancer, amphora: Amphora, state_dir: str, pools: Iterable[Pool]) -> list[str]:
    path = posixpath.join(state_dir, lb.id)
    lines = [
        "global",
        "    master-worker",
        *_threads(amphora),
        f"    pidfile {path}.pid",
        f"    stats socket {path}.sock mode 600 level admin expose-fd listeners",
        "    stats timeout 2m",
        f"    server-state-file {path}.state",
        "    tune.ssl.default-dh-param 2048",
    ]
    if any(haproxy_backend.uses_ping(pool) for pool in pools):
        lines += ["    external-check", "    insecure-fork-wanted"]
    return lines + [
        "",
        "defaults",
        "    mode tcp",
        "    no log",
        "    load-server-state-from-file global",
        "    retries 3",
        "    option redispatch",
        "    timeout connect 5s",
        "    timeout client 50s",
        "    timeout server 50s",
    ]


def _maxconn(listener: Listener) -> int | None:
    # Octavia treats -1 (and 0) as unlimited.
    if listener.connection_limit is None or listener.connection_limit <= 0:
        return None
    if listener.connection_limit > validation.INT32_MAX:
        raise ValueError(f"listener {listener.id}: connection_limit {listener.connection_limit} is too large")
    return listener.connection_limit


def _cluster_health_lines(lb: LoadBalancer, amphora: Amphora) -> list[str]:
    """What the distributor probes: answers while this HAProxy serves, on the amphora's own address.

    ``defer-accept``: a probe connects and resets without sending anything, so the kernel answers it
    from the listening socket and HAProxy never accepts it; ten probes a second cost the amphora's
    CPU cap nothing (accepted, they cost it about 1% at a twentieth of a CPU)."""
    address = v.ip(amphora.vrrp_ip or "", "amphora front-end address")
    bind = f"[{address.compressed}]" if address.version == 6 else address.compressed
    return [
        "frontend cohort-cluster-health",
        "    mode http",
        f"    bind {bind}:{CLUSTER_HEALTH_PORT} defer-accept",
        "    monitor-uri /healthz",
        "    timeout client 5s",
        "    http-request deny",
    ] + ([] if lb.admin_state_up else ["    disabled"])


def _stick_tables(pools: Sequence[Pool]) -> bool:
    return any(p.session_persistence is not None and p.session_persistence.type in ("SOURCE_IP", "APP_COOKIE")
               for p in pools)


def _peers_lines(amphora: Amphora, cluster: Sequence[Amphora]) -> list[str]:
    """The cluster's amphorae as HAProxy peers, this one included (it is the local peer)."""
    members = {a.id: a for a in cluster if a.vrrp_ip}
    members[amphora.id] = amphora
    lines = [f"peers {PEERS_SECTION}"]
    for ident, member in sorted(members.items()):
        address = v.address_port(str(member.vrrp_ip), PEER_PORT, f"amphora {ident} front-end address")
        lines.append(f"    peer {v.name(ident, 'amphora id')} {address}")
    return lines


def render_haproxy(lb: LoadBalancer, amphora: Amphora, cert_dir: str, state_dir: str = DEFAULT_STATE_DIR,
                   cluster: Sequence[Amphora] = ()) -> str:
    """The complete haproxy.cfg text for ``lb`` as served by ``amphora``.

    ``cluster``: the amphorae serving ``lb`` with it (ACTIVE_ACTIVE), which share its stick tables.
    """
    v.name(lb.id, "load balancer id")
    v.name(amphora.id, "amphora id")
    if not lb.vip_address:
        raise ValueError(f"load balancer {lb.id} has no VIP address")
    vip = v.ip(lb.vip_address, "VIP")
    lb = replace(lb, listeners=tuple(li for li in lb.listeners if li.protocol not in _UNSUPPORTED))
    _check_protocols(lb)
    users = _pool_users(lb)
    pools = [pool for pool in lb.pools if pool.id in users]
    backends = frozenset(users)

    shared = lb.topology.name == "ACTIVE_ACTIVE" and amphora.vrrp_ip is not None and _stick_tables(pools)
    sections = [_global_lines(lb, amphora, state_dir, pools)]
    if shared:
        sections[0].insert(1, f"    localpeer {v.name(amphora.id, 'amphora id')}")
        sections.append(_peers_lines(amphora, cluster))
    for listener in lb.listeners:
        settings = haproxy_frontend.FrontendSettings(
            vip_address=vip.compressed,
            transparent=lb.topology.name == "ACTIVE_STANDBY",
            enabled=lb.admin_state_up and listener.admin_state_up,
            maxconn=_maxconn(listener),
            cert_dir=cert_dir,
            backends=backends,
        )
        sections.append(haproxy_frontend.frontend_lines(listener, settings))
    for pool in pools:
        settings_b = _backend_settings(pool, users[pool.id], vip.version == 6, PEERS_SECTION if shared else None)
        sections.append(haproxy_backend.backend_lines(pool, settings_b, amphora.id, cert_dir, state_dir))
    if any(listener.protocol == "PROMETHEUS" for listener in lb.listeners):
        sections.append(haproxy_prometheus.internal_lines(lb, state_dir))
    if amphora.role == "IN_CLUSTER" and amphora.vrrp_ip:
        sections.append(_cluster_health_lines(lb, amphora))

    header = [f"# Load balancer {lb.id} on amphora {amphora.id}; rendered by cohort, do not edit."]
    return "\n".join(header + ["\n".join(section) + "\n" for section in sections])
