"""Request bodies of the tenant LBaaS resources, with Octavia's types, defaults and limits.

``*Create`` bodies are POSTs, ``*Update`` bodies are PUTs (immutable fields are absent, so
sending one is a 400), ``*Tree`` bodies are the nested forms of a single-call create.
Values that reach an amphora's configuration are checked with ``cohort.validation``, the
rules the renderers apply.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator

from cohort import validation
from cohort.api.schemas.common import (
    CIDR,
    Body,
    Ident,
    IPAddress,
    Name,
    Netmask,
    NonNegative32,
    Port,
    Tags,
    TimeoutMs,
    rule,
)

ListenerProtocol = Literal["HTTP", "HTTPS", "TCP", "TERMINATED_HTTPS", "UDP", "SCTP", "PROMETHEUS"]
PoolProtocol = Literal["HTTP", "HTTPS", "TCP", "PROXY", "PROXYV2", "UDP", "SCTP"]
Algorithm = Literal["ROUND_ROBIN", "LEAST_CONNECTIONS", "SOURCE_IP", "SOURCE_IP_PORT"]
MonitorType = Literal["HTTP", "HTTPS", "PING", "TCP", "TLS-HELLO", "UDP-CONNECT", "SCTP"]
HttpMethod = Literal["CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE"]
L7Action = Literal["REJECT", "REDIRECT_TO_URL", "REDIRECT_TO_POOL", "REDIRECT_PREFIX"]
L7RuleType = Literal["HOST_NAME", "PATH", "FILE_TYPE", "HEADER", "COOKIE", "SSL_CONN_HAS_CERT",
                     "SSL_VERIFY_RESULT", "SSL_DN_FIELD"]
CompareType = Literal["REGEX", "STARTS_WITH", "ENDS_WITH", "CONTAINS", "EQUAL_TO"]
TlsVersion = Literal["SSLv3", "TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"]
ClientAuth = Literal["NONE", "OPTIONAL", "MANDATORY"]
InsertHeader = Literal["X-Forwarded-For", "X-Forwarded-Port", "X-Forwarded-Proto", "X-SSL-Client-Verify",
                       "X-SSL-Client-Has-Cert", "X-SSL-Client-DN", "X-SSL-Client-CN", "X-SSL-Issuer",
                       "X-SSL-Client-SHA1", "X-SSL-Client-Not-Before", "X-SSL-Client-Not-After"]
Weight = Annotated[int, Field(ge=0, le=256)]
Retries = Annotated[int, Field(ge=1, le=10)]
Alpn = Annotated[str, Field(max_length=255), rule(validation.alpn_protocol)]
# An empty cipher list is Octavia's "the default".
Cipher = Annotated[str, Field(max_length=2048), rule(lambda v: v == "" or validation.ciphers(v))]
RuleKey = Annotated[str, Field(max_length=255), rule(lambda v: validation.token(v, "L7 rule key"))]
RuleValue = Annotated[str, Field(max_length=255), rule(lambda v: validation.printable(v, "L7 rule value"))]
UrlPath = Annotated[str, Field(max_length=2048), rule(validation.url_path)]
ExpectedCodes = Annotated[str, Field(max_length=2048), rule(validation.api_expected_codes)]
DomainName = Annotated[str, Field(max_length=255), rule(lambda v: validation.hostname(v, "domain_name"))]
Url = Annotated[str, Field(max_length=2048), rule(validation.redirect_url)]
CookieName = Annotated[str, Field(max_length=255), rule(lambda v: validation.token(v, "cookie_name"))]
RedirectCode = Literal[301, 302, 303, 307, 308]
# HAProxy needs a positive check interval and timeout.
MonitorSeconds = Annotated[int, Field(ge=1, le=validation.INT32_MAX)]


def _http_version(value: float) -> float:
    if value not in (1.0, 1.1):
        raise ValueError("http_version must be 1.0 or 1.1")
    return value


HttpVersion = Annotated[float, AfterValidator(_http_version)]


class SessionPersistenceBody(Body):
    type: Literal["SOURCE_IP", "HTTP_COOKIE", "APP_COOKIE"]
    cookie_name: CookieName | None = None
    persistence_timeout: NonNegative32 | None = None
    persistence_granularity: Netmask | None = None

    @model_validator(mode="after")
    def _cookie_rules(self) -> SessionPersistenceBody:
        if self.type == "APP_COOKIE" and not self.cookie_name:
            raise ValueError("session_persistence.cookie_name is required for APP_COOKIE")
        if self.type != "APP_COOKIE" and self.cookie_name:
            raise ValueError("session_persistence.cookie_name is only allowed for APP_COOKIE")
        return self


class _MonitorFields(Body):
    name: Name | None = None
    admin_state_up: bool | None = None
    delay: MonitorSeconds | None = None
    timeout: MonitorSeconds | None = None
    max_retries: Retries | None = None
    max_retries_down: Retries | None = None
    http_method: HttpMethod | None = None
    url_path: UrlPath | None = None
    expected_codes: ExpectedCodes | None = None
    http_version: HttpVersion | None = None
    domain_name: DomainName | None = None
    tags: Tags | None = None


class HealthMonitorTree(_MonitorFields):
    type: MonitorType
    delay: MonitorSeconds
    timeout: MonitorSeconds
    max_retries: Retries
    project_id: Ident | None = None


class HealthMonitorCreate(HealthMonitorTree):
    pool_id: Ident


class HealthMonitorUpdate(_MonitorFields):
    pass


class _MemberFields(Body):
    name: Name | None = None
    admin_state_up: bool | None = None
    weight: Weight | None = None
    backup: bool | None = None
    monitor_address: IPAddress | None = None
    monitor_port: Port | None = None
    tags: Tags | None = None


class MemberCreate(_MemberFields):
    address: IPAddress
    protocol_port: Port
    subnet_id: Ident | None = None
    project_id: Ident | None = None
    vnic_type: Literal["normal", "direct"] | None = None


class MemberUpdate(_MemberFields):
    pass


class MemberBatch(Body):
    """The body of ``PUT /pools/{id}/members``: the complete desired member list."""

    members: list[MemberCreate]


class _PoolFields(Body):
    name: Name | None = None
    description: Name | None = None
    admin_state_up: bool | None = None
    lb_algorithm: Algorithm | None = None
    session_persistence: SessionPersistenceBody | None = None
    tls_enabled: bool | None = None
    tls_container_ref: Ident | None = None
    ca_tls_container_ref: Ident | None = None
    crl_container_ref: Ident | None = None
    tls_ciphers: Cipher | None = None
    tls_versions: list[TlsVersion] | None = None
    alpn_protocols: list[Alpn] | None = None
    tags: Tags | None = None


class PoolTree(_PoolFields):
    protocol: PoolProtocol
    lb_algorithm: Algorithm
    project_id: Ident | None = None
    healthmonitor: HealthMonitorTree | None = None
    members: list[MemberCreate] | None = None


class PoolCreate(PoolTree):
    loadbalancer_id: Ident | None = None
    listener_id: Ident | None = None

    @model_validator(mode="after")
    def _parent(self) -> PoolCreate:
        if not self.loadbalancer_id and not self.listener_id:
            raise ValueError("loadbalancer_id or listener_id is required")
        return self


class PoolUpdate(_PoolFields):
    pass


class _L7RuleFields(Body):
    type: L7RuleType | None = None
    compare_type: CompareType | None = None
    key: RuleKey | None = None
    value: RuleValue | None = None
    invert: bool | None = None
    admin_state_up: bool | None = None
    tags: Tags | None = None


class L7RuleCreate(_L7RuleFields):
    type: L7RuleType
    compare_type: CompareType
    value: RuleValue
    project_id: Ident | None = None

    @model_validator(mode="after")
    def _rule(self) -> L7RuleCreate:
        validation.l7_rule(self.type, self.compare_type, self.key, self.value)
        return self


class L7RuleUpdate(_L7RuleFields):
    @model_validator(mode="after")
    def _rule(self) -> L7RuleUpdate:
        # The stored type and compare_type are not known here; the route checks the merged rule.
        if self.compare_type == "REGEX" and self.value is not None:
            validation.regex(self.value, "L7 rule value")
        return self


class _L7PolicyFields(Body):
    name: Name | None = None
    description: Name | None = None
    admin_state_up: bool | None = None
    action: L7Action | None = None
    redirect_pool_id: Ident | None = None
    redirect_url: Url | None = None
    redirect_prefix: Url | None = None
    redirect_http_code: RedirectCode | None = None
    position: Annotated[int, Field(ge=1, le=2147483647)] | None = None
    tags: Tags | None = None


class L7PolicyTree(_L7PolicyFields):
    action: L7Action
    project_id: Ident | None = None
    rules: list[L7RuleCreate] | None = None
    redirect_pool: PoolTree | None = None


class L7PolicyCreate(_L7PolicyFields):
    action: L7Action
    listener_id: Ident
    project_id: Ident | None = None
    rules: list[L7RuleCreate] | None = None


class L7PolicyUpdate(_L7PolicyFields):
    pass


class _ListenerFields(Body):
    name: Name | None = None
    description: Name | None = None
    admin_state_up: bool | None = None
    connection_limit: Annotated[int, Field(ge=-1, le=validation.INT32_MAX)] | None = None
    default_tls_container_ref: Ident | None = None
    sni_container_refs: list[Ident] | None = None
    default_pool_id: Ident | None = None
    insert_headers: dict[InsertHeader, Annotated[str, Field(pattern=r"^(?i:true|false)$")]] | None = None
    timeout_client_data: TimeoutMs | None = None
    timeout_member_connect: TimeoutMs | None = None
    timeout_member_data: TimeoutMs | None = None
    timeout_tcp_inspect: TimeoutMs | None = None
    client_ca_tls_container_ref: Ident | None = None
    client_authentication: ClientAuth | None = None
    client_crl_container_ref: Ident | None = None
    allowed_cidrs: list[CIDR] | None = None
    tls_ciphers: Cipher | None = None
    tls_versions: list[TlsVersion] | None = None
    alpn_protocols: list[Alpn] | None = None
    hsts_max_age: NonNegative32 | None = None
    hsts_include_subdomains: bool | None = None
    hsts_preload: bool | None = None
    tags: Tags | None = None


class ListenerTree(_ListenerFields):
    protocol: ListenerProtocol
    protocol_port: Port
    project_id: Ident | None = None
    default_pool: PoolTree | None = None
    l7policies: list[L7PolicyTree] | None = None


class ListenerCreate(ListenerTree):
    loadbalancer_id: Ident


class ListenerUpdate(_ListenerFields):
    pass


class _LoadBalancerFields(Body):
    name: Name | None = None
    description: Name | None = None
    admin_state_up: bool | None = None
    vip_qos_policy_id: Ident | None = None
    vip_sg_ids: list[Ident] | None = None
    tags: Tags | None = None


class AdditionalVip(Body):
    subnet_id: Ident
    ip_address: IPAddress | None = None


class LoadBalancerCreate(_LoadBalancerFields):
    vip_address: IPAddress | None = None
    vip_port_id: Ident | None = None
    vip_subnet_id: Ident | None = None
    vip_network_id: Ident | None = None
    additional_vips: list[AdditionalVip] | None = None
    project_id: Ident | None = None
    provider: Ident | None = None
    flavor_id: Ident | None = None
    availability_zone: Ident | None = None
    listeners: list[ListenerTree] | None = None
    pools: list[PoolTree] | None = None

    @model_validator(mode="after")
    def _vip_source(self) -> LoadBalancerCreate:
        if not (self.vip_port_id or self.vip_subnet_id or self.vip_network_id):
            raise ValueError("At least one of vip_port_id, vip_network_id, and vip_subnet_id must be specified")
        return self


class LoadBalancerUpdate(_LoadBalancerFields):
    pass


class FailoverBody(Body):
    pass
