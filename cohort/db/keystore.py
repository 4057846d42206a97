"""Barbican's containers and ACLs beside the tenant secrets of :mod:`cohort.db.catalog`.

A container groups secrets under names (``certificate``, ``private_key``, ``intermediates``,
``private_key_passphrase`` in a certificate container); a listener may reference a certificate
container as Octavia references one in Barbican. An ACL says who may read one secret or
container besides its project: the users it lists, and whether the project keeps access.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Boolean, DateTime, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from cohort.db.base import Base, utcnow


class SecretContainer(Base):
    """A named group of secrets; ``kind`` is what a listener may use it as (``certificate`` or why not)."""

    __tablename__ = "secret_container"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    project_id: Mapped[str] = mapped_column(String(255), index=True)
    name: Mapped[str] = mapped_column(String(255), default="")
    type: Mapped[str] = mapped_column(String(16))  # generic | rsa | certificate
    kind: Mapped[str] = mapped_column(String(64))
    creator_id: Mapped[str | None] = mapped_column(String(255), default=None)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime | None] = mapped_column(DateTime, default=None)

    secrets: Mapped[list[ContainerSecret]] = relationship(
        back_populates="container", cascade="all, delete-orphan", order_by="ContainerSecret.name")


class ContainerSecret(Base):
    """One secret of a container, under its name there."""

    __tablename__ = "container_secret"

    container_id: Mapped[str] = mapped_column(ForeignKey("secret_container.id", ondelete="CASCADE"),
                                              primary_key=True)
    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    secret_id: Mapped[str] = mapped_column(ForeignKey("secret.id"), index=True)

    container: Mapped[SecretContainer] = relationship(back_populates="secrets")


class SecretAcl(Base):
    """Who may do ``operation`` (Barbican's ACLs set ``read``) on one secret or container."""

    __tablename__ = "secret_acl"

    entity_id: Mapped[str] = mapped_column(String(36), primary_key=True)  # a secret's or a container's id
    operation: Mapped[str] = mapped_column(String(16), primary_key=True)
    entity_type: Mapped[str] = mapped_column(String(16))  # secret | container
    project_access: Mapped[bool] = mapped_column(Boolean, default=True)
    users: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime | None] = mapped_column(DateTime, default=None)
