"""Operator-side objects: amphorae, clusters, distributors, registrations and BGP profiles."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from cohort.db.base import Base, IdMixin, TimestampMixin


class Amphora(IdMixin, TimestampMixin, Base):
    __tablename__ = "amphora"

    load_balancer_id: Mapped[str | None] = mapped_column(String(36), index=True)
    cluster_id: Mapped[str | None] = mapped_column(String(36), index=True)
    compute_id: Mapped[str | None] = mapped_column(String(64))
    lb_network_ip: Mapped[str | None] = mapped_column(String(64))
    vrrp_ip: Mapped[str | None] = mapped_column(String(64))
    ha_ip: Mapped[str | None] = mapped_column(String(64))
    vrrp_port_id: Mapped[str | None] = mapped_column(String(36))
    ha_port_id: Mapped[str | None] = mapped_column(String(36))
    frontend_ip: Mapped[str | None] = mapped_column(String(64))
    frontend_port_id: Mapped[str | None] = mapped_column(String(36))
    frontend_mac: Mapped[str | None] = mapped_column(String(17))
    cert_expiration: Mapped[datetime | None] = mapped_column(DateTime)
    cert_busy: Mapped[bool] = mapped_column(Boolean, default=False)
    role: Mapped[str | None] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(36), default="PENDING_CREATE", index=True)
    status_reason: Mapped[str | None] = mapped_column(Text)
    vrrp_interface: Mapped[str | None] = mapped_column(String(16))
    vrrp_id: Mapped[int | None] = mapped_column(Integer)
    vrrp_priority: Mapped[int | None] = mapped_column(Integer)
    cached_zone: Mapped[str | None] = mapped_column(String(255))
    image_id: Mapped[str | None] = mapped_column(String(36))
    compute_flavor: Mapped[dict[str, object]] = mapped_column(JSON, default=dict)
    applied_generation: Mapped[int] = mapped_column(Integer, default=0)
    plugged_subnets: Mapped[list[str]] = mapped_column(JSON, default=list)
    # A spare being built: the controller building it and until when (renewed while it builds), so a
    # spare whose builder died is rebuilt within ``reconcile_lease`` instead of holding its slot.
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_expires: Mapped[float | None] = mapped_column(Float)


class AmphoraHealth(Base):
    __tablename__ = "amphora_health"

    amphora_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    last_update: Mapped[float] = mapped_column(Float)
    busy: Mapped[bool] = mapped_column(Boolean, default=False)
    # The newest heartbeat sequence accepted, so a restarted controller still refuses replays.
    last_seq: Mapped[int | None] = mapped_column(BigInteger)
    # The speaker's last report (L3 clusters): {"sessions": {peer: state}, "announced": [vip, ...]}.
    bgp: Mapped[str | None] = mapped_column(Text)


class AmphoraCluster(IdMixin, TimestampMixin, Base):
    __tablename__ = "amphora_cluster"

    cluster_name: Mapped[str] = mapped_column(String(255), default="")
    load_balancer_id: Mapped[str] = mapped_column(String(36), unique=True)
    distributor_id: Mapped[str | None] = mapped_column(String(36), index=True)
    desired_size: Mapped[int] = mapped_column(Integer, default=3)
    min_size: Mapped[int] = mapped_column(Integer, default=2)
    cooldown: Mapped[int] = mapped_column(Integer, default=30)
    provisioning_status: Mapped[str] = mapped_column(String(16), default="PENDING_CREATE")
    operating_status: Mapped[str] = mapped_column(String(16), default="OFFLINE")
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    cluster_type: Mapped[str] = mapped_column(String(16), default="L2")
    last_scaled_at: Mapped[float | None] = mapped_column(Float)
    status_reason: Mapped[str | None] = mapped_column(String(255))


LIVE_DISTRIBUTOR = "status NOT IN ('DELETED', 'ERROR')"


class Distributor(IdMixin, TimestampMixin, Base):
    __tablename__ = "distributor"
    # One live member per name of a pair, however many controllers race to create it (migrations
    # 0006, 0008); a failed (ERROR) member leaves its name to its replacement.
    __table_args__ = (Index("uq_distributor_live_name", "name", unique=True,
                            sqlite_where=text(LIVE_DISTRIBUTOR), postgresql_where=text(LIVE_DISTRIBUTOR)),)

    name: Mapped[str] = mapped_column(String(255), default="")
    distributor_type: Mapped[str] = mapped_column(String(16), default="L2")
    compute_id: Mapped[str | None] = mapped_column(String(64))
    lb_network_ip: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(36), default="PENDING_CREATE")
    status_reason: Mapped[str | None] = mapped_column(Text)
    vip_port_ids: Mapped[list[str]] = mapped_column(JSON, default=list)
    # Its VRRP role in the pair as its heartbeats report it: MASTER | BACKUP | FAULT (None: no VIPs yet).
    role: Mapped[str | None] = mapped_column(String(16))


SPARE_DISTRIBUTOR_SUFFIX = "-spare"


def spare_distributor_name(distributor_type: str) -> str:
    """The name of a type's one spare distributor (``cohort.controller.distributor_spares``); the unique
    index on live names keeps it one, however many controllers build it."""
    return f"distributor-{distributor_type.lower()}{SPARE_DISTRIBUTOR_SUFFIX}"


def serves_vips(row: Distributor) -> bool:
    """A live member of a pair: not failed, deleted, or a spare (which serves nothing until it replaces one)."""
    return row.status not in ("ERROR", "DELETED") and row.name != spare_distributor_name(row.distributor_type)


class DistributorHealth(Base):
    __tablename__ = "distributor_health"

    distributor_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    last_update: Mapped[float] = mapped_column(Float)
    busy: Mapped[bool] = mapped_column(Boolean, default=False)
    last_seq: Mapped[int | None] = mapped_column(BigInteger)
    # Its probes' verdicts (JSON, ``cohort.controller.reachability``): per VIP and amphora, since when
    # it has reported the amphora down (null: up).
    probes: Mapped[str | None] = mapped_column(Text)


def distributor_operating_status(status: str, health: DistributorHealth | None, stale_after: float,
                                 now: float) -> str:
    """ONLINE while a live distributor heartbeats, ERROR once it has been silent for ``stale_after``
    (the failover watcher replaces it), OFFLINE before its first heartbeat and once it is gone."""
    if status in ("DELETED", "ERROR") or health is None:
        return "OFFLINE" if status != "ERROR" else "ERROR"
    return "ONLINE" if now - health.last_update <= stale_after else "ERROR"


class AmphoraRegistration(Base):
    """An amphora's place in a distributor's table for one load balancer."""

    __tablename__ = "amphora_registration"
    __table_args__ = (UniqueConstraint("load_balancer_id", "position", name="uq_registration_position"),)

    load_balancer_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    amphora_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    distributor_id: Mapped[str] = mapped_column(ForeignKey("distributor.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), default="ACTIVE")  # ACTIVE | DRAINING
    weight: Mapped[int] = mapped_column(Integer, default=1)


class BgpSpeaker(IdMixin, TimestampMixin, Base):
    __tablename__ = "bgp_speaker"

    name: Mapped[str] = mapped_column(String(255), default="")
    local_as: Mapped[int] = mapped_column(BigInteger)  # 4-byte ASNs exceed a signed int4
    ip_version: Mapped[int] = mapped_column(Integer, default=4)


class BgpPeer(IdMixin, TimestampMixin, Base):
    __tablename__ = "bgp_peer"

    name: Mapped[str] = mapped_column(String(255), default="")
    bgp_speaker_id: Mapped[str | None] = mapped_column(ForeignKey("bgp_speaker.id", ondelete="CASCADE"))
    peer_ip: Mapped[str] = mapped_column(String(64))
    remote_as: Mapped[int] = mapped_column(BigInteger)
    auth_type: Mapped[str | None] = mapped_column(String(16))
    # Encrypted with the secrets key (cohort.secrets.encrypt_text), as tenants' TLS material is.
    md5_password_ciphertext: Mapped[bytes | None] = mapped_column(LargeBinary)
    ttl_hops: Mapped[int] = mapped_column(Integer, default=1)
    hold_time: Mapped[int] = mapped_column(Integer, default=90)
    keepalive_interval: Mapped[int] = mapped_column(Integer, default=30)
    bfd_enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    bfd_min_rx: Mapped[int] = mapped_column(Integer, default=300)
    bfd_min_tx: Mapped[int] = mapped_column(Integer, default=300)
    bfd_multiplier: Mapped[int] = mapped_column(Integer, default=3)
