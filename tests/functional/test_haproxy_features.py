"""Rendered HAProxy configurations serving real traffic inside a cohort-r-* namespace."""

from __future__ import annotations

import collections
import http.client
import re
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
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
from cohort.drivers.amphora.haproxy_config import render_haproxy
from cohort.drivers.amphora.haproxy_prometheus import exporter_socket, rename_prometheus_metrics
from cohort.drivers.amphora.keepalived_config import render_keepalived
from tests.support import wait_for

from . import conftest_haproxy as labmod

pytestmark = pytest.mark.root

LB_ID = "lb-func"
AMP = Amphora(id="amp-func", load_balancer_id=LB_ID, role="STANDALONE")
MEMBERS = tuple(
    Member(id=name, address=address, protocol_port=labmod.MEMBER_PORT)
    for name, address in labmod.MEMBER_ADDRESSES.items()
)


@pytest.fixture(scope="module")
def nslab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[labmod.Lab]:
    with labmod.lab_namespace(tmp_path_factory.mktemp("haproxy-nslab")) as the_lab:
        yield the_lab


@pytest.fixture(autouse=True)
def _members_running(nslab: labmod.Lab) -> None:
    nslab.ensure_members()


def pool(pool_id: str = "pool-1", members: tuple[Member, ...] = MEMBERS, **kw: object) -> Pool:
    base: dict[str, object] = {"id": pool_id, "protocol": "HTTP", "lb_algorithm": "ROUND_ROBIN", "members": members}
    base.update(kw)
    return Pool(**base)  # type: ignore[arg-type]


def listener(**kw: object) -> Listener:
    base: dict[str, object] = {"id": "lis-1", "protocol": "HTTP", "protocol_port": 80, "default_pool_id": "pool-1"}
    base.update(kw)
    return Listener(**base)  # type: ignore[arg-type]


def balancer(*pools: Pool, listeners: tuple[Listener, ...] = ()) -> LoadBalancer:
    return LoadBalancer(
        id=LB_ID,
        project_id="p",
        vip_address=labmod.VIP,
        vip_subnet_id="s",
        listeners=listeners or (listener(),),
        pools=pools or (pool(),),
    )


def config(nslab: labmod.Lab, lb: LoadBalancer) -> str:
    return render_haproxy(lb, AMP, str(nslab.cert_dir), str(nslab.state_dir))


def wait_all_up(nslab: labmod.Lab, backend: str = "pool-1") -> None:
    wait_for(lambda: set(nslab.server_status(LB_ID, backend).values()) == {"UP"})


# --- balancing -----------------------------------------------------------------------------------


def test_round_robin_spreads_evenly(nslab: labmod.Lab) -> None:
    with nslab.haproxy(config(nslab, balancer())):
        conn = nslab.open()
        counts = collections.Counter(nslab.get(conn=conn).member for _ in range(30))
        conn.close()
    assert counts == {"m1": 10, "m2": 10, "m3": 10}


def test_least_connections_prefers_the_idle_member(nslab: labmod.Lab) -> None:
    with nslab.haproxy(config(nslab, balancer(pool(lb_algorithm="LEAST_CONNECTIONS")))):
        slow: list[str | None] = []
        threads = [threading.Thread(target=lambda: slow.append(nslab.get("/slow?s=2").member)) for _ in range(2)]
        for in_flight, thread in enumerate(threads, start=1):
            thread.start()
            # each slow request is on its member before the next one is balanced
            wait_for(lambda n=in_flight: nslab.backend_sessions(LB_ID, "pool-1") == n, timeout=5)  # type: ignore[misc]
        quick = []
        for _ in range(9):
            # only the two slow streams are open: the previous quick one has been released
            wait_for(lambda: nslab.backend_sessions(LB_ID, "pool-1") == 2, timeout=5)
            quick.append(nslab.get().member)
        for thread in threads:
            thread.join(10)
    busy = set(slow)
    assert len(busy) == 2, slow
    idle = ({"m1", "m2", "m3"} - busy).pop()
    assert quick == [idle] * 9


