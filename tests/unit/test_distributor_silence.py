"""A silent distributor is failed over at once only while the other member of its pair heartbeats."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import select

from cohort.config import Settings
from cohort.controller.failover import ANSWER_TIMEOUT, ANSWERING_SILENCE_FACTOR, PAIR_SILENCE_FACTOR, FailoverWatcher
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


def dead_distributors(watcher: FailoverWatcher, sessions: Any) -> dict[str, str]:
    with sessions() as session:
        return dict(watcher.dead_distributors(session))


def test_a_pair_silent_together_is_failed_over_only_after_a_long_silence(
        cluster: tuple[Settings, Any, Any, str]) -> None:
    settings, sessions, drivers, _lb_id = cluster
    watcher = FailoverWatcher(settings, sessions, drivers, on_change=lambda: None)
    first, second = pair(sessions)
    stale = settings.distributor_stale_after

    def dead() -> dict[str, str]:
        return dead_distributors(watcher, sessions)

    drivers.distributor.unreachable.update({first, second})  # their agents do not answer either
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


def test_a_silent_member_whose_agent_answers_is_failed_over_only_after_a_long_silence(
        cluster: tuple[Settings, Any, Any, str]) -> None:
    """Its heartbeats' path is slow, not the agent dead: in the chaos benchmark both members of the pair
    were replaced one after the other while their agents answered every request."""
    settings, sessions, drivers, _lb_id = cluster
    watcher = FailoverWatcher(settings, sessions, drivers, on_change=lambda: None)
    first, second = pair(sessions)
    stale = settings.distributor_stale_after

    def dead() -> dict[str, str]:
        return dead_distributors(watcher, sessions)

    silent(sessions, {first: stale + 1, second: 0.0})
    assert dead() == {}  # it answers over management
    assert ("answers", first) in drivers.distributor.calls
    drivers.distributor.unreachable.add(first)
    assert list(dead()) == [first]  # now it does not
    drivers.distributor.unreachable.clear()
    silent(sessions, {first: stale * ANSWERING_SILENCE_FACTOR + 1, second: 0.0})
    assert list(dead()) == [first]  # silence is failure in the end, whatever the agent answers


def test_a_silent_amphora_whose_agent_answers_is_failed_over_only_after_a_long_silence(
        cluster: tuple[Settings, Any, Any, str]) -> None:
    settings, sessions, drivers, lb_id = cluster
    watcher = FailoverWatcher(settings, sessions, drivers, on_change=lambda: None)
    with sessions() as session:
        victim = session.scalars(select(m.Amphora.id).where(m.Amphora.load_balancer_id == lb_id)).first()
    assert victim is not None
    stale = settings.heartbeat_stale_after

    def quiet(seconds: float) -> None:
        with sessions() as session, session.begin():
            health = session.get(m.AmphoraHealth, victim)
            if health is None:
                session.add(m.AmphoraHealth(amphora_id=victim, last_update=time.time() - seconds, busy=False))
            else:
                health.last_update = time.time() - seconds

    def dead() -> dict[str, str]:
        with sessions() as session:
            return {amphora.id: reason for amphora, reason in watcher.dead(session)}

    quiet(stale + 1)
    assert dead() == {}
    drivers.amphora.unreachable.add(victim)
    assert list(dead()) == [victim] and dead()[victim].startswith("no heartbeat for")
    drivers.amphora.unreachable.clear()
    quiet(stale * ANSWERING_SILENCE_FACTOR + 1)
    assert list(dead()) == [victim]


def test_an_agent_is_asked_before_its_silence_is_failure_so_a_gone_one_costs_no_answer_timeout(
        cluster: tuple[Settings, Any, Any, str], monkeypatch: Any) -> None:
    """Asked once its silence is within ``ANSWER_TIMEOUT`` of failure: when the question times out, the
    silence is failure in the same scan (before, a gone agent was failed over one timeout later)."""
    settings, sessions, drivers, lb_id = cluster
    watcher = FailoverWatcher(settings, sessions, drivers, on_change=lambda: None)
    first, second = pair(sessions)
    with sessions() as session:
        victim = session.scalars(select(m.Amphora.id).where(m.Amphora.load_balancer_id == lb_id)).first()
    assert victim is not None
    for driver in (drivers.amphora, drivers.distributor):
        asking = driver.answers

        def slow(ref: Any, timeout: float, asking: Any = asking) -> bool:
            answered = bool(asking(ref, timeout))
            if not answered:
                time.sleep(ANSWER_TIMEOUT * 0.6)  # as a question to a gone agent waits out its timeout
            return answered

        monkeypatch.setattr(driver, "answers", slow)
    early = ANSWER_TIMEOUT * 0.5
    with sessions() as session, session.begin():
        session.add(m.AmphoraHealth(amphora_id=victim, last_update=time.time() - (settings.heartbeat_stale_after
                                                                                  - early), busy=False))
    silent(sessions, {first: settings.distributor_stale_after - early, second: 0.0})

    def dead() -> tuple[set[str], set[str]]:
        with sessions() as session:
            return ({amphora.id for amphora, _ in watcher.dead(session)},
                    {ident for ident, _ in watcher.dead_distributors(session)})

    assert dead() == (set(), set())  # they answer: not yet silent long enough, and alive anyway
    drivers.amphora.unreachable.add(victim)
    drivers.distributor.unreachable.add(first)
    assert dead() == ({victim}, {first})  # gone: failed over once the question timed out


def test_an_amphora_whose_instance_failed_is_failed_over_without_asking_its_agent(
        cluster: tuple[Settings, Any, Any, str]) -> None:
    """Its agent cannot answer: the question would only hold up this verdict, and every other."""
    settings, sessions, drivers, lb_id = cluster
    watcher = FailoverWatcher(settings, sessions, drivers, on_change=lambda: None)
    with sessions() as session:
        victim, compute_id = session.execute(select(m.Amphora.id, m.Amphora.compute_id)
                                             .where(m.Amphora.load_balancer_id == lb_id)).first() or (None, None)
    assert victim is not None and compute_id
    with sessions() as session, session.begin():
        session.add(m.AmphoraHealth(amphora_id=victim, last_update=time.time() - settings.heartbeat_stale_after - 1,
                                    busy=False))
    drivers.compute.crash(compute_id)
    drivers.amphora.calls.clear()
    with sessions() as session:
        assert {amphora.id: reason for amphora, reason in watcher.dead(session)} == {
            victim: "its compute instance failed"}
    assert ("answers", victim) not in drivers.amphora.calls
