"""TERMINATED_HTTPS and PROMETHEUS listeners through the API, with real amphorae and real traffic.

Cohort runs with local drivers on a private lab; every request comes from the lab's client
namespace. TLS material is made here with ``cryptography``, stored through ``/v1/secrets`` and
referenced by listeners; the client checks which certificate each SNI name gets and that a
MANDATORY listener wants a client certificate. The PROMETHEUS listener's scrape goes through
the amphora agent's renaming proxy. Everything is torn down, also on failure.
"""

from __future__ import annotations

import datetime
import re
import shutil
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cohort.agents.amphora.haproxy import HaproxyManager
from cohort.agents.amphora.metrics import CONTENT_TYPE, MetricsProxies
from cohort.agents.common.jail import Jail
from cohort.datamodel import LoadBalancer
from cohort.drivers.amphora.haproxy_prometheus import AGENT_BACKEND, EXPORTER_FRONTEND, internal_lines
from cohort.lab import Lab
from tests.functional.conftest import IS_ROOT
from tests.support import Api, local_cohort, wait_for

TENANT = {"X-Project-Id": "tenant-a", "X-Roles": "member"}
OTHER_TENANT = {"X-Project-Id": "tenant-b", "X-Roles": "member"}
LB_TIMEOUT = 90.0
JAIL_UID = 2_000_000_321


# --- TLS material --------------------------------------------------------------------------------


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass
class Issued:
    cert: bytes
    key: bytes

    @property
    def bundle(self) -> bytes:
        return self.cert + self.key


@dataclass
class Pki:
    ca: bytes
    a: Issued
    b: Issued
    client: Issued


def make_pki() -> Pki:
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Cohort test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))

    def issue(common_name: str, server: bool) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
                   .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage(
                       [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False))
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(common_name)]), critical=False)
        return Issued(_pem_cert(builder.sign(ca_key, hashes.SHA256())), _pem_key(key))

    return Pki(ca=_pem_cert(ca), a=issue("a.example.test", True), b=issue("b.example.test", True),
               client=issue("client.example.test", False))


# --- the running system --------------------------------------------------------------------------


class Env:
    def __init__(self, cohort: Any, base: str, lab: Lab, files: Path) -> None:
        self.cohort, self.lab, self.files = cohort, lab, files
        self.api = Api(base, headers=TENANT)
        self.other = Api(base, headers=OTHER_TENANT)

    def client(self, cmd: list[str], timeout: float = 20.0) -> tuple[int, str, str]:
        done = self.lab.exec_client(cmd, timeout=timeout)
        return done.returncode, done.stdout, done.stderr

    def curl(self, *args: str) -> tuple[int, str]:
        code, out, _ = self.client(["curl", "-s", "--max-time", "3", *args])
        return code, out

    def wait_lb(self, lb_id: str) -> dict[str, Any]:
        lb = self.api.wait_active(f"/v2/lbaas/loadbalancers/{lb_id}", "loadbalancer", timeout=LB_TIMEOUT)
        assert lb["provisioning_status"] == "ACTIVE", lb
        return lb

    def delete_lb(self, lb_id: str) -> None:
        self.api.delete(f"/v2/lbaas/loadbalancers/{lb_id}?cascade=true")
        wait_for(lambda: self.api.get(f"/v2/lbaas/loadbalancers/{lb_id}")[0] == 404, timeout=60)

    def secret(self, name: str, kind: str, payload: bytes, api: Api | None = None) -> tuple[int, Any]:
        return (api or self.api).post("/v1/secrets", {"name": name, "kind": kind, "payload": payload.decode()})


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    if not IS_ROOT:
        pytest.skip("needs root (network namespaces)")
    with local_cohort(tmp_path_factory.mktemp("cohort"), heartbeat_stale_after=3.0) as (cohort, base, lab):
        yield Env(cohort, base, lab, tmp_path_factory.mktemp("files"))


def _pool(member: str) -> dict[str, Any]:
    return {"protocol": "HTTP", "lb_algorithm": "ROUND_ROBIN",
            "members": [{"address": member, "protocol_port": 80, "subnet_id": "private-subnet"}]}


# --- PROMETHEUS ----------------------------------------------------------------------------------


