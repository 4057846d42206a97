"""Turn validated request bodies into rows, enforcing the cross-object rules Octavia enforces.

Used by the single-object POSTs and by the single-call tree create, so both apply the same rules.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from cohort import secrets, validation
from cohort.api import l4_cluster
from cohort.api.errors import Conflict, InvalidInput
from cohort.api.schemas import lbaas as s
from cohort.api.schemas.common import given
from cohort.api.subnets import SubnetCatalog
from cohort.db import models as m

LISTENER_POOL_PROTOCOLS = {
    "TCP": {"HTTP", "HTTPS", "PROXY", "PROXYV2", "TCP"},
    "HTTP": {"HTTP", "PROXY", "PROXYV2"},
    "HTTPS": {"HTTPS", "PROXY", "PROXYV2", "TCP"},
    "TERMINATED_HTTPS": {"HTTP", "PROXY", "PROXYV2"},
    "UDP": {"UDP"},
    "SCTP": {"SCTP"},
    "PROMETHEUS": set(),
}
# UDP and SCTP are served by the amphora's kernel (nftables), with Octavia's rules for both.
L4_PROTOCOLS = {"UDP", "SCTP"}
L4_ALGORITHMS = ("ROUND_ROBIN", "LEAST_CONNECTIONS", "SOURCE_IP", "SOURCE_IP_PORT")
L4_MONITORS = ("UDP-CONNECT", "SCTP", "TCP", "HTTP")
UDP_CONNECT_MIN_DELAY = 3  # Octavia's udp_connect_min_interval_health_monitor
L7_LISTENER_PROTOCOLS = {"HTTP", "TERMINATED_HTTPS"}
DN_FIELDS = {"C", "ST", "L", "O", "OU", "CN", "emailAddress", "SN", "GN", "DC", "UID"}
TLS_LISTENER_FIELDS = ("default_tls_container_ref", "sni_container_refs", "client_ca_tls_container_ref",
                       "client_crl_container_ref", "tls_ciphers", "tls_versions", "alpn_protocols",
                       "hsts_max_age")


LISTENER_REFS = {"default_tls_container_ref": "certificate", "sni_container_refs": "certificate",
                 "client_ca_tls_container_ref": "ca", "client_crl_container_ref": "crl"}
POOL_REFS = {"tls_container_ref": "certificate", "ca_tls_container_ref": "ca", "crl_container_ref": "crl"}


def check_tls_refs(session: Session, project_id: str, fields: dict[str, Any], kinds: dict[str, str],
                   stored_only: bool = True) -> None:
    """Every referenced secret or container must exist in the project and be of the kind the field needs.

    Not ``stored_only`` (:func:`cohort.secrets.refs_must_be_stored`): a ref naming nothing stored is taken.
    """
    for name, kind in kinds.items():
        value = fields.get(name)
        for ref in (value if isinstance(value, list) else [value] if value else []):
            row = secrets.lookup(session, project_id, ref)
            if row is None and not stored_only:
                continue
            if row is None:
                raise InvalidInput(f"Could not retrieve certificate: {ref} (field {name}) not found.")
            if row.kind != kind:
                raise InvalidInput(f"Invalid input for field/attribute {name}: secret {ref} is a {row.kind}, "
                                   f"a {kind} is required.")


def _live(row: Any) -> bool:
    return bool(row.provisioning_status != "PENDING_DELETE")


def pending_create(project_id: str) -> dict[str, Any]:
    return {"project_id": project_id, "provisioning_status": "PENDING_CREATE", "operating_status": "OFFLINE"}


def validate_listener_fields(protocol: str, fields: dict[str, Any]) -> None:
    if protocol == "TERMINATED_HTTPS":
        if not fields.get("default_tls_container_ref") and not fields.get("sni_container_refs"):
            raise InvalidInput("An SNI or default certificate container reference must be provided for "
                               "TERMINATED_HTTPS listeners.")
    else:
        for name in TLS_LISTENER_FIELDS:
            if fields.get(name):
                raise InvalidInput(f"Invalid input for field/attribute {name}: only TERMINATED_HTTPS listeners "
                                   "take TLS settings.")
    if fields.get("client_authentication", "NONE") != "NONE" and not fields.get("client_ca_tls_container_ref"):
        raise InvalidInput("client_authentication requires a client_ca_tls_container_ref.")
    if fields.get("client_crl_container_ref") and not fields.get("client_ca_tls_container_ref"):
        raise InvalidInput("A client authentication CA reference is required to specify a client "
                           "authentication revocation list.")
    if fields.get("insert_headers") and protocol not in L7_LISTENER_PROTOCOLS:
        raise InvalidInput(f"insert_headers are only allowed on HTTP and TERMINATED_HTTPS listeners, not {protocol}.")
    if protocol == "PROMETHEUS" and fields.get("default_pool_id"):
        raise InvalidInput("PROMETHEUS listeners cannot have a default pool.")


def check_cidr_families(lb: m.LoadBalancer, cidrs: list[str] | None) -> None:
    """An allowed CIDR must be of the VIP's IP version, as Octavia requires (a 400 otherwise)."""
    if not cidrs or not lb.vip_address:
        return
    version = validation.ip_address(lb.vip_address).version
    for cidr in cidrs:
        if validation.ip_network(cidr).version != version:
            raise InvalidInput(f"Validation failure: CIDR {cidr} IP version incompatible with the VIP "
                               f"{lb.vip_address}.")