def test_source_ip_algorithm_and_persistence_stick_per_client(nslab: labmod.Lab) -> None:
    for p in (
        pool(lb_algorithm="SOURCE_IP"),
        pool(session_persistence=SessionPersistence(type="SOURCE_IP", persistence_timeout=60)),
    ):
        with nslab.haproxy(config(nslab, balancer(p))):
            seen = {src: {nslab.get(source=src).member for _ in range(4)} for src in labmod.CLIENTS[:6]}
        assert all(len(members) == 1 for members in seen.values()), seen
        assert len(set().union(*seen.values())) >= 2, seen


def test_source_ip_port_spreads_connections_of_one_client(nslab: labmod.Lab) -> None:
    with nslab.haproxy(config(nslab, balancer(pool(lb_algorithm="SOURCE_IP_PORT")))):
        per_connection = []
        for _ in range(24):
            conn = nslab.open(source=labmod.CLIENTS[0])
            per_connection.append({nslab.get(conn=conn).member for _ in range(3)})
            conn.close()
    assert all(len(members) == 1 for members in per_connection)
    assert len(set().union(*per_connection)) >= 2


def test_http_cookie_persistence(nslab: labmod.Lab) -> None:
    sp = SessionPersistence(type="HTTP_COOKIE")
    with nslab.haproxy(config(nslab, balancer(pool(session_persistence=sp)))):
        first = nslab.get()
        cookie = first.headers["Set-Cookie"].split(";")[0]
        assert cookie == f"SRV={first.member}"
        assert {nslab.get(headers={"Cookie": cookie}).member for _ in range(8)} == {first.member}
        assert len({nslab.get().member for _ in range(3)}) == 3  # without the cookie: round robin


def test_app_cookie_persistence(nslab: labmod.Lab) -> None:
    sp = SessionPersistence(type="APP_COOKIE", cookie_name="JSESSIONID")
    with nslab.haproxy(config(nslab, balancer(pool(session_persistence=sp)))):
        login = nslab.get("/login")
        cookie = login.headers["Set-Cookie"].split(";")[0]
        assert cookie.startswith(f"JSESSIONID={login.member}-")
        assert {nslab.get(headers={"Cookie": cookie}).member for _ in range(8)} == {login.member}
        assert len({nslab.get().member for _ in range(3)}) == 3


# --- L7 ------------------------------------------------------------------------------------------


