"""How long an L3 amphora's BGP sessions have been down: read from BIRD, carried in heartbeats, trusted so far."""

from __future__ import annotations

from datetime import datetime

from cohort.agents.amphora.bgp import MAC_POLL, RECHECK_INTERVAL, _since, watch_interval
from cohort.health.report import MAX_DOWN_FOR, parse_amphora_report


def test_birds_since_column_is_read_to_the_millisecond() -> None:
    moment = datetime(2026, 11, 26, 23, 43, 10, 311000)
    assert _since(["2026-11-26", "23:43:10.311"]) == moment.timestamp()
    # Another time format (a configuration BIRD was not given): unknown, never a guess.
    assert _since(["23:43:10.311"]) is None and _since(["2026-11-26", "23:43:10"]) is None


def test_a_heartbeats_down_for_is_read_defensively() -> None:
    report = parse_amphora_report({"listeners": {}, "pools": {}, "bgp": {
        "sessions": {"203.0.113.1": "Active", "203.0.113.2": "Connect", "203.0.113.3": "Active"},
        "announced": [],
        "down_for": {"203.0.113.1": 2.5, "203.0.113.2": 1e12, "203.0.113.3": -1, "x": True, "y": "3"}}})
    assert report is not None and report.bgp is not None
    assert report.bgp.down_for == {"203.0.113.1": 2.5, "203.0.113.2": MAX_DOWN_FOR}
    assert report.bgp.as_json()["down_for"] == report.bgp.down_for
    older = parse_amphora_report({"listeners": {}, "pools": {}, "bgp": {"sessions": {}, "announced": []}})
    assert older is not None and older.bgp is not None and older.bgp.down_for == {}


def test_the_watchdog_looks_often_while_a_wanted_vip_waits_for_its_haproxy() -> None:
    """A HAProxy started again is not always found by the wake-up that follows: its VIP must not wait for
    the slow tick (5.1 s in a chaos run) to be announced again."""
    wanted = {"203.0.113.50": {"lb_id": "lb", "announce": True}}
    assert watch_interval(True, False, wanted, {"203.0.113.50": True}) == RECHECK_INTERVAL
    assert watch_interval(True, False, wanted, {"203.0.113.50": False}) == MAC_POLL  # held back
    assert watch_interval(True, False, wanted, None) == MAC_POLL
    assert watch_interval(True, True, {}, {}) == MAC_POLL  # a router's MAC is unknown
    withdrawn = {"203.0.113.50": {"lb_id": "lb", "announce": False}}
    assert watch_interval(True, False, withdrawn, {"203.0.113.50": False}) == RECHECK_INTERVAL
    assert watch_interval(False, True, wanted, None) == RECHECK_INTERVAL  # no speaker yet
