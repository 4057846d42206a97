"""Rendered HAProxy and keepalived configurations: text per feature, and the engines accept them."""

from __future__ import annotations

import dataclasses
import datetime
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cohort.agents.amphora.keepalived import CAPABILITIES as KEEPALIVED_CAPS
from cohort.agents.common.jail import Jail
from cohort.datamodel import (
    Amphora,
    HealthMonitor,
    L7Policy,
    L7Rule,
    Listener,
    LoadBalancer,
    Member,
    Pool,
    SessionPersistence,
    Topology,
)
from cohort.drivers.amphora.haproxy_backend import expected_codes, ordered_members, server_ids
from cohort.drivers.amphora.haproxy_config import cert_filename, render_haproxy
from cohort.drivers.amphora.haproxy_prometheus import proxy_ids, rename_metrics, rename_prometheus_metrics
from cohort.drivers.amphora.keepalived_config import render_keepalived

AMP = Amphora(id="amp-1", load_balancer_id="lb-1", role="STANDALONE")
MEMBERS = tuple(Member(id=f"m{i}", address=f"192.0.2.1{i}", protocol_port=8080) for i in range(1, 4))
STATE_FILE_WARNING = re.compile(r"Can't open global server state file")


def pool(**kw: object) -> Pool:
    base: dict[str, object] = {"id": "pool-1", "protocol": "HTTP", "lb_algorithm": "ROUND_ROBIN", "members": MEMBERS}
    base.update(kw)
    return Pool(**base)  # type: ignore[arg-type]


def listener(**kw: object) -> Listener:
    base: dict[str, object] = {"id": "lis-1", "protocol": "HTTP", "protocol_port": 80, "default_pool_id": "pool-1"}
    base.update(kw)
    return Listener(**base)  # type: ignore[arg-type]


def lb(listeners: tuple[Listener, ...] = (), pools: tuple[Pool, ...] = (), **kw: object) -> LoadBalancer:
    base: dict[str, object] = {
        "id": "lb-1",
        "project_id": "proj",
        "vip_address": "203.0.113.50",
        "vip_subnet_id": "sub",
        "listeners": listeners or (listener(),),
        "pools": pools or (pool(),),
    }
    base.update(kw)
    return LoadBalancer(**base)  # type: ignore[arg-type]


def section(cfg: str, header: str) -> str:
    """The lines of one section (``frontend x``, ``backend y``, ``global``)."""
    match = re.search(rf"^{re.escape(header)}\n((?:    .*\n)*)", cfg, re.M)
    assert match, f"no section {header!r} in:\n{cfg}"
    return match.group(1)


def haproxy_check(cfg: str, tmp_path: Path) -> None:
    if shutil.which("haproxy") is None:
        pytest.skip("haproxy is not installed")
    path = tmp_path / "haproxy.cfg"
    path.write_text(cfg)
    proc = subprocess.run(["haproxy", "-c", "-f", str(path)], capture_output=True, text=True, timeout=30)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output + cfg
    problems = [
        line
        for line in output.splitlines()
        if ("WARNING" in line or "ALERT" in line) and not STATE_FILE_WARNING.search(line)
    ]
    assert not problems, "\n".join(problems) + "\n" + cfg


def render(tmp_path: Path, balancer: LoadBalancer, amphora: Amphora = AMP, cert_dir: str = "/certs") -> str:
    cfg = render_haproxy(balancer, amphora, cert_dir, str(tmp_path / "state"))
    haproxy_check(cfg, tmp_path)
    return cfg


# --- certificates for TLS configurations ---------------------------------------------------------


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(
    cn: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    ca: bool = False,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    issuer_name, issuer_key = issuer or (_name(cn), key)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(cn)]), critical=False)
        .sign(issuer_key, hashes.SHA256())
    )


def _pem(*items: x509.Certificate | ec.EllipticCurvePrivateKey | x509.CertificateRevocationList) -> bytes:
    out = b""
    for item in items:
        if isinstance(item, ec.EllipticCurvePrivateKey):
            out += item.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        else:
            out += item.public_bytes(serialization.Encoding.PEM)
    return out


