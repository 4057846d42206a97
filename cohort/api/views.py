"""Rows to Octavia wire dicts: one function per resource, the only place field names are spelled."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from cohort.db import models as m


def _time(value: datetime | None) -> str | None:
    return value.replace(microsecond=0).isoformat() if value else None


def compute_uuid(compute_id: str | None) -> str | None:
    """An instance's id as Octavia shows it, a UUID: the driver's own id when it is one, else derived from it.

    The lab names instances after their namespace (``cohort-a-1a2b3c4d``); that name stays visible
    as the amphora's ``compute_name``.
    """
    if compute_id is None:
        return None
    try:
        return str(uuid.UUID(compute_id))
    except ValueError:
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"cohort-compute://{compute_id}"))


def _refs(ids: list[str]) -> list[dict[str, str]]:
    return [{"id": ident} for ident in ids]


def _common(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "name": row.name,
        "project_id": row.project_id,
        "tenant_id": row.project_id,
        "provisioning_status": row.provisioning_status,
        "operating_status": row.operating_status,
        "admin_state_up": row.admin_state_up,
        "created_at": _time(row.created_at),
        "updated_at": _time(row.updated_at),
        "tags": list(row.tags or []),
    }


def load_balancer(row: Any, listener_ids: list[str], pool_ids: list[str]) -> dict[str, Any]:
    """``row``: a LoadBalancer or a row of its table (the hot reads skip the ORM)."""
    return {
        **_common(row),
        "description": row.description,
        "vip_address": row.vip_address,
        "vip_port_id": row.vip_port_id,
        "vip_subnet_id": row.vip_subnet_id,
        "vip_network_id": row.vip_network_id,
        "vip_qos_policy_id": row.vip_qos_policy_id,
        "vip_sg_ids": list(row.vip_sg_ids or []),
        "vip_vnic_type": row.vip_vnic_type,
        "additional_vips": list(row.additional_vips or []),
        "listeners": _refs(listener_ids),
        "pools": _refs(pool_ids),
        "provider": row.provider,
        "flavor_id": row.flavor_id,
        "availability_zone": row.availability_zone,
    }


def listener(row: m.Listener) -> dict[str, Any]:
    return {
        **_common(row),
        "description": row.description,
        "protocol": row.protocol,
        "protocol_port": row.protocol_port,
        "connection_limit": row.connection_limit,
        "default_tls_container_ref": row.default_tls_container_ref,
        "sni_container_refs": list(row.sni_container_refs or []),
        "default_pool_id": row.default_pool_id,
        "l7policies": _refs([policy.id for policy in row.l7policies]),
        "insert_headers": dict(row.insert_headers or {}),
        "loadbalancers": _refs([row.load_balancer_id]),
        "timeout_client_data": row.timeout_client_data,
        "timeout_member_connect": row.timeout_member_connect,
        "timeout_member_data": row.timeout_member_data,
        "timeout_tcp_inspect": row.timeout_tcp_inspect,
        "client_ca_tls_container_ref": row.client_ca_tls_container_ref,
        "client_authentication": row.client_authentication,
        "client_crl_container_ref": row.client_crl_container_ref,
        "allowed_cidrs": list(row.allowed_cidrs) if row.allowed_cidrs else None,
        "tls_ciphers": row.tls_ciphers,
        "tls_versions": list(row.tls_versions) if row.tls_versions else None,
        "alpn_protocols": list(row.alpn_protocols) if row.alpn_protocols else None,
        "hsts_max_age": row.hsts_max_age,
        "hsts_include_subdomains": row.hsts_include_subdomains,
        "hsts_preload": row.hsts_preload,
    }


def session_persistence(row: m.SessionPersistence | None) -> dict[str, Any] | None:
    if row is None:
        return None
    return {
        "type": row.type,
        "cookie_name": row.cookie_name,
        "persistence_timeout": row.persistence_timeout,
        "persistence_granularity": row.persistence_granularity,
    }


def pool(row: m.Pool, listener_ids: list[str]) -> dict[str, Any]:
    return {
        **_common(row),
        "description": row.description,
        "protocol": row.protocol,
        "lb_algorithm": row.lb_algorithm,
        "session_persistence": session_persistence(row.session_persistence),
        "healthmonitor_id": row.health_monitor.id if row.health_monitor else None,
        "members": _refs([member.id for member in row.members]),
        "listeners": _refs(listener_ids),
        "loadbalancers": _refs([row.load_balancer_id]),
        "tls_enabled": row.tls_enabled,
        "tls_container_ref": row.tls_container_ref,
        "ca_tls_container_ref": row.ca_tls_container_ref,
        "crl_container_ref": row.crl_container_ref,
        "tls_ciphers": row.tls_ciphers,
        "tls_versions": list(row.tls_versions) if row.tls_versions else None,
        "alpn_protocols": list(row.alpn_protocols) if row.alpn_protocols else None,
    }


def member(row: m.Member) -> dict[str, Any]:
    return {
        **_common(row),
        "address": row.address,
        "protocol_port": row.protocol_port,
        "weight": row.weight,
        "backup": row.backup,
        "subnet_id": row.subnet_id,
        "monitor_address": row.monitor_address,
        "monitor_port": row.monitor_port,
        "vnic_type": row.vnic_type,
    }


def health_monitor(row: m.HealthMonitor) -> dict[str, Any]:
    return {
        **_common(row),
        "type": row.type,
        "delay": row.delay,
        "timeout": row.timeout,
        "max_retries": row.max_retries,
        "max_retries_down": row.max_retries_down,
        "http_method": row.http_method,
        "url_path": row.url_path,
        "expected_codes": row.expected_codes,
        "http_version": row.http_version,
        "domain_name": row.domain_name,
        "pools": _refs([row.pool_id]),
    }


def l7policy(row: m.L7Policy) -> dict[str, Any]:
    return {
        **_common(row),
        "description": row.description,
        "action": row.action,
        "listener_id": row.listener_id,
        "redirect_pool_id": row.redirect_pool_id,
        "redirect_url": row.redirect_url,
        "redirect_prefix": row.redirect_prefix,
        "redirect_http_code": row.redirect_http_code,
        "position": row.position,
        "rules": _refs([rule.id for rule in row.rules]),
    }


def l7rule(row: m.L7Rule) -> dict[str, Any]:
    body = _common(row)
    body.pop("name")
    return {
        **body,
        "type": row.type,
        "compare_type": row.compare_type,
        "key": row.key,
        "value": row.value,
        "invert": row.invert,
    }


def amphora(row: m.Amphora) -> dict[str, Any]:
    return {
        "id": row.id,
        "loadbalancer_id": row.load_balancer_id,
        "compute_id": compute_uuid(row.compute_id),
        "compute_name": row.compute_id,
        "lb_network_ip": row.lb_network_ip,
        "vrrp_ip": row.vrrp_ip,
        "ha_ip": row.ha_ip,
        "vrrp_port_id": row.vrrp_port_id,
        "ha_port_id": row.ha_port_id,
        "cert_expiration": _time(row.cert_expiration),
        "cert_busy": row.cert_busy,
        "role": row.role,
        "status": row.status,
        "vrrp_interface": row.vrrp_interface,
        "vrrp_id": row.vrrp_id,
        "vrrp_priority": row.vrrp_priority,
        "cached_zone": row.cached_zone,
        "image_id": row.image_id,
        "compute_flavor": row.compute_flavor.get("name") if row.compute_flavor else None,
        "created_at": _time(row.created_at),
        "updated_at": _time(row.updated_at),
    }


def cluster(row: m.AmphoraCluster, amphora_ids: list[str], actual_size: int,
            bgp: dict[str, Any] | None = None) -> dict[str, Any]:
    extra: dict[str, Any] = {} if bgp is None else {"bgp": bgp}
    return {
        **extra,
        "status_reason": row.status_reason,
        "id": row.id,
        "cluster_name": row.cluster_name,
        "loadbalancer_id": row.load_balancer_id,
        "distributor_id": row.distributor_id,
        "desired_size": row.desired_size,
        "actual_size": actual_size,
        "min_size": row.min_size,
        "cooldown": row.cooldown,
        "provisioning_status": row.provisioning_status,
        "operating_status": row.operating_status,
        "enabled": row.enabled,
        "cluster_type": row.cluster_type,
        "amphorae": _refs(amphora_ids),
        "created_at": _time(row.created_at),
        "updated_at": _time(row.updated_at),
    }


def distributor(row: m.Distributor, registrations: list[m.AmphoraRegistration], operating_status: str,
                last_heartbeat: float | None) -> dict[str, Any]:
    by_lb: dict[str, list[dict[str, Any]]] = {}
    for reg in sorted(registrations, key=lambda r: (r.load_balancer_id, r.position)):
        by_lb.setdefault(reg.load_balancer_id, []).append(
            {"amphora_id": reg.amphora_id, "position": reg.position, "state": reg.state, "weight": reg.weight}
        )
    return {
        "id": row.id,
        "name": row.name,
        "distributor_type": row.distributor_type,
        "compute_id": row.compute_id,
        "lb_network_ip": row.lb_network_ip,
        "status": row.status,
        "status_reason": row.status_reason,
        "role": row.role,
        "operating_status": operating_status,
        "last_heartbeat": None if last_heartbeat is None else _time(datetime.fromtimestamp(last_heartbeat, UTC)
                                                                     .replace(tzinfo=None)),
        "vip_port_ids": list(row.vip_port_ids or []),
        "loadbalancers": [{"id": lb, "amphorae": amps} for lb, amps in by_lb.items()],
        "created_at": _time(row.created_at),
        "updated_at": _time(row.updated_at),
    }


def bgp_speaker(row: m.BgpSpeaker) -> dict[str, Any]:
    return {"id": row.id, "name": row.name, "local_as": row.local_as, "ip_version": row.ip_version,
            "created_at": _time(row.created_at), "updated_at": _time(row.updated_at)}


def bgp_peer(row: m.BgpPeer) -> dict[str, Any]:
    # The md5 password is write-only: say whether one is set, never what it is.
    return {
        "id": row.id, "name": row.name, "bgp_speaker_id": row.bgp_speaker_id, "peer_ip": row.peer_ip,
        "remote_as": row.remote_as, "auth_type": row.auth_type,
        "md5_password_set": row.md5_password_ciphertext is not None,
        "ttl_hops": row.ttl_hops, "hold_time": row.hold_time, "keepalive_interval": row.keepalive_interval,
        "bfd_enabled": row.bfd_enabled, "bfd_min_rx": row.bfd_min_rx, "bfd_min_tx": row.bfd_min_tx,
        "bfd_multiplier": row.bfd_multiplier,
        "created_at": _time(row.created_at), "updated_at": _time(row.updated_at),
    }


def flavor(row: m.Flavor) -> dict[str, Any]:
    return {"id": row.id, "name": row.name, "description": row.description, "enabled": row.enabled,
            "flavor_profile_id": row.flavor_profile_id}


def flavor_profile(row: m.FlavorProfile) -> dict[str, Any]:
    return {"id": row.id, "name": row.name, "provider_name": row.provider_name, "flavor_data": row.flavor_data}


def availability_zone(row: m.AvailabilityZone) -> dict[str, Any]:
    return {"name": row.name, "description": row.description, "enabled": row.enabled,
            "availability_zone_profile_id": row.availability_zone_profile_id}


def availability_zone_profile(row: m.AvailabilityZoneProfile) -> dict[str, Any]:
    return {"id": row.id, "name": row.name, "provider_name": row.provider_name,
            "availability_zone_data": row.availability_zone_data}
