"""Every table in one import, for Alembic and for callers that want the whole schema."""

from cohort.db.base import Base
from cohort.db.catalog import AvailabilityZone, AvailabilityZoneProfile, Flavor, FlavorProfile, Quota, Secret
from cohort.db.infra import (
    Amphora,
    AmphoraCluster,
    AmphoraHealth,
    AmphoraRegistration,
    BgpPeer,
    BgpSpeaker,
    Distributor,
    DistributorHealth,
)
from cohort.db.keystore import ContainerSecret, SecretAcl, SecretContainer
from cohort.db.lbaas import (
    HealthMonitor,
    L7Policy,
    L7Rule,
    Listener,
    ListenerStatistics,
    LoadBalancer,
    Member,
    Pool,
    SessionPersistence,
)

__all__ = [
    "Amphora",
    "AmphoraCluster",
    "AmphoraHealth",
    "AmphoraRegistration",
    "AvailabilityZone",
    "AvailabilityZoneProfile",
    "Base",
    "BgpPeer",
    "BgpSpeaker",
    "ContainerSecret",
    "Distributor",
    "DistributorHealth",
    "Flavor",
    "FlavorProfile",
    "HealthMonitor",
    "L7Policy",
    "L7Rule",
    "Listener",
    "ListenerStatistics",
    "LoadBalancer",
    "Member",
    "Pool",
    "Quota",
    "Secret",
    "SecretAcl",
    "SecretContainer",
    "SessionPersistence",
]
