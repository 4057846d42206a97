"""One listener as an HAProxy frontend: bind, limits, access list, headers, routing.

The frontend is named after the listener. Headers that Octavia inserts per
listener (``insert_headers``) are set here rather than in the backend, because
a backend is one pool and a pool may serve several listeners.
"""

from __future__ import annotations

from dataclasses import dataclass

from cohort import validation
from cohort.datamodel import Listener
from cohort.drivers.amphora import haproxy_l7, haproxy_prometheus, haproxy_tls
from cohort.drivers.amphora import haproxy_values as v

MODES = {"HTTP": "http", "TERMINATED_HTTPS": "http", "PROMETHEUS": "http", "TCP": "tcp", "HTTPS": "tcp"}
# HAProxy reads at most 64 words per line; long access lists span several lines.
_CIDRS_PER_LINE = 50

_HTTP_HEADERS = {
    "X-Forwarded-For": "option forwardfor",
    "X-Forwarded-Port": "http-request set-header X-Forwarded-Port %[dst_port]",
}
_TLS_HEADERS = {
    "X-SSL-Client-Verify": "http-request set-header X-SSL-Client-Verify %[ssl_c_verify]",
    "X-SSL-Client-Has-Cert": "http-request set-header X-SSL-Client-Has-Cert %[ssl_c_used]",
    "X-SSL-Client-DN": "http-request set-header X-SSL-Client-DN %{+Q}[ssl_c_s_dn]",
    "X-SSL-Client-CN": "http-request set-header X-SSL-Client-CN %{+Q}[ssl_c_s_dn(cn)]",
    "X-SSL-Issuer": "http-request set-header X-SSL-Issuer %{+Q}[ssl_c_i_dn]",
    "X-SSL-Client-SHA1": "http-request set-header X-SSL-Client-SHA1 %{+Q}[ssl_c_sha1,hex]",
    "X-SSL-Client-Not-Before": "http-request set-header X-SSL-Client-Not-Before %{+Q}[ssl_c_notbefore]",
    "X-SSL-Client-Not-After": "http-request set-header X-SSL-Client-Not-After %{+Q}[ssl_c_notafter]",
}


@dataclass(frozen=True)
class FrontendSettings:
    """What a frontend takes from its load balancer and the rest of the configuration."""

    vip_address: str
    transparent: bool  # bind a VIP that may not be local: ACTIVE_STANDBY backups
    enabled: bool  # listener and load balancer both admin up
    maxconn: int | None  # connection_limit; None: HAProxy's global maxconn
    cert_dir: str
    backends: frozenset[str]  # pool ids rendered as backends


def _enabled(value: str) -> bool:
    return value.strip().lower() in ("true", "1", "yes")


def header_lines(listener: Listener) -> list[str]:
    known = {"X-Forwarded-Proto", *_HTTP_HEADERS, *_TLS_HEADERS}
    unknown = sorted(set(listener.insert_headers) - known)
    if unknown:
        raise ValueError(f"listener {listener.id}: unsupported insert_headers {unknown}")
    wanted = {key for key, value in listener.insert_headers.items() if _enabled(value)}
    lines = [line for key, line in _HTTP_HEADERS.items() if key in wanted]
    if "X-Forwarded-Proto" in wanted:
        proto = "https" if listener.protocol == "TERMINATED_HTTPS" else "http"
        lines.append(f"http-request set-header X-Forwarded-Proto {proto}")
    tls_wanted = [line for key, line in _TLS_HEADERS.items() if key in wanted]
    if tls_wanted and listener.protocol != "TERMINATED_HTTPS":
        raise ValueError(f"listener {listener.id}: X-SSL-* headers need a TERMINATED_HTTPS listener")
    return lines + tls_wanted


def _hsts_line(listener: Listener) -> list[str]:
    if listener.hsts_max_age is None or listener.protocol != "TERMINATED_HTTPS":
        return []
    if not 0 <= listener.hsts_max_age <= validation.INT32_MAX:
        raise ValueError(f"listener {listener.id}: hsts_max_age must be 0-{validation.INT32_MAX}")
    value = f"max-age={listener.hsts_max_age};"
    if listener.hsts_include_subdomains:
        value += " includeSubDomains;"
    if listener.hsts_preload:
        value += " preload;"
    return [f"http-response set-header Strict-Transport-Security {v.quote(value, 'HSTS header')}"]


def _cidr_lines(listener: Listener) -> list[str]:
    if not listener.allowed_cidrs:
        return []
    cidrs = [v.cidr(cidr) for cidr in listener.allowed_cidrs]
    lines = [
        "acl cohort-allowed-cidr src " + " ".join(cidrs[i : i + _CIDRS_PER_LINE])
        for i in range(0, len(cidrs), _CIDRS_PER_LINE)
    ]
    return lines + ["tcp-request connection reject unless cohort-allowed-cidr"]


def _bind_line(listener: Listener, settings: FrontendSettings) -> str:
    words = ["bind", v.address_port(settings.vip_address, listener.protocol_port, f"listener {listener.id}")]
    if settings.transparent:
        words.append("transparent")
    if listener.protocol == "TERMINATED_HTTPS":
        words += haproxy_tls.bind_options(listener, settings.cert_dir)
    return " ".join(words)


def _routing_lines(listener: Listener, settings: FrontendSettings) -> list[str]:
    if listener.protocol == "PROMETHEUS":
        return [f"default_backend {haproxy_prometheus.AGENT_BACKEND}"]
    lines: list[str] = []
    policies = [p for p in listener.l7policies if p.admin_state_up]
    if policies:
        if MODES[listener.protocol] != "http":
            raise ValueError(f"listener {listener.id}: L7 policies need an HTTP or TERMINATED_HTTPS listener")
        lines += haproxy_l7.policy_lines(policies, settings.backends)
    if listener.default_pool_id in settings.backends:
        lines.append(f"default_backend {listener.default_pool_id}")
    return lines


def frontend_lines(listener: Listener, settings: FrontendSettings) -> list[str]:
    """The ``frontend`` section of one listener, first line unindented."""
    mode = MODES[listener.protocol]
    if listener.timeout_client_data < 0 or listener.timeout_tcp_inspect < 0:
        raise ValueError(f"listener {listener.id}: timeouts must not be negative")
    body: list[str] = []
    if not settings.enabled:
        body.append("disabled")
    if settings.maxconn is not None:
        body.append(f"maxconn {settings.maxconn}")
    body += [_bind_line(listener, settings), f"mode {mode}"]
    body += _cidr_lines(listener)
    body.append(f"timeout client {v.milliseconds(listener.timeout_client_data, 'timeout_client_data')}")
    if listener.timeout_tcp_inspect:
        body.append(f"tcp-request inspect-delay {v.milliseconds(listener.timeout_tcp_inspect, 'timeout_tcp_inspect')}")
    if mode == "http" and listener.protocol != "PROMETHEUS":
        # On a soft stop (drain, scale-in, reload) an idle keep-alive connection is kept until its
        # next request, answered with "Connection: close", instead of being closed at once: a
        # request already on its way would meet the close and fail (7 of 60 keep-alive clients
        # in the benchmark's scale-in).
        body.append("option idle-close-on-response")
        body += header_lines(listener)
        body += _hsts_line(listener)
    elif any(_enabled(value) for value in listener.insert_headers.values()):
        raise ValueError(f"listener {listener.id}: insert_headers need an HTTP or TERMINATED_HTTPS listener")
    body += _routing_lines(listener, settings)
    return [f"frontend {v.name(listener.id, 'listener id')}"] + ["    " + line for line in body]
