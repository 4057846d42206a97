"""In-memory compute for unit tests: instances that exist only as records, with the local semantics.

compute_ids and management addresses follow the local driver's shape (``cohort-a-1a2b3c4d``,
198.18.0.10 up), build is idempotent, delete of a missing instance is fine, and
:meth:`NoopComputeDriver.crash` lets a test make an instance fail as a dead agent would.

With a ``state_file`` the records live in that file (JSON, replaced atomically under an
``flock``) instead of in this process: controllers in separate processes then see one set of
instances, as they would see one cloud, and none takes the other's instances for deleted ones.
``delay`` makes builds and deletes take that long (the instance exists from the start of its
build), so a test can kill a controller in the middle of one.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
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
    def __init__(self, prefix: str = "cohort", mgmt_cidr: str = DEFAULT_MGMT_CIDR, delay: float = 0.0,
                 state_file: Path | None = None) -> None:
        self.prefix = prefix
        self.mgmt_cidr = mgmt_cidr
        self.delay = delay
        self.state_file = state_file
        self.instances: dict[str, _Instance] = {}  # by compute_id (with a state file: as last read)
        self.calls: list[tuple[str, str]] = []  # (verb, compute_id), for tests asserting on calls
        self._lock = threading.Lock()

    @contextmanager
    def _records(self) -> Iterator[dict[str, _Instance]]:
        """The instances, held against other threads (and, with a state file, other processes)."""
        with self._lock:
            if self.state_file is None:
                yield self.instances
                return
            self.state_file.parent.mkdir(parents=True, exist_ok=True)
            with self.state_file.with_suffix(".lock").open("a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                self.instances = read_state(self.state_file)
                before = _dump(self.instances)
                yield self.instances
                after = _dump(self.instances)
                if after != before:
                    temporary = self.state_file.with_suffix(".tmp")
                    temporary.write_text(after)
                    os.replace(temporary, self.state_file)

    def build(self, instance_id: str, kind: str, compute_flavor: dict[str, Any]) -> ComputeInstance:
        if kind not in KINDS:
            raise PermanentDriverError(f"unknown instance kind {kind!r}")
        parse_flavor(compute_flavor)
        hexid = instance_id.replace("-", "").lower()[:8]
        compute_id = f"{self.prefix}-{'d' if kind == 'distributor' else 'a'}-{hexid}"
        with self._records() as instances:
            self.calls.append(("build", compute_id))
            inst = instances.get(compute_id)
            if inst is None:
                taken = {i.mgmt_ip for i in instances.values()}
                ip = pick_address(self.mgmt_cidr, taken, *MGMT_RANGE)
                inst = _Instance(instance_id, kind, compute_id, ip, flavor=dict(compute_flavor))
                instances[compute_id] = inst
            elif inst.instance_id != instance_id:
                raise PermanentDriverError(f"instance {instance_id} would reuse {compute_id}")
            found = ComputeInstance(compute_id, inst.mgmt_ip, inst.status)
        time.sleep(self.delay)
        return found

    def delete(self, compute_id: str) -> None:
        time.sleep(self.delay)
        with self._records() as instances:
            self.calls.append(("delete", compute_id))
            instances.pop(compute_id, None)

    def status(self, compute_id: str) -> str:
        with self._records() as instances:
            inst = instances.get(compute_id)
            return "DELETED" if inst is None else inst.status

    def crash(self, compute_id: str) -> None:
        """Make the instance look as if its agent died (status ERROR)."""
        with self._records() as instances:
            instances[compute_id].status = "ERROR"


def _dump(instances: dict[str, _Instance]) -> str:
    return json.dumps({compute_id: asdict(inst) for compute_id, inst in instances.items()}, sort_keys=True)


def read_state(path: Path) -> dict[str, _Instance]:
    """The instances recorded in a state file (none if there is no file yet)."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    return {compute_id: _Instance(**record) for compute_id, record in data.items()}
