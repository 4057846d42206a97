"""Drivers.destroy_instance: the instance goes before its ports, so its processes stop with their links up."""

from __future__ import annotations

from typing import Any

from cohort.controller.wiring import Drivers


class Recorder:
    def __init__(self, calls: list[str], kind: str) -> None:
        self.calls, self.kind = calls, kind

    def delete(self, compute_id: str) -> None:
        self.calls.append(f"{self.kind}.delete {compute_id}")

    def unplug_all(self, compute_id: str) -> None:
        self.calls.append(f"{self.kind}.unplug_all {compute_id}")


def test_the_instance_is_deleted_before_its_ports_are_unplugged() -> None:
    calls: list[str] = []
    unused: Any = None
    drivers = Drivers(compute=Recorder(calls, "compute"), network=Recorder(calls, "network"),  # type: ignore[arg-type]
                      amphora=unused, distributor=unused)
    drivers.destroy_instance("c1")
    # A speaker stopped after its link went could not send its Cease: the router would keep its route.
    assert calls == ["compute.delete c1", "network.unplug_all c1"]
