"""The live objects the fuzzer aims at, and the placeholder tokens that name them.

Each owner (``admin``: the noauth admin; ``tenant``: a member of another project) has a
load-balancer tree (listener with an L7 policy and rule, a pool with a monitor and a member, a
pool without a monitor) and three secrets (certificate, CA, CRL); the admin also owns the
catalog objects (flavor and availability-zone profiles and their flavor and zone, a BGP speaker
and peer). Generated requests name them through ``SEED.<owner>.<kind>`` tokens;
``Seeds.substitute`` swaps in the current ids just before a request is sent, and
``Seeds.ensure`` re-creates whatever an earlier fuzzed DELETE removed, so every operation keeps
reaching objects that exist.
"""

from __future__ import annotations

import base64
import datetime as dt
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from cohort.db import models as m

TENANT_PROJECT = "fuzz-tenant"
HEADERS = {
    "admin": {"X-Project-Id": "admin", "X-Roles": "admin"},
    "tenant": {"X-Project-Id": TENANT_PROJECT, "X-Roles": "member"},
}
PROJECTS = {"admin": "admin", "tenant": TENANT_PROJECT}
# Made of characters a URL needs no quoting for, as schemathesis quotes path parameters.
TOKEN = re.compile(r"SEED\.(admin|tenant)\.([a-z0-9_]+)|PEM\.([a-z0-9-]+)")
PENDING = ("PENDING_CREATE", "PENDING_UPDATE", "PENDING_DELETE")
GONE = ("PENDING_DELETE", "DELETED", "ERROR")
TREE = ("loadbalancer", "listener", "pool", "pool_free", "member", "healthmonitor", "l7policy", "l7rule")
# Seed kind -> its table.
SEEDED: dict[str, Any] = {
    "loadbalancer": m.LoadBalancer, "listener": m.Listener, "pool": m.Pool, "pool_free": m.Pool, "member": m.Member,
    "healthmonitor": m.HealthMonitor, "l7policy": m.L7Policy, "l7rule": m.L7Rule, "cert_ref": m.Secret,
    "ca_ref": m.Secret, "crl_ref": m.Secret, "flavorprofile": m.FlavorProfile, "flavor": m.Flavor,
    "azprofile": m.AvailabilityZoneProfile, "az": m.AvailabilityZone, "speaker": m.BgpSpeaker, "peer": m.BgpPeer,
}


