"""The controller's in-memory view of a load balancer tree, handed to drivers.

The API and the database speak rows and wire dicts; drivers speak these frozen
dataclasses. Building them in one place (``cohort.controller.desired``) keeps
drivers ignorant of SQLAlchemy and of the Octavia wire format, and keeps the
agents ignorant of both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# An amphora of an ACTIVE_ACTIVE cluster answers health probes of its distributor on its own
# front-end address at this port (HTTP ``GET /healthz``), never on the VIP.
CLUSTER_HEALTH_PORT = 8008


@dataclass(frozen=True)
class Subnet:
    """A tenant subnet as the network seam and the API's subnet catalogue describe it."""

    id: str
    name: str
    network_id: str
    cidr: str
    gateway_ip: str | None
    ip_version: int
    # True for the noop network's stand-in for a subnet it has never seen (any UUID, as Octavia's
    # noop driver takes): any address of either family is taken as given, on any network.
    any_address: bool = False


@dataclass(frozen=True)
class SessionPersistence:
    type: str  # SOURCE_IP | HTTP_COOKIE | APP_COOKIE
    cookie_name: str | None = None
    persistence_timeout: int | None = None
    persistence_granularity: str | None = None


@dataclass(frozen=True)
class HealthMonitor:
    id: str
    type: str  # HTTP | HTTPS | PING | TCP | TLS-HELLO | UDP-CONNECT | SCTP
    delay: int
    timeout: int
    max_retries: int
    max_retries_down: int = 3
    http_method: str | None = "GET"
    url_path: str | None = "/"
    expected_codes: str | None = "200"
    http_version: float | None = None
    domain_name: str | None = None
    admin_state_up: bool = True
    name: str = ""


@dataclass(frozen=True)
class Member:
    id: str
    address: str
    protocol_port: int
    weight: int = 1
    backup: bool = False
    subnet_id: str | None = None
    monitor_address: str | None = None
    monitor_port: int | None = None
    admin_state_up: bool = True
    name: str = ""


@dataclass(frozen=True)
class Pool:
    id: str
    protocol: str  # HTTP | HTTPS | TCP | PROXY | PROXYV2 | UDP | SCTP
    lb_algorithm: str  # ROUND_ROBIN | LEAST_CONNECTIONS | SOURCE_IP | SOURCE_IP_PORT
    members: tuple[Member, ...] = ()
    healthmonitor: HealthMonitor | None = None
    session_persistence: SessionPersistence | None = None
    admin_state_up: bool = True
    tls_enabled: bool = False
    tls_container_ref: str | None = None
    ca_tls_container_ref: str | None = None
    crl_container_ref: str | None = None
    tls_ciphers: str | None = None
    tls_versions: tuple[str, ...] = ()
    alpn_protocols: tuple[str, ...] = ()
    name: str = ""


@dataclass(frozen=True)
class L7Rule:
    id: str
    type: str  # HOST_NAME | PATH | FILE_TYPE | HEADER | COOKIE | SSL_CONN_HAS_CERT | ...
    compare_type: str  # REGEX | STARTS_WITH | ENDS_WITH | CONTAINS | EQUAL_TO
    value: str
    key: str | None = None
    invert: bool = False
    admin_state_up: bool = True


@dataclass(frozen=True)
class L7Policy:
    id: str
    action: str  # REJECT | REDIRECT_TO_URL | REDIRECT_TO_POOL | REDIRECT_PREFIX
    position: int
    rules: tuple[L7Rule, ...] = ()
    redirect_pool_id: str | None = None
    redirect_url: str | None = None
    redirect_prefix: str | None = None
    redirect_http_code: int | None = None
    admin_state_up: bool = True
    name: str = ""


@dataclass(frozen=True)
class Listener:
    id: str
    protocol: str  # HTTP | HTTPS | TCP | TERMINATED_HTTPS | UDP | SCTP | PROMETHEUS
    protocol_port: int
    default_pool_id: str | None = None
    connection_limit: int = -1
    l7policies: tuple[L7Policy, ...] = ()
    insert_headers: dict[str, str] = field(default_factory=dict)
    timeout_client_data: int = 50000
    timeout_member_connect: int = 5000
    timeout_member_data: int = 50000
    timeout_tcp_inspect: int = 0
    allowed_cidrs: tuple[str, ...] = ()
    default_tls_container_ref: str | None = None
    sni_container_refs: tuple[str, ...] = ()
    client_ca_tls_container_ref: str | None = None
    client_authentication: str = "NONE"
    client_crl_container_ref: str | None = None
    tls_ciphers: str | None = None
    tls_versions: tuple[str, ...] = ()
    alpn_protocols: tuple[str, ...] = ()
    hsts_max_age: int | None = None
    hsts_include_subdomains: bool = False
    hsts_preload: bool = False
    admin_state_up: bool = True
    name: str = ""


@dataclass(frozen=True)
class BgpPeer:
    """A router an L3 amphora's speaker peers with (an admin API ``bgp_peer``)."""

    peer_ip: str
    remote_as: int
    password: str | None = None  # decrypted only for the agent that needs it
    ttl_hops: int = 1
    hold_time: int = 90
    keepalive_interval: int = 30
    bfd: tuple[int, int, int] | None = None  # (min_rx ms, min_tx ms, multiplier)


@dataclass(frozen=True)
class BgpSpeaker:
    """The session profile every amphora of an L3 cluster uses (an admin API ``bgp_speaker``)."""

    id: str
    local_as: int
    peers: tuple[BgpPeer, ...]


@dataclass(frozen=True)
class Topology:
    """What the flavor (or the configured default) asks of the data plane."""

    name: str = "SINGLE"  # SINGLE | ACTIVE_STANDBY | ACTIVE_ACTIVE
    amp_cluster_size: int = 3
    amp_cluster_min_size: int = 2
    amp_cluster_cooldown: int = 30
    distributor_type: str = "L2"  # L2 | L3_BGP
    distributor_affinity: str = "SOURCE_IP"  # SOURCE_IP | SOURCE_IP_PORT
    bgp_speaker_id: str | None = None
    compute_flavor: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LoadBalancer:
    id: str
    project_id: str
    vip_address: str | None
    vip_subnet_id: str | None
    vip_network_id: str | None = None
    vip_port_id: str | None = None
    topology: Topology = field(default_factory=Topology)
    listeners: tuple[Listener, ...] = ()
    pools: tuple[Pool, ...] = ()
    admin_state_up: bool = True
    name: str = ""

    def pool(self, pool_id: str | None) -> Pool | None:
        return next((p for p in self.pools if p.id == pool_id), None)


@dataclass(frozen=True)
class Amphora:
    id: str
    load_balancer_id: str | None
    role: str  # STANDALONE | MASTER | BACKUP | IN_CLUSTER
    compute_id: str | None = None
    lb_network_ip: str | None = None  # management address of its agent
    vrrp_ip: str | None = None  # its own front-end address
    ha_ip: str | None = None  # the VIP
    vrrp_priority: int | None = None
    vrrp_id: int | None = None
    compute_flavor: dict[str, Any] = field(default_factory=dict)
    frontend_mac: str | None = None  # the MAC of its front-end port (L2 peers tell its copies by it)
