"""The ``token`` auth strategy and quotas over real HTTP: who may see and change what, and how much."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import Api, running_cohort, wait_for

LB = "/v2/lbaas/loadbalancers"
TOKENS = {
    "t-a": {"project_id": "a", "roles": ["member"]},
    "t-b": {"project_id": "b", "roles": ["member"]},
    "t-admin": {"project_id": "admin", "roles": ["admin"]},
}
DEFAULT_QUOTAS = {"member": 3, "listener": 2}


@pytest.fixture
def base(tmp_path: Path) -> Iterator[str]:
    with running_cohort(tmp_path, drivers="noop", auth_strategy="token", tokens=TOKENS,
                        quotas=DEFAULT_QUOTAS) as (_, url):
        yield url


@pytest.fixture
def clients(base: str) -> dict[str, Api]:
    return {name: Api(base, {"X-Auth-Token": token})
            for name, token in (("a", "t-a"), ("b", "t-b"), ("admin", "t-admin"))}


def make_lb(api: Api, **extra: Any) -> tuple[int, Any]:
    return api.post(LB, {"loadbalancer": {"vip_subnet_id": "public-subnet", **extra}})


def test_authentication(base: str) -> None:
    anonymous = Api(base)
    assert anonymous.get("/")[0] == 200  # version discovery needs no token
    status, body = anonymous.get(LB)
    assert status == 401 and body["faultcode"] == "Client" and "X-Auth-Token" in body["faultstring"]
    assert Api(base, {"X-Auth-Token": "t-wrong"}).get(LB)[0] == 401
    assert Api(base, {"X-Auth-Token": "t-a"}).get(LB)[0] == 200


def test_projects_are_isolated(clients: dict[str, Api]) -> None:
    a, b, admin = clients["a"], clients["b"], clients["admin"]
    status, body = make_lb(a, name="mine")
    assert status == 201 and body["loadbalancer"]["project_id"] == "a"
    lb_id = body["loadbalancer"]["id"]
    a.wait_active(f"{LB}/{lb_id}", "loadbalancer")
    status, body = a.post("/v2/lbaas/listeners", {"listener": {
        "loadbalancer_id": lb_id, "protocol": "TCP", "protocol_port": 22}})
    assert status == 201
    listener_id = body["listener"]["id"]
    a.wait_active(f"{LB}/{lb_id}", "loadbalancer")
    assert make_lb(b, name="theirs")[0] == 201

    # b sees none of a's objects, and cannot change them: 404, as if they did not exist.
    assert b.get(f"{LB}/{lb_id}")[0] == 404
    assert b.get(f"{LB}/{lb_id}/status")[0] == 404
    assert b.get(f"/v2/lbaas/listeners/{listener_id}")[0] == 404
    assert b.put(f"{LB}/{lb_id}", {"loadbalancer": {"name": "stolen"}})[0] == 404
    assert b.delete(f"{LB}/{lb_id}")[0] == 404
    assert b.post("/v2/lbaas/listeners", {"listener": {
        "loadbalancer_id": lb_id, "protocol": "TCP", "protocol_port": 23}})[0] == 404
    assert [lb["name"] for lb in b.get(LB)[1]["loadbalancers"]] == ["theirs"]
    assert b.get(f"/v2/lbaas/listeners?loadbalancer_id={lb_id}")[1]["listeners"] == []
    assert [lb["name"] for lb in a.get(LB)[1]["loadbalancers"]] == ["mine"]
    # Filtering by another project does not widen a member's view.
    assert a.get(f"{LB}?project_id=b")[1]["loadbalancers"] == []
    # Only an admin creates on behalf of another project.
    assert make_lb(a, project_id="b")[0] == 403
    status, body = make_lb(admin, project_id="b", name="for-b")
    assert status == 201 and body["loadbalancer"]["project_id"] == "b"

    names = sorted(lb["name"] for lb in admin.get(LB)[1]["loadbalancers"])
    assert names == ["for-b", "mine", "theirs"]
    assert sorted(lb["name"] for lb in admin.get(f"{LB}?project_id=b")[1]["loadbalancers"]) == ["for-b", "theirs"]
    assert admin.put(f"{LB}/{lb_id}", {"loadbalancer": {"description": "by admin"}})[0] == 200


def test_members_are_not_operators(clients: dict[str, Api]) -> None:
    a, admin = clients["a"], clients["admin"]
    forbidden = [
        ("GET", "/v2/octavia/amphorae", None),
        ("GET", "/v2/octavia/clusters", None),
        ("GET", "/v2/octavia/distributors", None),
        ("GET", "/v2/octavia/bgp_speakers", None),
        ("POST", "/v2/octavia/bgp_speakers", {"bgp_speaker": {"local_as": 65000}}),
        ("GET", "/v2/lbaas/flavorprofiles", None),
        ("POST", "/v2/lbaas/flavorprofiles", {"flavorprofile": {
            "name": "p", "provider_name": "amphora", "flavor_data": "{}"}}),
        ("POST", "/v2/lbaas/flavors", {"flavor": {"name": "f", "flavor_profile_id": "x"}}),
        ("POST", "/v2/lbaas/availabilityzoneprofiles", {"availability_zone_profile": {
            "name": "z", "provider_name": "amphora", "availability_zone_data": "{}"}}),
        ("PUT", "/v2/lbaas/quotas/a", {"quota": {"loadbalancer": 100}}),
        ("DELETE", "/v2/lbaas/quotas/a", None),
        ("GET", "/v2/lbaas/quotas/b", None),
    ]
    for method, path, body in forbidden:
        status, answer = a.call(method, path, body)
        assert status == 403, (method, path, answer)
        assert answer["faultcode"] == "Client"
    # What a member may read: the catalogue, its own quota, the defaults.
    for path in ("/v2/lbaas/flavors", "/v2/lbaas/availabilityzones", "/v2/lbaas/providers",
                 "/v2/lbaas/quotas/a", "/v2/lbaas/quotas/defaults"):
        assert a.get(path)[0] == 200, path
    assert admin.get("/v2/octavia/amphorae")[0] == 200
    # The identity look-up the CLI does: members resolve only their own project.
    assert a.get("/v3/projects/a")[1]["project"]["id"] == "a"
    assert a.get("/projects/b")[0] == 403
    assert admin.get("/projects/b")[1]["project"]["name"] == "b"


def test_quotas(clients: dict[str, Api]) -> None:
    a, admin = clients["a"], clients["admin"]
    status, body = a.get("/v2/lbaas/quotas/defaults")
    assert body["quota"]["member"] == 3 and body["quota"]["listener"] == 2
    assert body["quota"]["loadbalancer"] == -1 and body["quota"]["load_balancer"] == -1
    status, body = admin.put("/v2/lbaas/quotas/a", {"quota": {"loadbalancer": 1}})
    assert status == 202 and body["quota"]["load_balancer"] == 1
    assert body["quota"]["member"] == 3  # unset values fall back to the defaults
    status, body = admin.get("/v2/lbaas/quotas")
    assert [(q["project_id"], q["loadbalancer"]) for q in body["quotas"]] == [("a", 1)]

    assert make_lb(a, name="one")[0] == 201
    status, body = make_lb(a, name="two")
    assert status == 403 and body["faultstring"] == "Quota has been met for resources: Load Balancer"
    assert make_lb(clients["b"])[0] == 201  # another project's quota is its own
    assert admin.put("/v2/lbaas/quotas/a", {"quota": {"load_balancer": -1}})[0] == 202  # old spelling, unlimited
    assert make_lb(a, name="two")[0] == 201
    assert admin.put("/v2/lbaas/quotas/a", {"quota": {"loadbalancer": -2}})[0] == 400
    assert admin.put("/v2/lbaas/quotas/a", {"quota": {"widgets": 1}})[0] == 400

    # A single-call tree counts every object it would make, and makes nothing when over.
    before = len(a.get(LB)[1]["loadbalancers"])
    members = [{"address": f"192.0.2.{n}", "protocol_port": 80} for n in range(10, 14)]
    tree = {"listeners": [{"protocol": "HTTP", "protocol_port": 80, "default_pool": {
        "protocol": "HTTP", "lb_algorithm": "ROUND_ROBIN", "members": members}}]}
    status, body = make_lb(a, **tree)
    assert status == 403 and "Member" in body["faultstring"]
    tree["listeners"][0]["default_pool"]["members"] = members[:3]
    listeners = [{"protocol": "TCP", "protocol_port": port} for port in (1, 2, 3)]
    status, body = make_lb(a, listeners=listeners)
    assert status == 403 and "Listener" in body["faultstring"]
    assert len(a.get(LB)[1]["loadbalancers"]) == before
    status, body = make_lb(a, **tree)
    assert status == 201, body
    lb_id = body["loadbalancer"]["id"]
    a.wait_active(f"{LB}/{lb_id}", "loadbalancer")
    pool_id = a.get("/v2/lbaas/pools")[1]["pools"][0]["id"]
    status, body = a.post(f"/v2/lbaas/pools/{pool_id}/members", {"member": {
        "address": "192.0.2.50", "protocol_port": 80}})
    assert status == 403 and "Member" in body["faultstring"]

    # Reset: back to the defaults; deleting objects frees quota.
    assert admin.put("/v2/lbaas/quotas/a", {"quota": {"member": 4}})[0] == 202
    assert a.post(f"/v2/lbaas/pools/{pool_id}/members", {"member": {
        "address": "192.0.2.50", "protocol_port": 80}})[0] == 201
    assert admin.delete("/v2/lbaas/quotas/a")[0] == 202
    assert a.get("/v2/lbaas/quotas/a")[1]["quota"]["member"] == 3
    assert admin.get("/v2/lbaas/quotas")[1]["quotas"] == []
    a.wait_active(f"{LB}/{lb_id}", "loadbalancer")
    assert a.delete(f"{LB}/{lb_id}?cascade=true")[0] == 204
    wait_for(lambda: a.get(f"{LB}/{lb_id}")[0] == 404)