def pem_material() -> dict[str, str]:
    """A self-signed certificate with its key (also usable as a CA) and a CRL it signed."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fuzz.example.com")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    crl = (x509.CertificateRevocationListBuilder().issuer_name(name).last_update(now - dt.timedelta(hours=1))
           .next_update(now + dt.timedelta(days=2)).sign(key, hashes.SHA256()))
    cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    bundle = cert_pem + key_pem
    return {"cert": bundle, "ca": cert_pem, "crl": crl.public_bytes(serialization.Encoding.PEM).decode(),
            "cert-base64": base64.b64encode(bundle.encode()).decode()}


def lb_tree(name: str) -> dict[str, Any]:
    member = {"address": "192.0.2.10", "protocol_port": 80, "subnet_id": "private-subnet"}
    monitor = {"type": "HTTP", "delay": 5, "timeout": 3, "max_retries": 3}
    rule = {"type": "PATH", "compare_type": "STARTS_WITH", "value": "/fuzz"}
    return {"loadbalancer": {
        "name": name, "vip_subnet_id": "public-subnet",
        "listeners": [{"name": name, "protocol": "HTTP", "protocol_port": 80,
                       "default_pool": {"name": name, "protocol": "HTTP", "lb_algorithm": "ROUND_ROBIN",
                                        "healthmonitor": monitor, "members": [member]},
                       "l7policies": [{"name": name, "action": "REJECT", "rules": [rule]}]}],
        "pools": [{"name": f"{name}-free", "protocol": "HTTP", "lb_algorithm": "ROUND_ROBIN"}],
    }}


@dataclass
class Seeds:
    base: str
    sessions: sessionmaker[Session]  # read-only: never hold the write lock
    pem: dict[str, str] = field(default_factory=pem_material)
    ids: dict[tuple[str, str], str] = field(default_factory=dict)
    refs: dict[tuple[str, str], str] = field(default_factory=dict)
    created_trees: int = 0

    def __post_init__(self) -> None:
        self.clients = {owner: httpx.Client(base_url=self.base, headers=headers, timeout=30)
                        for owner, headers in HEADERS.items()}

    def close(self) -> None:
        for client in self.clients.values():
            client.close()

    # -- requests -------------------------------------------------------------------------------

    def _create(self, owner: str, path: str, body: dict[str, Any], key: str) -> dict[str, Any]:
        response = self.clients[owner].post(path, json=body)
        assert response.status_code == 201, (path, body, response.status_code, response.text)
        return dict(response.json()[key])

    # -- keeping the seeds alive ----------------------------------------------------------------

    def ensure(self) -> None:
        """Every seed exists (re-created if an earlier request deleted it)."""
        missing = self._missing()
        for owner in PROJECTS:
            if owner in missing:
                self._ensure_tree(owner)
            self._ensure_secrets(owner, missing)
        self._ensure_catalog(missing)

    def _missing(self) -> set[str]:
        """``owner/kind`` of every seed that is gone, and the owners whose tree is incomplete; one read."""
        alive: set[str] = set()
        with self.sessions() as session:
            for model in set(SEEDED.values()):
                wanted = [ident for (_, kind), ident in self.ids.items() if SEEDED.get(kind) is model]
                if not wanted:
                    continue
                key = model.name if model is m.AvailabilityZone else model.id
                query = select(key).where(key.in_(wanted))
                if hasattr(model, "provisioning_status"):
                    query = query.where(model.provisioning_status.not_in(GONE))
                alive.update(session.scalars(query))
        missing = {f"{owner}/{kind}" for owner in PROJECTS for kind in SEEDED
                   if self.ids.get((owner, kind)) not in alive}
        missing.update(owner for owner in PROJECTS if any(f"{owner}/{kind}" in missing for kind in TREE))
        return missing

    def _ensure_tree(self, owner: str) -> None:
        self.created_trees += 1
        lb = self._create(owner, "/v2/lbaas/loadbalancers", lb_tree(f"seed-{owner}-{self.created_trees}"),
                          "loadbalancer")
        self.ids[(owner, "loadbalancer")] = lb["id"]
        with self.sessions() as session:
            listener = session.scalars(select(m.Listener.id).where(m.Listener.load_balancer_id == lb["id"])).one()
            pools = list(session.scalars(select(m.Pool.id).where(m.Pool.load_balancer_id == lb["id"])))
            with_monitor = dict(session.execute(select(m.HealthMonitor.pool_id, m.HealthMonitor.id).where(
                m.HealthMonitor.pool_id.in_(pools))).all())
            pool = next(p for p in pools if p in with_monitor)
            policy = session.scalars(select(m.L7Policy.id).where(m.L7Policy.listener_id == listener)).one()
            self.ids.update({
                (owner, "listener"): listener, (owner, "pool"): pool, (owner, "healthmonitor"): with_monitor[pool],
                (owner, "pool_free"): next(p for p in pools if p not in with_monitor),
                (owner, "member"): session.scalars(select(m.Member.id).where(m.Member.pool_id == pool)).one(),
                (owner, "l7policy"): policy,
                (owner, "l7rule"): session.scalars(select(m.L7Rule.id).where(m.L7Rule.l7policy_id == policy)).one(),
            })

    def _ensure_secrets(self, owner: str, missing: set[str]) -> None:
        for kind, pem in (("cert_ref", "cert"), ("ca_ref", "ca"), ("crl_ref", "crl")):
            if f"{owner}/{kind}" not in missing:
                continue
            secret = self._create_secret(owner, {"cert": "certificate"}.get(pem, pem), self.pem[pem])
            self.ids[(owner, kind)] = secret["id"]
            self.refs[(owner, kind)] = secret["secret_ref"]
            if kind == "cert_ref":
                self.ids[(owner, "secret")] = secret["id"]

    def _create_secret(self, owner: str, kind: str, payload: str) -> dict[str, Any]:
        response = self.clients[owner].post("/v1/secrets", json={"name": f"seed-{kind}", "kind": kind,
                                                                  "payload": payload})
        assert response.status_code == 201, (kind, response.status_code, response.text)
        return dict(response.json())

    def _ensure_catalog(self, missing: set[str]) -> None:
        admin = "admin"
        if "admin/flavorprofile" in missing:
            self.ids[(admin, "flavorprofile")] = self._create(admin, "/v2/lbaas/flavorprofiles", {"flavorprofile": {
                "name": "seed", "provider_name": "amphora",
                "flavor_data": '{"loadbalancer_topology": "ACTIVE_ACTIVE", "amp_cluster_size": 2}'}},
                "flavorprofile")["id"]
        if "admin/flavor" in missing:
            self.ids[(admin, "flavor")] = self._create(admin, "/v2/lbaas/flavors", {"flavor": {
                "name": f"seed-{uuid.uuid4().hex[:8]}", "flavor_profile_id": self.ids[(admin, "flavorprofile")],
                "enabled": True}}, "flavor")["id"]
        if "admin/azprofile" in missing:
            self.ids[(admin, "azprofile")] = self._create(admin, "/v2/lbaas/availabilityzoneprofiles", {
                "availability_zone_profile": {"name": "seed", "provider_name": "amphora",
                                              "availability_zone_data": "{}"}},
                "availability_zone_profile")["id"]
        if "admin/az" in missing:
            self.ids[(admin, "az")] = self._create(admin, "/v2/lbaas/availabilityzones", {"availability_zone": {
                "name": f"seed-{uuid.uuid4().hex[:8]}",
                "availability_zone_profile_id": self.ids[(admin, "azprofile")]}}, "availability_zone")["name"]
        if "admin/speaker" in missing:
            self.ids[(admin, "speaker")] = self._create(admin, "/v2/octavia/bgp_speakers", {"bgp_speaker": {
                "name": "seed", "local_as": 64512}}, "bgp_speaker")["id"]
        if "admin/peer" in missing:
            self.ids[(admin, "peer")] = self._create(admin, "/v2/octavia/bgp_peers", {"bgp_peer": {
                "name": "seed", "peer_ip": "192.0.2.1", "remote_as": 64513,
                "bgp_speaker_id": self.ids[(admin, "speaker")]}}, "bgp_peer")["id"]

    def wait_settled(self, owner: str, timeout: float) -> None:
        """Give the reconciler up to ``timeout`` seconds to bring the owner's seed tree out of PENDING_*."""
        lb_id = self.ids.get((owner, "loadbalancer"))
        deadline = time.monotonic() + timeout
        while lb_id is not None and time.monotonic() < deadline:
            with self.sessions() as session:
                row = session.get(m.LoadBalancer, lb_id)
                if row is None or row.provisioning_status not in PENDING:
                    return
            time.sleep(0.02)

    def reset_quotas(self) -> None:
        for project in PROJECTS.values():
            self.clients["admin"].delete(f"/v2/lbaas/quotas/{project}")

    # -- tokens ---------------------------------------------------------------------------------

    def _infra(self, owner: str, kind: str) -> str | None:
        lb_id = self.ids.get((owner, "loadbalancer"))
        with self.sessions() as session:
            if kind == "amphora":
                return session.scalars(select(m.Amphora.id).where(m.Amphora.load_balancer_id == lb_id)).first()
            cluster = session.scalars(select(m.AmphoraCluster).where(m.AmphoraCluster.load_balancer_id == lb_id)
                                      ).first()
            if cluster is None:
                return None
            return cluster.id if kind == "cluster" else cluster.distributor_id

    def value(self, owner: str, kind: str) -> str:
        if kind == "project":
            return PROJECTS[owner]
        if kind in ("cert_ref", "ca_ref", "crl_ref"):
            return self.refs.get((owner, kind)) or f"{self.base}/v1/secrets/{uuid.uuid4()}"
        if kind in ("amphora", "cluster", "distributor"):
            return self._infra(owner, kind) or str(uuid.uuid4())
        return self.ids.get((owner, kind)) or str(uuid.uuid4())

    def substitute(self, value: Any) -> Any:
        """``value`` with every placeholder token replaced by what it names now."""
        if isinstance(value, str):
            if "SEED." not in value and "PEM." not in value:
                return value
            replace: Callable[[re.Match[str]], str] = self._replacement
            return TOKEN.sub(replace, value)
        if isinstance(value, list):
            return [self.substitute(item) for item in value]
        if isinstance(value, dict):
            return {self.substitute(k): self.substitute(v) for k, v in value.items()}
        return value

    def _replacement(self, match: re.Match[str]) -> str:
        if match.group(3):
            return self.pem.get(match.group(3), match.group(0))
        return self.value(match.group(1), match.group(2))
