"""An amphora whose instance failed is stopped as its replacement's pass begins, not once the replacement
serves; its addresses are freed only once no distributor lists it."""

from __future__ import annotations

from typing import Any

import pytest

from cohort.config import Settings
from cohort.controller.failover import FailoverWatcher
from cohort.controller.reconciler import Reconciler
from tests.unit.test_reachability import cluster
from tests.unit.test_reconciler import amphorae

__all__ = ["cluster"]  # the fixture: an L2 ACTIVE_ACTIVE cluster of three amphorae, noop drivers


def test_a_failed_instance_is_stopped_at_once_and_its_ports_freed_only_once_unregistered(
        cluster: tuple[Settings, Any, Any, str], monkeypatch: pytest.MonkeyPatch) -> None:
    settings, sessions, drivers, lb_id = cluster
    victim = amphorae(sessions, lb_id)[0]
    assert victim.compute_id is not None
    drivers.compute.crash(victim.compute_id)  # its agent died; whatever outlived it must not go on
    assert FailoverWatcher(settings, sessions, drivers, on_change=lambda: None).scan_amphorae() == 1
    events: list[str] = []
    ports = len(drivers.network.ports_of(victim.compute_id))
    assert ports > 0

    def recording(name: str, real: Any, note: Any) -> Any:
        def call(*args: Any) -> Any:
            events.append(note(*args))
            return real(*args)
        monkeypatch.setattr(getattr(drivers, name), real.__name__, call)
        return call

    recording("compute", drivers.compute.delete, lambda compute_id: f"delete {compute_id}")
    recording("network", drivers.network.unplug_all, lambda compute_id: f"unplug {compute_id}")
    recording("distributor", drivers.distributor.set_amphorae, lambda _ref, _lb, members: "register " + (
        "with the victim" if victim.id in {m.amphora_id for m in members} else
        f"without it, its ports {len(drivers.network.ports_of(victim.compute_id))}"))
    Reconciler(settings, sessions, drivers, owner="c1").run_until_idle()
    # Stopped by the pass that replaces it, first thing; its ports outlive every registration.
    assert events[0] == f"delete {victim.compute_id}", events
    registrations = [e for e in events if e.startswith("register")]
    assert registrations and set(registrations) == {f"register without it, its ports {ports}"}, events
    last_registration = max(i for i, e in enumerate(events) if e.startswith("register"))
    assert events.index(f"unplug {victim.compute_id}") > last_registration, events
    assert drivers.network.ports_of(victim.compute_id) == []
    after = amphorae(sessions, lb_id)
    assert len(after) == 3 and victim.id not in {a.id for a in after}
    assert {a.status for a in after} == {"ALLOCATED"}
