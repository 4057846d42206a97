"""In-memory compute for unit tests: instances that exist only as records, with the local semantics.

compute_ids and management addresses follow the local driver's shape (``cohort-a-1a2b3c4d``,
198.18.0.10 up), build is idempotent, delete of a missing instance is fine, and
:meth:`NoopComputeDriver.crash` lets a test make an instance fail as a dead agent would.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from cohort.drivers.compute.base import KINDS, ComputeInstance, parse_flavor
from cohort.drivers.errors import PermanentDriverError
from cohort.netplan import DEFAULT_MGMT_CIDR, MGMT_RANGE, pick_address


@dataclass
class _Instance:
    instance_id: str
    kind: str
    compute_id: str
    mgmt_ip: str
    status: str = "ACTIVE"
    flavor: dict[str, Any] = field(default_factory=dict)


class NoopComputeDriver:
    def __init__(self, prefix: str = "cohort", mgmt_cidr: str = DEFAULT_MGMT_CIDR) -> None:
        self.prefix = prefix
        self.mgmt_cidr = mgmt_cidr
        self.instances: dict[str, _Instance] = {}  # by compute_id
        self.calls: list[tuple[str, str]] = []  # (verb, compute_id), for tests asserting on calls
        self._lock = threading.Lock()

    def build(self, instance_id: str, kind: str, compute_flavor: dict[str, Any]) -> ComputeInstance:
        if kind not in KINDS:
            raise PermanentDriverError(f"unknown instance kind {kind!r}")
        parse_flavor(compute_flavor)
        hexid = instance_id.replace("-", "").lower()[:8]
        compute_id = f"{self.prefix}-{'d' if kind == 'distributor' else 'a'}-{hexid}"
        with self._lock:
            self.calls.append(("build", compute_id))
            inst = self.instances.get(compute_id)
            if inst is None:
                taken = {i.mgmt_ip for i in self.instances.values()}
                ip = pick_address(self.mgmt_cidr, taken, *MGMT_RANGE)
                inst = _Instance(instance_id, kind, compute_id, ip, flavor=dict(compute_flavor))
                self.instances[compute_id] = inst
            elif inst.instance_id != instance_id:
                raise PermanentDriverError(f"instance {instance_id} would reuse {compute_id}")
            return ComputeInstance(compute_id, inst.mgmt_ip, inst.status)

    def delete(self, compute_id: str) -> None:
        with self._lock:
            self.calls.append(("delete", compute_id))
            self.instances.pop(compute_id, None)

    def status(self, compute_id: str) -> str:
        with self._lock:
            inst = self.instances.get(compute_id)
            return "DELETED" if inst is None else inst.status

    def crash(self, compute_id: str) -> None:
        """Make the instance look as if its agent died (status ERROR)."""
        with self._lock:
            self.instances[compute_id].status = "ERROR"