def _requests_total(text: str, listener_id: str) -> int:
    found = re.search(rf'^octavia_listener_http_requests_total\{{listener="{listener_id}"\}} (\d+)', text, re.M)
    assert found, text
    return int(found.group(1))


@pytest.mark.root
def test_prometheus_listener_serves_octavia_metrics(env: Env) -> None:
    member = env.lab.add_member("p1")
    body = {"name": "metrics", "vip_subnet_id": "public-subnet", "listeners": [
        {"name": "http", "protocol": "HTTP", "protocol_port": 80, "default_pool": _pool(member)},
        {"name": "prom", "protocol": "PROMETHEUS", "protocol_port": 9100}]}
    status, created = env.api.post("/v2/lbaas/loadbalancers", {"loadbalancer": body})
    assert status == 201, created
    lb_id = created["loadbalancer"]["id"]
    try:
        lb = env.wait_lb(lb_id)
        vip = lb["vip_address"]
        listeners = {li["name"]: li for li in env.api.get(f"/v2/lbaas/listeners?loadbalancer_id={lb_id}")[1]
                     ["listeners"]}
        http_id, prom_id = listeners["http"]["id"], listeners["prom"]["id"]
        pool_id = listeners["http"]["default_pool_id"]
        assert wait_for(lambda: env.curl(f"http://{vip}/")[1].strip() == "p1", timeout=20)

        def scrape() -> str:
            code, out = env.curl("-w", "\n%{http_code} %{content_type}", f"http://{vip}:9100/metrics")
            assert code == 0, out
            text, _, tail = out.rpartition("\n")
            assert tail == f"200 {CONTENT_TYPE}", tail
            return text

        first = scrape()
        assert "haproxy_" not in first and "cohort-" not in first
        assert re.search(r"^octavia_loadbalancer_current_connections \d+", first, re.M), first
        assert f'octavia_pool_status{{pool="{pool_id}",state="UP"}} 1' in first
        assert re.search(rf'^octavia_member_status\{{pool="{pool_id}",member="[^"]+",state="UP"\}} 1', first, re.M)
        assert f'listener="{prom_id}"' in first
        before = _requests_total(first, http_id)
        for _ in range(7):
            assert env.curl(f"http://{vip}/")[1].strip() == "p1"
        assert _requests_total(scrape(), http_id) >= before + 7
        assert env.curl(f"http://{vip}:9100/other")[1].startswith("Not Found")
        # Without its PROMETHEUS listener the port closes and the proxy goes with it.
        assert env.api.delete(f"/v2/lbaas/listeners/{prom_id}")[0] == 204
        env.wait_lb(lb_id)
        assert wait_for(lambda: env.curl(f"http://{vip}:9100/metrics")[0] != 0, timeout=10)
        assert env.curl(f"http://{vip}/")[1].strip() == "p1"
    finally:
        env.delete_lb(lb_id)
        env.lab.remove_member("p1")


class _Exporter(BaseHTTPRequestHandler):
    """A stand-in for HAProxy's exporter on a unix socket, for the proxy's own contract."""

    protocol_version = "HTTP/1.1"
    body = (b'# TYPE haproxy_frontend_bytes_in_total counter\nhaproxy_frontend_bytes_in_total{proxy="lis-1"} 5\n'
            b'haproxy_frontend_bytes_in_total{proxy="cohort-prometheus-exporter"} 9\n')

    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/metrics" else 404)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(self.body), self.body))

    def address_string(self) -> str:
        return "test"

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _unix_get(path: Path, target: str) -> httpx.Response:
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(path)), timeout=5) as client:
        return client.get(f"http://localhost{target}")


