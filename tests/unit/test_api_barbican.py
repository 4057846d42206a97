"""Barbican's secrets, containers and ACLs on ``/v1`` (issue 12, item 5), through python-barbicanclient and HTTP.

One Cohort (noop drivers, static tokens for projects a and b and an admin) serves the module. The
client library is driven exactly as ``openstack secret ...`` drives it; HTTP checks the wire format,
faults, isolation between projects, encryption at rest, and the refs listeners and pools take.
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from barbicanclient import client as barbican
from barbicanclient import exceptions as barbican_errors
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID
from keystoneauth1 import session as ks_session
from keystoneauth1 import token_endpoint

from cohort import secrets
from cohort.api.auth import RequestContext
from cohort.api.routes import acls
from cohort.api.routes.barbican import BarbicanFault
from cohort.db import models as m
from cohort.service import Cohort
from tests.support import Api, running_cohort

LB = "/v2/lbaas/loadbalancers"
TOKENS = {
    "t-a": {"project_id": "a", "roles": ["member"]},
    "t-b": {"project_id": "b", "roles": ["member"]},
    "t-admin": {"project_id": "admin", "roles": ["admin"]},
}
KEY_MANAGER = {"OpenStack-API-Version": "key-manager 1.1"}


@dataclass
class Pem:
    cert: bytes
    key: bytes
    key_encrypted: bytes
    chain: bytes
    p12: bytes


def make_pem(name: str = "www.example.com") -> Pem:
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test intermediate")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(ca_key, hashes.SHA256()))
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + dt.timedelta(days=1)).sign(ca_key, hashes.SHA256()))
    return Pem(
        cert=cert.public_bytes(serialization.Encoding.PEM),
        key=key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                              serialization.NoEncryption()),
        key_encrypted=key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.BestAvailableEncryption(b"s3cret")),
        chain=ca.public_bytes(serialization.Encoding.PEM),
        p12=pkcs12.serialize_key_and_certificates(b"tls", key, cert, [ca], serialization.NoEncryption()),
    )


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cohort, str]]:
    with running_cohort(tmp_path_factory.mktemp("barbican"), drivers="noop", auth_strategy="token",
                        tokens=TOKENS) as pair:
        yield pair


@pytest.fixture(scope="module")
def clients(cohort: tuple[Cohort, str]) -> dict[str, Api]:
    return {name: Api(cohort[1], {"X-Auth-Token": f"t-{name}"}) for name in ("a", "b", "admin")}


@pytest.fixture(scope="module")
def pem() -> Pem:
    return make_pem()


def key_manager(base: str, who: str) -> Any:
    """python-barbicanclient as the ``openstack secret`` commands build it, on an endpoint with a token."""
    auth = token_endpoint.Token(f"{base}/v1", f"t-{who}")
    return barbican.Client(session=ks_session.Session(auth=auth))


def store(api: Api, payload: bytes, content_type: str = "application/octet-stream", **extra: Any) -> str:
    body = {"payload": base64.b64encode(payload).decode(), "payload_content_type": content_type,
            "payload_content_encoding": "base64", **extra}
    if content_type == "text/plain":
        body.update(payload=payload.decode(), payload_content_encoding=None)
    status, answer = api.post("/v1/secrets", {k: v for k, v in body.items() if v is not None})
    assert status == 201, answer
    return str(answer["secret_ref"])


def test_version_discovery_and_the_client_round_trip(cohort: tuple[Cohort, str], pem: Pem) -> None:
    base = cohort[1]
    version = httpx.get(f"{base}/v1").json()["version"]
    assert (version["id"], version["min_version"], version["max_version"]) == ("v1", "1.0", "1.1")
    km = key_manager(base, "a")
    # As `openstack secret store -t text/plain --payload ...` and the octet-stream default.
    text = km.secrets.create(name="greeting", payload="hello, world", payload_content_type="text/plain")
    ref = text.store()
    assert ref.startswith(f"{base}/v1/secrets/")
    raw = km.secrets.create(name="raw", payload=b"\x00\x01binary", algorithm="aes", bit_length=256, mode="cbc",
                            secret_type="symmetric", expiration="2999-01-01T00:00:00")
    raw_ref = raw.store()
    shown = km.secrets.get(raw_ref)
    assert (shown.name, shown.status, shown.algorithm, shown.bit_length, shown.mode, shown.secret_type) == (
        "raw", "ACTIVE", "aes", 256, "cbc", "symmetric")
    assert shown.content_types == {"default": "application/octet-stream"}
    assert shown.expiration.year == 2999 and shown.created is not None
    assert km.secrets.get(raw_ref).payload == b"\x00\x01binary"
    assert km.secrets.get(ref, payload_content_type="text/plain").payload == "hello, world"
    listed = km.secrets.list(name="greeting")
    assert [s.secret_ref for s in listed] == [ref] and listed[0].content_types == {"default": "text/plain"}
    assert km.secrets.total() >= 2
    km.secrets.delete(ref)
    with pytest.raises(barbican_errors.HTTPClientError) as caught:
        km.secrets.get(ref).name  # noqa: B018 - the lazy load is the request
    assert caught.value.status_code == 404 and "Secret not found" in str(caught.value)


def test_payload_follows_the_accept_header_as_in_barbican(clients: dict[str, Api], pem: Pem) -> None:
    a = clients["a"]
    ref = store(a, pem.p12)
    path = f"/v1/secrets/{secrets.ref_id(ref)}"
    for accept, expected in ((None, pem.p12), ("*/*", pem.p12), ("application/octet-stream", pem.p12)):
        headers = {"Accept": accept} if accept else {}
        response = a.client.get(f"{path}/payload", headers=headers)
        assert response.status_code == 200 and response.content == expected, (accept, response.text[:80])
    assert a.client.get(f"{path}/payload", headers={"Accept": "text/plain"}).status_code == 406  # not UTF-8
    assert a.client.get(f"{path}/payload", headers={"Accept": "image/png"}).status_code == 406
    # The deprecated way: GET on the secret itself with a payload type.
    response = a.client.get(path, headers={"Accept": "application/octet-stream"})
    assert response.status_code == 200 and response.content == pem.p12
    text_ref = store(a, pem.cert, "text/plain")
    response = a.client.get(f"/v1/secrets/{secrets.ref_id(text_ref)}/payload", headers={"Accept": "text/plain"})
    assert response.status_code == 200 and response.content == pem.cert.strip()
    status, empty = a.post("/v1/secrets", {"name": "no payload yet"})
    assert status == 201
    response = a.client.get(f"/v1/secrets/{empty['id']}/payload")
    assert response.status_code == 404 and "has no payload" in response.text
    assert "content_types" not in a.get(f"/v1/secrets/{empty['id']}")[1]


@pytest.mark.parametrize(("body", "says"), [
    ({"payload": "x", "payload_content_type": "image/png"}, "payload_content_type is not one of"),
    ({"payload": "x", "payload_content_type": "application/octet-stream"}, "payload_content_encoding"),
    ({"payload": "x", "payload_content_type": "text/plain", "payload_content_encoding": "base64"},
     "payload_content_encoding"),
    ({"payload": "not base64!", "payload_content_type": "application/octet-stream",
      "payload_content_encoding": "base64"}, "Invalid payload"),
    ({"payload": "   ", "payload_content_type": "text/plain"}, "must be non empty"),
    ({"payload_content_type": "text/plain"}, "payload must be provided"),
    ({"payload": "x", "payload_content_type": "text/plain", "expiration": "2001-01-01T00:00:00"},
     "before current time"),
    ({"payload": "x", "payload_content_type": "text/plain", "expiration": "someday"}, "Invalid date"),
    ({"payload": "x", "payload_content_type": "text/plain", "secret_type": "mystery"}, "secret_type"),
    ({"payload": "x", "payload_content_type": "text/plain", "bit_length": 0}, "bit_length"),
    ({"payload": "x", "payload_content_type": "text/plain", "name": "n" * 256}, "name"),
])
def test_bad_secrets_are_400s_in_the_fault_format_of_each_client(clients: dict[str, Api], body: dict[str, Any],
                                                                  says: str) -> None:
    a = clients["a"]
    status, fault = a.post("/v1/secrets", body, headers=KEY_MANAGER)
    assert status == 400 and fault["code"] == 400 and fault["title"] == "Bad Request", fault
    assert says in fault["description"], fault
    status, fault = a.post("/v1/secrets", body)
    assert status == 400 and fault["faultcode"] == "Client" and says in fault["faultstring"], fault


def test_garbage_is_never_a_server_error(clients: dict[str, Api]) -> None:
    a = clients["a"]
    ref = store(a, b"data")
    acl = f"/v1/secrets/{secrets.ref_id(ref)}/acl"
    common = (b"", b"[]", b"{", b"\xff\xfe", b'"text"', b"null")
    for path, bad in (("/v1/secrets", (b'{"payload": 5}', b'{"payload": "x", "payload_content_type": 7}',
                                       b'{"bit_length": "many"}', b'{"expiration": 1}')),
                      ("/v1/containers", (b'{"secret_refs": "x", "type": "certificate"}', b'{"name": "no type"}',
                                          b'{"type": "generic", "secret_refs": [{"name": "x"}]}')),
                      (acl, (b'{"read": {"users": "me"}}', b'{"read": {"project-access": "maybe"}}',
                             b'{"write": {}}', b'{"read": {"other": 1}}'))):
        for raw in (*common, *bad):
            method = "PUT" if path == acl else "POST"
            status, body = a.call(method, path, raw=raw, headers=KEY_MANAGER)
            assert status == 400 and body["title"] == "Bad Request", (path, raw, body)
            status, body = a.call(method, path, raw=raw)
            assert status == 400 and body["faultcode"] == "Client", (path, raw, body)
    for path in ("/v1/secrets/not-a-uuid", "/v1/containers/not-a-uuid", "/v1/secrets/x/acl", "/v1/secrets/x/payload"):
        status, body = a.get(path, headers=KEY_MANAGER)
        assert status == 404 and body["code"] == 404, (path, body)


def test_list_pages_like_barbican(clients: dict[str, Api]) -> None:
    b = clients["b"]
    refs = [store(b, f"page {n}".encode(), "text/plain", name=f"paged-{n}") for n in range(5)]
    status, body = b.get("/v1/secrets?limit=2&offset=2&name=paged-%25")
    assert status == 200 and body["total"] == 5, body
    assert [s["secret_ref"] for s in body["secrets"]] == refs[2:4]
    assert "limit=2&offset=0" in body["previous"] and "limit=2&offset=4" in body["next"]
    assert "name=paged-%25" in body["next"]
    status, body = b.get("/v1/secrets?limit=2&offset=4&name=paged-%25")
    assert "next" not in body and len(body["secrets"]) == 1
    status, body = b.get("/v1/secrets?limit=junk&offset=-3&name=paged-1")
    assert status == 200 and body["total"] == 1 and "previous" not in body and "next" not in body
    assert b.get("/v1/secrets?name=nothing-like-it")[1] == {"secrets": [], "total": 0}
    assert set(body["secrets"][0]) == {"secret_ref", "name", "status", "created", "updated", "secret_type",
                                       "expiration", "algorithm", "bit_length", "mode", "creator_id", "consumers",
                                       "content_types"}


def test_projects_never_reach_each_others_secrets(cohort: tuple[Cohort, str], clients: dict[str, Api]) -> None:
    a, b, admin = clients["a"], clients["b"], clients["admin"]
    marker = b"a's very own secret payload"
    ref = store(a, marker, "text/plain", name="a-only")
    ident = secrets.ref_id(ref)
    for path in (f"/v1/secrets/{ident}", f"/v1/secrets/{ident}/payload", f"/v1/secrets/{ident}/acl"):
        assert b.get(path)[0] == 404, path
    assert b.delete(f"/v1/secrets/{ident}")[0] == 404
    assert b.put(f"/v1/secrets/{ident}/acl", {"read": {"users": ["b-user"]}})[0] == 404
    assert all(s["name"] != "a-only" for s in b.get("/v1/secrets?limit=100")[1]["secrets"])
    # An admin of another project sees the metadata, never the payload.
    assert admin.get(f"/v1/secrets/{ident}")[0] == 200
    assert admin.client.get(f"/v1/secrets/{ident}/payload").status_code == 403
    # A container may not take another project's secret.
    status, body = b.post("/v1/containers", {"type": "generic", "secret_refs": [{"name": "x", "secret_ref": ref}]})
    assert status == 404 and "doesn't exist" in body["faultstring"], body
    # Encrypted at rest: the database file never holds the payload.
    service, _ = cohort
    database = Path(service.settings.db_url.removeprefix("sqlite:///")).read_bytes()
    assert marker not in database and base64.b64encode(marker) not in database


def test_acls_are_stored_and_honoured(cohort: tuple[Cohort, str], clients: dict[str, Api]) -> None:
    a = clients["a"]
    ref = store(a, b"shared", "text/plain")
    ident = secrets.ref_id(ref)
    assert a.get(f"/v1/secrets/{ident}/acl") == (200, {"read": {"project-access": True}})
    status, body = a.put(f"/v1/secrets/{ident}/acl", {"read": {"users": ["u1", "u2", "u1"], "project-access": False}})
    assert status == 200 and body == {"acl_ref": f"{ref}/acl"}
    # Private now: the project's members (these tokens name no user, so none is the creator) lose it.
    assert a.client.get(f"/v1/secrets/{ident}/payload").status_code == 403
    assert a.get(f"/v1/secrets/{ident}/acl")[0] == 403
    admin = clients["admin"]
    acl = admin.get(f"/v1/secrets/{ident}/acl")[1]["read"]
    assert acl["users"] == ["u1", "u2"] and acl["project-access"] is False and acl["created"]
    status, _ = admin.call("PATCH", f"/v1/secrets/{ident}/acl", {"read": {"users": ["u3"]}})
    acl = admin.get(f"/v1/secrets/{ident}/acl")[1]["read"]
    assert status == 200 and acl["users"] == ["u3"] and acl["project-access"] is False
    assert admin.delete(f"/v1/secrets/{ident}/acl")[0] == 200
    assert a.get(f"/v1/secrets/{ident}/acl") == (200, {"read": {"project-access": True}})
    assert a.client.get(f"/v1/secrets/{ident}/payload").content == b"shared"
    # Who may read, by the rules of acls.reach (user ids come from Keystone tokens).
    service, _ = cohort
    with service.sessions() as session:
        session.add(m.SecretAcl(entity_id=ident, operation="read", entity_type="secret", project_access=False,
                                users=["friend"]))
        session.commit()
        row = session.get(m.Secret, ident)
        row.creator_id = "creator"
        session.commit()

        def allowed(project: str, user: str | None, roles: tuple[str, ...] = ("member",), **how: bool) -> int:
            ctx = RequestContext(project_id=project, roles=roles, user_id=user)
            try:
                acls.secret_for(session, ctx, ident, **how)
            except BarbicanFault as fault:
                return fault.status_code
            return 200

        assert allowed("a", "creator", payload=True) == 200
        assert allowed("a", "someone-else", payload=True) == 403  # the project lost its access
        assert allowed("a", "someone-else", ("admin",), payload=True) == 200
        assert allowed("elsewhere", "friend", payload=True) == 200  # listed in the ACL
        assert allowed("elsewhere", "friend", change=True) == 403  # reading is all the ACL grants
        assert allowed("elsewhere", "stranger", payload=True) == 404
        assert allowed("elsewhere", "stranger", ("admin",)) == 200
        assert allowed("elsewhere", "stranger", ("admin",), payload=True) == 403


def test_certificate_containers_serve_listeners_as_pkcs12_secrets_do(cohort: tuple[Cohort, str],
                                                                      clients: dict[str, Api], pem: Pem) -> None:
    service, base = cohort
    a = clients["a"]
    km = key_manager(base, "a")
    cert = km.secrets.create(name="certificate1", payload=pem.cert.decode(), payload_content_type="text/plain")
    key = km.secrets.create(name="private_key1", payload=pem.key_encrypted.decode(), payload_content_type="text/plain")
    passphrase = km.secrets.create(name="pass1", payload="s3cret", payload_content_type="text/plain")
    chain = km.secrets.create(name="chain1", payload=pem.chain.decode(), payload_content_type="text/plain")
    container = km.containers.create_certificate(name="tls_container1", certificate=cert, private_key=key,
                                                 private_key_passphrase=passphrase, intermediates=chain)
    container_ref = container.store()
    shown = km.containers.get(container_ref)
    assert (shown.name, shown.status, shown.secret_refs["certificate"], shown.secret_refs["private_key"]) == (
        "tls_container1", "ACTIVE", cert.secret_ref, key.secret_ref)
    assert shown.certificate.payload == pem.cert.decode().strip()  # the client follows the refs
    assert [c.container_ref for c in km.containers.list(type="certificate")] == [container_ref]
    p12_ref = store(a, pem.p12)
    generic = km.containers.create(name="bag", secrets={"anything": cert}).store()

    lb = a.post(LB, {"loadbalancer": {"vip_subnet_id": "public-subnet"}})[1]["loadbalancer"]
    a.wait_active(f"{LB}/{lb['id']}", "loadbalancer")
    status, body = a.post("/v2/lbaas/listeners", {"listener": {
        "loadbalancer_id": lb["id"], "protocol": "TERMINATED_HTTPS", "protocol_port": 443,
        "default_tls_container_ref": container_ref, "sni_container_refs": [p12_ref]}})
    assert status == 201, body
    listener_id = body["listener"]["id"]
    a.wait_active(f"{LB}/{lb['id']}", "loadbalancer")
    with service.sessions() as session:
        found = secrets.certificates_for(session, service.settings, lb["id"])
    for ref in (container_ref, p12_ref):
        served = x509.load_pem_x509_certificates(found[ref])
        assert [c.subject.rfc4514_string() for c in served] == ["CN=www.example.com", "CN=Test intermediate"]
        assert b"-----BEGIN PRIVATE KEY-----" in found[ref] and b"ENCRYPTED" not in found[ref]
    status, body = a.post("/v2/lbaas/listeners", {"listener": {
        "loadbalancer_id": lb["id"], "protocol": "TERMINATED_HTTPS", "protocol_port": 8443,
        "default_tls_container_ref": generic}})
    assert status == 400 and "generic container" in body["faultstring"], body
    # In use: neither the container nor a secret it holds can go.
    assert a.delete(f"/v1/containers/{secrets.ref_id(container_ref)}")[0] == 409
    status, body = a.delete(f"/v1/secrets/{secrets.ref_id(key.secret_ref)}")
    assert status == 409 and listener_id in body["faultstring"], body
    assert a.delete(f"/v2/lbaas/listeners/{listener_id}")[0] == 204
    a.wait_active(f"{LB}/{lb['id']}", "loadbalancer")
    # Barbican's way: a deleted secret leaves its containers.
    km.secrets.delete(chain.secret_ref)
    assert "intermediates" not in {item["name"] for item in a.get(
        f"/v1/containers/{secrets.ref_id(container_ref)}")[1]["secret_refs"]}
    km.containers.delete(container_ref)
    with pytest.raises(barbican_errors.HTTPClientError):
        km.containers.get(container_ref)


def test_container_rules_are_barbicans(clients: dict[str, Api], pem: Pem) -> None:
    a = clients["a"]
    cert = store(a, pem.cert, "text/plain")
    key = store(a, pem.key, "text/plain")
    for secret_refs, says in (
            ([{"name": "private_key", "secret_ref": key}], "minimum required reference name is 'certificate'"),
            ([{"name": "certificate", "secret_ref": cert}, {"name": "extra", "secret_ref": key}], "only 'private_key'"),
            ([{"name": "certificate", "secret_ref": cert}, {"name": "certificate", "secret_ref": key}], "Duplicate"),
            ([{"name": "certificate", "secret_ref": cert}, {"name": "private_key", "secret_ref": cert}],
             "Duplicate secret ids")):
        status, body = a.post("/v1/containers", {"type": "certificate", "secret_refs": secret_refs},
                              headers=KEY_MANAGER)
        assert status == 400 and says in body["description"], body
    status, body = a.post("/v1/containers", {"type": "rsa", "secret_refs": [
        {"name": "private_key", "secret_ref": key}]})
    assert status == 400, body
    status, body = a.post("/v1/containers", {"type": "mystery"})
    assert status == 400, body
    # A certificate container whose key does not match is kept (as Barbican does) but refused by listeners.
    other = store(a, make_pem().key, "text/plain")
    status, body = a.post("/v1/containers", {"type": "certificate", "name": "mismatch", "secret_refs": [
        {"name": "certificate", "secret_ref": cert}, {"name": "private_key", "secret_ref": other}]})
    assert status == 201 and body["container_ref"], body


def test_noop_drivers_take_refs_no_store_holds_as_octavias_noop_cert_manager(
        cohort: tuple[Cohort, str], clients: dict[str, Api], pem: Pem) -> None:
    """On noop drivers (no amphora is ever given a certificate) an unknown ref is taken; stored ones are checked."""
    from cohort.config import Settings

    service, base = cohort
    assert not secrets.refs_must_be_stored(service.settings)
    assert secrets.refs_must_be_stored(Settings(state_dir=service.settings.state_dir, drivers="local"))
    a = clients["a"]
    lb = a.post(LB, {"loadbalancer": {"vip_subnet_id": "public-subnet", "listeners": [{
        "protocol": "TERMINATED_HTTPS", "protocol_port": 443,
        "default_tls_container_ref": f"{base}/v1/containers/00000000-0000-4000-8000-000000000000",
        "sni_container_refs": ["https://barbican.example/v1/secrets/00000000-0000-4000-8000-000000000001"],
        "default_pool": {"protocol": "HTTP", "lb_algorithm": "ROUND_ROBIN",
                         "tls_container_ref": "00000000-0000-4000-8000-000000000002"}}]}})
    assert lb[0] == 201, lb
    lb_id = lb[1]["loadbalancer"]["id"]
    a.wait_active(f"{LB}/{lb_id}", "loadbalancer")
    opaque = store(a, b"not a certificate")
    status, body = a.post("/v2/lbaas/listeners", {"listener": {
        "loadbalancer_id": lb_id, "protocol": "TERMINATED_HTTPS", "protocol_port": 8443,
        "default_tls_container_ref": opaque}})
    assert status == 400 and "opaque" in body["faultstring"], body
    status, body = a.post("/v2/lbaas/listeners", {"listener": {
        "loadbalancer_id": lb_id, "protocol": "TERMINATED_HTTPS", "protocol_port": 8443,
        "default_tls_container_ref": "https://barbican.example/v1/containers/00000000-0000-4000-8000-000000000003"}})
    assert status == 201, body
