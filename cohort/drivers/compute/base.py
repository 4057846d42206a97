"""The compute seam: build, delete and watch the host of an amphora or a distributor."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from cohort.drivers.errors import PermanentDriverError

KINDS = ("amphora", "distributor")


@dataclass(frozen=True)
class ComputeInstance:
    compute_id: str
    lb_network_ip: str  # management address where its agent listens
    status: str  # BUILDING | ACTIVE | ERROR | DELETED


def parse_flavor(flavor: dict[str, Any]) -> tuple[float | None, int | None]:
    """(cpu fraction, memory MiB) from a compute flavor; PermanentDriverError on nonsense."""
    cpu, memory = flavor.get("cpu"), flavor.get("memory_mb")
    try:
        cpu_f = None if cpu is None else float(cpu)
        mem_i = None if memory is None else int(memory)
    except (TypeError, ValueError) as exc:
        raise PermanentDriverError(f"bad compute flavor {flavor!r}") from exc
    if (cpu_f is not None and not 0 < cpu_f <= 64) or (mem_i is not None and mem_i < 16):
        raise PermanentDriverError(f"bad compute flavor {flavor!r}: cpu in (0, 64], memory_mb >= 16")
    return cpu_f, mem_i


class ComputeDriver(Protocol):
    def build(self, instance_id: str, kind: str, compute_flavor: dict[str, Any]) -> ComputeInstance:
        """Create (or find, if it exists) the host named after ``instance_id``.

        ``kind`` is ``amphora`` or ``distributor``. Idempotent: building twice returns the same one.
        """
        ...

    def delete(self, compute_id: str) -> None:
        """Remove the host and everything in it; a missing host is not an error."""
        ...

    def status(self, compute_id: str) -> str:
        """BUILDING, ACTIVE, ERROR (a process died) or DELETED."""
        ...
