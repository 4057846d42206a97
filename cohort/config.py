"""Cohort's one typed settings object: defaults, an optional TOML file, then COHORT_* variables.

Precedence (lowest first): built-in defaults, ``cohort.toml`` (path from ``--config`` or
``COHORT_CONFIG``), environment variables ``COHORT_<FIELD>`` for scalar fields.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

Topology = Literal["SINGLE", "ACTIVE_STANDBY", "ACTIVE_ACTIVE"]


class TokenEntry(BaseModel):
    """A static API token of the ``token`` auth strategy."""

    project_id: str
    roles: list[str] = Field(default_factory=lambda: ["member"])


class QuotaDefaults(BaseModel):
    """Per-project defaults; -1 means unlimited, as in Octavia."""

    loadbalancer: int = -1
    listener: int = -1
    member: int = -1
    pool: int = -1
    healthmonitor: int = -1
    l7policy: int = -1
    l7rule: int = -1


def _default_state_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/cohort")
    return Path.home() / ".local" / "state" / "cohort"


class Settings(BaseModel):
    state_dir: Path = Field(default_factory=_default_state_dir)
    database_url: str | None = None
    api_host: str = "127.0.0.1"
    api_port: int = 9876
    # API processes sharing the port; more than one uses more cores (the controller stays one).
    api_workers: int = Field(default=1, ge=1, le=64)
    # Cache load balancer show/list answers, validated against the database (SQLite only).
    api_response_cache: bool = True
    auth_strategy: Literal["noauth", "token", "keystone"] = "noauth"
    tokens: dict[str, TokenEntry] = Field(default_factory=dict)
    noauth_project_id: str = "admin"
    # keystone: the v3 endpoint tokens are validated against, and (optionally) the service user that
    # validates them; without one, each token is presented to Keystone by itself.
    keystone_auth_url: str = ""
    keystone_username: str = ""
    keystone_password: str = ""
    keystone_project_name: str = "service"
    keystone_user_domain_name: str = "Default"
    keystone_project_domain_name: str = "Default"
    keystone_cache_seconds: float = Field(default=300.0, ge=0)
    keystone_timeout: float = Field(default=10.0, gt=0)
    # Octavia's RBAC rules: always under keystone, on request under the other strategies. The
    # file (oslo.policy YAML or JSON, e.g. an Octavia policy.yaml) overrides the defaults rule by rule.
    enforce_policy: bool = False
    policy_file: Path | None = None
    # A shorthand for the four seams below: "noop" builds nothing, "local" the local lab.
    drivers: Literal["noop", "local"] = "noop"
    # Each seam's driver by name; unset takes the shorthand's (noop: noop; local: lab, lab, rest, rest).
    compute_driver: Literal["noop", "lab"] | None = None
    network_driver: Literal["noop", "lab"] | None = None
    amphora_driver: Literal["noop", "rest"] | None = None
    distributor_driver: Literal["noop", "rest"] | None = None
    # Noop drivers only (tests): seconds each noop compute build or delete and each noop amphora
    # wait or update takes, so a controller can be killed in the middle of one; 0 is instant.
    noop_delay: float = Field(default=0.0, ge=0, le=60)
    # Noop compute only: keep its instances in the state directory (``Layout.noop_compute``) instead
    # of in memory, so several controller processes sharing that directory see the same instances.
    noop_shared_state: bool = False
    default_topology: Topology = "SINGLE"
    default_provider: str = "amphora"
    quotas: QuotaDefaults = Field(default_factory=QuotaDefaults)
    reconcile_interval: float = 0.1
    reconcile_workers: int = 4
    reconcile_timeout: float = 600.0
    # How long a controller's claim on a load balancer lasts unless renewed (every third of it while
    # its pass runs): the longest a killed controller's work waits before another controller takes it.
    # 3 s: in the chaos benchmark a killed controller's replacement pass waited 5 s for its lease and
    # the cluster was whole again after 9.6-11.6 s; no lease was ever lost to a slow renewal there.
    reconcile_lease: float = Field(default=3.0, ge=0.1, le=600)
    heartbeat_bind: str = ""  # empty: the lab's host-side management address, port 5555
    heartbeat_key: str = ""
    heartbeat_interval: float = 1.0
    heartbeat_stale_after: float = 5.0
    # A distributor serves every L2 load balancer: it is declared failed (and rebuilt) sooner.
    distributor_stale_after: float = Field(default=3.0, gt=0)
    # An L2 amphora that every live distributor's probes have found down this long (its front-end link
    # is down while it still heartbeats over management) is replaced like a silent one. Longer than a
    # HAProxy restart (0.2 s) or a heartbeat interval, so neither triggers it.
    frontend_unreachable_after: float = Field(default=3.0, gt=0)
    # An L3 amphora whose BGP sessions have been down this long while other amphorae reach those
    # routers is replaced like a silent one. Its route left the router within BFD's detection time;
    # this only decides when N+1 is restored. Longer than a session's return after a BFD blip: BIRD
    # waits 1 s after an error (2 s when errors follow each other), BFD's slow start sends one packet
    # a second until it is up, and BGP connects 1 s later (a 0.5 s blip: back after 2.3-4.3 s).
    # At 3 s, repeated blips replaced a healthy amphora and broke its connections.
    bgp_sessions_down_after: float = Field(default=10.0, gt=0)
    # VRRP advertisement interval of the distributor pair (VRRPv3: 10 ms units); a silent MASTER is
    # replaced by its BACKUP after about three intervals (0.13-0.16 s at 0.05 here).
    distributor_advert_int: float = Field(default=0.05, ge=0.01, le=1.0)
    agent_port: int = 9443
    # Amphorae booted ahead of need (Octavia's spare pool): a failover or a new amphora takes one
    # instead of booting, when it asks for the spares' compute flavor.
    spare_amphora_pool_size: int = Field(default=0, ge=0, le=100)
    spare_amphora_compute_flavor: dict[str, Any] = Field(default_factory=dict)
    # A distributor booted ahead of need for each type with a pair: a failed member is replaced by it
    # at once instead of by a new build (cohort.controller.distributor_spares).
    distributor_spare: bool = False
    drain_timeout: float = 30.0
    lab_prefix: str = "cohort"
    # The BGP speaker (id) of L3_BGP flavors that name none; empty: such a flavor is refused.
    default_bgp_speaker_id: str = ""
    # Seconds between an L3 amphora's withdrawal and its drain: the routers' time to drop its route.
    bgp_withdraw_grace: float = Field(default=1.0, ge=0, le=60)
    api_max_page: int = 1000
    # Largest request body accepted (413 beyond): a 1 MB secret payload or a batch of thousands of
    # members fits; nothing larger is ever buffered.
    api_max_body_bytes: int = Field(default=2 * 1024 * 1024, ge=64 * 1024)

    @field_validator("state_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    def seam_drivers(self) -> dict[str, str]:
        """The driver name of each seam (compute, network, amphora, distributor)."""
        local = self.drivers == "local"
        return {
            "compute": self.compute_driver or ("lab" if local else "noop"),
            "network": self.network_driver or ("lab" if local else "noop"),
            "amphora": self.amphora_driver or ("rest" if local else "noop"),
            "distributor": self.distributor_driver or ("rest" if local else "noop"),
        }

    @property
    def db_url(self) -> str:
        from cohort.layout import Layout

        return self.database_url or Layout(self.state_dir).database_url

    @property
    def secrets_key_file(self) -> Path:
        """The Fernet key that encrypts tenants' TLS material and operators' BGP passwords at rest."""
        from cohort.layout import Layout

        return Layout(self.state_dir).secrets_key


_SCALAR_TYPES = (str, int, float, bool, Path)


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build Settings from the TOML file, the environment and explicit overrides."""
    data: dict[str, Any] = {}
    path = config_file or (Path(os.environ["COHORT_CONFIG"]) if "COHORT_CONFIG" in os.environ else None)
    if path is not None:
        with path.open("rb") as handle:
            data.update(tomllib.load(handle))
    for name in Settings.model_fields:
        env_value = os.environ.get(f"COHORT_{name.upper()}")
        if env_value is not None:
            data[name] = env_value
    data.update({key: value for key, value in overrides.items() if value is not None})
    return Settings.model_validate(data)
