"""Regression tests of issue 8 through the public API: nested quotas, leaks between projects,
malformed certificates, and secrets that stay encrypted at rest (the Fernet key, BGP passwords)."""

from __future__ import annotations

import base64
import datetime as dt
import multiprocessing
import sqlite3
from collections.abc import Iterator
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import select

from cohort import secrets
from cohort.db import models as m
from cohort.db.session import alembic_config, upgrade
from cohort.service import Cohort
from tests.support import Api, running_cohort

LB = "/v2/lbaas/loadbalancers"
TOKENS = {
    "t-a": {"project_id": "a", "roles": ["member"]},
    "t-b": {"project_id": "b", "roles": ["member"]},
    "t-admin": {"project_id": "admin", "roles": ["admin"]},
}


@pytest.fixture
def cohort(tmp_path: Path) -> Iterator[tuple[Cohort, str]]:
    quotas = {"member": 1, "healthmonitor": 0, "l7policy": 0, "l7rule": 0}
    with running_cohort(tmp_path, drivers="noop", auth_strategy="token", tokens=TOKENS, quotas=quotas) as pair:
        yield pair


@pytest.fixture
def clients(cohort: tuple[Cohort, str]) -> dict[str, Api]:
    return {name: Api(cohort[1], {"X-Auth-Token": f"t-{name}"}) for name in ("a", "b", "admin")}


def make_lb(api: Api, **extra: Any) -> dict[str, Any]:
    status, body = api.post(LB, {"loadbalancer": {"vip_subnet_id": "public-subnet", **extra}})
    assert status == 201, body
    lb_id = body["loadbalancer"]["id"]
    return api.wait_active(f"{LB}/{lb_id}", "loadbalancer")


def members(count: int) -> list[dict[str, Any]]:
    return [{"address": f"192.0.2.{n + 1}", "protocol_port": 80} for n in range(count)]


def pool_tree(**extra: Any) -> dict[str, Any]:
    return {"protocol": "HTTP", "lb_algorithm": "ROUND_ROBIN", **extra}


def counts(api: Api) -> dict[str, int]:
    found = {kind: len(api.get(f"/v2/lbaas/{kind}")[1][kind])
             for kind in ("listeners", "pools", "healthmonitors", "l7policies")}
    found["members"] = sum(len(api.get(f"/v2/lbaas/pools/{pool['id']}/members")[1]["members"])
                           for pool in api.get("/v2/lbaas/pools")[1]["pools"])
    return found


def refused(answer: tuple[int, Any], resource: str) -> None:
    status, body = answer
    assert status == 403, body
    assert body == {"faultcode": "Client", "faultstring": f"Quota has been met for resources: {resource}",
                    "debuginfo": None}


