"""Request bodies of operator resources: quotas, flavors, zones, clusters and BGP profiles.

Also the provider ``amphora``'s flavor capabilities, which validate ``flavor_data``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from cohort import validation
from cohort.api.errors import InvalidInput, describe_validation_error
from cohort.api.schemas.common import Body, Ident, IPAddress, Name, load_json

QuotaValue = Annotated[int, Field(ge=-1, le=2147483647)]
ASN = Annotated[int, Field(ge=1, le=4294967295)]


class QuotaBody(Body):
    loadbalancer: QuotaValue | None = None
    load_balancer: QuotaValue | None = None
    listener: QuotaValue | None = None
    member: QuotaValue | None = None
    pool: QuotaValue | None = None
    healthmonitor: QuotaValue | None = None
    health_monitor: QuotaValue | None = None
    l7policy: QuotaValue | None = None
    l7rule: QuotaValue | None = None

    def normalised(self) -> dict[str, int | None]:
        """Octavia accepts both the old and the new spellings of two quota names."""
        given = self.model_dump(exclude_unset=True)
        if "load_balancer" in given:
            given.setdefault("loadbalancer", given.pop("load_balancer"))
        if "health_monitor" in given:
            given.setdefault("healthmonitor", given.pop("health_monitor"))
        given.pop("load_balancer", None)
        given.pop("health_monitor", None)
        return given


class ComputeFlavor(Body):
    """An amphora's share of the host: finite, and within what HAProxy and a cgroup can use."""

    cpu: Annotated[float, Field(gt=0, le=validation.HAPROXY_MAX_THREADS, allow_inf_nan=False)] | None = None
    memory_mb: Annotated[float, Field(ge=32, le=1 << 24, allow_inf_nan=False)] | None = None


class AmphoraFlavorData(Body):
    """What ``flavor_data`` of provider ``amphora`` may hold (its flavor capabilities)."""

    loadbalancer_topology: Literal["SINGLE", "ACTIVE_STANDBY", "ACTIVE_ACTIVE"] | None = None
    amp_cluster_size: Annotated[int, Field(ge=1, le=64)] | None = None
    amp_cluster_min_size: Annotated[int, Field(ge=1, le=64)] | None = None
    amp_cluster_cooldown: Annotated[int, Field(ge=0, le=86400)] | None = None
    distributor_type: Literal["L2", "L3_BGP"] | None = None
    distributor_affinity: Literal["SOURCE_IP", "SOURCE_IP_PORT"] | None = None
    bgp_speaker_id: Ident | None = None
    compute_flavor: ComputeFlavor | None = None
    amp_image_tag: Name | None = None

    @model_validator(mode="after")
    def _sizes(self) -> AmphoraFlavorData:
        size = self.amp_cluster_size if self.amp_cluster_size is not None else 3
        minimum = self.amp_cluster_min_size if self.amp_cluster_min_size is not None else 2
        if minimum > size:
            raise ValueError("amp_cluster_min_size must not exceed amp_cluster_size")
        if self.loadbalancer_topology == "ACTIVE_ACTIVE" and size < 2:
            raise ValueError("an ACTIVE_ACTIVE cluster needs amp_cluster_size >= 2")
        return self


FLAVOR_CAPABILITIES = [
    # Octavia's wording for its own keys; Cohort's additions are capabilities of their own.
    {"name": "loadbalancer_topology", "description": "The load balancer topology. One of: SINGLE - One "
     "amphora per load balancer. ACTIVE_STANDBY - Two amphora per load balancer."},
    {"name": "amp_cluster_size", "description": "Cohort: loadbalancer_topology also takes ACTIVE_ACTIVE, a "
     "cluster of N active amphorae behind a distributor; this is N, the desired number of amphorae (default 3)."},
    {"name": "amp_cluster_min_size", "description": "ACTIVE_ACTIVE: below this many healthy amphorae the "
     "load balancer is in ERROR (default 2)."},
    {"name": "amp_cluster_cooldown", "description": "ACTIVE_ACTIVE: seconds between two scaling actions."},
    {"name": "distributor_type", "description": "ACTIVE_ACTIVE: L2 (distributor owns the VIP) or L3_BGP."},
    {"name": "distributor_affinity", "description": "ACTIVE_ACTIVE: SOURCE_IP (default) or SOURCE_IP_PORT."},
    {"name": "bgp_speaker_id", "description": "L3_BGP: the BGP speaker profile the amphorae use."},
    {"name": "compute_flavor", "description": "Amphora resources: {\"cpu\": fraction of a CPU, "
     "\"memory_mb\": memory limit}."},
    {"name": "amp_image_tag", "description": "The amphora image tag."},
]

AZ_CAPABILITIES = [
    {"name": "compute_zone", "description": "The compute availability zone."},
    {"name": "volume_zone", "description": "The volume availability zone."},
    {"name": "management_network", "description": "The management network ID for the amphora."},
    {"name": "valid_vip_networks", "description": "List of network IDs that are allowed for VIP use."},
]