@pytest.fixture
def cert_dir(tmp_path: Path) -> str:
    """refs ``default``, ``sni-a``, ``sni-b``, ``client-ca``, ``crl``, ``client`` stored like the agent does."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("Test CA", ca_key, None, ca=True)
    now = datetime.datetime.now(datetime.UTC)
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.subject)
        .last_update(now)
        .next_update(now + datetime.timedelta(days=1))
        .sign(ca_key, hashes.SHA256())
    )
    directory = tmp_path / "certs"
    directory.mkdir()
    files: dict[str, bytes] = {"client-ca": _pem(ca), "crl": _pem(crl)}
    for ref, cn in (
        ("default", "default.example.com"),
        ("sni-a", "a.example.com"),
        ("sni-b", "b.example.com"),
        ("client", "client"),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        files[ref] = _pem(_cert(cn, key, (ca.subject, ca_key)), key, ca)
    for ref, data in files.items():
        (directory / cert_filename(ref)).write_bytes(data)
    return str(directory)


# --- global, names, protocols ---------------------------------------------------------------------


def test_cert_filename_is_stable_and_path_safe() -> None:
    name = cert_filename("https://barbican.example/v1/containers/../../etc/passwd")
    assert re.fullmatch(r"[0-9a-f]{64}\.pem", name)
    assert name == cert_filename("https://barbican.example/v1/containers/../../etc/passwd")
    assert name != cert_filename("other")
    with pytest.raises(ValueError):
        cert_filename("")


def test_global_section_follows_agent_conventions(tmp_path: Path) -> None:
    cfg = render(tmp_path, lb())
    state = tmp_path / "state"
    glob = section(cfg, "global")
    assert f"stats socket {state}/lb-1.sock mode 600 level admin expose-fd listeners" in glob
    assert f"pidfile {state}/lb-1.pid" in glob
    assert f"server-state-file {state}/lb-1.state" in glob
    assert "master-worker" in glob
    # HAProxy sizes maxconn from its file limit; a fixed value could exceed it and stop HAProxy
    assert "maxconn" not in glob
    assert "external-check" not in glob


def test_http_listener_names_frontend_backend_and_servers(tmp_path: Path) -> None:
    cfg = render(tmp_path, lb())
    fe = section(cfg, "frontend lis-1")
    assert "    bind 203.0.113.50:80\n" in fe
    assert "    mode http\n" in fe
    assert "    default_backend pool-1\n" in fe
    # A soft stop answers an idle keep-alive connection's next request with "Connection: close".
    assert "    option idle-close-on-response\n" in fe
    assert "transparent" not in fe and "disabled" not in fe
    be = section(cfg, "backend pool-1")
    assert "    mode http\n" in be and "    balance roundrobin\n" in be
    assert {"m1", "m2", "m3"} == set(re.findall(r"^    server (\S+) 192\.0\.2\.1\d:8080 ", be, re.M))
    assert "check" not in be  # no health monitor: NO_MONITOR


@pytest.mark.parametrize(("protocol", "pool_protocol"), [("TCP", "TCP"), ("HTTPS", "HTTPS"), ("TCP", "PROXY")])
def test_tcp_and_passthrough_listeners_use_tcp_mode(tmp_path: Path, protocol: str, pool_protocol: str) -> None:
    cfg = render(tmp_path, lb((listener(protocol=protocol),), (pool(protocol=pool_protocol),)))
    assert "    mode tcp\n" in section(cfg, "frontend lis-1")
    assert "idle-close-on-response" not in section(cfg, "frontend lis-1")
    assert "    mode tcp\n" in section(cfg, "backend pool-1")
    if pool_protocol == "PROXY":
        servers = [line for line in section(cfg, "backend pool-1").splitlines() if line.startswith("    server ")]
        assert len(servers) == 3 and all(line.endswith(" send-proxy") for line in servers)


def test_tcp_listener_may_use_an_http_pool(tmp_path: Path) -> None:
    cfg = render(tmp_path, lb((listener(protocol="TCP"),), (pool(protocol="HTTP"),)))
    assert "    mode http\n" in section(cfg, "backend pool-1")


@pytest.mark.parametrize("protocol", ["UDP", "SCTP"])
def test_udp_and_sctp_listeners_are_left_to_the_kernel(tmp_path: Path, protocol: str) -> None:
    tree = lb((listener(protocol=protocol, protocol_port=53), listener(id="lis-2", default_pool_id="pool-2")),
              (pool(protocol=protocol), pool(id="pool-2")))
    cfg = render(tmp_path, tree)
    assert "frontend lis-2" in cfg and "backend pool-2" in cfg
    assert "lis-1" not in cfg and "pool-1" not in cfg and ":53" not in cfg


def test_inconsistent_trees_are_refused() -> None:
    with pytest.raises(ValueError, match="cannot use pool"):
        render_haproxy(lb((listener(protocol="HTTP"),), (pool(protocol="TCP"),)), AMP, "/c")
    with pytest.raises(ValueError, match="unknown pool"):
        render_haproxy(lb((listener(default_pool_id="nope"),)), AMP, "/c")
    with pytest.raises(ValueError, match="port 80"):
        render_haproxy(lb((listener(), listener(id="lis-2"))), AMP, "/c")
    with pytest.raises(ValueError, match="no VIP"):
        render_haproxy(lb(vip_address=None), AMP, "/c")
    with pytest.raises(ValueError, match="HAProxy name"):
        render_haproxy(lb((listener(id="x\n    bind 0.0.0.0:22"),)), AMP, "/c")


def test_vip_bind_is_transparent_only_where_the_vip_may_not_be_local(tmp_path: Path) -> None:
    standby = render(tmp_path, lb(topology=Topology(name="ACTIVE_STANDBY")))
    assert "    bind 203.0.113.50:80 transparent\n" in section(standby, "frontend lis-1")
    # A cluster member holds the VIP on lo from plug-in on; IP_TRANSPARENT would only cost.
    cluster = render(tmp_path, lb(topology=Topology(name="ACTIVE_ACTIVE")))
    assert "    bind 203.0.113.50:80\n" in section(cluster, "frontend lis-1")


def test_ipv6_vip_and_members(tmp_path: Path) -> None:
    members = (Member(id="m6", address="2001:db8::11", protocol_port=80),)
    sp = SessionPersistence(type="SOURCE_IP", persistence_granularity="64")
    cfg = render(tmp_path, lb(pools=(pool(members=members, session_persistence=sp),), vip_address="2001:db8::50"))
    assert "    bind [2001:db8::50]:80\n" in section(cfg, "frontend lis-1")
    be = section(cfg, "backend pool-1")
    assert "server m6 [2001:db8::11]:80 " in be
    assert "stick-table type ipv6 size 100k\n" in be and "stick on src,ipmask(32,64)\n" in be


# --- listener features ---------------------------------------------------------------------------


def test_admin_state_disables_frontends(tmp_path: Path) -> None:
    two = (listener(), listener(id="lis-2", protocol_port=81, admin_state_up=False))
    cfg = render(tmp_path, lb(two))
    assert "disabled" not in section(cfg, "frontend lis-1")
    assert "    disabled\n" in section(cfg, "frontend lis-2")
    cfg = render(tmp_path, lb(two, admin_state_up=False))
    assert "    disabled\n" in section(cfg, "frontend lis-1")
    assert "    disabled\n" in section(cfg, "frontend lis-2")


def test_disabled_pool_is_not_rendered(tmp_path: Path) -> None:
    cfg = render(tmp_path, lb(pools=(pool(admin_state_up=False),)))
    assert "default_backend" not in section(cfg, "frontend lis-1")
    assert "backend pool-1" not in cfg


def test_connection_limit_and_timeouts(tmp_path: Path) -> None:
    cfg = render(
        tmp_path,
        lb(
            (
                listener(
                    connection_limit=100,
                    timeout_client_data=1234,
                    timeout_member_connect=567,
                    timeout_member_data=8910,
                    timeout_tcp_inspect=300,
                ),
            )
        ),
    )
    fe = section(cfg, "frontend lis-1")
    assert "    maxconn 100\n" in fe
    assert "    timeout client 1234\n" in fe
    assert "    tcp-request inspect-delay 300\n" in fe
    be = section(cfg, "backend pool-1")
    assert "    timeout connect 567\n" in be and "    timeout server 8910\n" in be
    cfg = render(tmp_path, lb((listener(connection_limit=-1),)))
    assert "maxconn" not in cfg
    assert "inspect-delay" not in cfg


def test_allowed_cidrs(tmp_path: Path) -> None:
    cfg = render(tmp_path, lb((listener(allowed_cidrs=("198.51.100.0/24", "2001:db8::/32", "192.0.2.7")),)))
    fe = section(cfg, "frontend lis-1")
    assert "    acl cohort-allowed-cidr src 198.51.100.0/24 2001:db8::/32 192.0.2.7/32\n" in fe
    assert "    tcp-request connection reject unless cohort-allowed-cidr\n" in fe
    many = tuple(f"198.18.{i}.0/24" for i in range(120))
    cfg = render(tmp_path, lb((listener(allowed_cidrs=many),)))
    assert section(cfg, "frontend lis-1").count("acl cohort-allowed-cidr src") == 3
    with pytest.raises(ValueError, match="CIDR"):
        render_haproxy(lb((listener(allowed_cidrs=("198.51.100.0/24 0.0.0.0/0",)),)), AMP, "/c")


def test_insert_headers(tmp_path: Path) -> None:
    headers = {"X-Forwarded-For": "true", "X-Forwarded-Port": "True", "X-Forwarded-Proto": "true"}
    fe = section(render(tmp_path, lb((listener(insert_headers=headers),))), "frontend lis-1")
    assert "    option forwardfor\n" in fe
    assert "    http-request set-header X-Forwarded-Port %[dst_port]\n" in fe
    assert "    http-request set-header X-Forwarded-Proto http\n" in fe
    fe = section(render(tmp_path, lb((listener(insert_headers={"X-Forwarded-For": "false"}),))), "frontend lis-1")
    assert "forwardfor" not in fe
    with pytest.raises(ValueError, match="TERMINATED_HTTPS"):
        render_haproxy(lb((listener(insert_headers={"X-SSL-Client-CN": "true"}),)), AMP, "/c")
    with pytest.raises(ValueError, match="unsupported insert_headers"):
        render_haproxy(lb((listener(insert_headers={"X-Evil": "true"}),)), AMP, "/c")


def test_terminated_https_everything(tmp_path: Path, cert_dir: str) -> None:
    headers = {
        h: "true"
        for h in (
            "X-Forwarded-Proto",
            "X-SSL-Client-Verify",
            "X-SSL-Client-Has-Cert",
            "X-SSL-Client-DN",
            "X-SSL-Client-CN",
            "X-SSL-Issuer",
            "X-SSL-Client-SHA1",
            "X-SSL-Client-Not-Before",
            "X-SSL-Client-Not-After",
        )
    }
    tls = listener(
        protocol="TERMINATED_HTTPS",
        protocol_port=443,
        default_tls_container_ref="default",
        sni_container_refs=("sni-a", "sni-b", "default"),
        client_ca_tls_container_ref="client-ca",
        client_authentication="MANDATORY",
        client_crl_container_ref="crl",
        tls_ciphers="ECDHE+AESGCM",
        tls_versions=("TLSv1.2", "TLSv1.3"),
        alpn_protocols=("h2", "http/1.1"),
        hsts_max_age=31536000,
        hsts_include_subdomains=True,
        hsts_preload=True,
        insert_headers=headers,
    )
    cfg = render(tmp_path, lb((tls,)), cert_dir=cert_dir)
    fe = section(cfg, "frontend lis-1")
    path = {ref: f"{cert_dir}/{cert_filename(ref)}" for ref in ("default", "sni-a", "sni-b", "client-ca", "crl")}
    assert (
        f"    bind 203.0.113.50:443 ssl crt {path['default']} crt {path['sni-a']} crt {path['sni-b']} "
        f"ca-file {path['client-ca']} verify required crl-file {path['crl']} ssl-min-ver TLSv1.2 "
        "ssl-max-ver TLSv1.3 ciphers ECDHE+AESGCM alpn h2,http/1.1\n"
    ) in fe
    assert "    mode http\n" in fe
    assert "    http-request set-header X-Forwarded-Proto https\n" in fe
    assert "    http-request set-header X-SSL-Client-CN %{+Q}[ssl_c_s_dn(cn)]\n" in fe
    assert "    http-request set-header X-SSL-Client-SHA1 %{+Q}[ssl_c_sha1,hex]\n" in fe
    assert fe.count("X-SSL-") == 8
    assert (
        "    http-response set-header Strict-Transport-Security 'max-age=31536000; includeSubDomains; preload;'\n"
    ) in fe


@pytest.mark.parametrize(("auth", "verify"), [("NONE", "none"), ("OPTIONAL", "optional"), ("MANDATORY", "required")])
def test_client_authentication_modes(tmp_path: Path, cert_dir: str, auth: str, verify: str) -> None:
    tls = listener(
        protocol="TERMINATED_HTTPS",
        default_tls_container_ref="default",
        client_ca_tls_container_ref="client-ca",
        client_authentication=auth,
    )
    fe = section(render(tmp_path, lb((tls,)), cert_dir=cert_dir), "frontend lis-1")
    assert f"ca-file {cert_dir}/{cert_filename('client-ca')} verify {verify}" in fe


def test_tls_listener_errors() -> None:
    with pytest.raises(ValueError, match="needs a client CA"):
        render_haproxy(
            lb(
                (
                    listener(
                        protocol="TERMINATED_HTTPS", default_tls_container_ref="d", client_authentication="MANDATORY"
                    ),
                )
            ),
            AMP,
            "/c",
        )
    with pytest.raises(ValueError, match="default_tls_container_ref"):
        render_haproxy(lb((listener(protocol="TERMINATED_HTTPS"),)), AMP, "/c")
    with pytest.raises(ValueError, match="unknown TLS versions"):
        render_haproxy(
            lb((listener(protocol="TERMINATED_HTTPS", default_tls_container_ref="d", tls_versions=("TLSv9",)),)),
            AMP,
            "/c",
        )
    with pytest.raises(ValueError, match="cipher"):
        render_haproxy(
            lb(
                (
                    listener(
                        protocol="TERMINATED_HTTPS", default_tls_container_ref="d", tls_ciphers="AES crt /etc/shadow"
                    ),
                )
            ),
            AMP,
            "/c",
        )


def test_tls_versions_with_a_hole_use_exclusion_flags(tmp_path: Path, cert_dir: str) -> None:
    tls = listener(
        protocol="TERMINATED_HTTPS", default_tls_container_ref="default", tls_versions=("TLSv1", "TLSv1.2", "SSLv3")
    )
    fe = section(render(tmp_path, lb((tls,)), cert_dir=cert_dir), "frontend lis-1")
    assert " no-tlsv11 no-tlsv13" in fe and "ssl-min-ver" not in fe


def test_prometheus_listener(tmp_path: Path) -> None:
    prom = listener(id="lis-p", protocol="PROMETHEUS", protocol_port=9100, default_pool_id=None)
    cfg = render(tmp_path, lb((listener(), prom)))
    assert "    default_backend cohort-prometheus-agent\n" in section(cfg, "frontend lis-p")
    exporter = section(cfg, "frontend cohort-prometheus-exporter")
    assert f"    bind unix@{tmp_path}/state/lb-1-prometheus.sock mode 600\n" in exporter
    assert "    http-request use-service prometheus-exporter\n" in exporter
    assert f"server agent unix@{tmp_path}/state/lb-1-metrics.sock" in section(cfg, "backend cohort-prometheus-agent")
    assert "cohort-prometheus" not in render(tmp_path, lb())


# --- pools and members ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("algorithm", "lines"),
    [
        ("ROUND_ROBIN", ["balance roundrobin"]),
        ("LEAST_CONNECTIONS", ["balance leastconn"]),
        ("SOURCE_IP", ["balance source", "hash-type consistent"]),
        (
            "SOURCE_IP_PORT",
            [
                "tcp-request content set-var(txn.cohort_sport) src_port",
                "balance hash src,concat(:,txn.cohort_sport)",
                "hash-type consistent",
            ],
        ),
    ],
)
def test_lb_algorithms(tmp_path: Path, algorithm: str, lines: list[str]) -> None:
    be = section(render(tmp_path, lb(pools=(pool(lb_algorithm=algorithm),))), "backend pool-1")
    assert "".join(f"    {line}\n" for line in lines) in be
    with pytest.raises(ValueError, match="lb_algorithm"):
        render_haproxy(lb(pools=(pool(lb_algorithm="RANDOM"),)), AMP, "/c")


def test_session_persistence(tmp_path: Path) -> None:
    sp = SessionPersistence(type="SOURCE_IP", persistence_timeout=120, persistence_granularity="255.255.255.0")
    be = section(render(tmp_path, lb(pools=(pool(session_persistence=sp),))), "backend pool-1")
    assert "    stick-table type ip size 100k expire 120s\n    stick on src,ipmask(24)\n" in be
    be = section(
        render(tmp_path, lb(pools=(pool(session_persistence=SessionPersistence("HTTP_COOKIE")),))), "backend pool-1"
    )
    assert "    cookie SRV insert indirect nocache\n" in be
    assert all(f"server {m.id} " in be and f" cookie {m.id}" in be for m in MEMBERS)
    sp = SessionPersistence(type="APP_COOKIE", cookie_name="JSESSIONID")
    be = section(render(tmp_path, lb(pools=(pool(session_persistence=sp),))), "backend pool-1")
    assert (
        "    stick-table type string len 64 size 100k\n    stick store-response res.cook(JSESSIONID)\n"
        "    stick match req.cook(JSESSIONID)\n"
    ) in be
    for bad in (
        SessionPersistence(type="APP_COOKIE"),
        SessionPersistence(type="APP_COOKIE", cookie_name="a b"),
        SessionPersistence(type="SOURCE_IP", persistence_granularity="255.0.255.0"),
    ):
        with pytest.raises(ValueError):
            render_haproxy(lb(pools=(pool(session_persistence=bad),)), AMP, "/c")
    with pytest.raises(ValueError, match="HTTP pool"):
        render_haproxy(
            lb(
                (listener(protocol="TCP"),),
                (pool(protocol="TCP", session_persistence=SessionPersistence("HTTP_COOKIE")),),
            ),
            AMP,
            "/c",
        )


def test_members_weight_backup_disabled_monitor_address(tmp_path: Path) -> None:
    members = (
        Member(id="m1", address="192.0.2.11", protocol_port=80, weight=0),
        Member(
            id="m2",
            address="192.0.2.12",
            protocol_port=80,
            backup=True,
            monitor_address="192.0.2.99",
            monitor_port=8081,
        ),
        Member(id="m3", address="192.0.2.13", protocol_port=80, admin_state_up=False, weight=256),
    )
    hm = HealthMonitor(id="hm", type="TCP", delay=2, timeout=1, max_retries=3, max_retries_down=4)
    be = section(render(tmp_path, lb(pools=(pool(members=members, healthmonitor=hm),))), "backend pool-1")
    lines = {line.split()[1]: line for line in be.splitlines() if line.startswith("    server ")}
    assert " weight 0 check inter 2s fall 4 rise 3" in lines["m1"]
    assert lines["m2"].endswith(" check inter 2s fall 4 rise 3 addr 192.0.2.99 port 8081 backup")
    assert lines["m3"].endswith(" weight 256 check inter 2s fall 4 rise 3 disabled")
    assert "    option allbackups\n" in be
    with pytest.raises(ValueError, match="weight"):
        render_haproxy(
            lb(pools=(pool(members=(Member(id="m", address="192.0.2.1", protocol_port=1, weight=257),)),)), AMP, "/c"
        )
    with pytest.raises(ValueError, match="IP address"):
        render_haproxy(
            lb(pools=(pool(members=(Member(id="m", address="evil:80 backup", protocol_port=1),)),)), AMP, "/c"
        )


def test_member_order_is_shuffled_per_amphora_with_stable_server_ids(tmp_path: Path) -> None:
    members = tuple(Member(id=f"member-{i}", address=f"192.0.2.{i}", protocol_port=80) for i in range(10, 20))
    p = pool(members=members)
    orders = {tuple(m.id for m in ordered_members(p, f"amp-{n}")) for n in range(6)}
    assert len(orders) > 1, "every amphora got the same order"
    assert ordered_members(p, "amp-1") == ordered_members(p, "amp-1")
    assert ordered_members(dataclasses.replace(p, members=members[::-1]), "amp-1") == ordered_members(p, "amp-1")
    cfg_a = render(tmp_path, lb(pools=(p,)), Amphora(id="amp-0", load_balancer_id="lb-1", role="IN_CLUSTER"))
    cfg_b = render(tmp_path, lb(pools=(p,)), Amphora(id="amp-3", load_balancer_id="lb-1", role="IN_CLUSTER"))
    ids_a = dict(re.findall(r"server (\S+) \S+ id (\d+)", cfg_a))
    ids_b = dict(re.findall(r"server (\S+) \S+ id (\d+)", cfg_b))
    assert ids_a == ids_b and len(set(ids_a.values())) == 10
    assert list(ids_a) != list(ids_b)
    assert server_ids(members) == server_ids(members[::-1])


def test_pool_tls_to_members(tmp_path: Path, cert_dir: str) -> None:
    p = pool(
        tls_enabled=True,
        tls_container_ref="client",
        ca_tls_container_ref="client-ca",
        crl_container_ref="crl",
        tls_ciphers="ECDHE+AESGCM",
        tls_versions=("TLSv1.2",),
        alpn_protocols=("h2", "http/1.1"),
    )
    be = section(render(tmp_path, lb(pools=(p,)), cert_dir=cert_dir), "backend pool-1")
    assert (
        be.count(
            f" ssl sni ssl_fc_sni crt {cert_dir}/{cert_filename('client')}"
            f" ca-file {cert_dir}/{cert_filename('client-ca')}"
            f" verify required crl-file {cert_dir}/{cert_filename('crl')} ssl-min-ver TLSv1.2 ssl-max-ver TLSv1.2"
            " ciphers ECDHE+AESGCM alpn h2,http/1.1\n"
        )
        == 3
    )
    be = section(render(tmp_path, lb(pools=(pool(tls_enabled=True),))), "backend pool-1")
    assert be.count(" ssl sni ssl_fc_sni verify none\n") == 3
    assert " ssl" not in section(render(tmp_path, lb()), "backend pool-1")


# --- health monitors -----------------------------------------------------------------------------


def hm(**kw: object) -> HealthMonitor:
    base: dict[str, object] = {
        "id": "hm-1",
        "type": "HTTP",
        "delay": 1,
        "timeout": 2,
        "max_retries": 2,
        "max_retries_down": 3,
    }
    base.update(kw)
    return HealthMonitor(**base)  # type: ignore[arg-type]


def test_http_monitor(tmp_path: Path) -> None:
    monitor = hm(
        http_method="HEAD",
        url_path="/healthz?full=1",
        expected_codes="200,202",
        http_version=1.1,
        domain_name="www.example.com",
    )
    be = section(render(tmp_path, lb(pools=(pool(healthmonitor=monitor),))), "backend pool-1")
    assert (
        "    timeout check 2s\n    option httpchk\n"
        "    http-check send meth HEAD uri '/healthz?full=1' ver HTTP/1.1 hdr Host www.example.com\n"
        "    http-check expect rstatus ^(200|202)$\n"
    ) in be
    assert be.count(" check inter 1s fall 3 rise 2\n") == 3
    be = section(render(tmp_path, lb(pools=(pool(healthmonitor=hm()),))), "backend pool-1")
    assert "    http-check send meth GET uri '/'\n    http-check expect status 200\n" in be


def test_expected_codes() -> None:
    assert expected_codes("200") == [200]
    assert expected_codes("200, 202") == [200, 202]
    assert expected_codes("200-204") == [200, 201, 202, 203, 204]
    assert expected_codes("200-202,301") == [200, 201, 202, 301]
    for bad in ("20x", "204-200", "600", "200-", ""):
        with pytest.raises(ValueError):
            expected_codes(bad)


def test_other_monitor_types(tmp_path: Path) -> None:
    cfg = render(tmp_path, lb(pools=(pool(healthmonitor=hm(type="HTTPS")),)))
    assert section(cfg, "backend pool-1").count(" check inter 1s fall 3 rise 2 check-ssl verify none\n") == 3
    cfg = render(tmp_path, lb(pools=(pool(healthmonitor=hm(type="HTTPS"), tls_enabled=True),)))
    assert " check-ssl ssl sni ssl_fc_sni verify none" in section(cfg, "backend pool-1")
    cfg = render(tmp_path, lb(pools=(pool(healthmonitor=hm(type="TLS-HELLO")),)))
    assert "    option ssl-hello-chk\n" in section(cfg, "backend pool-1")
    cfg = render(tmp_path, lb(pools=(pool(healthmonitor=hm(type="TCP")),)))
    assert "httpchk" not in cfg and section(cfg, "backend pool-1").count(" check inter 1s ") == 3
    cfg = render(tmp_path, lb(pools=(pool(healthmonitor=hm(type="PING")),)))
    assert (
        f"    external-check command {tmp_path}/state/ping-wrapper.sh\n    external-check path /usr/bin:/bin\n"
    ) in section(cfg, "backend pool-1")
    assert "    option external-check\n" in section(cfg, "backend pool-1")
    assert "    external-check\n    insecure-fork-wanted\n" in section(cfg, "global")
    cfg = render(tmp_path, lb(pools=(pool(healthmonitor=hm(admin_state_up=False)),)))
    assert " check" not in section(cfg, "backend pool-1")
    for bad in (
        hm(type="UDP-CONNECT"),
        hm(url_path="/a b"),
        hm(url_path="x"),
        hm(http_method="GET /x"),
        hm(domain_name="a b"),
        hm(expected_codes="2OO"),
        hm(delay=0),
        hm(max_retries=11),
    ):
        with pytest.raises(ValueError):
            render_haproxy(lb(pools=(pool(healthmonitor=bad),)), AMP, "/c")


# --- L7 policies ---------------------------------------------------------------------------------


def rule(rid: str, rtype: str, compare: str, value: str, key: str | None = None, invert: bool = False) -> L7Rule:
    return L7Rule(id=rid, type=rtype, compare_type=compare, value=value, key=key, invert=invert)


def l7_lb(*policies: L7Policy, protocol: str = "HTTP") -> LoadBalancer:
    extra = {"default_tls_container_ref": "default"} if protocol == "TERMINATED_HTTPS" else {}
    return lb((listener(protocol=protocol, l7policies=policies, **extra),), (pool(), pool(id="pool-2")))


def test_l7_rule_types_and_compare_types(tmp_path: Path, cert_dir: str) -> None:
    rules = (
        rule("r-host", "HOST_NAME", "EQUAL_TO", "www.example.com"),
        rule("r-path", "PATH", "STARTS_WITH", "/api"),
        rule("r-file", "FILE_TYPE", "EQUAL_TO", ".jpg"),
        rule("r-file2", "FILE_TYPE", "REGEX", "^(png|gif)$"),
        rule("r-hdr", "HEADER", "CONTAINS", "beta", key="X-Tier"),
        rule("r-cook", "COOKIE", "ENDS_WITH", "gold", key="tier", invert=True),
        rule("r-cert", "SSL_CONN_HAS_CERT", "EQUAL_TO", "True"),
        rule("r-verify", "SSL_VERIFY_RESULT", "EQUAL_TO", "0"),
        rule("r-dn", "SSL_DN_FIELD", "REGEX", "^ops-.*", key="OU"),
    )
    cfg = render(
        tmp_path,
        l7_lb(L7Policy(id="p1", action="REJECT", position=1, rules=rules), protocol="TERMINATED_HTTPS"),
        cert_dir=cert_dir,
    )
    fe = section(cfg, "frontend lis-1")
    for line in (
        "acl r-host req.hdr(host),regsub(:[0-9]+$,) -i -m str -- 'www.example.com'",
        "acl r-path path -m beg -- '/api'",
        "acl r-file path,regsub(^.*/,),regsub(^[^.]*$,),regsub(^.*[.],) -m str -- 'jpg'",
        "acl r-file2 path,regsub(^.*/,),regsub(^[^.]*$,),regsub(^.*[.],) -m reg -- '^(png|gif)$'",
        "acl r-hdr req.hdr(X-Tier) -m sub -- 'beta'",
        "acl r-cook req.cook(tier) -m end -- 'gold'",
        "acl r-cert ssl_c_used",
        "acl r-verify ssl_c_verify eq 0",
        "acl r-dn ssl_c_s_dn(OU) -m reg -- '^ops-.*'",
        "http-request deny if r-host r-path r-file r-file2 r-hdr !r-cook r-cert r-verify r-dn",
    ):
        assert f"    {line}\n" in fe


def test_l7_policy_actions_in_position_order(tmp_path: Path) -> None:
    r = rule("r1", "PATH", "STARTS_WITH", "/x")
    policies = (
        L7Policy(id="to-pool", action="REDIRECT_TO_POOL", position=1, rules=(r,), redirect_pool_id="pool-2"),
        L7Policy(
            id="prefix",
            action="REDIRECT_PREFIX",
            position=4,
            rules=(rule("r4", "PATH", "EQUAL_TO", "/p"),),
            redirect_prefix="https://p.example.com",
            redirect_http_code=301,
        ),
        L7Policy(
            id="url",
            action="REDIRECT_TO_URL",
            position=3,
            rules=(rule("r3", "PATH", "EQUAL_TO", "/u"),),
            redirect_url="https://u.example.com/a%20b?c='d'",
        ),
        L7Policy(id="reject", action="REJECT", position=2, rules=(rule("r2", "PATH", "EQUAL_TO", "/r"),)),
        L7Policy(
            id="off", action="REJECT", position=5, rules=(rule("r5", "PATH", "EQUAL_TO", "/off"),), admin_state_up=False
        ),
        L7Policy(id="empty", action="REJECT", position=6),
        L7Policy(
            id="rule-off",
            action="REJECT",
            position=7,
            rules=(dataclasses.replace(rule("r7", "PATH", "EQUAL_TO", "/o"), admin_state_up=False),),
        ),
    )
    fe = section(render(tmp_path, l7_lb(*policies)), "frontend lis-1")
    actions = [
        line.strip()
        for line in fe.splitlines()
        if line.strip().startswith(("http-request deny", "redirect", "use_backend"))
    ]
    # HAProxy's (and Octavia's) precedence: reject, then redirects, then pools; position within each.
    assert actions == [
        "http-request deny if r2",
        "redirect location 'https://u.example.com/a%20b?c='\\''d'\\''' code 302 if r3",
        "redirect prefix 'https://p.example.com' code 301 if r4",
        "use_backend pool-2 if r1",
    ]
    assert "r5" not in fe and "r7" not in fe
    assert fe.index("acl r1 ") < fe.index("use_backend") and fe.rstrip().endswith("default_backend pool-1")


def test_l7_redirect_to_disabled_pool_is_skipped(tmp_path: Path) -> None:
    policy = L7Policy(
        id="p",
        action="REDIRECT_TO_POOL",
        position=1,
        rules=(rule("r", "PATH", "EQUAL_TO", "/"),),
        redirect_pool_id="pool-2",
    )
    balancer = dataclasses.replace(l7_lb(policy), pools=(pool(), pool(id="pool-2", admin_state_up=False)))
    cfg = render(tmp_path, balancer)
    assert "use_backend" not in cfg and "backend pool-2" not in cfg


def test_l7_values_cannot_inject_configuration(tmp_path: Path) -> None:
    tricky = 'a b\' "c" #d $HOME -i %[src]'
    fe = section(
        render(
            tmp_path,
            l7_lb(
                L7Policy(
                    id="p", action="REJECT", position=1, rules=(rule("r", "HEADER", "EQUAL_TO", tricky, key="X-A"),)
                )
            ),
        ),
        "frontend lis-1",
    )
    assert "    acl r req.hdr(X-A) -m str -- 'a b'\\'' \"c\" #d $HOME -i %[src]'\n" in fe
    bad_rules = (
        rule("r", "PATH", "EQUAL_TO", "/x\n    server evil 203.0.113.9:80"),
        rule("r", "HEADER", "EQUAL_TO", "v", key="X-A) || always_true #"),
        rule("r", "COOKIE", "EQUAL_TO", "v", key=None),
        rule("r", "PATH", "REGEX", "(unclosed"),
        rule("r", "FILE_TYPE", "STARTS_WITH", "jp"),
        rule("r", "SSL_VERIFY_RESULT", "EQUAL_TO", "zero"),
        rule("r", "PATH", "LIKE", "/"),
        rule("r", "QUERY", "EQUAL_TO", "/"),
        rule("r x", "PATH", "EQUAL_TO", "/"),
    )
    for bad in bad_rules:
        with pytest.raises(ValueError):
            render_haproxy(l7_lb(L7Policy(id="p", action="REJECT", position=1, rules=(bad,))), AMP, "/c")
    ok = (rule("r", "PATH", "EQUAL_TO", "/"),)
    for policy in (
        L7Policy(id="p", action="REDIRECT_TO_URL", position=1, rules=ok),
        L7Policy(id="p", action="REDIRECT_TO_URL", position=1, rules=ok, redirect_url="http://x\r\nSet-Cookie: a"),
        L7Policy(id="p", action="REDIRECT_PREFIX", position=1, rules=ok, redirect_prefix="/p", redirect_http_code=200),
        L7Policy(id="p", action="DROP", position=1, rules=ok),
    ):
        with pytest.raises(ValueError):
            render_haproxy(l7_lb(policy), AMP, "/c")
    with pytest.raises(ValueError, match="L7 policies need"):
        render_haproxy(
            lb(
                (listener(protocol="TCP", l7policies=(L7Policy(id="p", action="REJECT", position=1, rules=ok),)),),
                (pool(protocol="TCP"),),
            ),
            AMP,
            "/c",
        )


# --- Prometheus metric names ---------------------------------------------------------------------

EXPORTER_TEXT = """\
# HELP haproxy_process_current_connections Number of active sessions
# TYPE haproxy_process_current_connections gauge
haproxy_process_current_connections 3
# HELP haproxy_frontend_bytes_in_total Total number of request bytes since process started
# TYPE haproxy_frontend_bytes_in_total counter
haproxy_frontend_bytes_in_total{proxy="lis-1"} 1234
haproxy_frontend_bytes_in_total{proxy="cohort-prometheus-exporter"} 99
# TYPE haproxy_backend_status gauge
haproxy_backend_status{proxy="pool-1",state="UP"} 1
haproxy_backend_status{proxy="cohort-prometheus-agent",state="UP"} 1
# TYPE haproxy_server_check_status gauge
haproxy_server_check_status{proxy="pool-1",server="m1",state="L7OK"} 1
haproxy_server_check_status{proxy="pool-1",server="we\\"ird,name",state="HANA"} 0
# TYPE haproxy_sticktable_size gauge
haproxy_sticktable_size{name="pool-1"} 102400
"""


def test_rename_prometheus_metrics() -> None:
    out = rename_prometheus_metrics(EXPORTER_TEXT, lb())
    assert out.splitlines() == [
        "# HELP octavia_loadbalancer_current_connections Number of active sessions",
        "# TYPE octavia_loadbalancer_current_connections gauge",
        "octavia_loadbalancer_current_connections 3",
        "# HELP octavia_listener_bytes_in_total Total number of request bytes since process started",
        "# TYPE octavia_listener_bytes_in_total counter",
        'octavia_listener_bytes_in_total{listener="lis-1"} 1234',
        "# TYPE octavia_pool_status gauge",
        'octavia_pool_status{pool="pool-1",state="UP"} 1',
        "# TYPE octavia_member_check_status gauge",
        'octavia_member_check_status{pool="pool-1",member="m1",state="L7OK"} 1',
        'octavia_member_check_status{pool="pool-1",member="we\\"ird,name",state="HANA"} 0',
    ]
    assert "haproxy" not in out
    assert rename_prometheus_metrics("", lb()) == ""


def test_rename_metrics_by_ids_of_the_rendered_configuration(tmp_path: Path) -> None:
    """The agent renames against the frontends and backends of the installed configuration."""
    prom = listener(id="lis-p", protocol="PROMETHEUS", protocol_port=9100, default_pool_id=None)
    cfg = render(tmp_path, lb((listener(), prom), (pool(), pool(id="pool-unused"))))
    listeners, pools = proxy_ids(cfg)
    assert (listeners, pools) == ({"lis-1", "lis-p"}, {"pool-1"})
    assert rename_metrics(EXPORTER_TEXT, listeners, pools) == rename_prometheus_metrics(EXPORTER_TEXT, lb())
    only_process = rename_metrics(EXPORTER_TEXT, (), ())
    assert "octavia_loadbalancer_current_connections 3" in only_process
    assert "{" not in only_process


# --- keepalived ----------------------------------------------------------------------------------

MASTER = Amphora(id="amp-a", load_balancer_id="lb-1", role="MASTER", vrrp_ip="203.0.113.11", vrrp_id=42)
BACKUP = Amphora(id="amp-b", load_balancer_id="lb-1", role="BACKUP", vrrp_ip="203.0.113.12", vrrp_id=42)


def keepalived_check(cfg: str, tmp_path: Path) -> None:
    if shutil.which("keepalived") is None:
        pytest.skip("keepalived is not installed")
    # keepalived -t insists on an existing non-loopback interface; it only reads it.
    nics = sorted(n for n in os.listdir("/sys/class/net") if n != "lo")
    if not nics:
        pytest.skip("no network interface for keepalived -t")
    if os.geteuid() != 0:
        pytest.skip("keepalived checks its configuration in an amphora's jail (the user it names), which needs root")
    cfg = cfg.replace(" fe0", f" {nics[0]}")
    jail = Jail(tmp_path / "jail", 2_000_000_888, 2_000_000_888)
    jail.prepare()
    path = jail.private_dir("vrrp") / "keepalived.conf"
    path.write_text(cfg)
    jail.give(path)
    command = jail.command(["keepalived", "-t", "-f", jail.inside(path)], caps=KEEPALIVED_CAPS, proc=True)
    proc = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stdout + proc.stderr + cfg


def test_keepalived_master_and_backup(tmp_path: Path) -> None:
    balancer = lb(topology=Topology(name="ACTIVE_STANDBY"))
    master = render_keepalived(balancer, MASTER, [MASTER, BACKUP], state_dir="/run/amp")
    keepalived_check(master, tmp_path)
    for line in (
        "state MASTER",
        "interface fe0",
        "virtual_router_id 42",
        "priority 100",
        "advert_int 1",
        "unicast_src_ip 203.0.113.11",
        "unicast_peer {\n        203.0.113.12\n    }",
        "virtual_ipaddress {\n        203.0.113.50/32 dev fe0\n    }",
        'script "/usr/bin/pgrep -F /run/amp/lb-1.pid"',
        "track_script {\n        cohort_check_lb-1\n    }",
        "garp_master_refresh 10",
    ):
        assert f"    {line}\n" in master
    assert "nopreempt" not in master
    backup = render_keepalived(balancer, BACKUP, [MASTER, BACKUP], interface="eth7")
    # A BACKUP that joins (a replacement) never takes the VIP from a working MASTER.
    assert "    state BACKUP\n    nopreempt\n" in backup and "    priority 90\n" in backup and "dev eth7\n" in backup
    keepalived_check(render_keepalived(balancer, BACKUP, [MASTER, BACKUP]), tmp_path)
    assert "    unicast_src_ip 203.0.113.12\n" in backup and "        203.0.113.11\n" in backup
    custom = render_keepalived(balancer, dataclasses.replace(BACKUP, vrrp_priority=95), [MASTER])
    assert "    priority 95\n" in custom
    keepalived_check(custom, tmp_path)


def test_keepalived_ipv6(tmp_path: Path) -> None:
    a = dataclasses.replace(MASTER, vrrp_ip="2001:db8::11")
    b = dataclasses.replace(BACKUP, vrrp_ip="2001:db8::12")
    cfg = render_keepalived(lb(vip_address="2001:db8::50"), a, [a, b])
    assert "        2001:db8::50/128 dev fe0\n" in cfg
    keepalived_check(cfg, tmp_path)


def test_keepalived_errors() -> None:
    balancer = lb()
    for amp, peers in (
        (dataclasses.replace(MASTER, role="STANDALONE"), [BACKUP]),
        (dataclasses.replace(MASTER, vrrp_id=None), [BACKUP]),
        (dataclasses.replace(MASTER, vrrp_id=256), [BACKUP]),
        (dataclasses.replace(MASTER, vrrp_ip=None), [BACKUP]),
        (dataclasses.replace(MASTER, vrrp_ip="2001:db8::1"), [BACKUP]),
        (MASTER, [MASTER]),
    ):
        with pytest.raises(ValueError):
            render_keepalived(balancer, amp, peers)
    with pytest.raises(ValueError):
        render_keepalived(balancer, MASTER, [BACKUP], interface="fe0 dev lo")


def test_cluster_amphora_answers_distributor_probes() -> None:
    from cohort.datamodel import CLUSTER_HEALTH_PORT, Amphora, LoadBalancer, Topology

    lb = LoadBalancer(id="lb1", project_id="p", vip_address="203.0.113.100", vip_subnet_id="s",
                      topology=Topology(name="ACTIVE_ACTIVE"))
    member_of_cluster = Amphora(id="a1", load_balancer_id="lb1", role="IN_CLUSTER", vrrp_ip="203.0.113.7")
    text = render_haproxy(lb, member_of_cluster, "/certs", "/state")
    assert f"bind 203.0.113.7:{CLUSTER_HEALTH_PORT} defer-accept" in text and "monitor-uri /healthz" in text
    standalone = Amphora(id="a2", load_balancer_id="lb1", role="STANDALONE", vrrp_ip="203.0.113.8")
    assert "cohort-cluster-health" not in render_haproxy(lb, standalone, "/certs", "/state")


def test_capped_amphora_runs_as_many_threads_as_cpus() -> None:
    from cohort.datamodel import Amphora, LoadBalancer

    lb = LoadBalancer(id="lb1", project_id="p", vip_address="203.0.113.100", vip_subnet_id="s")
    capped = Amphora(id="a1", load_balancer_id="lb1", role="STANDALONE", compute_flavor={"cpu": 0.25})
    assert "nbthread 1" in render_haproxy(lb, capped, "/certs", "/state")
    uncapped = Amphora(id="a2", load_balancer_id="lb1", role="STANDALONE")
    assert "nbthread" not in render_haproxy(lb, uncapped, "/certs", "/state")


# --- stick tables shared by a cluster --------------------------------------------------------------


@pytest.mark.parametrize("persistence", [SessionPersistence(type="SOURCE_IP", persistence_timeout=60),
                                         SessionPersistence(type="APP_COOKIE", cookie_name="SESSION")])
def test_cluster_amphorae_share_stick_tables_through_peers(tmp_path: Path, persistence: SessionPersistence) -> None:
    cluster = tuple(Amphora(id=f"amp-{i}", load_balancer_id="lb-1", role="IN_CLUSTER", vrrp_ip=f"203.0.113.{10 + i}")
                    for i in range(3))
    balancer = lb(pools=(pool(session_persistence=persistence),), topology=Topology(name="ACTIVE_ACTIVE"))
    cfg = render_haproxy(balancer, cluster[1], "/certs", str(tmp_path / "state"), cluster=cluster)
    assert "    localpeer amp-1" in section(cfg, "global")
    peers = section(cfg, "peers cohort_peers")
    assert peers.splitlines() == [f"    peer amp-{i} 203.0.113.{10 + i}:1025" for i in range(3)]
    table = next(line for line in section(cfg, "backend pool-1").splitlines() if "stick-table" in line)
    assert table.endswith("peers cohort_peers")
    haproxy_check(cfg, tmp_path)
    # Without persistence, or outside a cluster, there is nothing to share.
    assert "peers" not in render_haproxy(lb(topology=Topology(name="ACTIVE_ACTIVE")), cluster[0], "/certs",
                                         cluster=cluster)
    assert "peers" not in render_haproxy(lb(pools=(pool(session_persistence=persistence),)), AMP, "/certs")
