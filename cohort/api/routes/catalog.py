"""Providers, flavors, flavor profiles, availability zones and their profiles (operator catalogue)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from cohort.api import views
from cohort.api.builders import set_fields
from cohort.api.collection import list_collection
from cohort.api.deps import DB, Ctx, RawBody
from cohort.api.errors import Conflict, InvalidInput, NotFound
from cohort.api.listing import parse_options, select_fields
from cohort.api.routing import JSONRoute
from cohort.api.schemas import admin as a
from cohort.api.schemas.common import given, unwrap
from cohort.db import models as m

router = APIRouter(prefix="/lbaas", route_class=JSONRoute)

# The two providers as Octavia lists them (clients and its API tests compare the descriptions).
# What Cohort adds to the amphora provider (ACTIVE_ACTIVE clusters) is told by its own flavor
# capabilities (amp_cluster_size, distributor_type, ...), not by rewording these.
PROVIDERS = [
    {"name": "amphora", "description": "The Octavia Amphora driver."},
    {"name": "octavia", "description": "Deprecated alias of the Octavia Amphora driver."},
]
PROVIDER_NAMES = {p["name"] for p in PROVIDERS}


def _provider(name: str) -> str:
    if name not in PROVIDER_NAMES:
        raise InvalidInput(f"Provider '{name}' is not enabled.")
    return name


@router.get("/providers")
def providers(request: Request, ctx: Ctx) -> dict[str, Any]:
    fields = parse_options(list(request.query_params.multi_items()), 1).fields
    return {"providers": [select_fields(dict(p), fields) for p in PROVIDERS], "providers_links": []}


def _capabilities(request: Request, items: list[dict[str, str]]) -> list[dict[str, str]]:
    """A capability list with Octavia's list options: filters by name or description, and ``fields``."""
    options = parse_options(list(request.query_params.multi_items()), 1)
    wanted = {key: value for key, value in options.filters.items() if key in ("name", "description")}
    return [select_fields(dict(item), options.fields) for item in items
            if all(item.get(key) == value for key, value in wanted.items())]


@router.get("/providers/{provider}/flavor_capabilities")
def flavor_capabilities(provider: str, request: Request, ctx: Ctx) -> dict[str, Any]:
    if provider not in PROVIDER_NAMES:
        raise NotFound("Provider", provider)
    return {"flavor_capabilities": _capabilities(request, a.FLAVOR_CAPABILITIES)}


@router.get("/providers/{provider}/availability_zone_capabilities")
def az_capabilities(provider: str, request: Request, ctx: Ctx) -> dict[str, Any]:
    if provider not in PROVIDER_NAMES:
        raise NotFound("Provider", provider)
    return {"availability_zone_capabilities": _capabilities(request, a.AZ_CAPABILITIES)}


def _get(session: Session, model: type[Any], ident: str, label: str) -> Any:
    row = session.get(model, ident)
    if row is None:
        raise NotFound(label, ident)
    return row


def _commit(session: Session, what: str) -> None:
    try:
        session.commit()
    except IntegrityError as exc:
        session.rollback()
        raise Conflict(f"{what} already exists or is in use.") from exc


def _in_use(session: Session, model: type[Any], column: Any, ident: str, what: str) -> None:
    if session.scalar(select(func.count()).select_from(model).where(column == ident)):
        raise Conflict(f"{what} {ident} is in use and cannot be deleted.")


# Flavor profiles --------------------------------------------------------------------------------

@router.post("/flavorprofiles", status_code=201)
def create_flavor_profile(raw: RawBody, request: Request, session: DB, ctx: Ctx) -> dict[str, Any]:
    ctx.require_admin()
    body = unwrap(raw, "flavorprofile", a.FlavorProfileCreate)
    a.parse_flavor_data(_provider(body.provider_name), body.flavor_data)
    row = m.FlavorProfile(**given(body))
    session.add(row)
    _commit(session, "Flavor profile")
    return {"flavorprofile": views.flavor_profile(row)}


@router.get("/flavorprofiles")
def list_flavor_profiles(request: Request, session: DB, ctx: Ctx) -> dict[str, Any]:
    ctx.require_admin()
    return list_collection(request, session, ctx, m.FlavorProfile, "flavorprofiles", views.flavor_profile,
                           scoped=False)