def test_quotas_count_every_nested_object(clients: dict[str, Api]) -> None:
    """Member quota 1, monitor, policy and rule quotas 0: no create route makes more, however nested."""
    a, admin = clients["a"], clients["admin"]
    lb = make_lb(a)
    policies = [{"action": "REJECT", "rules": [{"type": "PATH", "compare_type": "STARTS_WITH", "value": f"/{n}"}
                                                for n in range(20)]} for _ in range(5)]
    flood = {"loadbalancer_id": lb["id"], "protocol": "HTTP", "protocol_port": 80, "l7policies": policies,
             "default_pool": pool_tree(members=members(50), healthmonitor={
                 "type": "HTTP", "delay": 5, "timeout": 3, "max_retries": 3})}
    refused(a.post("/v2/lbaas/listeners", {"listener": flood}), "Member")
    flood["default_pool"]["members"] = members(1)
    refused(a.post("/v2/lbaas/listeners", {"listener": flood}), "Health Monitor")
    del flood["default_pool"]["healthmonitor"]
    refused(a.post("/v2/lbaas/listeners", {"listener": flood}), "L7 Policy")
    assert admin.put("/v2/lbaas/quotas/a", {"quota": {"l7policy": 5, "member": 1}})[0] == 202
    refused(a.post("/v2/lbaas/listeners", {"listener": flood}), "L7 Rule")
    # A redirect pool inside a policy is a tree of its own.
    redirect = [{"action": "REDIRECT_TO_POOL", "redirect_pool": pool_tree(members=members(2))}]
    refused(a.post("/v2/lbaas/listeners", {"listener": {**flood, "l7policies": redirect}}), "Member")
    refused(a.post(LB, {"loadbalancer": {"vip_subnet_id": "public-subnet", "listeners": [
        {"protocol": "HTTP", "protocol_port": 81, "l7policies": redirect}]}}), "Member")
    assert counts(a) == {"listeners": 0, "pools": 0, "healthmonitors": 0, "l7policies": 0, "members": 0}
    assert len(a.get(LB)[1]["loadbalancers"]) == 1

    refused(a.post("/v2/lbaas/pools", {"pool": pool_tree(loadbalancer_id=lb["id"], members=members(2))}), "Member")
    refused(a.post("/v2/lbaas/pools", {"pool": pool_tree(loadbalancer_id=lb["id"], healthmonitor={
        "type": "TCP", "delay": 5, "timeout": 3, "max_retries": 3})}), "Health Monitor")
    status, body = a.post("/v2/lbaas/listeners", {"listener": {
        "loadbalancer_id": lb["id"], "protocol": "HTTP", "protocol_port": 80,
        "default_pool": pool_tree(members=members(1))}})
    assert status == 201, body
    listener_id = body["listener"]["id"]
    a.wait_active(f"{LB}/{lb['id']}", "loadbalancer")
    pool_id = a.get("/v2/lbaas/pools")[1]["pools"][0]["id"]
    refused(a.post("/v2/lbaas/l7policies", {"l7policy": {"listener_id": listener_id, "action": "REJECT", "rules": [
        {"type": "PATH", "compare_type": "STARTS_WITH", "value": "/x"}]}}), "L7 Rule")
    # A batch counts only the members it adds: one kept, one new is over the quota of one.
    status, body = a.put(f"/v2/lbaas/pools/{pool_id}/members", {"members": members(2)})
    assert status == 403 and "Member" in body["faultstring"], body
    assert a.put(f"/v2/lbaas/pools/{pool_id}/members", {"members": members(1)})[0] == 202
    a.wait_active(f"{LB}/{lb['id']}", "loadbalancer")
    assert counts(a) == {"listeners": 1, "pools": 1, "healthmonitors": 0, "l7policies": 0, "members": 1}


def test_a_list_marker_is_looked_up_in_the_callers_project(clients: dict[str, Api]) -> None:
    a, b, admin = clients["a"], clients["b"], clients["admin"]
    mine = make_lb(a, name="m")
    theirs = [make_lb(b, name=name)["id"] for name in ("b1", "b2")]
    for path in (LB, "/v2.0/lbaas/loadbalancers"):
        status, body = b.get(f"{path}?marker={mine['id']}")
        assert status == 404 and body["faultcode"] == "Client", body
        status, body = b.get(f"{path}?marker={mine['id']}&sort=name:asc&limit=1")
        assert status == 404, body
        assert b.get(f"{path}?marker=no-such-id")[0] == 404  # indistinguishable from another project's id
    status, body = b.get(f"{LB}?marker={theirs[0]}&limit=1")
    assert status == 200 and [row["id"] for row in body["loadbalancers"]] == [theirs[1]]
    status, body = admin.get(f"{LB}?marker={mine['id']}")
    assert status == 200 and [row["id"] for row in body["loadbalancers"]] == theirs
    status, body = a.post("/v2/lbaas/listeners", {"listener": {
        "loadbalancer_id": mine["id"], "protocol": "TCP", "protocol_port": 22}})
    assert status == 201
    assert b.get(f"/v2/lbaas/listeners?marker={body['listener']['id']}")[0] == 404
    assert a.get(f"/v2/lbaas/listeners?marker={body['listener']['id']}")[0] == 200


