"""Who may do what: Octavia's RBAC rules, enforced with oslo.policy, overridable by an operator's file.

The rule *names* are Octavia's (``os_load-balancer_api:loadbalancer:post``, ``load-balancer:read``,
``context_is_admin`` ...), so a policy file written for Octavia, in oslo.policy's YAML or JSON
format, works here unchanged. The defaults grant what Octavia grants out of the box: Keystone's
default roles as its secure-RBAC rules use them (``reader`` and ``member`` in their own project,
``admin`` everywhere) together with Octavia's own roles (``load-balancer_observer``,
``load-balancer_global_observer``, ``load-balancer_member``, ``load-balancer_quota_admin``,
``load-balancer_admin``), which Octavia still honours by default.

Each API endpoint is named by the handler that serves it (``loadbalancers.create``) and mapped
here to its rule, so no route spells a rule name; a handler absent from the map needs no more
than an authenticated caller. Cohort's own operator endpoints (clusters, distributors, BGP)
have rules of the same form that default to ``rule:load-balancer:admin``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from oslo_config import cfg
from oslo_policy import policy as oslo

API = "os_load-balancer_api"

READ = "rule:load-balancer:read"
READ_GLOBAL = "rule:load-balancer:read-global"
WRITE = "rule:load-balancer:write"
ADMIN = "rule:load-balancer:admin"
READ_QUOTA = "rule:load-balancer:read-quota"
READ_QUOTA_GLOBAL = "rule:load-balancer:read-quota-global"
WRITE_QUOTA = "rule:load-balancer:write-quota"

# The building blocks, by Octavia's names. Each role rule grants both Keystone's default role and
# Octavia's older load-balancer_* role, as Octavia does while its new defaults are not enforced.
BASE_RULES: dict[str, str] = {
    "context_is_admin": "role:admin or role:load-balancer_admin",
    "load-balancer:owner": "project_id:%(project_id)s",
    "project-member": "role:member and project_id:%(project_id)s",
    "project-reader": "role:reader and project_id:%(project_id)s",
    "service": "role:service",
    "load-balancer:admin": "is_admin:True or role:admin or role:load-balancer_admin",
    "load-balancer:global_observer": "role:admin or role:load-balancer_global_observer",
    "load-balancer:member_and_owner":
        "rule:project-member or (role:load-balancer_member and rule:load-balancer:owner)",
    "load-balancer:observer_and_owner":
        "rule:project-reader or (role:load-balancer_observer and rule:load-balancer:owner)",
    "load-balancer:quota-admin": "role:admin or role:load-balancer_quota_admin",
    "load-balancer:read": "rule:load-balancer:observer_and_owner or rule:load-balancer:global_observer or "
                          "rule:load-balancer:member_and_owner or rule:load-balancer:admin",
    "load-balancer:read-global": "rule:load-balancer:global_observer or rule:load-balancer:admin",
    "load-balancer:write": "rule:load-balancer:member_and_owner or rule:load-balancer:admin",
    "load-balancer:read-quota": "rule:load-balancer:observer_and_owner or rule:load-balancer:global_observer or "
                                "rule:load-balancer:member_and_owner or rule:load-balancer:quota-admin or "
                                "rule:load-balancer:admin",
    "load-balancer:read-quota-global": "rule:load-balancer:global_observer or rule:load-balancer:quota-admin or "
                                       "rule:load-balancer:admin",
    "load-balancer:write-quota": "rule:load-balancer:quota-admin or rule:load-balancer:admin",
}

_TENANT_CRUD = {"get_all": READ, "get_all-global": READ_GLOBAL, "get_one": READ, "post": WRITE, "put": WRITE,
                "delete": WRITE}


def _api_rules() -> dict[str, str]:
    rules: dict[str, str] = {}
    for obj in ("loadbalancer", "listener", "pool", "member", "healthmonitor", "l7policy", "l7rule"):
        rules.update({f"{API}:{obj}:{action}": check for action, check in _TENANT_CRUD.items()})
    for action in ("get_all", "get_one"):
        rules[f"{API}:member:{action}"] = f"{READ} or rule:service"
    rules.update({f"{API}:loadbalancer:get_stats": READ, f"{API}:loadbalancer:get_status": READ,
                  f"{API}:loadbalancer:put_failover": ADMIN, f"{API}:listener:get_stats": READ})
    rules.update({f"{API}:quota:get_all": READ_QUOTA, f"{API}:quota:get_all-global": READ_QUOTA_GLOBAL,
                  f"{API}:quota:get_one": READ_QUOTA, f"{API}:quota:get_defaults": READ_QUOTA,
                  f"{API}:quota:put": WRITE_QUOTA, f"{API}:quota:delete": WRITE_QUOTA})
    for action in ("get_all", "get_one", "delete", "put_config", "put_failover", "get_stats"):
        rules[f"{API}:amphora:{action}"] = ADMIN
    rules[f"{API}:provider:get_all"] = READ
    rules[f"{API}:provider-flavor:get_all"] = ADMIN
    rules[f"{API}:provider-availability-zone:get_all"] = ADMIN
    for obj in ("flavor", "availability-zone"):
        rules.update({f"{API}:{obj}:get_all": READ, f"{API}:{obj}:get_one": READ})
        rules.update({f"{API}:{obj}:{action}": ADMIN for action in ("post", "put", "delete")})
    for obj in ("flavor-profile", "availability-zone-profile"):
        rules.update({f"{API}:{obj}:{action}": ADMIN for action in ("get_all", "get_one", "post", "put", "delete")})
    # Cohort's own operator resources.
    for obj in ("cluster", "distributor", "bgp-speaker", "bgp-peer"):
        rules.update({f"{API}:{obj}:{action}": ADMIN for action in ("get_all", "get_one", "post", "put", "delete")})
    return rules


DEFAULT_RULES: dict[str, str] = {**BASE_RULES, **_api_rules()}


def _crud(module: str, obj: str, names: Iterable[tuple[str, str]]) -> dict[str, str]:
    return {f"{module}.{handler}": f"{API}:{obj}:{action}" for handler, action in names}


_STANDARD = (("create", "post"), ("list_", "get_all"), ("show", "get_one"), ("update", "put"), ("delete", "delete"))

# Handler (``<routes module>.<function>``) -> the rule that guards it.
ENDPOINT_RULES: dict[str, str] = {
    **_crud("loadbalancers", "loadbalancer", (*_STANDARD, ("status_tree", "get_status"), ("stats", "get_stats"),
                                              ("failover", "put_failover"))),
    **_crud("listeners", "listener", (*_STANDARD, ("stats", "get_stats"))),
    **_crud("pools", "pool", _STANDARD),
    **_crud("members", "member", (*_STANDARD, ("batch_update", "put"))),
    **_crud("healthmonitors", "healthmonitor", _STANDARD),
    **_crud("l7", "l7policy", (("create_policy", "post"), ("list_policies", "get_all"), ("show_policy", "get_one"),
                               ("update_policy", "put"), ("delete_policy", "delete"))),
    **_crud("l7", "l7rule", (("create_rule", "post"), ("list_rules", "get_all"), ("show_rule", "get_one"),
                             ("update_rule", "put"), ("delete_rule", "delete"))),
    **_crud("quotas", "quota", (("list_quotas", "get_all"), ("defaults", "get_defaults"), ("show", "get_one"),
                                ("update", "put"), ("reset", "delete"))),
    **_crud("catalog", "provider", (("providers", "get_all"),)),
    **_crud("catalog", "provider-flavor", (("flavor_capabilities", "get_all"),)),
    **_crud("catalog", "provider-availability-zone", (("az_capabilities", "get_all"),)),
    **_crud("catalog", "flavor-profile", (("create_flavor_profile", "post"), ("list_flavor_profiles", "get_all"),
                                          ("show_flavor_profile", "get_one"), ("update_flavor_profile", "put"),
                                          ("delete_flavor_profile", "delete"))),
    **_crud("catalog", "flavor", (("create_flavor", "post"), ("list_flavors", "get_all"), ("show_flavor", "get_one"),
                                  ("update_flavor", "put"), ("delete_flavor", "delete"))),
    **_crud("catalog", "availability-zone-profile", (("create_az_profile", "post"), ("list_az_profiles", "get_all"),
                                                     ("show_az_profile", "get_one"), ("update_az_profile", "put"),
                                                     ("delete_az_profile", "delete"))),
    **_crud("catalog", "availability-zone", (("create_az", "post"), ("list_azs", "get_all"), ("show_az", "get_one"),
                                             ("update_az", "put"), ("delete_az", "delete"))),
    **_crud("admin", "amphora", (("list_amphorae", "get_all"), ("show_amphora", "get_one"),
                                 ("amphora_stats", "get_stats"), ("amphora_config", "put_config"),
                                 ("amphora_failover", "put_failover"))),
    **_crud("admin", "cluster", (("list_clusters", "get_all"), ("show_cluster", "get_one"),
                                 ("update_cluster", "put"))),
    **_crud("admin", "distributor", (("list_distributors", "get_all"), ("show_distributor", "get_one"))),
    **_crud("admin", "bgp-speaker", (("create_speaker", "post"), ("list_speakers", "get_all"),
                                     ("show_speaker", "get_one"), ("update_speaker", "put"),
                                     ("delete_speaker", "delete"))),
    **_crud("admin", "bgp-peer", (("create_peer", "post"), ("list_peers", "get_all"), ("show_peer", "get_one"),
                                  ("update_peer", "put"), ("delete_peer", "delete"))),
}

ROUTES_PACKAGE = "cohort.api.routes."


def endpoint_rule(module: str, name: str) -> str | None:
    """The rule guarding the handler ``name`` of the module ``module`` (None: authentication suffices)."""
    if not module.startswith(ROUTES_PACKAGE):
        return None
    return ENDPOINT_RULES.get(f"{module.removeprefix(ROUTES_PACKAGE)}.{name}")


@dataclass(frozen=True)
class Credentials:
    """What a rule may look at about the caller (oslo.policy's ``creds``)."""

    project_id: str
    user_id: str | None
    roles: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"project_id": self.project_id, "tenant": self.project_id, "user_id": self.user_id,
                "roles": [role.lower() for role in self.roles], "is_admin": False}


