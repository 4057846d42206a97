"""Keystone authentication and Octavia's default RBAC, through the ``openstack`` CLI with real tokens.

A real Keystone (tests/keystone/lab.py) issues the tokens; Cohort validates them against it
and enforces its default policy. Each role's allowed and forbidden calls are checked with the
same commands an operator or tenant types.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from cohort.api import keystone as cohort_keystone_module
from cohort.config import Settings
from tests.keystone.lab import KeystoneLab

OPENSTACK = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "openstack"
PASSWORD = "cohort-rbac-test"
PROJECT, OTHER = "lbproj", "otherproj"
ROLES = {
    "reader": ["reader"],
    "member": ["member"],
    "lb_member": ["load-balancer_member"],
    "observer": ["load-balancer_observer"],
    "global_observer": ["load-balancer_global_observer"],
    "quota_admin": ["load-balancer_quota_admin"],
    "lb_admin": ["load-balancer_admin"],
    "admin": ["admin"],
    "nobody": ["unrelated"],
}
READERS = {"reader", "member", "lb_member", "observer", "global_observer", "lb_admin", "admin"}
WRITERS = {"member", "lb_member", "lb_admin", "admin"}
QUOTA_WRITERS = {"quota_admin", "lb_admin", "admin"}
OPERATORS = {"lb_admin", "admin"}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def users(keystone: KeystoneLab, cohort_keystone: str) -> dict[str, dict[str, str]]:
    made: dict[str, dict[str, str]] = {}
    for who, roles in ROLES.items():
        keystone.user(f"rbac-{who}", PASSWORD, PROJECT, roles)
        made[who] = {"user": f"rbac-{who}", "project": PROJECT}
    keystone.user("rbac-member2", PASSWORD, OTHER, ["member"])
    made["member2"] = {"user": "rbac-member2", "project": OTHER}
    return made


def cli(keystone: KeystoneLab, user: dict[str, str], *args: str) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    env.update(OS_AUTH_URL=keystone.url, OS_IDENTITY_API_VERSION="3", OS_USERNAME=user["user"],
               OS_PASSWORD=PASSWORD, OS_PROJECT_NAME=user["project"], OS_USER_DOMAIN_ID="default",
               OS_PROJECT_DOMAIN_ID="default", OS_REGION_NAME="RegionOne", OS_INTERFACE="public")
    done = subprocess.run([str(OPENSTACK), *args], capture_output=True, text=True, env=env, timeout=120)
    return done.returncode, done.stdout + done.stderr


def forbidden(output: str) -> bool:
    return "403" in output or "Policy does not allow" in output


def create_lb(keystone: KeystoneLab, user: dict[str, str], name: str) -> tuple[int, Any]:
    code, out = cli(keystone, user, "loadbalancer", "create", "--name", name, "--vip-subnet-id", "public-subnet",
                    "-f", "json")
    return code, (json.loads(out[out.index("{"):]) if code == 0 else out)


def test_tokens_are_validated_and_cached(keystone: KeystoneLab, cohort_keystone: str,
                                         users: dict[str, dict[str, str]]) -> None:
    lbs = f"{cohort_keystone}/v2/lbaas/loadbalancers"
    assert httpx.get(lbs, timeout=30).status_code == 401
    bad = httpx.get(lbs, headers={"X-Auth-Token": "gAAAAAnot-a-token"}, timeout=30)
    assert bad.status_code == 401 and bad.json()["faultcode"] == "Client"
    token = keystone.token("rbac-member", PASSWORD, PROJECT)
    validator = cohort_keystone_module.validator(Settings(keystone_auth_url=keystone.url,
                                                          keystone_cache_seconds=60))
    before = validator.validations
    for _ in range(3):
        assert httpx.get(lbs, headers={"X-Auth-Token": token}, timeout=30).status_code == 200
    assert validator.validations == before + 1  # one call to Keystone for three requests
    # The project comes from the token: an X-Project-Id header changes nothing.
    status = httpx.get(lbs, headers={"X-Auth-Token": token, "X-Project-Id": "someone-else"}, timeout=30)
    assert status.status_code == 200


def test_each_role_through_the_cli(keystone: KeystoneLab, cohort_keystone: str,
                                   users: dict[str, dict[str, str]]) -> None:
    code, lb = create_lb(keystone, users["member"], "rbac-web")
    assert code == 0, lb
    project_id = keystone.project(PROJECT)
    assert lb["project_id"] == project_id  # the token's project, not a header's
    for who in ROLES:
        code, out = cli(keystone, users[who], "loadbalancer", "list", "-f", "json")
        if who in READERS:
            assert code == 0, (who, out)
        else:
            assert code != 0 and forbidden(out), (who, out)
    for who in ROLES:
        code, out = create_lb(keystone, users[who], f"rbac-{who}")
        if who in WRITERS:
            assert code == 0, (who, out)
        else:
            assert code != 0 and forbidden(str(out)), (who, out)
    # Another project's load balancer: visible to global observers, forbidden to another project's member.
    code, out = cli(keystone, users["global_observer"], "loadbalancer", "show", lb["id"], "-f", "json")
    assert code == 0, out
    code, out = cli(keystone, users["member2"], "loadbalancer", "show", lb["id"])
    assert code != 0 and (forbidden(out) or "Unable to locate" in out), out
    for who in ("member", "global_observer", "quota_admin", "lb_admin"):
        code, out = cli(keystone, users[who], "loadbalancer", "quota", "set", "--loadbalancer", "50", OTHER)
        if who in QUOTA_WRITERS:
            assert code == 0, (who, out)
        else:
            assert code != 0 and (forbidden(out) or "No project" in out), (who, out)
    for who in ("member", "global_observer", "lb_admin", "admin"):
        code, out = cli(keystone, users[who], "loadbalancer", "amphora", "list", "-f", "json")
        if who in OPERATORS:
            assert code == 0, (who, out)
        else:
            assert code != 0 and forbidden(out), (who, out)
    code, out = cli(keystone, users["observer"], "loadbalancer", "delete", lb["id"])
    assert code != 0 and forbidden(out), out
    code, out = cli(keystone, users["member"], "loadbalancer", "delete", "--wait", lb["id"])
    assert code == 0, out


def test_secrets_through_the_catalogue(keystone: KeystoneLab, cohort_keystone: str,
                                       users: dict[str, dict[str, str]]) -> None:
    """``openstack secret`` finds Cohort as the key-manager; a secret belongs to the token's project."""
    code, out = cli(keystone, users["member"], "secret", "store", "--name", "rbac-secret", "-t", "text/plain",
                    "--payload", "not a certificate", "-f", "json")
    assert code == 0, out
    ref = json.loads(out[out.index("{"):])["Secret href"]
    code, out = cli(keystone, users["member"], "secret", "list", "-f", "json")
    assert code == 0 and ref in out, out
    code, out = cli(keystone, users["member2"], "secret", "get", ref, "-f", "json")
    assert code != 0 and ("404" in out or "Not Found" in out), out  # another project's secret is not there
    code, out = cli(keystone, users["member"], "secret", "delete", ref)
    assert code == 0, out
