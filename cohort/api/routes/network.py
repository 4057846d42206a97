"""A read-only subset of Neutron's v2.0 API: the subnets and networks the network driver knows.

The real clients resolve names before they talk to the load-balancer API: ``openstack
loadbalancer create --vip-subnet-id public-subnet`` first asks the *network* service for
``GET /v2.0/subnets?name=public-subnet`` (with ``--os-endpoint`` that is this very server). So
Cohort answers those look-ups from its network driver, and answers the optional ones (ports,
QoS policies, security groups) with empty lists: Cohort allocates VIP ports itself.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from cohort.api.deps import Ctx, State
from cohort.api.errors import NotFound
from cohort.api.routing import JSONRoute
from cohort.datamodel import Subnet

router = APIRouter(route_class=JSONRoute)


def _network_name(subnet: Subnet) -> str:
    # The lab names a network after its subnet ("public-subnet" is on "public-network").
    stem = subnet.name.removesuffix("-subnet")
    return f"{stem}-network" if stem != subnet.name else subnet.network_id


def subnet_view(subnet: Subnet, project_id: str) -> dict[str, Any]:
    return {
        "id": subnet.id, "name": subnet.name, "network_id": subnet.network_id, "cidr": subnet.cidr,
        "gateway_ip": subnet.gateway_ip, "ip_version": subnet.ip_version, "enable_dhcp": False,
        "project_id": project_id, "tenant_id": project_id, "description": "", "tags": [],
        "allocation_pools": [], "dns_nameservers": [], "host_routes": [], "subnetpool_id": None,
        "ipv6_address_mode": None, "ipv6_ra_mode": None, "revision_number": 0,
    }


def network_view(subnets: list[Subnet], project_id: str) -> dict[str, Any]:
    first = subnets[0]
    return {
        "id": first.network_id, "name": _network_name(first), "subnets": [s.id for s in subnets],
        "status": "ACTIVE", "admin_state_up": True, "shared": True, "router:external": False,
        "project_id": project_id, "tenant_id": project_id, "description": "", "tags": [], "mtu": 1500,
        "revision_number": 0,
    }


def _filtered(items: list[dict[str, Any]], request: Request) -> list[dict[str, Any]]:
    """Neutron's exact-match filters on any attribute; list options it ignores here are skipped."""
    ignored = {"fields", "sort_key", "sort_dir", "limit", "marker", "page_reverse"}
    filters: dict[str, list[str]] = {}
    for key, value in request.query_params.multi_items():
        if key not in ignored:
            filters.setdefault(key, []).append(value)
    return [item for item in items
            if all(str(item.get(key)) in values for key, values in filters.items())]


def _subnets(state: State, ctx: Ctx) -> list[dict[str, Any]]:
    return [subnet_view(subnet, ctx.project_id) for subnet in state.network.list_subnets()]


def _networks(state: State, ctx: Ctx) -> list[dict[str, Any]]:
    by_network: dict[str, list[Subnet]] = {}
    for subnet in state.network.list_subnets():
        by_network.setdefault(subnet.network_id, []).append(subnet)
    return [network_view(subnets, ctx.project_id) for subnets in by_network.values()]


@router.get("/subnets")
def list_subnets(request: Request, state: State, ctx: Ctx) -> dict[str, Any]:
    return {"subnets": _filtered(_subnets(state, ctx), request)}


@router.get("/subnets/{ident}")
def show_subnet(ident: str, state: State, ctx: Ctx) -> dict[str, Any]:
    found = [s for s in _subnets(state, ctx) if s["id"] == ident]
    if not found:
        # A network that takes subnets it has never listed (the noop one takes any UUID) shows them too.
        subnet = state.network.get_subnet(ident)
        if subnet is None or subnet.id != ident:
            raise NotFound("Subnet", ident)
        return {"subnet": subnet_view(subnet, ctx.project_id)}
    return {"subnet": found[0]}


@router.get("/networks")
def list_networks(request: Request, state: State, ctx: Ctx) -> dict[str, Any]:
    return {"networks": _filtered(_networks(state, ctx), request)}


@router.get("/networks/{ident}")
def show_network(ident: str, state: State, ctx: Ctx) -> dict[str, Any]:
    found = [n for n in _networks(state, ctx) if n["id"] == ident]
    if not found:
        raise NotFound("Network", ident)
    return {"network": found[0]}


@router.get("/ports")
def list_ports(ctx: Ctx) -> dict[str, Any]:
    return {"ports": []}


@router.get("/qos/policies")
def list_qos_policies(ctx: Ctx) -> dict[str, Any]:
    return {"policies": []}


@router.get("/security-groups")
def list_security_groups(ctx: Ctx) -> dict[str, Any]:
    return {"security_groups": []}