def test_metrics_proxy_renames_and_reports_a_missing_exporter(tmp_path: Path) -> None:
    import socketserver

    lb_id = "lb-1"
    proxies = MetricsProxies(tmp_path)
    config = tmp_path / f"{lb_id}.cfg"
    config.write_text("frontend lis-1\n    mode http\nbackend cohort-prometheus-agent\n")
    proxies.sync(lb_id, config)
    assert not proxies.running(lb_id), "a configuration that does not route to the agent needs no proxy"
    config.write_text(f"frontend lis-1\n    mode http\nbackend cohort-prometheus-agent\n"
                      f"    server agent unix@{proxies.listen_path(lb_id)}\n")
    proxies.sync(lb_id, config)
    try:
        assert proxies.running(lb_id)
        listen = proxies.listen_path(lb_id)
        assert listen.stat().st_mode & 0o777 == 0o600
        missing = _unix_get(listen, "/metrics")
        assert missing.status_code == 503
        exporter = socketserver.UnixStreamServer(str(tmp_path / f"{lb_id}-prometheus.sock"), _Exporter)
        thread = threading.Thread(target=exporter.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        thread.start()
        try:
            ok = _unix_get(listen, "/metrics")
            assert ok.status_code == 200 and ok.headers["content-type"] == CONTENT_TYPE
            assert ok.text == ('# TYPE octavia_listener_bytes_in_total counter\n'
                               'octavia_listener_bytes_in_total{listener="lis-1"} 5\n')
            assert _unix_get(listen, "/").status_code == 404
        finally:
            exporter.shutdown()
            exporter.server_close()
    finally:
        proxies.stop_all()
    assert not proxies.listen_path(lb_id).exists()
    with pytest.raises(OSError), socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(proxies.listen_path(lb_id)))


def _scrape_through(path: Path) -> str:
    response = _unix_get(path, "/metrics")
    assert response.status_code == 200, response.text
    return response.text


def test_metrics_proxy_lives_with_haproxy_and_is_resumed_by_a_new_agent(tmp_path: Path) -> None:
    """HAProxy bound on unix sockets only: its frontend ``lis-1`` plays the PROMETHEUS listener."""
    if shutil.which("haproxy") is None:
        pytest.skip("haproxy is not installed")
    if not IS_ROOT:
        pytest.skip("jails need root")
    lb_id = "lb-1"
    jail = Jail(tmp_path / "jail", JAIL_UID, JAIL_UID)
    manager = HaproxyManager(jail, stop_grace=0.5)
    listen = manager.dir / "lis-1.sock"
    balancer = LoadBalancer(id=lb_id, project_id="p", vip_address="203.0.113.50", vip_subnet_id="s")
    config = "\n".join([
        "global", "    master-worker", "", "defaults", "    mode http", "    timeout connect 5s",
        "    timeout client 10s", "    timeout server 10s", "", "frontend lis-1",
        f"    bind unix@{manager.inner_dir}/lis-1.sock mode 600", f"    default_backend {AGENT_BACKEND}", "",
        *internal_lines(balancer, manager.inner_dir), ""])
    manager.put_config(lb_id, config)
    manager.start(lb_id)
    try:
        assert manager.metrics.running(lb_id)
        first = _scrape_through(listen)
        assert re.search(r'^octavia_listener_http_requests_total\{listener="lis-1"\} 1$', first, re.M), first
        assert "cohort-prometheus" not in first and "haproxy_" not in first
        # A new agent finds HAProxy running and serves its metrics again.
        manager.metrics.stop_all()
        assert _unix_get(listen, "/metrics").status_code == 503
        successor = HaproxyManager(jail, stop_grace=0.5)
        successor.resume()
        assert successor.metrics.running(lb_id)
        assert re.search(r'^octavia_listener_http_requests_total\{listener="lis-1"\} 3$',
                         _scrape_through(listen), re.M)
        # A configuration without the agent backend stops the proxy at reload.
        successor.put_config(lb_id, config.replace(f"    default_backend {AGENT_BACKEND}\n", "")
                             .split(f"frontend {EXPORTER_FRONTEND}")[0])
        successor.reload(lb_id)
        assert not successor.metrics.running(lb_id)
        assert not successor.metrics.listen_path(lb_id).exists()
        successor.put_config(lb_id, config)
        successor.reload(lb_id)
        assert successor.metrics.running(lb_id)
        successor.delete(lb_id)
        assert not successor.running(lb_id) and not successor.metrics.running(lb_id)
        assert not successor.metrics.listen_path(lb_id).exists()
    finally:
        manager.metrics.stop_all()
        manager.stop(lb_id)


# --- TERMINATED_HTTPS ----------------------------------------------------------------------------


