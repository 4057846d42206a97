"""Render a load balancer's UDP and SCTP listeners as the amphora's L4 spec (``l4_spec``'s JSON).

HAProxy serves neither protocol; the amphora agent programs nftables from this spec instead
(``cohort.agents.amphora.l4``). Every value is checked here with the shared rules before it
leaves the controller (a value the agent would refuse is a ValueError, the load balancer's
ERROR with a reason, never a half-applied table), and the agent parses the spec again.

Octavia's LVS semantics are kept: SOURCE_IP persistence defaults to a 360 s timeout and a
/32 (/128) granularity; a disabled load balancer or listener serves nothing; disabled members
and pools take no new flows; a listener's ``allowed_cidrs`` admit only those sources (Octavia
filters them in the VIP port's security group, the amphora's nftables here).
"""

from __future__ import annotations

from typing import Any

from cohort import validation
from cohort.agents.amphora import l4_spec
from cohort.datamodel import HealthMonitor, Listener, LoadBalancer, Member, Pool

L4_PROTOCOLS = frozenset(l4_spec.PROTOCOLS)
DEFAULT_PERSISTENCE_TIMEOUT = 360


def is_l4(protocol: str) -> bool:
    return protocol in L4_PROTOCOLS


def _monitor(hm: HealthMonitor | None) -> dict[str, Any] | None:
    if hm is None:
        return None
    codes = validation.expected_codes(hm.expected_codes or "200") if hm.type == "HTTP" else [200]
    return {"type": hm.type, "delay": hm.delay, "timeout": hm.timeout, "max_retries": hm.max_retries,
            "max_retries_down": hm.max_retries_down, "http_method": hm.http_method or "GET",
            "url_path": hm.url_path or "/", "expected_codes": codes, "enabled": hm.admin_state_up}


def _member(member: Member) -> dict[str, Any]:
    return {"id": member.id, "address": member.address, "port": member.protocol_port, "weight": member.weight,
            "backup": member.backup, "enabled": member.admin_state_up, "monitor_address": member.monitor_address,
            "monitor_port": member.monitor_port}


def _pool(pool: Pool, listener: Listener, ipv6: bool) -> dict[str, Any]:
    if pool.protocol != listener.protocol:
        raise ValueError(f"listener {listener.id} ({listener.protocol}) cannot use pool {pool.id} ({pool.protocol})")
    persistence = None
    sp = pool.session_persistence
    if sp is not None:
        if sp.type != "SOURCE_IP":
            raise ValueError(f"pool {pool.id}: {sp.type} persistence is not valid for {pool.protocol} pools")
        bits = validation.netmask_bits(sp.persistence_granularity) if sp.persistence_granularity else (
            128 if ipv6 else 32)
        if bits > (128 if ipv6 else 32):
            raise ValueError(f"pool {pool.id}: persistence_granularity {sp.persistence_granularity!r} is out of range")
        timeout = sp.persistence_timeout if sp.persistence_timeout else DEFAULT_PERSISTENCE_TIMEOUT
        persistence = {"timeout": min(timeout, l4_spec.MAX_SECONDS), "granularity": bits}
    return {"id": pool.id, "algorithm": pool.lb_algorithm, "enabled": pool.admin_state_up,
            "persistence": persistence, "monitor": _monitor(pool.healthmonitor),
            "members": [_member(m) for m in pool.members]}


def render_l4(lb: LoadBalancer) -> dict[str, Any] | None:
    """The L4 spec of ``lb``'s UDP and SCTP listeners, or None when it has none."""
    listeners = [li for li in lb.listeners if is_l4(li.protocol)]
    if not listeners:
        return None
    if not lb.vip_address:
        raise ValueError(f"load balancer {lb.id} has no VIP address")
    vip = validation.ip_address(lb.vip_address, "VIP")
    rendered = []
    for listener in listeners:
        pool = lb.pool(listener.default_pool_id) if listener.default_pool_id else None
        if listener.default_pool_id and pool is None:
            raise ValueError(f"listener {listener.id} routes to unknown pool {listener.default_pool_id}")
        rendered.append({
            "id": listener.id, "protocol": listener.protocol, "vip": vip.compressed, "port": listener.protocol_port,
            "connection_limit": listener.connection_limit if listener.connection_limit > 0 else -1,
            "enabled": lb.admin_state_up and listener.admin_state_up,
            "allowed_cidrs": [validation.canonical_cidr(cidr, "allowed CIDR") for cidr in listener.allowed_cidrs],
            "pool": None if pool is None else _pool(pool, listener, vip.version == 6),
        })
    spec = {"listeners": rendered}
    # The agent's own parser: whatever it would refuse is refused here, before anything is sent.
    return l4_spec.parse(spec).to_json()
