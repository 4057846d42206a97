"""Build the drivers' view (``cohort.datamodel``) of a load balancer from its rows.

Objects on their way out (PENDING_DELETE) are left out: the desired state is what should serve.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy.orm import Session

from cohort import datamodel as d
from cohort.config import Settings
from cohort.db import models as m


def _live(row: Any) -> bool:
    return bool(row.provisioning_status != "PENDING_DELETE")


def flavor_data(session: Session, flavor_id: str | None) -> dict[str, Any]:
    if not flavor_id:
        return {}
    flavor = session.get(m.Flavor, flavor_id)
    profile = session.get(m.FlavorProfile, flavor.flavor_profile_id) if flavor else None
    data: dict[str, Any] = json.loads(profile.flavor_data) if profile else {}
    return data


def topology(session: Session, settings: Settings, lb: m.LoadBalancer) -> d.Topology:
    data = flavor_data(session, lb.flavor_id)
    cluster = session.query(m.AmphoraCluster).filter_by(load_balancer_id=lb.id).one_or_none()
    return d.Topology(
        name=lb.topology or settings.default_topology,
        amp_cluster_size=cluster.desired_size if cluster else int(data.get("amp_cluster_size", 3)),
        amp_cluster_min_size=cluster.min_size if cluster else int(data.get("amp_cluster_min_size", 2)),
        amp_cluster_cooldown=cluster.cooldown if cluster else int(data.get("amp_cluster_cooldown", 30)),
        distributor_type=str(data.get("distributor_type", "L2")),
        distributor_affinity=str(data.get("distributor_affinity", "SOURCE_IP")),
        bgp_speaker_id=data.get("bgp_speaker_id"),
        compute_flavor=dict(data.get("compute_flavor") or {}),
    )


def _monitor(row: m.HealthMonitor | None) -> d.HealthMonitor | None:
    if row is None or not _live(row):
        return None
    return d.HealthMonitor(
        id=row.id, type=row.type, delay=row.delay, timeout=row.timeout, max_retries=row.max_retries,
        max_retries_down=row.max_retries_down, http_method=row.http_method, url_path=row.url_path,
        expected_codes=row.expected_codes, http_version=row.http_version, domain_name=row.domain_name,
        admin_state_up=row.admin_state_up, name=row.name,
    )


def _pool(row: m.Pool) -> d.Pool:
    persistence = row.session_persistence
    return d.Pool(
        id=row.id, protocol=row.protocol, lb_algorithm=row.lb_algorithm, name=row.name,
        members=tuple(
            d.Member(id=mb.id, address=mb.address, protocol_port=mb.protocol_port, weight=mb.weight,
                     backup=mb.backup, subnet_id=mb.subnet_id, monitor_address=mb.monitor_address,
                     monitor_port=mb.monitor_port, admin_state_up=mb.admin_state_up, name=mb.name)
            for mb in row.members if _live(mb)
        ),
        healthmonitor=_monitor(row.health_monitor),
        session_persistence=d.SessionPersistence(
            type=persistence.type, cookie_name=persistence.cookie_name,
            persistence_timeout=persistence.persistence_timeout,
            persistence_granularity=persistence.persistence_granularity,
        ) if persistence else None,
        admin_state_up=row.admin_state_up, tls_enabled=row.tls_enabled, tls_container_ref=row.tls_container_ref,
        ca_tls_container_ref=row.ca_tls_container_ref, crl_container_ref=row.crl_container_ref,
        tls_ciphers=row.tls_ciphers, tls_versions=tuple(row.tls_versions or ()),
        alpn_protocols=tuple(row.alpn_protocols or ()),
    )


def _policy(row: m.L7Policy) -> d.L7Policy:
    return d.L7Policy(
        id=row.id, action=row.action, position=row.position, name=row.name,
        rules=tuple(d.L7Rule(id=r.id, type=r.type, compare_type=r.compare_type, value=r.value, key=r.key,
                             invert=r.invert, admin_state_up=r.admin_state_up)
                    for r in row.rules if _live(r)),
        redirect_pool_id=row.redirect_pool_id, redirect_url=row.redirect_url, redirect_prefix=row.redirect_prefix,
        redirect_http_code=row.redirect_http_code, admin_state_up=row.admin_state_up,
    )


def _listener(row: m.Listener, live_pools: set[str]) -> d.Listener:
    return d.Listener(
        id=row.id, protocol=row.protocol, protocol_port=row.protocol_port, name=row.name,
        default_pool_id=row.default_pool_id if row.default_pool_id in live_pools else None,
        connection_limit=row.connection_limit,
        l7policies=tuple(_policy(p) for p in sorted(row.l7policies, key=lambda p: p.position) if _live(p)),
        insert_headers=dict(row.insert_headers or {}),
        timeout_client_data=row.timeout_client_data, timeout_member_connect=row.timeout_member_connect,
        timeout_member_data=row.timeout_member_data, timeout_tcp_inspect=row.timeout_tcp_inspect,
        allowed_cidrs=tuple(row.allowed_cidrs or ()), default_tls_container_ref=row.default_tls_container_ref,
        sni_container_refs=tuple(row.sni_container_refs or ()),
        client_ca_tls_container_ref=row.client_ca_tls_container_ref,
        client_authentication=row.client_authentication, client_crl_container_ref=row.client_crl_container_ref,
        tls_ciphers=row.tls_ciphers, tls_versions=tuple(row.tls_versions or ()),
        alpn_protocols=tuple(row.alpn_protocols or ()), hsts_max_age=row.hsts_max_age,
        hsts_include_subdomains=row.hsts_include_subdomains, hsts_preload=row.hsts_preload,
        admin_state_up=row.admin_state_up,
    )


def load_balancer(session: Session, settings: Settings, lb: m.LoadBalancer) -> d.LoadBalancer:
    pools = [p for p in lb.pools if _live(p)]
    live_pools = {p.id for p in pools}
    return d.LoadBalancer(
        id=lb.id, project_id=lb.project_id, vip_address=lb.vip_address, vip_subnet_id=lb.vip_subnet_id,
        vip_network_id=lb.vip_network_id, vip_port_id=lb.vip_port_id, name=lb.name,
        topology=topology(session, settings, lb),
        listeners=tuple(_listener(row, live_pools) for row in lb.listeners if _live(row)),
        pools=tuple(_pool(p) for p in pools), admin_state_up=lb.admin_state_up,
    )


def amphora(row: m.Amphora) -> d.Amphora:
    return d.Amphora(
        id=row.id, load_balancer_id=row.load_balancer_id, role=row.role or "STANDALONE",
        compute_id=row.compute_id, lb_network_ip=row.lb_network_ip, vrrp_ip=row.vrrp_ip, ha_ip=row.ha_ip,
        vrrp_priority=row.vrrp_priority, vrrp_id=row.vrrp_id, compute_flavor=dict(row.compute_flavor or {}),
        frontend_mac=row.frontend_mac,
    )


def member_subnets(lb: d.LoadBalancer) -> list[str]:
    """Member networks the amphorae must be plugged into (the VIP network needs no extra port)."""
    subnets = {mb.subnet_id for pool in lb.pools for mb in pool.members if mb.subnet_id}
    subnets.discard(lb.vip_subnet_id)
    return sorted(s for s in subnets if s)
