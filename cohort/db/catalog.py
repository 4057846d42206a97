"""Operator catalogue, limits and tenant secrets: flavors, zones, their profiles, quotas, TLS material."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, DateTime, ForeignKey, Integer, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from cohort.db.base import Base, IdMixin, utcnow


class FlavorProfile(IdMixin, Base):
    __tablename__ = "flavor_profile"

    name: Mapped[str] = mapped_column(String(255))
    provider_name: Mapped[str] = mapped_column(String(64))
    flavor_data: Mapped[str] = mapped_column(Text)


class Flavor(IdMixin, Base):
    __tablename__ = "flavor"

    name: Mapped[str] = mapped_column(String(255), unique=True)
    description: Mapped[str] = mapped_column(String(255), default="")
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    flavor_profile_id: Mapped[str] = mapped_column(ForeignKey("flavor_profile.id"))


class AvailabilityZoneProfile(IdMixin, Base):
    __tablename__ = "availability_zone_profile"

    name: Mapped[str] = mapped_column(String(255))
    provider_name: Mapped[str] = mapped_column(String(64))
    availability_zone_data: Mapped[str] = mapped_column(Text)


class AvailabilityZone(Base):
    __tablename__ = "availability_zone"

    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    description: Mapped[str] = mapped_column(String(255), default="")
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    availability_zone_profile_id: Mapped[str] = mapped_column(ForeignKey("availability_zone_profile.id"))


class Quota(Base):
    """Per-project overrides; NULL means the configured default."""

    __tablename__ = "quota"

    project_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    loadbalancer: Mapped[int | None] = mapped_column(Integer)
    listener: Mapped[int | None] = mapped_column(Integer)
    member: Mapped[int | None] = mapped_column(Integer)
    pool: Mapped[int | None] = mapped_column(Integer)
    healthmonitor: Mapped[int | None] = mapped_column(Integer)
    l7policy: Mapped[int | None] = mapped_column(Integer)
    l7rule: Mapped[int | None] = mapped_column(Integer)


class Secret(Base):
    """A tenant's secret (Barbican's secret), its payload encrypted at rest with Fernet.

    ``kind`` is what a listener or pool may use it as, found when it was stored: certificate
    (a certificate and its key), ca (PEM certificates), crl, or opaque (anything else).
    ``content_type`` is the payload's Barbican content type, None for a secret without payload.
    """

    __tablename__ = "secret"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    project_id: Mapped[str] = mapped_column(String(255), index=True)
    name: Mapped[str] = mapped_column(String(255), default="")
    kind: Mapped[str] = mapped_column(String(16))  # certificate | ca | crl | opaque
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime | None] = mapped_column(DateTime, default=None)
    secret_type: Mapped[str] = mapped_column(String(80), default="opaque", server_default="opaque")
    content_type: Mapped[str | None] = mapped_column(String(64), default=None)
    algorithm: Mapped[str | None] = mapped_column(String(255), default=None)
    bit_length: Mapped[int | None] = mapped_column(Integer, default=None)
    mode: Mapped[str | None] = mapped_column(String(255), default=None)
    expiration: Mapped[datetime | None] = mapped_column(DateTime, default=None)
    creator_id: Mapped[str | None] = mapped_column(String(255), default=None)
