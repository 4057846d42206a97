"""Tenant LBaaS objects: load balancers, listeners, pools, members, monitors, L7 and statistics."""

from __future__ import annotations

from sqlalchemy import JSON, BigInteger, Boolean, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from cohort.db.base import Base, TenantResourceMixin


class LoadBalancer(TenantResourceMixin, Base):
    __tablename__ = "load_balancer"
    # Default list order and keyset pagination walk (created_at, id).
    __table_args__ = (Index("ix_load_balancer_created_at_id", "created_at", "id"),)

    vip_address: Mapped[str | None] = mapped_column(String(64))
    vip_port_id: Mapped[str | None] = mapped_column(String(36))
    vip_subnet_id: Mapped[str | None] = mapped_column(String(36))
    vip_network_id: Mapped[str | None] = mapped_column(String(36))
    vip_qos_policy_id: Mapped[str | None] = mapped_column(String(36))
    vip_sg_ids: Mapped[list[str]] = mapped_column(JSON, default=list)
    vip_vnic_type: Mapped[str] = mapped_column(String(16), default="normal")
    additional_vips: Mapped[list[dict[str, str]]] = mapped_column(JSON, default=list)
    provider: Mapped[str] = mapped_column(String(64), default="amphora")
    flavor_id: Mapped[str | None] = mapped_column(String(36))
    availability_zone: Mapped[str | None] = mapped_column(String(255))
    topology: Mapped[str] = mapped_column(String(16), default="SINGLE")
    status_reason: Mapped[str | None] = mapped_column(Text)
    # Claimed by one reconciler at a time when several controllers share the database.
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_expires: Mapped[float | None] = mapped_column(Float)
    # Bumped by every API change: a reconcile pass only finalises the generation it applied.
    generation: Mapped[int] = mapped_column(Integer, default=1)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt: Mapped[float] = mapped_column(Float, default=0.0)

    listeners: Mapped[list[Listener]] = relationship(
        back_populates="load_balancer", cascade="all, delete-orphan", order_by="Listener.created_at"
    )
    pools: Mapped[list[Pool]] = relationship(
        back_populates="load_balancer", cascade="all, delete-orphan", order_by="Pool.created_at"
    )


class Listener(TenantResourceMixin, Base):
    __tablename__ = "listener"

    load_balancer_id: Mapped[str] = mapped_column(ForeignKey("load_balancer.id", ondelete="CASCADE"), index=True)
    protocol: Mapped[str] = mapped_column(String(16))
    protocol_port: Mapped[int] = mapped_column(Integer)
    connection_limit: Mapped[int] = mapped_column(Integer, default=-1)
    default_pool_id: Mapped[str | None] = mapped_column(ForeignKey("pool.id", ondelete="SET NULL"))
    default_tls_container_ref: Mapped[str | None] = mapped_column(String(255))
    sni_container_refs: Mapped[list[str]] = mapped_column(JSON, default=list)
    insert_headers: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    timeout_client_data: Mapped[int] = mapped_column(Integer, default=50000)
    timeout_member_connect: Mapped[int] = mapped_column(Integer, default=5000)
    timeout_member_data: Mapped[int] = mapped_column(Integer, default=50000)
    timeout_tcp_inspect: Mapped[int] = mapped_column(Integer, default=0)
    client_ca_tls_container_ref: Mapped[str | None] = mapped_column(String(255))
    client_authentication: Mapped[str] = mapped_column(String(16), default="NONE")
    client_crl_container_ref: Mapped[str | None] = mapped_column(String(255))
    allowed_cidrs: Mapped[list[str]] = mapped_column(JSON, default=list)
    tls_ciphers: Mapped[str | None] = mapped_column(Text)
    tls_versions: Mapped[list[str]] = mapped_column(JSON, default=list)
    alpn_protocols: Mapped[list[str]] = mapped_column(JSON, default=list)
    hsts_max_age: Mapped[int | None] = mapped_column(Integer)
    hsts_include_subdomains: Mapped[bool] = mapped_column(Boolean, default=False)
    hsts_preload: Mapped[bool] = mapped_column(Boolean, default=False)

    load_balancer: Mapped[LoadBalancer] = relationship(back_populates="listeners")
    l7policies: Mapped[list[L7Policy]] = relationship(
        back_populates="listener", cascade="all, delete-orphan", order_by="L7Policy.position"
    )


class Pool(TenantResourceMixin, Base):
    __tablename__ = "pool"

    load_balancer_id: Mapped[str] = mapped_column(ForeignKey("load_balancer.id", ondelete="CASCADE"), index=True)
    protocol: Mapped[str] = mapped_column(String(16))
    lb_algorithm: Mapped[str] = mapped_column(String(32))
    tls_enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    tls_container_ref: Mapped[str | None] = mapped_column(String(255))
    ca_tls_container_ref: Mapped[str | None] = mapped_column(String(255))
    crl_container_ref: Mapped[str | None] = mapped_column(String(255))
    tls_ciphers: Mapped[str | None] = mapped_column(Text)
    tls_versions: Mapped[list[str]] = mapped_column(JSON, default=list)
    alpn_protocols: Mapped[list[str]] = mapped_column(JSON, default=list)

    load_balancer: Mapped[LoadBalancer] = relationship(back_populates="pools")
    members: Mapped[list[Member]] = relationship(
        back_populates="pool", cascade="all, delete-orphan", order_by="Member.created_at"
    )
    health_monitor: Mapped[HealthMonitor | None] = relationship(
        back_populates="pool", cascade="all, delete-orphan", uselist=False
    )
    session_persistence: Mapped[SessionPersistence | None] = relationship(
        cascade="all, delete-orphan", uselist=False, lazy="joined"
    )


