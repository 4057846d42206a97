"""Every path Cohort uses, derived from the settings' state directory: the one owner of the layout.

Commands, the controller, the drivers, the demo, the tests and the benchmarks ask a
:class:`Layout` where things live instead of joining paths themselves, so that two parts can
never disagree about where a file is (the lab's address book was once kept in two places).
The agents are the exception by design: they learn their own directory from their command
line (``--state-dir``), which the compute driver takes from here.

::

    {state_dir}/                    0700, see cohort.statedir
      cohort.db                     SQLite (when no database URL is configured)
      secrets.key                   Fernet key of secrets at rest
      heartbeat.key                 master key of the heartbeat HMACs (never leaves the controller)
      heartbeat/{kind}-{id}.key     each agent's own derived key
      pki/                          Cohort's CA, server and client certificates
      reconciler.sock               API processes wake the controller here
      cohort.pid, cohort.log        a detached ``cohort up``
      lab/                          the lab's state, address book and member logs
      noop-compute.json             the noop compute driver's instances, if shared (noop_shared_state)
      instances/{id}/agent.log      each amphora's or distributor's agent log
      i/{8 hex of id}/              an agent's state directory (the amphora's jail inside)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cohort.config import Settings


@dataclass(frozen=True)
class Layout:
    state_dir: Path

    @classmethod
    def of(cls, settings: Settings) -> Layout:
        return cls(settings.state_dir)

    @property
    def database(self) -> Path:
        return self.state_dir / "cohort.db"

    @property
    def database_url(self) -> str:
        return f"sqlite:///{self.database}"

    @property
    def secrets_key(self) -> Path:
        return self.state_dir / "secrets.key"

    @property
    def heartbeat_key(self) -> Path:
        return self.state_dir / "heartbeat.key"

    @property
    def agent_keys_dir(self) -> Path:
        return self.state_dir / "heartbeat"

    def agent_heartbeat_key(self, kind: str, agent_id: str) -> Path:
        return self.agent_keys_dir / f"{kind}-{agent_id}.key"

    @property
    def pki_dir(self) -> Path:
        return self.state_dir / "pki"

    @property
    def wake_socket(self) -> Path:
        return self.state_dir / "reconciler.sock"

    @property
    def pid_file(self) -> Path:
        return self.state_dir / "cohort.pid"

    @property
    def log_file(self) -> Path:
        return self.state_dir / "cohort.log"

    @property
    def lab_dir(self) -> Path:
        return self.state_dir / "lab"

    @property
    def noop_compute(self) -> Path:
        """The noop compute driver's instances when ``noop_shared_state`` is set (flock'ed JSON)."""
        return self.state_dir / "noop-compute.json"

    @property
    def instances_dir(self) -> Path:
        return self.state_dir / "instances"

    def instance_log(self, instance_id: str) -> Path:
        return self.instances_dir / instance_id / "agent.log"

    @property
    def agents_dir(self) -> Path:
        return self.state_dir / "i"

    def agent_state_dir(self, instance_id: str) -> Path:
        # Short on purpose: unix socket names below it must fit in 108 bytes.
        return self.agents_dir / instance_id.replace("-", "")[:8]

    def amphora_jail(self, instance_id: str) -> Path:
        """The directory an amphora's HAProxy and keepalived are chrooted in (cohort.agents.common.jail)."""
        return self.agent_state_dir(instance_id) / "jail"

    def amphora_haproxy_dir(self, instance_id: str) -> Path:
        return self.amphora_jail(instance_id) / "haproxy"
