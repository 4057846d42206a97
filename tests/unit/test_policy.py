"""Octavia's RBAC rules over real HTTP (static tokens carrying Keystone-style roles), and the operator's file."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cohort.api.policy import DEFAULT_RULES, ENDPOINT_RULES, PolicyEngine
from cohort.api.routes import admin, catalog, healthmonitors, l7, listeners, loadbalancers, members, pools, quotas
from tests.support import Api, running_cohort, wait_for

LB = "/v2/lbaas/loadbalancers"
ROLES = {
    "reader": ["reader"], "member": ["member", "reader"], "lb_member": ["load-balancer_member"],
    "observer": ["load-balancer_observer"], "global_observer": ["load-balancer_global_observer"],
    "quota_admin": ["load-balancer_quota_admin"], "lb_admin": ["load-balancer_admin"], "admin": ["admin"],
    "nobody": ["other-role"],
}
TOKENS = {f"t-{name}": {"project_id": "p1", "roles": roles} for name, roles in ROLES.items()}
TOKENS["t-member2"] = {"project_id": "p2", "roles": ["member", "reader"]}


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_cohort(tmp_path_factory.mktemp("policy"), drivers="noop", auth_strategy="token", tokens=TOKENS,
                        enforce_policy=True) as (_, url):
        yield url


def client(base: str, who: str) -> Api:
    return Api(base, {"X-Auth-Token": f"t-{who}"})


def test_every_handler_has_a_rule_with_a_default() -> None:
    handlers = set()
    for module in (admin, catalog, healthmonitors, l7, listeners, loadbalancers, members, pools, quotas):
        for route in module.router.routes:
            handlers.add(f"{module.__name__.rsplit('.', 1)[1]}.{route.endpoint.__name__}")  # type: ignore[attr-defined]
    assert handlers == set(ENDPOINT_RULES)
    assert set(ENDPOINT_RULES.values()) <= set(DEFAULT_RULES)


def test_reads_and_writes_by_role(base: str) -> None:
    status, body = client(base, "member").post(LB, {"loadbalancer": {"vip_subnet_id": "public-subnet"}})
    assert status == 201, body
    lb_id = body["loadbalancer"]["id"]
    wait_for(lambda: client(base, "admin").get(f"{LB}/{lb_id}")[1]["loadbalancer"]["provisioning_status"]
             == "ACTIVE")
    readers = {"reader", "member", "lb_member", "observer", "global_observer", "lb_admin", "admin"}
    for who in ROLES:
        status, _ = client(base, who).get(f"{LB}/{lb_id}")
        assert status == (200 if who in readers else 403), who
        status, body = client(base, who).get(LB)
        assert status == (200 if who in readers else 403), who
    # Another project's member is refused openly, as Octavia does (not a 404).
    assert client(base, "member2").get(f"{LB}/{lb_id}")[0] == 403
    assert [lb["id"] for lb in client(base, "member2").get(LB)[1]["loadbalancers"]] == []
    # Global observers see every project's; a project's observer sees its own.
    assert lb_id in [lb["id"] for lb in client(base, "global_observer").get(LB)[1]["loadbalancers"]]
    writers = {"member", "lb_member", "lb_admin", "admin"}
    for who in ROLES:
        status, body = client(base, who).put(f"{LB}/{lb_id}", {"loadbalancer": {"description": who}})
        assert status == (200 if who in writers else 403), (who, body)
        if status == 200:
            wait_for(lambda: client(base, "admin").get(f"{LB}/{lb_id}")[1]["loadbalancer"]["provisioning_status"]
                     == "ACTIVE")
    # Creating for another project needs an admin.
    status, _ = client(base, "member").post(LB, {"loadbalancer": {"vip_subnet_id": "public-subnet",
                                                                  "project_id": "p2"}})
    assert status == 403


def test_quota_and_operator_endpoints(base: str) -> None:
    quota = {"quota": {"loadbalancer": 5}}
    for who, allowed in (("member", False), ("quota_admin", True), ("lb_admin", True), ("global_observer", False)):
        assert client(base, who).put("/v2/lbaas/quotas/p2", quota)[0] == (202 if allowed else 403), who
    for who, allowed in (("member", False), ("observer", False), ("global_observer", False), ("lb_admin", True),
                         ("admin", True)):
        assert client(base, who).get("/v2/octavia/amphorae")[0] == (200 if allowed else 403), who
        assert client(base, who).get("/v2/lbaas/flavorprofiles")[0] == (200 if allowed else 403), who
        status, _ = client(base, who).get("/v2/lbaas/providers/amphora/flavor_capabilities")
        assert status == (200 if allowed else 403), who
    assert client(base, "reader").get("/v2/lbaas/providers")[0] == 200
    assert client(base, "nobody").get("/v2/lbaas/providers")[0] == 403


def test_an_operator_file_overrides_one_rule(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text('"os_load-balancer_api:loadbalancer:get_all": "role:auditor"\n')
    engine = PolicyEngine(policy)
    from cohort.api.policy import Credentials

    auditor = Credentials("p1", None, ("auditor",))
    member = Credentials("p1", None, ("member",))
    assert engine.allows("os_load-balancer_api:loadbalancer:get_all", "p1", auditor)
    assert not engine.allows("os_load-balancer_api:loadbalancer:get_all", "p1", member)
    # The other rules keep their defaults.
    assert engine.allows("os_load-balancer_api:loadbalancer:post", "p1", member)
    assert not engine.allows("os_load-balancer_api:loadbalancer:post", "p1", auditor)
    with pytest.raises(FileNotFoundError):
        PolicyEngine(tmp_path / "missing.yaml")
