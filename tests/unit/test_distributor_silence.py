"""A silent distributor is failed over at once only while the other member of its pair heartbeats."""

from __future__ import annotations

import time
from typing import Any

from cohort.config import Settings
from cohort.controller.failover import PAIR_SILENCE_FACTOR, FailoverWatcher
from cohort.db import models as m
from tests.unit.test_reachability import cluster, pair

__all__ = ["cluster"]  # the fixture: an L2 ACTIVE_ACTIVE cluster of three amphorae, noop drivers


def silent(sessions: Any, seconds: dict[str, float]) -> None:
    with sessions() as session, session.begin():
        for distributor_id, quiet in seconds.items():
            health = session.get(m.DistributorHealth, distributor_id)
            if health is None:
                session.add(m.DistributorHealth(distributor_id=distributor_id, last_update=time.time() - quiet,
                                                busy=False))
            else:
                health.last_update = time.time() - quiet


def test_a_pair_silent_together_is_failed_over_only_after_a_long_silence(
        cluster: tuple[Settings, Any, Any, str]) -> None:
    settings, sessions, drivers, _lb_id = cluster
    watcher = FailoverWatcher(settings, sessions, drivers, on_change=lambda: None)
    first, second = pair(sessions)
    stale = settings.distributor_stale_after

    def dead() -> dict[str, str]:
        with sessions() as session:
            return dict(watcher.dead_distributors(session))

    silent(sessions, {first: stale + 1, second: 0.0})
    assert list(dead()) == [first]  # its peer heartbeats: silence is failure
    # Neither heartbeats (their path to the controllers is more likely broken than both): not yet.
    silent(sessions, {first: stale + 1, second: stale + 0.5})
    assert dead() == {}
    silent(sessions, {first: stale * PAIR_SILENCE_FACTOR + 1, second: stale * PAIR_SILENCE_FACTOR + 0.5})
    assert set(dead()) == {first, second}
    assert all(reason.startswith("no heartbeat for") for reason in dead().values())
    # A peer whose instance failed does not vouch for the path: the silent survivor waits too.
    silent(sessions, {first: stale + 1, second: 0.0})
    compute_id = _compute_id(sessions, second)
    drivers.compute.crash(compute_id)
    assert dead() == {second: "its compute instance failed"}


def _compute_id(sessions: Any, distributor_id: str) -> str:
    with sessions() as session:
        row = session.get(m.Distributor, distributor_id)
        assert row is not None and row.compute_id is not None
        return row.compute_id