class SessionPersistence(Base):
    __tablename__ = "session_persistence"

    pool_id: Mapped[str] = mapped_column(ForeignKey("pool.id", ondelete="CASCADE"), primary_key=True)
    type: Mapped[str] = mapped_column(String(16))
    cookie_name: Mapped[str | None] = mapped_column(String(255))
    persistence_timeout: Mapped[int | None] = mapped_column(Integer)
    persistence_granularity: Mapped[str | None] = mapped_column(String(64))


class Member(TenantResourceMixin, Base):
    __tablename__ = "member"
    __table_args__ = (UniqueConstraint("pool_id", "address", "protocol_port", name="uq_member_address_port"),)

    pool_id: Mapped[str] = mapped_column(ForeignKey("pool.id", ondelete="CASCADE"), index=True)
    address: Mapped[str] = mapped_column(String(64))
    protocol_port: Mapped[int] = mapped_column(Integer)
    weight: Mapped[int] = mapped_column(Integer, default=1)
    backup: Mapped[bool] = mapped_column(Boolean, default=False)
    subnet_id: Mapped[str | None] = mapped_column(String(36))
    monitor_address: Mapped[str | None] = mapped_column(String(64))
    monitor_port: Mapped[int | None] = mapped_column(Integer)
    vnic_type: Mapped[str] = mapped_column(String(16), default="normal")

    pool: Mapped[Pool] = relationship(back_populates="members")


class HealthMonitor(TenantResourceMixin, Base):
    __tablename__ = "health_monitor"

    pool_id: Mapped[str] = mapped_column(ForeignKey("pool.id", ondelete="CASCADE"), unique=True)
    type: Mapped[str] = mapped_column(String(16))
    delay: Mapped[int] = mapped_column(Integer)
    timeout: Mapped[int] = mapped_column(Integer)
    max_retries: Mapped[int] = mapped_column(Integer)
    max_retries_down: Mapped[int] = mapped_column(Integer, default=3)
    http_method: Mapped[str | None] = mapped_column(String(16))
    url_path: Mapped[str | None] = mapped_column(String(2048))
    expected_codes: Mapped[str | None] = mapped_column(String(64))
    http_version: Mapped[float | None] = mapped_column(Float)
    domain_name: Mapped[str | None] = mapped_column(String(255))

    pool: Mapped[Pool] = relationship(back_populates="health_monitor")


class L7Policy(TenantResourceMixin, Base):
    __tablename__ = "l7policy"

    listener_id: Mapped[str] = mapped_column(ForeignKey("listener.id", ondelete="CASCADE"), index=True)
    action: Mapped[str] = mapped_column(String(32))
    position: Mapped[int] = mapped_column(Integer, default=1)
    redirect_pool_id: Mapped[str | None] = mapped_column(ForeignKey("pool.id", ondelete="SET NULL"))
    redirect_url: Mapped[str | None] = mapped_column(String(2048))
    redirect_prefix: Mapped[str | None] = mapped_column(String(2048))
    redirect_http_code: Mapped[int | None] = mapped_column(Integer)

    listener: Mapped[Listener] = relationship(back_populates="l7policies")
    rules: Mapped[list[L7Rule]] = relationship(
        back_populates="l7policy", cascade="all, delete-orphan", order_by="L7Rule.created_at"
    )


class L7Rule(TenantResourceMixin, Base):
    __tablename__ = "l7rule"

    l7policy_id: Mapped[str] = mapped_column(ForeignKey("l7policy.id", ondelete="CASCADE"), index=True)
    type: Mapped[str] = mapped_column(String(32))
    compare_type: Mapped[str] = mapped_column(String(32))
    key: Mapped[str | None] = mapped_column(String(255))
    value: Mapped[str] = mapped_column(String(255))
    invert: Mapped[bool] = mapped_column(Boolean, default=False)

    l7policy: Mapped[L7Policy] = relationship(back_populates="rules")


class ListenerStatistics(Base):
    """Counters as last reported by one amphora for one listener (summed over amphorae on read)."""

    __tablename__ = "listener_statistics"

    listener_id: Mapped[str] = mapped_column(ForeignKey("listener.id", ondelete="CASCADE"), primary_key=True)
    amphora_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    bytes_in: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_out: Mapped[int] = mapped_column(BigInteger, default=0)
    active_connections: Mapped[int] = mapped_column(BigInteger, default=0)
    total_connections: Mapped[int] = mapped_column(BigInteger, default=0)
    request_errors: Mapped[int] = mapped_column(BigInteger, default=0)