@router.get("/flavorprofiles/{ident}")
def show_flavor_profile(ident: str, session: DB, ctx: Ctx) -> dict[str, Any]:
    ctx.require_admin()
    return {"flavorprofile": views.flavor_profile(_get(session, m.FlavorProfile, ident, "Flavor profile"))}


@router.put("/flavorprofiles/{ident}")
def update_flavor_profile(raw: RawBody, ident: str, request: Request, session: DB, ctx: Ctx) -> dict[str, Any]:
    ctx.require_admin()
    body = unwrap(raw, "flavorprofile", a.FlavorProfileUpdate)
    row = _get(session, m.FlavorProfile, ident, "Flavor profile")
    changes = {k: v for k, v in given(body).items() if v is not None}
    provider = _provider(changes.get("provider_name", row.provider_name))
    a.parse_flavor_data(provider, changes.get("flavor_data", row.flavor_data))
    for key, value in changes.items():
        setattr(row, key, value)
    _commit(session, "Flavor profile")
    return {"flavorprofile": views.flavor_profile(row)}


@router.delete("/flavorprofiles/{ident}", status_code=204)
def delete_flavor_profile(ident: str, session: DB, ctx: Ctx) -> Response:
    ctx.require_admin()
    row = _get(session, m.FlavorProfile, ident, "Flavor profile")
    _in_use(session, m.Flavor, m.Flavor.flavor_profile_id, ident, "Flavor profile")
    session.delete(row)
    session.commit()
    return Response(status_code=204)


# Flavors ----------------------------------------------------------------------------------------

@router.post("/flavors", status_code=201)
def create_flavor(raw: RawBody, request: Request, session: DB, ctx: Ctx) -> dict[str, Any]:
    ctx.require_admin()
    body = unwrap(raw, "flavor", a.FlavorCreate)
    if session.get(m.FlavorProfile, body.flavor_profile_id) is None:
        raise InvalidInput(f"Flavor profile {body.flavor_profile_id} not found.")
    if session.scalar(select(m.Flavor.id).where(m.Flavor.name == body.name)):
        raise Conflict(f"A flavor named {body.name} already exists.")
    row = m.Flavor(**{k: v for k, v in given(body).items() if v is not None})
    session.add(row)
    _commit(session, "Flavor")
    return {"flavor": views.flavor(row)}


@router.get("/flavors")
def list_flavors(request: Request, session: DB, ctx: Ctx) -> dict[str, Any]:
    return list_collection(request, session, ctx, m.Flavor, "flavors", views.flavor, scoped=False)


@router.get("/flavors/{ident}")
def show_flavor(ident: str, request: Request, session: DB, ctx: Ctx) -> dict[str, Any]:
    fields = parse_options(list(request.query_params.multi_items()), 1).fields
    return {"flavor": select_fields(views.flavor(_get(session, m.Flavor, ident, "Flavor")), fields)}


@router.put("/flavors/{ident}")
def update_flavor(raw: RawBody, ident: str, request: Request, session: DB, ctx: Ctx) -> dict[str, Any]:
    ctx.require_admin()
    body = unwrap(raw, "flavor", a.FlavorUpdate)
    row = _get(session, m.Flavor, ident, "Flavor")
    set_fields(row, given(body))
    _commit(session, "Flavor")
    return {"flavor": views.flavor(row)}


@router.delete("/flavors/{ident}", status_code=204)
def delete_flavor(ident: str, session: DB, ctx: Ctx) -> Response:
    ctx.require_admin()
    row = _get(session, m.Flavor, ident, "Flavor")
    _in_use(session, m.LoadBalancer, m.LoadBalancer.flavor_id, ident, "Flavor")
    session.delete(row)
    session.commit()
    return Response(status_code=204)


# Availability zone profiles ---------------------------------------------------------------------

@router.post("/availabilityzoneprofiles", status_code=201)
def create_az_profile(raw: RawBody, request: Request, session: DB, ctx: Ctx) -> dict[str, Any]:
    ctx.require_admin()
    body = unwrap(raw, "availability_zone_profile", a.AvailabilityZoneProfileCreate)
    _provider(body.provider_name)
    a.parse_az_data(body.availability_zone_data)
    row = m.AvailabilityZoneProfile(**given(body))
    session.add(row)
    _commit(session, "Availability zone profile")
    return {"availability_zone_profile": views.availability_zone_profile(row)}


