"""The agent's supervisor starts a dead HAProxy again, and lets the BGP speaker withdraw its VIP first."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cohort.agents.amphora.haproxy import HaproxyManager
from cohort.agents.common.jail import Jail


def test_a_dead_haproxy_is_withdrawn_before_it_is_started_again(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    uid = 2_000_000_124 if os.geteuid() == 0 else os.geteuid()
    manager = HaproxyManager(Jail(tmp_path / "jail", uid, uid))
    try:
        events: list[str] = []
        running = {"lb-1": False, "lb-2": True}
        monkeypatch.setattr(manager, "alive", lambda lb_id: running[lb_id])
        monkeypatch.setattr(manager, "running", lambda lb_id: running[lb_id])
        monkeypatch.setattr(manager, "_start", lambda lb_id: events.append(f"start {lb_id}"))
        monkeypatch.setattr(manager.metrics, "sync", lambda lb_id, path: None)
        manager._wanted |= {"lb-1", "lb-2"}
        assert manager.supervise(before_restart=lambda lb_id: events.append(f"withdraw {lb_id}")) == ["lb-1"]
        assert events == ["withdraw lb-1", "start lb-1"]  # the living one is left alone
        # Within the backoff a dead one is neither withdrawn again nor restarted.
        assert manager.supervise(before_restart=lambda lb_id: events.append(f"withdraw {lb_id}")) == []
        assert events == ["withdraw lb-1", "start lb-1"]
    finally:
        manager.metrics.stop_all()


def test_the_supervisor_waits_on_the_masters_last_found_alive(tmp_path: Path) -> None:
    uid = 2_000_000_125 if os.geteuid() == 0 else os.geteuid()
    manager = HaproxyManager(Jail(tmp_path / "jail", uid, uid))
    try:
        manager._wanted |= {"lb-1", "lb-2", "lb-3"}
        manager._alive.update({"lb-1": (101, 0.0), "lb-2": (None, 0.0), "lb-gone": (103, 0.0)})
        assert manager.known_masters() == [101]  # lb-2 has none, lb-3 not looked at, lb-gone not wanted
    finally:
        manager.metrics.stop_all()
