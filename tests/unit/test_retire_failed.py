"""An amphora whose instance failed is destroyed while its replacement is built, not once it serves."""

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

    monkeypatch.setattr(drivers.amphora, "update", recording_update)
    Reconciler(settings, sessions, drivers, owner="c1").run_until_idle()
    assert seen and set(seen) == {"DELETED"}, seen
    after = amphorae(sessions, lb_id)
    assert len(after) == 3 and victim.id not in {a.id for a in after}
    assert {a.status for a in after} == {"ALLOCATED"}