@router.get("/availabilityzoneprofiles")
def list_az_profiles(request: Request, session: DB, ctx: Ctx) -> dict[str, Any]:
    ctx.require_admin()
    return list_collection(request, session, ctx, m.AvailabilityZoneProfile, "availability_zone_profiles",
                           views.availability_zone_profile, scoped=False)


@router.get("/availabilityzoneprofiles/{ident}")
def show_az_profile(ident: str, session: DB, ctx: Ctx) -> dict[str, Any]:
    ctx.require_admin()
    row = _get(session, m.AvailabilityZoneProfile, ident, "Availability zone profile")
    return {"availability_zone_profile": views.availability_zone_profile(row)}


@router.put("/availabilityzoneprofiles/{ident}")
def update_az_profile(raw: RawBody, ident: str, request: Request, session: DB, ctx: Ctx) -> dict[str, Any]:
    ctx.require_admin()
    body = unwrap(raw, "availability_zone_profile", a.AvailabilityZoneProfileUpdate)
    row = _get(session, m.AvailabilityZoneProfile, ident, "Availability zone profile")
    changes = {k: v for k, v in given(body).items() if v is not None}
    if "provider_name" in changes:
        _provider(changes["provider_name"])
    if "availability_zone_data" in changes:
        a.parse_az_data(changes["availability_zone_data"])
    for key, value in changes.items():
        setattr(row, key, value)
    _commit(session, "Availability zone profile")
    return {"availability_zone_profile": views.availability_zone_profile(row)}


@router.delete("/availabilityzoneprofiles/{ident}", status_code=204)
def delete_az_profile(ident: str, session: DB, ctx: Ctx) -> Response:
    ctx.require_admin()
    row = _get(session, m.AvailabilityZoneProfile, ident, "Availability zone profile")
    _in_use(session, m.AvailabilityZone, m.AvailabilityZone.availability_zone_profile_id, ident,
            "Availability zone profile")
    session.delete(row)
    session.commit()
    return Response(status_code=204)


# Availability zones (keyed by name) -------------------------------------------------------------

@router.post("/availabilityzones", status_code=201)
def create_az(raw: RawBody, request: Request, session: DB, ctx: Ctx) -> dict[str, Any]:
    ctx.require_admin()
    body = unwrap(raw, "availability_zone", a.AvailabilityZoneCreate)
    if session.get(m.AvailabilityZoneProfile, body.availability_zone_profile_id) is None:
        raise InvalidInput(f"Availability zone profile {body.availability_zone_profile_id} not found.")
    if session.get(m.AvailabilityZone, body.name) is not None:
        raise Conflict(f"An availability zone named {body.name} already exists.")
    row = m.AvailabilityZone(**{k: v for k, v in given(body).items() if v is not None})
    session.add(row)
    _commit(session, "Availability zone")
    return {"availability_zone": views.availability_zone(row)}


@router.get("/availabilityzones")
def list_azs(request: Request, session: DB, ctx: Ctx) -> dict[str, Any]:
    return list_collection(request, session, ctx, m.AvailabilityZone, "availability_zones",
                           views.availability_zone, scoped=False, id_column="name")


@router.get("/availabilityzones/{name}")
def show_az(name: str, session: DB, ctx: Ctx) -> dict[str, Any]:
    return {"availability_zone": views.availability_zone(_get(session, m.AvailabilityZone, name,
                                                              "Availability zone"))}


@router.put("/availabilityzones/{name}")
def update_az(raw: RawBody, name: str, request: Request, session: DB, ctx: Ctx) -> dict[str, Any]:
    ctx.require_admin()
    body = unwrap(raw, "availability_zone", a.AvailabilityZoneUpdate)
    row = _get(session, m.AvailabilityZone, name, "Availability zone")
    set_fields(row, given(body))
    session.commit()
    return {"availability_zone": views.availability_zone(row)}


@router.delete("/availabilityzones/{name}", status_code=204)
def delete_az(name: str, session: DB, ctx: Ctx) -> Response:
    ctx.require_admin()
    row = _get(session, m.AvailabilityZone, name, "Availability zone")
    _in_use(session, m.LoadBalancer, m.LoadBalancer.availability_zone, name, "Availability zone")
    session.delete(row)
    session.commit()
    return Response(status_code=204)