def check_listener_pool(listener_protocol: str, pool_protocol: str) -> None:
    if pool_protocol not in LISTENER_POOL_PROTOCOLS[listener_protocol]:
        raise InvalidInput(f"The pool protocol '{pool_protocol}' is invalid while the listener protocol is "
                           f"'{listener_protocol}'.")


def build_listener(session: Session, lb: m.LoadBalancer, body: s.ListenerTree,
                   network: SubnetCatalog | None = None, stored_only: bool = True) -> m.Listener:
    fields = given(body)
    for nested in ("default_pool", "l7policies", "loadbalancer_id", "project_id"):
        fields.pop(nested, None)
    validate_listener_fields(body.protocol, fields)
    check_cidr_families(lb, fields.get("allowed_cidrs"))
    check_tls_refs(session, lb.project_id, fields, LISTENER_REFS, stored_only)
    for other in lb.listeners:
        # As in Octavia, one port may carry a UDP and a TCP listener (DNS), not two of the same L4 protocol.
        if _live(other) and other.protocol_port == body.protocol_port and \
                _l4_protocol(other.protocol) == _l4_protocol(body.protocol):
            raise Conflict(f"Another Listener on this Load Balancer is already using protocol_port "
                           f"{body.protocol_port}")
    if body.default_pool_id:
        pool = session.get(m.Pool, body.default_pool_id)
        if pool is None or pool.load_balancer_id != lb.id or not _live(pool):
            raise InvalidInput(f"Pool {body.default_pool_id} not found on load balancer {lb.id}.")
        check_listener_pool(body.protocol, pool.protocol)
    listener = m.Listener(load_balancer=lb, **pending_create(lb.project_id), **_listener_defaults(fields))
    session.add(listener)
    session.flush()
    if body.default_pool is not None:
        build_pool(session, lb, body.default_pool, listener=listener, network=network, stored_only=stored_only)
    for policy in body.l7policies or []:
        build_l7policy(session, listener, policy)
    return listener


def _l4_protocol(protocol: str) -> str:
    return protocol if protocol in L4_PROTOCOLS else "TCP"


def _listener_defaults(fields: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in fields.items() if value is not None}


def build_pool(session: Session, lb: m.LoadBalancer, body: s.PoolTree, listener: m.Listener | None = None,
               network: SubnetCatalog | None = None, stored_only: bool = True) -> m.Pool:
    if listener is not None:
        check_listener_pool(listener.protocol, body.protocol)
        if listener.default_pool_id:
            raise Conflict(f"Listener {listener.id} is already using default pool {listener.default_pool_id}")
    validate_pool_fields(body.protocol, given(body))
    l4_cluster.check_persistence(session, lb, body.protocol, given(body).get("session_persistence"))
    check_tls_refs(session, lb.project_id, given(body), POOL_REFS, stored_only)
    fields = {k: v for k, v in given(body).items()
              if k not in ("healthmonitor", "members", "session_persistence", "listener_id", "loadbalancer_id",
                           "project_id") and v is not None}
    pool = m.Pool(load_balancer=lb, **pending_create(lb.project_id), **fields)
    if body.session_persistence is not None:
        pool.session_persistence = m.SessionPersistence(**body.session_persistence.model_dump())
    session.add(pool)
    session.flush()
    if listener is not None:
        listener.default_pool_id = pool.id
    if body.healthmonitor is not None:
        build_health_monitor(session, pool, body.healthmonitor)
    for member in body.members or []:
        build_member(session, pool, member, network)
    return pool