class PolicyEngine:
    """Cohort's defaults under the operator's policy file (if any), read again when the file changes.

    The file is read here, not found through oslo.config's search path, so that no stray
    ``/etc/cohort/policy.yaml`` can change the rules of a process that was given none.
    """

    def __init__(self, policy_file: Path | None = None) -> None:
        # A file given but missing is an operator's mistake, not a reason to run on the defaults.
        if policy_file is not None and not policy_file.is_file():
            raise FileNotFoundError(f"policy file {policy_file} does not exist")
        conf = cfg.ConfigOpts()
        conf([], project="cohort", default_config_files=[], default_config_dirs=[])
        self._enforcer = oslo.Enforcer(conf, use_conf=False)
        self._enforcer.register_defaults([oslo.RuleDefault(name, check) for name, check in DEFAULT_RULES.items()])
        self._policy_file = policy_file
        self._loaded: float | None = None
        self._lock = threading.Lock()
        self._load()

    def _load(self) -> None:
        rules = dict(DEFAULT_RULES)
        if self._policy_file is not None:
            self._loaded = self._policy_file.stat().st_mtime
            rules.update(oslo.parse_file_contents(self._policy_file.read_text()) or {})
        self._enforcer.set_rules(oslo.Rules.from_dict(rules), overwrite=True, use_conf=False)

    def allows(self, rule: str, target_project: str, creds: Credentials) -> bool:
        target = {"project_id": target_project, "tenant_id": target_project}
        with self._lock:
            if self._policy_file is not None and self._policy_file.stat().st_mtime != self._loaded:
                self._load()
            return bool(self._enforcer.enforce(rule, target, creds.as_dict(), do_raise=False))

    def rule_names(self) -> list[str]:
        with self._lock:
            return sorted(self._enforcer.rules)


_ENGINES: dict[Path | None, PolicyEngine] = {}
_ENGINES_LOCK = threading.Lock()


def engine(policy_file: Path | None) -> PolicyEngine:
    """One engine per policy file per process."""
    with _ENGINES_LOCK:
        found = _ENGINES.get(policy_file)
        if found is None:
            found = _ENGINES[policy_file] = PolicyEngine(policy_file)
        return found
