"""The failover watcher's judgement of L3 amphorae by their BGP sessions (noop drivers, SQLite)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from cohort.config import Settings
from cohort.controller.failover import FailoverWatcher
from cohort.db import models as m
from tests.unit.test_reachability import cluster
from tests.unit.test_reconciler import amphorae

__all__ = ["cluster"]  # the fixture: an L2 ACTIVE_ACTIVE cluster of three amphorae, noop drivers

ROUTER = "203.0.113.1"


def report(sessions: Any, states: dict[str, str], at: float, down_for: float | None = None) -> None:
    """Each amphora's heartbeat at ``at``: its one session with the router in ``states[id]`` (down
    for ``down_for`` seconds, as the speaker says, when it is not Established)."""
    with sessions() as session, session.begin():
        for amphora_id, state in states.items():
            row = session.get(m.AmphoraHealth, amphora_id)
            if row is None:
                row = m.AmphoraHealth(amphora_id=amphora_id, last_update=at, busy=False)
                session.add(row)
            row.last_update = at
            said = {ROUTER: down_for} if down_for is not None and state != "Established" else {}
            row.bgp = json.dumps({"sessions": {ROUTER: state}, "announced": [], "down_for": said})


def dead_ids(watcher: FailoverWatcher, sessions: Any) -> list[str]:
    with sessions() as session:
        return [a.id for a, _reason in watcher.dead(session)]


def all_established(cluster: tuple[Settings, Any, Any, str]) -> tuple[Settings, Any, list[str], FailoverWatcher, float]:
    """A watcher that has seen every amphora of the cluster with its session up, just now."""
    settings, sessions, drivers, lb_id = cluster
    ids = [a.id for a in amphorae(sessions, lb_id)]
    watcher = FailoverWatcher(settings, sessions, drivers, on_change=lambda: None)
    now = time.time()
    report(sessions, dict.fromkeys(ids, "Established"), now)
    assert dead_ids(watcher, sessions) == []
    return settings, sessions, ids, watcher, now


def test_an_amphora_that_lost_the_router_others_reach_is_replaced(cluster: tuple[Settings, Any, Any, str]) -> None:
    settings, sessions, ids, watcher, now = all_established(cluster)
    report(sessions, {**dict.fromkeys(ids, "Established"), ids[0]: "Active"}, now)
    assert dead_ids(watcher, sessions) == []  # down since now: not yet
    watcher._bgp_down_since[ids[0]] -= settings.bgp_sessions_down_after - 0.5
    assert dead_ids(watcher, sessions) == []  # a BFD blip's return takes up to about 5 s: not yet
    watcher._bgp_down_since[ids[0]] -= 1.0  # bgp_sessions_down_after (10 s) later
    with sessions() as session:
        found = [(a.id, reason) for a, reason in watcher.dead(session)]
    assert [a for a, _ in found] == [ids[0]] and "BGP sessions have been down for 10." in found[0][1]


def test_the_time_down_counts_from_when_the_speaker_lost_its_session(cluster: tuple[Settings, Any, Any, str]) -> None:
    # Its status was cached 2 s when the heartbeat left: counting from the heartbeat would add that.
    settings, sessions, ids, watcher, now = all_established(cluster)
    report(sessions, {**dict.fromkeys(ids, "Established"), ids[0]: "Active"}, now, down_for=10.2)
    with sessions() as session:
        found = [(a.id, reason) for a, reason in watcher.dead(session)]
    assert [a for a, _ in found] == [ids[0]] and "BGP sessions have been down for 10." in found[0][1]
    # A speaker that says nothing of it: counted from this scan, as before.
    report(sessions, {**dict.fromkeys(ids, "Established"), ids[1]: "Active"}, now)
    assert ids[1] not in dead_ids(watcher, sessions)


def test_a_blip_after_a_blip_is_not_one_long_outage(cluster: tuple[Settings, Any, Any, str]) -> None:
    """The session came back between two blips, but no heartbeat showed it Established (the speaker's
    status is cached): the speaker's later "down since" says it was up in between."""
    settings, sessions, ids, watcher, now = all_established(cluster)
    # The first blip began longer ago than the controller waits; the second began 0.5 s ago.
    watcher._bgp_was_up.add(ids[0])
    watcher._bgp_down_since[ids[0]] = now - settings.bgp_sessions_down_after - 1
    report(sessions, {**dict.fromkeys(ids, "Established"), ids[0]: "Active"}, now, down_for=0.5)
    assert ids[0] not in dead_ids(watcher, sessions)
    assert watcher._bgp_down_since[ids[0]] == pytest.approx(now - 0.5, abs=0.01)
    # A speaker that says it went down earlier than recorded does not move the moment back.
    report(sessions, {**dict.fromkeys(ids, "Established"), ids[0]: "Active"}, now, down_for=30.0)
    assert ids[0] not in dead_ids(watcher, sessions)
    assert watcher._bgp_down_since[ids[0]] == pytest.approx(now - 0.5, abs=0.01)


def test_a_router_nobody_reaches_gets_no_amphora_replaced(cluster: tuple[Settings, Any, Any, str]) -> None:
    """The router restarts (maintenance): every amphora loses its session at once; replacing them
    would not help and would rebuild every L3 cluster at the same time."""
    settings, sessions, ids, watcher, now = all_established(cluster)
    report(sessions, dict.fromkeys(ids, "Connect"), now)
    for _ in range(3):
        assert dead_ids(watcher, sessions) == []
    assert watcher._bgp_down_since == {}  # not even counting
    # The router is back for two of them; the third is now to blame, counted from now on.
    report(sessions, {ids[0]: "Established", ids[1]: "Established", ids[2]: "Connect"}, now)
    assert dead_ids(watcher, sessions) == []
    assert set(watcher._bgp_down_since) == {ids[2]}
    # A silent amphora's Established session is no evidence that the router is reachable.
    report(sessions, {ids[0]: "Established"}, now - 60)
    report(sessions, {ids[1]: "Connect"}, now)
    watcher._bgp_down_since[ids[2]] -= settings.bgp_sessions_down_after + 3.0
    with sessions() as session:
        assert watcher.routers_up(session, now) == set()
        found = {a.id for a, _reason in watcher.dead(session)}
    assert ids[2] not in found and ids[1] not in found