def validate_pool_fields(protocol: str, fields: dict[str, Any]) -> None:
    persistence = fields.get("session_persistence")
    if protocol in L4_PROTOCOLS:
        validate_l4_pool_fields(protocol, fields)
    if persistence and persistence.get("type") in ("HTTP_COOKIE", "APP_COOKIE") and protocol not in (
            "HTTP", "HTTPS", "PROXY", "PROXYV2"):
        raise InvalidInput(f"Cookie session persistence is not valid for {protocol} pools.")
    if fields.get("tls_enabled") and protocol not in ("HTTP", "TCP", "PROXY", "PROXYV2"):
        raise InvalidInput(f"tls_enabled is not valid for {protocol} pools.")


def validate_l4_pool_fields(protocol: str, fields: dict[str, Any]) -> None:
    """What Octavia refuses for UDP and SCTP pools, and what Cohort's kernel data path does not build."""
    persistence = fields.get("session_persistence")
    if persistence and persistence.get("type") in ("HTTP_COOKIE", "APP_COOKIE"):
        raise InvalidInput(f"Session persistence of type {persistence['type']} is not supported for UDP/SCTP "
                           "protocol pools.")
    algorithm = fields.get("lb_algorithm")
    if algorithm is not None and algorithm not in L4_ALGORITHMS:
        raise InvalidInput(f"Invalid input for field/attribute lb_algorithm. Value: '{algorithm}'. {protocol} pools "
                           f"take {', '.join(L4_ALGORITHMS)}.")
    for name in ("tls_enabled", "tls_container_ref", "ca_tls_container_ref", "crl_container_ref", "tls_ciphers",
                 "tls_versions", "alpn_protocols"):
        if fields.get(name):
            raise InvalidInput(f"Invalid input for field/attribute {name}: {protocol} pools do not support TLS.")


def resolve_subnet(network: SubnetCatalog | None, subnet: str | None) -> str | None:
    if subnet is None or network is None:
        return subnet
    found = network.get_subnet(subnet)
    if found is None:
        raise InvalidInput(f"Subnet {subnet} not found.")
    return found.id


def build_member(session: Session, pool: m.Pool, body: s.MemberCreate, network: SubnetCatalog | None) -> m.Member:
    for other in pool.members:
        if _live(other) and other.address == body.address and other.protocol_port == body.protocol_port:
            raise Conflict(f"Another member on this pool is already using ip {body.address} on protocol_port "
                           f"{body.protocol_port}")
    fields = {k: v for k, v in given(body).items() if k != "project_id" and v is not None}
    fields["subnet_id"] = resolve_subnet(network, body.subnet_id)
    # Read the monitor before the new member joins pool.members (an autoflush in between would warn).
    watched = pool.health_monitor is not None
    member = m.Member(pool=pool, **pending_create(pool.project_id), **fields)
    member.operating_status = "OFFLINE" if watched else "NO_MONITOR"
    session.add(member)
    return member


def update_member(member: m.Member, changes: dict[str, Any]) -> None:
    """Apply a member update; one enabled again in a pool without a monitor is NO_MONITOR, as in Octavia.

    (Disabled it was OFFLINE; with a monitor its status waits for the health manager's next report.)
    """
    apply_changes(member, changes)
    monitor = member.pool.health_monitor
    unmonitored = monitor is None or monitor.provisioning_status == "PENDING_DELETE"
    if changes.get("admin_state_up") is True and unmonitored and member.operating_status == "OFFLINE":
        member.operating_status = "NO_MONITOR"


HTTP_MONITORS = ("HTTP", "HTTPS")
HTTP_MONITOR_DEFAULTS = {"http_method": "GET", "url_path": "/", "expected_codes": "200"}


