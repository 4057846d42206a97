"""An amphora whose instance failed is stopped while its replacement is built, not once it serves; its
addresses are freed only once no distributor lists it."""

from __future__ import annotations

from typing import Any

import pytest

from cohort.config import Settings
from cohort.controller.failover import FailoverWatcher
from cohort.controller.reconciler import Reconciler
from tests.unit.test_reachability import cluster
from tests.unit.test_reconciler import amphorae

__all__ = ["cluster"]  # the fixture: an L2 ACTIVE_ACTIVE cluster of three amphorae, noop drivers


def test_a_failed_instance_is_gone_before_its_replacement_is_configured(
        cluster: tuple[Settings, Any, Any, str], monkeypatch: pytest.MonkeyPatch) -> None:
    settings, sessions, drivers, lb_id = cluster
    victim = amphorae(sessions, lb_id)[0]
    assert victim.compute_id is not None
    drivers.compute.crash(victim.compute_id)  # its agent died; whatever outlived it must not go on
    assert FailoverWatcher(settings, sessions, drivers, on_change=lambda: None).scan_amphorae() == 1
    seen: list[str] = []
    update = drivers.amphora.update

    def recording_update(amphora: Any, *args: Any) -> None:
        seen.append(drivers.compute.status(victim.compute_id))
        update(amphora, *args)

    registered: list[tuple[set[str], int]] = []
    set_amphorae = drivers.distributor.set_amphorae

    def recording_set_amphorae(ref: Any, lb: str, members: list[Any]) -> None:
        registered.append(({m.amphora_id for m in members}, len(drivers.network.ports_of(victim.compute_id))))
        set_amphorae(ref, lb, members)

    monkeypatch.setattr(drivers.amphora, "update", recording_update)
    monkeypatch.setattr(drivers.distributor, "set_amphorae", recording_set_amphorae)
    ports = len(drivers.network.ports_of(victim.compute_id))
    assert ports > 0
    Reconciler(settings, sessions, drivers, owner="c1").run_until_idle()
    assert seen and set(seen) == {"DELETED"}, seen
    # The survivors are registered without the victim while it still holds its ports; they go after.
    assert registered and all(victim.id not in ids and held == ports for ids, held in registered), registered
    assert drivers.network.ports_of(victim.compute_id) == []
    after = amphorae(sessions, lb_id)
    assert len(after) == 3 and victim.id not in {a.id for a in after}
    assert {a.status for a in after} == {"ALLOCATED"}