def parse_flavor_data(provider: str, text: str) -> dict[str, Any]:
    data = _json_object(text, "flavor_data")
    if provider == "amphora":
        try:
            AmphoraFlavorData.model_validate(data)
        except ValidationError as exc:
            raise InvalidInput(
                f"Provider 'amphora' does not support a requested option: {describe_validation_error(exc)}"
            ) from exc
    return data


def parse_az_data(text: str) -> dict[str, Any]:
    data = _json_object(text, "availability_zone_data")
    unknown = set(data) - {c["name"] for c in AZ_CAPABILITIES}
    if unknown:
        raise InvalidInput(f"Provider 'amphora' does not support a requested option: {', '.join(sorted(unknown))}")
    return data


def _json_object(text: str, field: str) -> dict[str, Any]:
    try:
        data = load_json(text, field)
    except InvalidInput as exc:
        raise InvalidInput(f"Invalid input for field/attribute {field}: not valid JSON ({exc.message})") from exc
    if not isinstance(data, dict):
        raise InvalidInput(f"Invalid input for field/attribute {field}: a JSON object is required")
    return data


class FlavorProfileCreate(Body):
    name: Annotated[str, Field(min_length=1, max_length=255)]
    provider_name: Ident
    flavor_data: Annotated[str, Field(max_length=4096)]


class FlavorProfileUpdate(Body):
    name: Annotated[str, Field(min_length=1, max_length=255)] | None = None
    provider_name: Ident | None = None
    flavor_data: Annotated[str, Field(max_length=4096)] | None = None


class FlavorCreate(Body):
    name: Annotated[str, Field(min_length=1, max_length=255)]
    description: Name | None = None
    flavor_profile_id: Ident
    enabled: bool | None = None


class FlavorUpdate(Body):
    name: Annotated[str, Field(min_length=1, max_length=255)] | None = None
    description: Name | None = None
    enabled: bool | None = None


class AvailabilityZoneProfileCreate(Body):
    name: Annotated[str, Field(min_length=1, max_length=255)]
    provider_name: Ident
    availability_zone_data: Annotated[str, Field(max_length=4096)]


class AvailabilityZoneProfileUpdate(Body):
    name: Annotated[str, Field(min_length=1, max_length=255)] | None = None
    provider_name: Ident | None = None
    availability_zone_data: Annotated[str, Field(max_length=4096)] | None = None


class AvailabilityZoneCreate(Body):
    name: Annotated[str, Field(min_length=1, max_length=255)]
    description: Name | None = None
    availability_zone_profile_id: Ident
    enabled: bool | None = None


class AvailabilityZoneUpdate(Body):
    description: Name | None = None
    enabled: bool | None = None


class ClusterUpdate(Body):
    desired_size: Annotated[int, Field(ge=1, le=64)] | None = None
    min_size: Annotated[int, Field(ge=1, le=64)] | None = None
    cooldown: Annotated[int, Field(ge=0, le=86400)] | None = None
    cluster_name: Name | None = None
    enabled: bool | None = None


Md5Password = Annotated[str, Field(min_length=1, max_length=80, pattern=r"^[\x21\x23-\x5b\x5d-\x7e]+$")]


class BgpSpeakerCreate(Body):
    name: Name | None = None
    local_as: ASN
    ip_version: Literal[4, 6] = 4


class BgpSpeakerUpdate(Body):
    name: Name | None = None
    local_as: ASN | None = None


class _BgpPeerFields(Body):
    name: Name | None = None
    remote_as: ASN | None = None
    auth_type: Literal["md5"] | None = None
    # Printable ASCII but quotes and backslashes: it is written into speakers' configurations.
    md5_password: Md5Password | None = None
    ttl_hops: Annotated[int, Field(ge=1, le=254)] | None = None
    hold_time: Annotated[int, Field(ge=0, le=65535)] | None = None
    keepalive_interval: Annotated[int, Field(ge=0, le=21845)] | None = None
    bfd_enabled: bool | None = None
    bfd_min_rx: Annotated[int, Field(ge=10, le=60000)] | None = None
    bfd_min_tx: Annotated[int, Field(ge=10, le=60000)] | None = None
    bfd_multiplier: Annotated[int, Field(ge=2, le=255)] | None = None

    @field_validator("hold_time")
    @classmethod
    def _hold_time(cls, value: int | None) -> int | None:
        if value is not None and 0 < value < 3:
            raise ValueError("hold_time must be 0 or at least 3 seconds (RFC 4271)")
        return value


class BgpPeerCreate(_BgpPeerFields):
    peer_ip: IPAddress
    remote_as: ASN
    bgp_speaker_id: Ident | None = None


class BgpPeerUpdate(_BgpPeerFields):
    pass