def monitor_fields(monitor_type: str, fields: dict[str, Any],
                   existing: m.HealthMonitor | None = None) -> dict[str, Any]:
    # A timeout longer than the delay is valid (Octavia takes it; HAProxy bounds each check by its
    # own ``timeout check`` whatever the interval).
    http_only = ("http_method", "url_path", "expected_codes", "http_version", "domain_name")
    if monitor_type not in HTTP_MONITORS:
        for name in http_only:
            if fields.get(name) is not None:
                raise InvalidInput(f"{name} is only valid for HTTP and HTTPS health monitors, not {monitor_type}.")
    delay = fields.get("delay")
    if monitor_type == "UDP-CONNECT" and delay is not None and delay < UDP_CONNECT_MIN_DELAY:
        raise InvalidInput(f"The request delay value {delay} should be larger than {UDP_CONNECT_MIN_DELAY} for "
                           "UDP-CONNECT health monitor type.")
    if fields.get("domain_name") and (fields.get("http_version") or (existing and existing.http_version)) != 1.1:
        raise InvalidInput("domain_name requires http_version 1.1.")
    # Octavia's defaults, on create and when an update unsets (sends null for) one of them.
    defaults: dict[str, Any] = dict(HTTP_MONITOR_DEFAULTS) if monitor_type in HTTP_MONITORS else {}
    defaults["max_retries_down"] = 3
    for name, default in defaults.items():
        if existing is None:
            fields.setdefault(name, default)
        if name in fields and fields[name] is None:
            fields[name] = default
    return {k: v for k, v in fields.items() if v is not None or existing is not None}


def build_health_monitor(session: Session, pool: m.Pool, body: s.HealthMonitorTree) -> m.HealthMonitor:
    if pool.health_monitor is not None and _live(pool.health_monitor):
        raise Conflict(f"Pool {pool.id} already has a health monitor.")
    if pool.health_monitor is not None:
        raise Conflict(f"Pool {pool.id}'s previous health monitor is still being deleted.")
    if pool.protocol in L4_PROTOCOLS and body.type not in L4_MONITORS:
        raise InvalidInput(f"The associated pool protocol is {pool.protocol}, so only a {'/'.join(L4_MONITORS)} "
                           "health monitor is supported.")
    if pool.protocol not in L4_PROTOCOLS and body.type in ("UDP-CONNECT", "SCTP"):
        raise InvalidInput(f"The {body.type} type is only supported for pools of type UDP/SCTP.")
    fields = {k: v for k, v in given(body).items() if k not in ("pool_id", "project_id")}
    fields = monitor_fields(body.type, fields)
    monitor = m.HealthMonitor(pool=pool, **pending_create(pool.project_id), **fields)
    session.add(monitor)
    for member in pool.members:
        if member.operating_status == "NO_MONITOR":
            member.operating_status = "OFFLINE"
    return monitor


def validate_policy(session: Session, listener: m.Listener, fields: dict[str, Any]) -> None:
    if listener.protocol not in L7_LISTENER_PROTOCOLS:
        raise InvalidInput(f"L7 policies are only valid on HTTP and TERMINATED_HTTPS listeners, "
                           f"not {listener.protocol}.")
    action = fields.get("action")
    needs = {"REDIRECT_TO_POOL": "redirect_pool_id", "REDIRECT_TO_URL": "redirect_url",
             "REDIRECT_PREFIX": "redirect_prefix"}
    if action in needs and not fields.get(needs[action]):
        raise InvalidInput(f"{needs[action]} is required for action {action}.")
    for other_action, name in needs.items():
        if action != other_action and fields.get(name):
            raise InvalidInput(f"{name} is not valid for action {action}.")
    if fields.get("redirect_http_code") and action not in ("REDIRECT_TO_URL", "REDIRECT_PREFIX"):
        raise InvalidInput(f"redirect_http_code is not valid for action {action}.")
    pool_id = fields.get("redirect_pool_id")
    if pool_id:
        pool = session.get(m.Pool, pool_id)
        if pool is None or pool.load_balancer_id != listener.load_balancer_id or not _live(pool):
            raise InvalidInput(f"Pool {pool_id} not found on this listener's load balancer.")
        check_listener_pool(listener.protocol, pool.protocol)


def place_policy(listener: m.Listener, policy: m.L7Policy, position: int | None) -> None:
    """Insert at ``position`` (1-based; past the end appends) and renumber, as Octavia does."""
    others = [p for p in listener.l7policies if p is not policy and _live(p)]
    others.sort(key=lambda p: p.position)
    index = len(others) if position is None else max(0, min(position - 1, len(others)))
    others.insert(index, policy)
    for number, item in enumerate(others, start=1):
        item.position = number