def certificate() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "www.example.com")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=1)).sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())).decode()


def store_secret(api: Api, payload: str, **extra: Any) -> tuple[int, Any]:
    return api.post("/v1/secrets", {"name": "s", "payload": payload, **extra})


def test_secret_in_use_is_matched_exactly_within_its_project(clients: dict[str, Api]) -> None:
    a, b = clients["a"], clients["b"]
    pem = certificate()
    a_secret = store_secret(a, pem)[1]
    b_secret = store_secret(b, pem)[1]
    b_lb = make_lb(b)
    # b's ref names b's own secret, but carries a's secret id: a substring match would tie them.
    ref = f"http://{a_secret['id']}.example/v1/secrets/{b_secret['id']}"
    status, body = b.post("/v2/lbaas/listeners", {"listener": {
        "loadbalancer_id": b_lb["id"], "protocol": "TERMINATED_HTTPS", "protocol_port": 443,
        "default_tls_container_ref": ref}})
    assert status == 201, body
    b_listener = body["listener"]["id"]
    b.wait_active(f"{LB}/{b_lb['id']}", "loadbalancer")
    status, body = b.delete(f"/v1/secrets/{b_secret['id']}")
    assert status == 409 and b_listener in body["faultstring"], body

    a_lb = make_lb(a)
    status, body = a.post("/v2/lbaas/listeners", {"listener": {
        "loadbalancer_id": a_lb["id"], "protocol": "TERMINATED_HTTPS", "protocol_port": 443,
        "sni_container_refs": [a_secret["secret_ref"]], "default_tls_container_ref": a_secret["id"]}})
    assert status == 201, body
    a_listener = body["listener"]["id"]
    status, body = a.delete(f"/v1/secrets/{a_secret['id']}")
    assert status == 409 and a_listener in body["faultstring"] and b_listener not in body["faultstring"], body
    a.wait_active(f"{LB}/{a_lb['id']}", "loadbalancer")
    assert a.delete(f"/v2/lbaas/listeners/{a_listener}")[0] == 204
    a.wait_active(f"{LB}/{a_lb['id']}", "loadbalancer")
    # Only b's listener still mentions a's id, and it does not use a's secret.
    assert a.delete(f"/v1/secrets/{a_secret['id']}")[0] == 204


def test_malformed_certificates_are_client_errors(clients: dict[str, Api]) -> None:
    a = clients["a"]
    pem = certificate()
    cert_only = pem[:pem.index("-----BEGIN PRIVATE KEY")]
    for payload in ("-----BEGIN\n-----END", "-----BEGIN", "-----END\n-----BEGIN"):
        for kind in ("certificate", "ca", "crl"):
            status, body = store_secret(a, payload, kind=kind)
            assert status == 400 and body["faultcode"] == "Client", (payload, kind, body)
    # A certificate followed by a broken key block.
    for tail in ("-----BEGIN\n-----END", "\n-----BEGIN\n-----END\n", "-----BEGIN PRIVATE KEY-----\nAAAA\n",
                 "-----BEGIN PRIVATE KEY-----\n-----END PRIVATE KEY-----\n"):
        status, body = store_secret(a, cert_only + tail)
        assert status == 400 and body["faultcode"] == "Client", (tail, body)
    for raw in (b"-----BEGIN\n-----END", b"\x30\x82\xff\xff", b"\x00" * 64):
        status, body = store_secret(a, base64.b64encode(raw).decode(), payload_content_encoding="base64")
        assert status == 400, (raw, body)
    assert store_secret(a, pem)[0] == 201


