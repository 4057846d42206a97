"""An L2 amphora the distributors cannot reach is replaced like a silent one, on the word of live
distributors only: one whose own link is down (every probe fails), a silent one, one in FAULT and a
short blip (a HAProxy restart) replace nothing; two watchers replace it once."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from cohort.config import Settings
from cohort.controller import reachability as r
from cohort.controller.failover import FailoverWatcher
from cohort.controller.health import HealthManager
from cohort.controller.reconciler import Reconciler
from cohort.controller.wiring import make_drivers
from cohort.db import models as m
from cohort.db.session import make_engine, make_sessionmaker, upgrade
from cohort.health.report import MAX_DOWN_FOR
from tests.unit.test_reconciler import add_lb, amphorae

# --- the pure parts ---------------------------------------------------------------------------


def test_a_member_reported_down_keeps_the_time_of_the_first_report_until_it_is_reported_up() -> None:
    probes = r.record({}, {"lb": {"a": None, "b": 0.0}}, 100.0, partial=False)
    assert probes == {"lb": {"a": None, "b": 100.0}}
    probes = r.record(probes, {"lb": {"a": None, "b": 1.0}}, 101.0, partial=False)
    assert probes == {"lb": {"a": None, "b": 100.0}}
    probes = r.record(probes, {"lb": {"a": None, "b": None}}, 102.0, partial=False)
    probes = r.record(probes, {"lb": {"a": None, "b": 0.0}}, 103.0, partial=False)
    assert probes == {"lb": {"a": None, "b": 103.0}}  # down again: a new stretch
    assert r.load(r.dump(probes)) == probes


def test_a_partial_heartbeat_updates_only_its_vips_and_a_whole_one_replaces_the_view() -> None:
    probes = {"lb1": {"a": 50.0}, "lb2": {"c": None}}
    assert r.record(probes, {"lb2": {"c": 0.0}}, 60.0, partial=True) == {"lb1": {"a": 50.0}, "lb2": {"c": 60.0}}
    assert r.record(probes, {"lb2": {"c": 0.0}}, 60.0, partial=False) == {"lb2": {"c": 60.0}}


def test_a_member_is_down_since_the_distributor_found_it_down_not_since_its_heartbeat_came() -> None:
    # The verdict travels in the next heartbeat (up to an interval later, its body up to one more old).
    probes = r.record({}, {"lb": {"a": None, "b": 1.5}}, 100.0, partial=False)
    assert probes == {"lb": {"a": None, "b": 98.5}}
    vips = {"lb": {"members": {"b": {"healthy": False, "down_for": 1.5}, "c": {"healthy": False, "down_for": 1e9},
                               "d": {"healthy": False, "down_for": -3}, "e": {"healthy": False, "down_for": True},
                               "f": {"healthy": True, "down_for": 4}}}}
    assert r.parse_report(vips) == {"lb": {"b": 1.5, "c": MAX_DOWN_FOR, "d": 0.0, "e": 0.0, "f": None}}


def test_reports_are_read_defensively_and_drained_members_are_left_out() -> None:
    vips = {"lb": {"members": {"a": {"healthy": True, "drained": False}, "b": {"healthy": False, "drained": True},
                               "c": {"healthy": "no"}, "d": [1], "e": {"healthy": False}}},
            "lb2": {"members": [1]}, "lb3": 5}
    assert r.parse_report(vips) == {"lb": {"a": None, "e": 0.0}}
    assert r.parse_report([1]) is None and r.parse_report(None) is None
    assert r.load("{not json") == {} and r.load("[1]") == {} and r.load(None) == {}


def test_only_an_amphora_every_trusted_view_reports_down_is_unreachable() -> None:
    now = 1000.0
    master = {"lb": {"a": None, "b": 990.0}}
    assert r.unreachable_for([master], now) == {"b": 10.0}
    # The BACKUP reaches it: not unreachable (its link is fine, the MASTER's path to it is not).
    assert r.unreachable_for([master, {"lb": {"a": None, "b": None}}], now) == {}
    # Both report it down: since the later of their first reports.
    assert r.unreachable_for([master, {"lb": {"a": None, "b": 995.0}}], now) == {"b": 5.0}
    # A distributor that reaches none of a VIP's members (its own link is down) is no witness...
    cut_off = {"lb": {"a": 980.0, "b": 980.0}}
    assert r.unreachable_for([cut_off], now) == {}
    # ... neither against the others' verdicts nor for them.
    assert r.unreachable_for([cut_off, master], now) == {"b": 10.0}
    # A cluster of one amphora is never judged by the probes; nor is an empty VIP.
    assert r.unreachable_for([{"lb": {"a": 900.0}}, {"lb2": {}}], now) == {}


# --- the failover watcher ---------------------------------------------------------------------


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[Settings, Any, Any, str]]:
    """An L2 ACTIVE_ACTIVE load balancer of three amphorae (noop drivers), converged."""
    settings = Settings(state_dir=tmp_path, drivers="noop", frontend_unreachable_after=3.0)
    upgrade(settings.db_url)
    engine = make_engine(settings.db_url)
    sessions = make_sessionmaker(engine)
    drivers = make_drivers(settings)
    lb_id = add_lb(sessions, "ACTIVE_ACTIVE")
    Reconciler(settings, sessions, drivers, owner="c1").run_until_idle()
    yield settings, sessions, drivers, lb_id
    engine.dispose()


def pair(sessions: Any) -> list[str]:
    with sessions() as session:
        return list(session.scalars(select(m.Distributor.id).where(m.Distributor.status == "ACTIVE")
                                    .order_by(m.Distributor.name)))


def beat(health: HealthManager, distributor_id: str, lb_id: str, members: dict[str, bool], at: float,
         role: str = "MASTER") -> None:
    health.on_heartbeat({"id": distributor_id, "distributor": True, "seq": time.time_ns(), "role": role,
                         "vips": {lb_id: {"members": {a: {"healthy": ok, "flows": 0, "drained": False}
                                                      for a, ok in members.items()}, "stats": {}}}},
                        received_at=at)


def verdicts(amps: list[m.Amphora], down: str, reachable: bool = False) -> dict[str, bool]:
    return {a.id: reachable or a.id != down for a in amps}


def test_an_amphora_every_live_distributor_finds_down_is_replaced(cluster: tuple[Settings, Any, Any, str]) -> None:
    settings, sessions, drivers, lb_id = cluster
    amps = amphorae(sessions, lb_id)
    assert len(amps) == 3
    victim = amps[0].id
    health = HealthManager(sessions)
    watcher = FailoverWatcher(settings, sessions, drivers, on_change=lambda: None)
    master, backup = pair(sessions)
    now = time.time()
    for at in (now - 5, now - 4, now - 0.2):
        beat(health, master, lb_id, verdicts(amps, victim), at)
        beat(health, backup, lb_id, verdicts(amps, victim), at, role="BACKUP")
    with sessions() as session:
        found = [(a.id, reason) for a, reason in watcher.dead(session)]
    assert [a for a, _ in found] == [victim]
    # Down since the first report (5 s ago), however long the machine took to get here.
    said = float(found[0][1].removeprefix("front-end unreachable from the distributors for ").removesuffix("s"))
    assert 5.0 - 0.05 <= said <= 5.0 + (time.time() - now) + 0.05, found
    # Two controllers' watchers see it at once: exactly one replaces it.
    other = FailoverWatcher(settings, sessions, drivers, on_change=lambda: None)
    assert watcher.scan_amphorae() + other.scan_amphorae() == 1
    with sessions() as session:
        row = session.get(m.Amphora, victim)
        lb = session.get(m.LoadBalancer, lb_id)
        assert row is not None and lb is not None
        assert row.status == "PENDING_DELETE" and "front-end unreachable" in (row.status_reason or "")
        assert "front-end unreachable" in (lb.status_reason or "")
    Reconciler(settings, sessions, drivers, owner="c1").run_until_idle()
    after = amphorae(sessions, lb_id)
    assert len(after) == 3 and victim not in {a.id for a in after}  # N+1: a replacement was built
    assert {a.status for a in after} == {"ALLOCATED"}


def test_a_short_outage_such_as_a_haproxy_restart_replaces_nothing(cluster: tuple[Settings, Any, Any, str]) -> None:
    settings, sessions, drivers, lb_id = cluster
    amps = amphorae(sessions, lb_id)
    health = HealthManager(sessions)
    watcher = FailoverWatcher(settings, sessions, drivers, on_change=lambda: None)
    master, backup = pair(sessions)
    now = time.time()
    # Down in the heartbeat 5 s ago, up again 4.5 s ago, down again (another restart) since 1 s.
    for at, reachable in ((now - 5, False), (now - 4.5, True), (now - 1, False), (now - 0.1, False)):
        for ident, role in ((master, "MASTER"), (backup, "BACKUP")):
            beat(health, ident, lb_id, verdicts(amps, amps[1].id, reachable), at, role)
    with sessions() as session:
        assert watcher.dead(session) == []
        assert watcher.unreachable(session, now) == {amps[1].id: pytest.approx(1.0, abs=0.01)}


@pytest.mark.parametrize("case", ["master_cut_off", "backup_disagrees", "master_silent", "master_fault",
                                  "admin_down"])
def test_a_distributor_that_is_itself_unhealthy_replaces_no_amphora(
        cluster: tuple[Settings, Any, Any, str], case: str) -> None:
    settings, sessions, drivers, lb_id = cluster
    amps = amphorae(sessions, lb_id)
    victim = amps[0].id
    health = HealthManager(sessions)
    watcher = FailoverWatcher(settings, sessions, drivers, on_change=lambda: None)
    master, backup = pair(sessions)
    now = time.time()
    times = (now - 10, now - 6) if case == "master_silent" else (now - 10, now - 0.1)
    for at in times:
        if case == "master_cut_off":  # its own front-end link is down: every probe fails
            beat(health, master, lb_id, dict.fromkeys((a.id for a in amps), False), at)
        else:
            beat(health, master, lb_id, verdicts(amps, victim), at, "FAULT" if case == "master_fault" else "MASTER")
        if case == "backup_disagrees":
            beat(health, backup, lb_id, verdicts(amps, victim, reachable=True), at, "BACKUP")
    if case == "admin_down":
        with sessions() as session, session.begin():
            lb = session.get(m.LoadBalancer, lb_id)
            assert lb is not None
            lb.admin_state_up = False
    with sessions() as session:
        assert watcher.dead(session) == []
    assert watcher.scan_amphorae() == 0
    assert len(amphorae(sessions, lb_id)) == 3 and victim in {a.id for a in amphorae(sessions, lb_id)}


def test_an_older_heartbeat_handled_late_does_not_overwrite_newer_verdicts(
        cluster: tuple[Settings, Any, Any, str]) -> None:
    _settings, sessions, _drivers, lb_id = cluster
    amps = amphorae(sessions, lb_id)
    health = HealthManager(sessions)
    master, _backup = pair(sessions)
    now = time.time()
    beat(health, master, lb_id, verdicts(amps, amps[0].id), now)
    beat(health, master, lb_id, verdicts(amps, amps[0].id, reachable=True), now - 1)
    with sessions() as session:
        stored = session.get(m.DistributorHealth, master)
        assert stored is not None
        assert r.load(stored.probes)[lb_id][amps[0].id] == now
    # A body without readable verdicts leaves none: stale ones must not count as its word.
    health.on_heartbeat({"id": master, "distributor": True, "seq": time.time_ns(), "role": "MASTER",
                         "vips": [1]}, received_at=now + 1)
    with sessions() as session:
        stored = session.get(m.DistributorHealth, master)
        assert stored is not None and stored.probes is None