def build_l7policy(session: Session, listener: m.Listener, body: s.L7PolicyTree | s.L7PolicyCreate) -> m.L7Policy:
    fields = given(body)
    redirect_pool = fields.pop("redirect_pool", None)
    if isinstance(body, s.L7PolicyTree) and body.redirect_pool is not None and redirect_pool is not None:
        pool = build_pool(session, listener.load_balancer, body.redirect_pool)
        fields["redirect_pool_id"] = pool.id
    validate_policy(session, listener, fields)
    fields.pop("rules", None)
    position = fields.pop("position", None)
    for key in ("listener_id", "project_id"):
        fields.pop(key, None)
    if fields.get("action") in ("REDIRECT_TO_URL", "REDIRECT_PREFIX"):
        fields.setdefault("redirect_http_code", 302)
    policy = m.L7Policy(listener=listener, **pending_create(listener.project_id), **fields)
    session.add(policy)
    place_policy(listener, policy, position)
    for rule in body.rules or []:
        build_l7rule(session, policy, rule)
    return policy


def validate_rule(fields: dict[str, Any]) -> None:
    """The whole rule (a create, or a stored rule merged with an update) by the renderer's rules."""
    rule_type, compare, key, value = (fields.get("type"), fields.get("compare_type"), fields.get("key"),
                                      fields.get("value"))
    if rule_type == "SSL_DN_FIELD" and key not in DN_FIELDS:
        raise InvalidInput(f"Invalid L7 rule key {key!r} for SSL_DN_FIELD: one of {', '.join(sorted(DN_FIELDS))}.")
    try:
        validation.l7_rule(str(rule_type), str(compare), None if key is None else str(key), str(value))
    except ValueError as exc:
        raise InvalidInput(f"Invalid L7 rule: {exc}.") from exc


def build_l7rule(session: Session, policy: m.L7Policy, body: s.L7RuleCreate) -> m.L7Rule:
    fields = {k: v for k, v in given(body).items() if k != "project_id" and v is not None}
    validate_rule(fields)
    rule = m.L7Rule(l7policy=policy, **pending_create(policy.project_id), **fields)
    session.add(rule)
    return rule


def listeners_using_pool(session: Session, pool_id: str) -> list[str]:
    return listeners_using_pools(session, [pool_id])[pool_id]


def listeners_using_pools(session: Session, pool_ids: list[str]) -> dict[str, list[str]]:
    """The listeners that send traffic to each pool (as default pool or by an L7 redirect), in two queries."""
    found: dict[str, list[str]] = {pool_id: [] for pool_id in pool_ids}
    if not pool_ids:
        return found
    default = session.execute(select(m.Listener.default_pool_id, m.Listener.id)
                              .where(m.Listener.default_pool_id.in_(pool_ids)).order_by(m.Listener.created_at))
    redirect = session.execute(select(m.L7Policy.redirect_pool_id, m.L7Policy.listener_id)
                               .where(m.L7Policy.redirect_pool_id.in_(pool_ids)).order_by(m.L7Policy.created_at))
    for pool_id, listener_id in [*default, *redirect]:
        if listener_id not in found[pool_id]:
            found[pool_id].append(listener_id)
    return found


def set_fields(row: Any, changes: dict[str, Any]) -> None:
    """Set each sent attribute; an explicit null resets it to its default, as Octavia's ``unset`` expects.

    A null for an attribute that has neither a default nor may be empty is a 400, not a database error.
    """
    columns = row.__table__.columns
    for key, value in changes.items():
        if value is None and key in columns:
            default = columns[key].default
            if default is None:
                if not columns[key].nullable:
                    raise InvalidInput(f"Invalid input for field/attribute {key}. Value: null. "
                                       "This attribute cannot be unset.")
                value = None
            elif callable(default.arg):
                value = default.arg(None)
            else:
                value = default.arg
        setattr(row, key, value)


def apply_changes(row: Any, changes: dict[str, Any]) -> None:
    """``set_fields`` on a provisioned object, which then waits for the reconciler to apply the change."""
    set_fields(row, changes)
    if row.provisioning_status == "ACTIVE" or row.provisioning_status == "ERROR":
        row.provisioning_status = "PENDING_UPDATE"
