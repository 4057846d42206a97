"""The ``lab`` compute driver: an amphora or distributor is an instance of the local lab.

A thin adapter over :class:`cohort.lab.instances.LabInstances` (namespace, cgroup, agent
process, jail uid): it reads the compute flavor, names the agent's log and command line, maps
the lab's errors onto the driver's (``LabNotReady`` is retryable, other ``LabError`` permanent)
and, when an instance is deleted, removes what the controller made for it (its agent state
directory with the amphora's jail, its heartbeat key).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from typing import Any

from cohort.drivers.compute.base import ComputeInstance, parse_flavor
from cohort.drivers.errors import DriverError, PermanentDriverError
from cohort.lab import Lab, LabError, LabNotReady
from cohort.layout import Layout

# (instance id, kind, management address, jail uid) -> the agent's command line
AgentCommand = Callable[[str, str, str, int], list[str]]


class LabComputeDriver:
    def __init__(self, lab: Lab, agent_command: AgentCommand, layout: Layout) -> None:
        self.lab = lab
        self.agent_command = agent_command
        self.layout = layout

    def build(self, instance_id: str, kind: str, compute_flavor: dict[str, Any]) -> ComputeInstance:
        cpu, memory_mb = parse_flavor(compute_flavor)
        try:
            inst = self.lab.instances.build(
                instance_id, kind, cpu, memory_mb,
                lambda mgmt_ip, uid: self.agent_command(instance_id, kind, mgmt_ip, uid),
                self.layout.instance_log(instance_id),
            )
        except LabNotReady as exc:
            raise DriverError(str(exc)) from exc
        except LabError as exc:
            raise PermanentDriverError(str(exc)) from exc
        return ComputeInstance(inst.compute_id, inst.mgmt_ip, inst.status)

    def status(self, compute_id: str) -> str:
        return self.lab.instances.status(compute_id)

    def agent_pid(self, compute_id: str) -> int | None:
        return self.lab.instances.agent_pid(compute_id)

    def delete(self, compute_id: str) -> None:
        instance_id = self.lab.instances.instance_id(compute_id)
        self.lab.instances.delete(compute_id)
        if instance_id is not None:
            shutil.rmtree(self.layout.agent_state_dir(instance_id), ignore_errors=True)
            for kind in ("amphora", "distributor"):
                self.layout.agent_heartbeat_key(kind, instance_id).unlink(missing_ok=True)