def test_bgp_md5_password_is_encrypted_at_rest(cohort: tuple[Cohort, str], clients: dict[str, Api]) -> None:
    service, _ = cohort
    admin = clients["admin"]
    status, body = admin.post("/v2/octavia/bgp_peers", {"bgp_peer": {
        "peer_ip": "203.0.113.1", "remote_as": 64512, "auth_type": "md5", "md5_password": "s3cret-md5!"}})
    assert status == 201 and body["bgp_peer"]["md5_password_set"] is True, body
    peer_id = body["bgp_peer"]["id"]
    assert "s3cret-md5!" not in str(body) and "md5_password" not in body["bgp_peer"]
    key_file = service.settings.secrets_key_file

    def stored() -> bytes:
        with service.sessions() as session:
            ciphertext = session.scalar(select(m.BgpPeer.md5_password_ciphertext).where(m.BgpPeer.id == peer_id))
        assert ciphertext is not None
        return ciphertext

    first = stored()
    assert b"s3cret-md5!" not in first and secrets.decrypt_text(key_file, first) == "s3cret-md5!"
    database = Path(service.settings.db_url.removeprefix("sqlite:///")).read_bytes()
    assert b"s3cret-md5!" not in database
    status, body = admin.put(f"/v2/octavia/bgp_peers/{peer_id}", {"bgp_peer": {"hold_time": 9}})
    assert status == 200 and body["bgp_peer"]["md5_password_set"] is True
    assert stored() == first  # an update that does not send the password keeps it
    assert admin.put(f"/v2/octavia/bgp_peers/{peer_id}", {"bgp_peer": {"md5_password": "other"}})[0] == 200
    assert secrets.decrypt_text(key_file, stored()) == "other"


def test_migration_encrypts_existing_bgp_passwords(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cohort.db'}"
    key_file = tmp_path / "secrets.key"
    upgrade(url, "0003")
    with sqlite3.connect(tmp_path / "cohort.db") as db:
        db.execute("INSERT INTO bgp_peer (id, name, peer_ip, remote_as, auth_type, md5_password, ttl_hops, "
                   "hold_time, keepalive_interval, bfd_enabled, bfd_min_rx, bfd_min_tx, bfd_multiplier, created_at) "
                   "VALUES ('p1', '', '203.0.113.1', 64512, 'md5', 'plain!', 1, 90, 30, 0, 300, 300, 3, "
                   "'2026-01-01 00:00:00')")
    with pytest.raises(RuntimeError, match="secrets key"):
        upgrade(url, "0004")  # never leaves the passwords readable for want of the key
    upgrade(url, "0004", secrets_key=key_file)
    with sqlite3.connect(tmp_path / "cohort.db") as db:
        columns = [row[1] for row in db.execute("PRAGMA table_info(bgp_peer)")]
        [(ciphertext,)] = db.execute("SELECT md5_password_ciphertext FROM bgp_peer").fetchall()
    assert "md5_password" not in columns and secrets.decrypt_text(key_file, ciphertext) == "plain!"

    from alembic import command

    command.downgrade(alembic_config(url, key_file), "0003")
    with sqlite3.connect(tmp_path / "cohort.db") as db:
        assert db.execute("SELECT md5_password FROM bgp_peer").fetchall() == [("plain!",)]


def _encrypt_in_rounds(key_dir: str, rounds: int, barrier: Barrier, out: Any) -> None:
    for n in range(rounds):
        barrier.wait()
        out.put((n, secrets.encrypt_text(Path(key_dir) / str(n) / "secrets.key", "payload")))


def test_concurrent_processes_create_one_secrets_key(tmp_path: Path) -> None:
    """Processes that all find no key at the same moment still end up with one key, which decrypts everything."""
    processes, rounds = 6, 40
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(processes)
    out = context.Queue()
    workers = [context.Process(target=_encrypt_in_rounds, args=(str(tmp_path), rounds, barrier, out))
               for _ in range(processes)]
    for worker in workers:
        worker.start()
    tokens = [out.get(timeout=120) for _ in range(processes * rounds)]
    for worker in workers:
        worker.join(30)
        assert worker.exitcode == 0
    for n, token in tokens:
        key_file = tmp_path / str(n) / "secrets.key"
        assert secrets.decrypt_text(key_file, token) == "payload", n
        assert key_file.stat().st_mode & 0o777 == 0o600
    assert not list(tmp_path.glob("*/.*.tmp"))