def _served_subject(env: Env, vip: str, port: int, name: str) -> str:
    code, out, err = env.client(["openssl", "s_client", "-connect", f"{vip}:{port}", "-servername", name,
                                 "-CAfile", str(env.files / "ca.pem"), "-verify_return_error"])
    assert code == 0, err
    subject = re.search(r"^subject=(.*)$", out, re.M)
    assert subject, out
    return subject.group(1).replace(" ", "")


@pytest.mark.root
def test_terminated_https_sni_and_client_authentication(env: Env) -> None:
    pki = make_pki()
    for name, data in (("ca.pem", pki.ca), ("client.pem", pki.client.cert), ("client.key", pki.client.key)):
        (env.files / name).write_bytes(data)
    # Secrets: good bundles are stored, a key that does not match its certificate is refused.
    refs = {}
    for name, kind, payload in (("a", "certificate", pki.a.bundle), ("b", "certificate", pki.b.bundle),
                                ("ca", "ca", pki.ca)):
        status, body = env.secret(name, kind, payload)
        assert status == 201, body
        refs[name] = body["secret_ref"]
    status, body = env.secret("bad", "certificate", pki.a.cert + pki.b.key)
    assert status == 400 and "does not match" in str(body), body
    for status, body in (env.api.get("/v1/secrets"), env.api.get(f"/v1/secrets/{refs['a'].rsplit('/', 1)[1]}")):
        assert status == 200 and "BEGIN" not in str(body) and "payload" not in str(body), body
    # Another project's secret is not there for this tenant.
    status, foreign = env.secret("theirs", "certificate", pki.b.bundle, api=env.other)
    assert status == 201, foreign

    member = env.lab.add_member("t1")
    body = {"name": "tls", "vip_subnet_id": "public-subnet", "listeners": [
        {"name": "https", "protocol": "TERMINATED_HTTPS", "protocol_port": 443, "default_pool": _pool(member),
         "default_tls_container_ref": refs["a"], "sni_container_refs": [refs["a"], refs["b"]]},
        {"name": "mtls", "protocol": "TERMINATED_HTTPS", "protocol_port": 8443, "default_pool": _pool(member),
         "default_tls_container_ref": refs["a"], "client_authentication": "MANDATORY",
         "client_ca_tls_container_ref": refs["ca"]}]}
    status, created = env.api.post("/v2/lbaas/loadbalancers", {"loadbalancer": body})
    assert status == 201, created
    lb_id = created["loadbalancer"]["id"]
    try:
        vip = env.wait_lb(lb_id)["vip_address"]
        ca = str(env.files / "ca.pem")

        def https(name: str, port: int, *extra: str) -> tuple[int, str]:
            return env.curl("--resolve", f"{name}:{port}:{vip}", "--cacert", ca, *extra, f"https://{name}:{port}/")

        # curl checks the name against the certificate, so each answer proves the SNI choice.
        assert wait_for(lambda: https("a.example.test", 443) == (0, "t1\n"), timeout=20)
        assert https("b.example.test", 443) == (0, "t1\n")
        assert _served_subject(env, vip, 443, "a.example.test") == "CN=a.example.test"
        assert _served_subject(env, vip, 443, "b.example.test") == "CN=b.example.test"
        assert _served_subject(env, vip, 443, "unknown.example.test") == "CN=a.example.test"
        # MANDATORY: no client certificate, no answer; with one from the CA, served.
        code, out = https("a.example.test", 8443)
        assert code != 0 and "t1" not in out
        client = ["--cert", str(env.files / "client.pem"), "--key", str(env.files / "client.key")]
        assert https("a.example.test", 8443, *client) == (0, "t1\n")
        # A listener may not use another project's secret.
        status, refused = env.api.post("/v2/lbaas/listeners", {"listener": {
            "loadbalancer_id": lb_id, "protocol": "TERMINATED_HTTPS", "protocol_port": 4443,
            "default_tls_container_ref": foreign["secret_ref"]}})
        assert status == 400, refused
        # A secret in use cannot be deleted.
        assert env.api.delete(f"/v1/secrets/{refs['b'].rsplit('/', 1)[1]}")[0] == 409
    finally:
        env.delete_lb(lb_id)
        env.lab.remove_member("t1")
