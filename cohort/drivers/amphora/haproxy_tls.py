"""TLS options of HAProxy bind and server lines, and where certificate files live.

The agent stores every PEM it receives (certificate + key + chain bundles, CA
bundles, CRLs) at ``{cert_dir}/{cert_filename(ref)}``; this module is the only
place that turns a container ref into a path, so controller, agent and
configuration agree on it.
"""

from __future__ import annotations

import hashlib
import posixpath

from cohort.datamodel import Listener, Pool
from cohort.drivers.amphora import haproxy_values as v

# Octavia's names, in protocol order, with HAProxy's name and its exclusion flag.
_VERSIONS: tuple[tuple[str, str, str], ...] = (
    ("SSLv3", "SSLv3", "no-sslv3"),
    ("TLSv1", "TLSv1.0", "no-tlsv10"),
    ("TLSv1.1", "TLSv1.1", "no-tlsv11"),
    ("TLSv1.2", "TLSv1.2", "no-tlsv12"),
    ("TLSv1.3", "TLSv1.3", "no-tlsv13"),
)
_ORDER = {octavia: index for index, (octavia, _, _) in enumerate(_VERSIONS)}

CLIENT_AUTH_VERIFY = {"NONE": "none", "OPTIONAL": "optional", "MANDATORY": "required"}


def cert_filename(ref: str) -> str:
    """A stable, path-safe file name for a TLS container ref."""
    if not ref:
        raise ValueError("empty TLS container ref")
    return hashlib.sha256(ref.encode()).hexdigest() + ".pem"


def cert_path(cert_dir: str, ref: str) -> str:
    return posixpath.join(cert_dir, cert_filename(ref))


def version_options(versions: tuple[str, ...]) -> list[str]:
    """``ssl-min-ver``/``ssl-max-ver`` for a contiguous range, exclusion flags otherwise.

    HAProxy ignores ``no-tlsv1x`` next to min/max, so a set with a hole (TLSv1 and
    TLSv1.2 without TLSv1.1) is expressed with exclusion flags alone.
    """
    if not versions:
        return []
    unknown = [ver for ver in versions if ver not in _ORDER]
    if unknown:
        raise ValueError(f"unknown TLS versions {unknown}; use one of {list(_ORDER)}")
    indexes = sorted({_ORDER[ver] for ver in versions})
    if indexes == list(range(indexes[0], indexes[-1] + 1)):
        return [f"ssl-min-ver {_VERSIONS[indexes[0]][1]}", f"ssl-max-ver {_VERSIONS[indexes[-1]][1]}"]
    return [flag for index, (_, _, flag) in enumerate(_VERSIONS) if index not in indexes]


def _cipher_options(ciphers: str | None) -> list[str]:
    # Octavia's tls_ciphers is an OpenSSL cipher list, which governs TLS <= 1.2;
    # TLS 1.3 suites keep OpenSSL's defaults, as in Octavia.
    if not ciphers:
        return []
    return [f"ciphers {v.ciphers(ciphers)}"]


def bind_options(listener: Listener, cert_dir: str) -> list[str]:
    """Everything after ``bind addr:port`` for a TERMINATED_HTTPS listener."""
    if not listener.default_tls_container_ref:
        raise ValueError(f"TERMINATED_HTTPS listener {listener.id} has no default_tls_container_ref")
    opts = ["ssl", f"crt {cert_path(cert_dir, listener.default_tls_container_ref)}"]
    # HAProxy serves the first crt when no SNI name matches, and picks among the
    # others by their CN/SAN: the default certificate must come first.
    seen = {listener.default_tls_container_ref}
    for ref in listener.sni_container_refs:
        if ref not in seen:
            seen.add(ref)
            opts.append(f"crt {cert_path(cert_dir, ref)}")
    auth = listener.client_authentication or "NONE"
    if auth not in CLIENT_AUTH_VERIFY:
        raise ValueError(f"client_authentication {auth!r} is not NONE, OPTIONAL or MANDATORY")
    if listener.client_ca_tls_container_ref:
        opts.append(f"ca-file {cert_path(cert_dir, listener.client_ca_tls_container_ref)}")
        opts.append(f"verify {CLIENT_AUTH_VERIFY[auth]}")
        if listener.client_crl_container_ref:
            opts.append(f"crl-file {cert_path(cert_dir, listener.client_crl_container_ref)}")
    elif auth != "NONE":
        raise ValueError(f"listener {listener.id}: client_authentication {auth} needs a client CA")
    elif listener.client_crl_container_ref:
        raise ValueError(f"listener {listener.id}: a client CRL needs a client CA")
    opts += version_options(listener.tls_versions)
    opts += _cipher_options(listener.tls_ciphers)
    if listener.alpn_protocols:
        opts.append(f"alpn {v.alpn(listener.alpn_protocols)}")
    return opts


def server_options(pool: Pool, cert_dir: str) -> list[str]:
    """TLS options shared by every server line of a pool that re-encrypts to its members."""
    if not pool.tls_enabled:
        return []
    # The member sees the name the client asked for (empty, so no SNI, behind
    # a plain HTTP listener).
    opts = ["ssl", "sni ssl_fc_sni"]
    if pool.tls_container_ref:
        opts.append(f"crt {cert_path(cert_dir, pool.tls_container_ref)}")
    if pool.ca_tls_container_ref:
        opts.append(f"ca-file {cert_path(cert_dir, pool.ca_tls_container_ref)}")
        opts.append("verify required")
        if pool.crl_container_ref:
            opts.append(f"crl-file {cert_path(cert_dir, pool.crl_container_ref)}")
    else:
        if pool.crl_container_ref:
            raise ValueError(f"pool {pool.id}: a CRL needs ca_tls_container_ref")
        opts.append("verify none")
    opts += version_options(pool.tls_versions)
    opts += _cipher_options(pool.tls_ciphers)
    if pool.alpn_protocols:
        opts.append(f"alpn {v.alpn(pool.alpn_protocols)}")
    return opts
