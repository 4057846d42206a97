"""The compute seam: build, delete and watch the host of an amphora or a distributor."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class ComputeInstance:
    compute_id: str
    lb_network_ip: str  # management address where its agent listens
    status: str  # BUILDING | ACTIVE | ERROR | DELETED


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