def test_l7_policies(nslab: labmod.Lab) -> None:
    def rule(rid: str, rtype: str, compare: str, value: str, key: str | None = None, invert: bool = False) -> L7Rule:
        return L7Rule(id=rid, type=rtype, compare_type=compare, value=value, key=key, invert=invert)

    policies = (
        L7Policy(
            id="reject-admin",
            action="REJECT",
            position=1,
            rules=(
                rule("r-admin", "PATH", "STARTS_WITH", "/admin"),
                rule("r-internal", "HEADER", "EQUAL_TO", "it's me", key="X-Internal", invert=True),
            ),
        ),
        L7Policy(
            id="old-host",
            action="REDIRECT_TO_URL",
            position=2,
            redirect_url="https://new.example.com/a%20b",
            rules=(rule("r-old", "HOST_NAME", "EQUAL_TO", "old.example.com"),),
        ),
        L7Policy(
            id="prefix",
            action="REDIRECT_PREFIX",
            position=3,
            redirect_prefix="https://p.example.com",
            redirect_http_code=301,
            rules=(rule("r-go", "HEADER", "EQUAL_TO", "prefix", key="X-Go"),),
        ),
        L7Policy(
            id="gold",
            action="REDIRECT_TO_POOL",
            position=4,
            redirect_pool_id="pool-b",
            rules=(rule("r-gold", "COOKIE", "EQUAL_TO", "gold", key="tier"),),
        ),
        L7Policy(
            id="images",
            action="REDIRECT_TO_POOL",
            position=5,
            redirect_pool_id="pool-c",
            rules=(rule("r-jpg", "FILE_TYPE", "EQUAL_TO", "jpg"),),
        ),
    )
    lb = balancer(
        pool("pool-a", MEMBERS[:1]),
        pool("pool-b", MEMBERS[1:2]),
        pool("pool-c", MEMBERS[2:]),
        listeners=(listener(default_pool_id="pool-a", l7policies=policies),),
    )
    with nslab.haproxy(config(nslab, lb)):
        assert nslab.get("/admin/x").status == 403
        assert nslab.get("/admin/x", {"X-Internal": "it's me"}).member == "m1"  # inverted rule, quoted value
        assert nslab.get("/admin/x", {"X-Internal": "it"}).status == 403
        moved = nslab.get("/", {"Host": "old.example.com:80"})
        assert (moved.status, moved.headers["Location"]) == (302, "https://new.example.com/a%20b")
        moved = nslab.get("/docs/1?q=2", {"X-Go": "prefix"})
        assert (moved.status, moved.headers["Location"]) == (301, "https://p.example.com/docs/1?q=2")
        assert nslab.get("/", {"Cookie": "a=b; tier=gold"}).member == "m2"
        assert nslab.get("/", {"Cookie": "tier=silver"}).member == "m1"
        assert nslab.get("/img/cat.jpg?size=2").member == "m3"
        assert nslab.get("/img/cat.jpeg").member == "m1"
        assert nslab.get("/jpg").member == "m1"  # no extension at all
        assert nslab.get("/").member == "m1"
        # precedence between kinds of action, as Octavia documents: reject before pools
        assert nslab.get("/admin/cat.jpg", {"Cookie": "tier=gold"}).status == 403


# --- TLS -----------------------------------------------------------------------------------------


def _peer_cn(conn: http.client.HTTPConnection) -> str:
    sock = conn.sock
    assert isinstance(sock, ssl.SSLSocket)
    der = sock.getpeercert(binary_form=True)
    assert der is not None
    return str(x509.load_der_x509_certificate(der).subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def test_terminated_https_sni_and_mandatory_client_certificate(nslab: labmod.Lab) -> None:
    pki = labmod.write_pki(
        nslab.cert_dir, {"tls-default": "default.example.com", "tls-a": "a.example.com", "tls-b": "b.example.com"}
    )
    tls = listener(
        protocol="TERMINATED_HTTPS",
        protocol_port=443,
        default_tls_container_ref="tls-default",
        sni_container_refs=("tls-a", "tls-b"),
        client_ca_tls_container_ref="client-ca",
        client_authentication="MANDATORY",
        hsts_max_age=600,
        hsts_include_subdomains=True,
        insert_headers={"X-SSL-Client-CN": "true", "X-SSL-Client-Verify": "true", "X-Forwarded-Proto": "true"},
    )

    def context(client: tuple[Path, Path] | None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(pki.server_ca))
        if client:
            ctx.load_cert_chain(str(client[0]), str(client[1]))
        return ctx

    with nslab.haproxy(config(nslab, balancer(listeners=(tls,))), wait_for=(labmod.VIP, 443)):
        for sni, expected in (
            ("a.example.com", "a.example.com"),
            ("b.example.com", "b.example.com"),
            ("default.example.com", "default.example.com"),
        ):
            conn = nslab.open(443, tls=context(pki.client), sni=sni)
            assert _peer_cn(conn) == expected
            reply = nslab.get(conn=conn)
            conn.close()
            assert reply.status == 200
            headers = reply.json()["headers"]
            assert isinstance(headers, dict)
            assert headers["x-ssl-client-cn"] == "client.example.net"
            assert (headers["x-ssl-client-verify"], headers["x-forwarded-proto"]) == ("0", "https")
            assert reply.headers["Strict-Transport-Security"] == "max-age=600; includeSubDomains;"
        for client in (None, pki.rogue_client):
            with pytest.raises((ssl.SSLError, ConnectionError, http.client.HTTPException)):
                conn = nslab.open(443, tls=context(client), sni="a.example.com")
                try:
                    nslab.get(conn=conn)
                finally:
                    conn.close()


# --- health, limits, access, headers -------------------------------------------------------------


def test_http_health_monitor_takes_a_stopped_member_out(nslab: labmod.Lab) -> None:
    monitor = HealthMonitor(
        id="hm",
        type="HTTP",
        delay=1,
        timeout=1,
        max_retries=1,
        max_retries_down=1,
        url_path="/health",
        expected_codes="200",
    )
    with nslab.haproxy(config(nslab, balancer(pool(healthmonitor=monitor)))):
        wait_all_up(nslab)
        nslab.stop_member("m2")
        wait_for(lambda: nslab.server_status(LB_ID, "pool-1")["m2"] == "DOWN")
        replies = [nslab.get() for _ in range(30)]
        assert {r.status for r in replies} == {200}
        assert collections.Counter(r.member for r in replies) == {"m1": 15, "m3": 15}
        nslab.start_member("m2")
        wait_all_up(nslab)
        assert {nslab.get().member for _ in range(3)} == {"m1", "m2", "m3"}


def test_ping_health_monitor_runs_the_agents_script(nslab: labmod.Lab) -> None:
    # What the agent installs: HAProxy passes the server address as $3.
    script = nslab.state_dir / "ping-wrapper.sh"
    script.write_text('#!/bin/sh\nexec ping -c 1 -W 1 "$3" >/dev/null 2>&1\n')
    script.chmod(0o755)
    monitor = HealthMonitor(id="hm", type="PING", delay=1, timeout=1, max_retries=1, max_retries_down=1)
    address = labmod.MEMBER_ADDRESSES["m3"]
    with nslab.haproxy(config(nslab, balancer(pool(healthmonitor=monitor)))):
        wait_all_up(nslab)
        nslab.ip("addr", "del", f"{address}/32", "dev", labmod.IFACE)
        try:
            wait_for(lambda: nslab.server_status(LB_ID, "pool-1")["m3"] == "DOWN")
            assert {nslab.get().member for _ in range(6)} == {"m1", "m2"}
        finally:
            nslab.ip("addr", "add", f"{address}/32", "dev", labmod.IFACE)
        wait_all_up(nslab)


def test_connection_limit(nslab: labmod.Lab) -> None:
    with nslab.haproxy(config(nslab, balancer(listeners=(listener(connection_limit=2),)))):
        held = [nslab.open(), nslab.open()]
        for conn in held:
            assert nslab.get(conn=conn).status == 200
        third = nslab.open()  # the kernel completes the handshake; haproxy does not accept it
        third.sock.settimeout(0.8)
        third.request("GET", "/")
        with pytest.raises(TimeoutError):
            third.getresponse()
        held[0].close()
        third.sock.settimeout(5)
        response = third.getresponse()
        assert response.status == 200
        response.read()
        third.close()
        held[1].close()


def test_allowed_cidrs_reject_an_unlisted_source(nslab: labmod.Lab) -> None:
    lb = balancer(listeners=(listener(allowed_cidrs=("198.51.100.0/29", "2001:db8::/32")),))
    with nslab.haproxy(config(nslab, lb)):
        assert nslab.get(source=labmod.CLIENTS[0]).status == 200
        with pytest.raises((ConnectionError, http.client.HTTPException)):
            nslab.get(source=labmod.OUTSIDER)


def test_disabled_listener_refuses_connections(nslab: labmod.Lab) -> None:
    listeners = (listener(), listener(id="lis-off", protocol_port=81, admin_state_up=False))
    with nslab.haproxy(config(nslab, balancer(listeners=listeners))):
        assert nslab.get().status == 200
        with pytest.raises(ConnectionRefusedError):
            nslab.connect(labmod.VIP, 81)


def test_insert_headers_reach_the_member(nslab: labmod.Lab) -> None:
    headers = {"X-Forwarded-For": "true", "X-Forwarded-Port": "true", "X-Forwarded-Proto": "true"}
    with nslab.haproxy(config(nslab, balancer(listeners=(listener(insert_headers=headers),)))):
        seen = nslab.get(source=labmod.CLIENTS[3]).json()["headers"]
    assert isinstance(seen, dict)
    assert seen["x-forwarded-for"] == labmod.CLIENTS[3]
    assert (seen["x-forwarded-port"], seen["x-forwarded-proto"]) == ("80", "http")


# --- topology, agent contracts -------------------------------------------------------------------


def test_standby_binds_a_vip_that_is_not_local_yet(nslab: labmod.Lab) -> None:
    vip = "203.0.113.60"
    lb = LoadBalancer(
        id=LB_ID,
        project_id="p",
        vip_address=vip,
        vip_subnet_id="s",
        listeners=(listener(),),
        pools=(pool(),),
        topology=Topology(name="ACTIVE_STANDBY"),
    )
    with nslab.haproxy(config(nslab, lb), wait_for=None) as proc:
        pidfile = nslab.state_dir / f"{LB_ID}.pid"
        wait_for(lambda: pidfile.exists() and pidfile.read_text().strip() == str(proc.pid))
        assert proc.poll() is None
        nslab.ip("addr", "add", f"{vip}/32", "dev", labmod.IFACE)
        try:
            nslab.wait_port(vip, 80)
            assert nslab.get(address=vip).status == 200
        finally:
            nslab.ip("addr", "del", f"{vip}/32", "dev", labmod.IFACE)
        # keepalived's track script, as rendered, against the live pid file
        peers = [
            Amphora(id=f"amp-{r}", load_balancer_id=LB_ID, role=r, vrrp_ip=f"203.0.113.{i}", vrrp_id=9)
            for i, r in ((11, "MASTER"), (12, "BACKUP"))
        ]
        keepalived = render_keepalived(lb, peers[0], peers, interface=labmod.IFACE, state_dir=str(nslab.state_dir))
        script = next(line for line in keepalived.splitlines() if line.strip().startswith("script "))
        command = script.split('"')[1].split()
        assert subprocess.run(command, capture_output=True, timeout=5).returncode == 0
        # keepalived checks its configuration where it runs: in an amphora's jail, whose user it names.
        jail = Jail(nslab.tmp / "jail", 2_000_000_999, 2_000_000_999)
        jail.prepare()
        path = jail.private_dir("vrrp") / "keepalived.conf"
        path.write_text(keepalived)
        jail.give(path)
        test = subprocess.run(
            ["ip", "netns", "exec", nslab.ns,
             *jail.command(["keepalived", "-t", "-f", jail.inside(path)], caps=KEEPALIVED_CAPS, proc=True)],
            capture_output=True,
            text=True,
            timeout=10,
        )
        assert test.returncode == 0, test.stderr
    assert subprocess.run(command, capture_output=True, timeout=5).returncode != 0


def test_prometheus_exporter_metrics_renamed(nslab: labmod.Lab) -> None:
    prom = listener(id="lis-prom", protocol="PROMETHEUS", protocol_port=9100, default_pool_id=None)
    lb = balancer(listeners=(listener(), prom))
    with nslab.haproxy(config(nslab, lb)):
        assert nslab.get().status == 200
        with nslab.connect_unix(exporter_socket(str(nslab.state_dir), LB_ID)) as sock:
            sock.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
            raw = b""
            while chunk := sock.recv(65536):
                raw += chunk
    head, _, body = raw.decode().partition("\r\n\r\n")
    assert head.startswith("HTTP/1.") and " 200" in head.splitlines()[0]
    assert 'haproxy_frontend_http_requests_total{proxy="lis-1"}' in body
    renamed = rename_prometheus_metrics(body, lb)
    assert re.search(r'^octavia_listener_http_requests_total\{listener="lis-1"\} [1-9]', renamed, re.M)
    assert 'octavia_member_status{pool="pool-1",member="m1",state="UP"} 1' in renamed
    assert "octavia_loadbalancer_current_connections " in renamed
    assert "haproxy_" not in renamed and "cohort-prometheus" not in renamed
