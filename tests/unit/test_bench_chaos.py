"""The chaos benchmark's pure parts: full-strength rule, broken-connection accounting, rows and targets."""

from __future__ import annotations

import subprocess
from typing import Any

from bench.active_active.failover import window
from bench.chaos.__main__ import episodes
from bench.chaos.cli import parse_args
from bench.chaos.episode import Target, Watch
from bench.chaos.load import parse_ss
from bench.chaos.measure import breaks, row, targets
from bench.chaos.strength import DistributorView, Expectation, Observation, shortfalls
from bench.common import kill_after

A, B, C, D = "aaaaaaaa-1", "bbbbbbbb-2", "cccccccc-3", "dddddddd-4"


def obs(t: float, requests: dict[str, int], **kw: Any) -> Observation:
    amphorae = kw.pop("amphorae", dict.fromkeys(requests, "ALLOCATED"))
    return Observation(t, kw.pop("provisioning", "ACTIVE"), amphorae, requests, **kw)


def pair(master_vip: bool = True, **kw: Any) -> list[DistributorView]:
    return [DistributorView("m", "ACTIVE", "ONLINE", "MASTER", master_vip), DistributorView(
        kw.get("backup", "b"), "ACTIVE", kw.get("status", "ONLINE"), kw.get("role", "BACKUP"), True)]


def test_a_cluster_is_at_full_strength_only_when_every_amphora_is_routed_and_serving() -> None:
    exp = Expectation("l3", 3, frozenset({D}))
    before = obs(0, {A: 10, B: 10, C: 0}, data_path={A, B, C})
    assert shortfalls(before, obs(1, {A: 20, B: 20, C: 5}, data_path={A, B, C}), exp) == []
    # the replacement C is listed and routed but carries nothing yet
    idle = obs(1, {A: 20, B: 20, C: 0}, data_path={A, B, C})
    assert shortfalls(before, idle, exp) == ["amphora cccccccc not serving"]
    # the failed D still listed, the router still sends to it
    late = obs(1, {A: 20, B: 20, D: 30}, data_path={A, B, D})
    assert "failed amphora dddddddd still listed" in shortfalls(before, late, exp)
    booting = obs(1, {A: 20, B: 20, C: 5}, amphorae={A: "ALLOCATED", B: "ALLOCATED", C: "BOOTING"},
                  data_path={A, B})
    assert shortfalls(before, booting, exp) == ["amphora cccccccc BOOTING",
                                                "data path has 2 of 3 amphorae (not cccccccc)"]
    assert shortfalls(None, obs(1, {A: 1, B: 1, C: 1}, data_path={A, B, C}), exp, serving=False) == []
    assert shortfalls(before, obs(1, {A: 20, B: 20}, data_path={A, B}), exp) == ["2 of 3 amphorae"]


def test_a_standby_pair_needs_one_vip_holder_and_only_the_holder_must_serve() -> None:
    exp = Expectation("standby", 2)
    before = obs(0, {A: 5, B: 0}, vip_holders={A})
    assert shortfalls(before, obs(1, {A: 9, B: 0}, vip_holders={A}), exp) == []
    assert shortfalls(before, obs(1, {A: 9, B: 0}, vip_holders={A, B}), exp) == [
        "VIP held by 2 amphorae", "amphora bbbbbbbb not serving"]
    assert shortfalls(before, obs(1, {A: 5, B: 3}, vip_holders=set()), exp) == ["VIP held by 0 amphorae"]


def test_an_l2_load_balancer_needs_a_complete_pair_without_the_failed_distributor() -> None:
    before = obs(0, {A: 1, B: 1})
    now = {"requests": {A: 2, B: 2}, "data_path": {A, B}}
    assert shortfalls(before, obs(1, **now, distributors=pair()), Expectation("l2", 2)) == []
    assert shortfalls(before, obs(1, **now, distributors=pair(role="MASTER")), Expectation("l2", 2)) == [
        "distributor VRRP roles ['MASTER', 'MASTER']"]
    assert shortfalls(before, obs(1, **now, distributors=pair(status="ERROR")), Expectation("l2", 2)) == [
        "distributor b ERROR"]
    assert shortfalls(before, obs(1, **now, distributors=pair()[:1]), Expectation("l2", 2)) == [
        "1 ACTIVE distributors", "distributor VRRP roles ['MASTER']"]
    assert shortfalls(before, obs(1, **now, distributors=pair()), Expectation("l2", 2, failed_distributors=frozenset(
        {"b"}))) == ["failed distributor b still ACTIVE"]


def test_watch_marks_replacement_and_data_path_once() -> None:
    base = obs(0, {A: 1, B: 1}, data_path={A, B})
    watch = Watch(10.0, base, spares={C}, victim=B, distributor=None)
    watch.see(obs(10.4, {A: 2}, data_path={A}))
    watch.see(obs(11.0, {A: 3, C: 0}, data_path={A}))
    watch.see(obs(12.0, {A: 4, C: 1}, data_path={A, C}))
    assert watch.marks == {"out_of_data_path_s": 0.4, "replacement_listed_s": 1.0, "replacement_from_spare": True}


def conn(ports: list[int], broken: list[tuple[float, int]], closed: int = 0) -> dict[str, Any]:
    return {"ports": ports, "ok": 10, "server_closed": closed,
            "broken": [{"t": t, "port": p, "error": "EOFError"} for t, p in broken]}


def test_lost_connections_are_told_apart_by_the_amphora_that_held_them() -> None:
    pins = {1001: A, 1002: B, 1003: B, 1004: C, 1005: B, 1006: C}
    client = {"started": 100.0, "connections": [
        conn([999, 1001], [(2.0, 999)]),  # broke before the fault (t 102), reconnected before the map
        conn([1002, 2002, 3002], [(5.5, 1002), (6.0, 2002)]),  # broke at the fault, its reconnection too
        conn([1003], []),  # untouched
        conn([1004, 2004], [(7.0, 1004)]),  # broke on a survivor
        conn([1005, 2005], [], closed=1),  # closed by the failed amphora between requests
        conn([1006], [(8.0, 1006)]),  # broke on a survivor at the very end, not reconnected yet
    ]}
    got = breaks(client, pins, {B}, 105.0)
    assert got["broken_before_fault"] == 1 and got["reconnections_broken"] == 1
    assert (got["broken_on_failed"], got["broken_elsewhere"]) == (1, 2)
    assert (got["closed_on_failed"], got["closed_elsewhere"]) == (1, 0)
    assert got["on_failed_amphora"] == 3 and got["connections"] == 6 and got["requests_ok"] == 60


def test_the_window_is_the_span_of_failed_attempt_starts_from_the_fault_on() -> None:
    stream = {"ok": 100, "first_t": 0.0, "end_t": 10.0, "failures": [
        {"t0": 1.0, "t1": 1.01, "error": "x"},  # before the fault
        {"t0": 4.9, "t1": 5.9, "error": "TimeoutError"},  # began before, failed after
        {"t0": 5.1, "t1": 5.11, "error": "ConnectionRefusedError"},
        {"t0": 5.2, "t1": 5.21, "error": "ConnectionRefusedError"}]}
    got = window(stream, 5.0)
    assert got["failed"] == 3 and got["failed_before_kill"] == 1
    assert abs(got["window_s"] - 0.3) < 1e-9


def run(window_s: float, elsewhere: int, full: float | None) -> dict[str, Any]:
    return {"new_connections": {"window_s": window_s, "failed": 3, "attempts": 1000},
            "established": {"broken_on_failed": 2, "broken_elsewhere": elsewhere, "reconnections_broken": 0,
                            "closed_on_failed": 0, "closed_elsewhere": 0, "connections": 24},
            "full_strength_s": full, "milestones": {"replacement_listed_s": 0.5, "replacement_from_spare": True}}


def test_rows_take_medians_and_targets_need_every_repeat() -> None:
    aa = row("amphora_kill", "ACTIVE_ACTIVE L2", "l2", [run(0.1, 0, 4.0), run(0.2, 0, 5.0), run(0.4, 0, 6.0)])
    assert aa["window_s"] == {"median": 0.2, "max": 0.4, "missing": 0}
    standby = row("amphora_kill", "ACTIVE_STANDBY", "standby", [run(3.0, 0, 8.0), {"error": "boom"}])
    assert standby["errors"] == 1 and standby["window_s"]["median"] == 3.0
    never = row("amphora_link", "SINGLE", "single", [run(10.0, 1, None)])
    assert never["full_strength_s"] == {"median": None, "max": None, "missing": 1}
    verdicts = {v["target"] + v["fault"]: v for v in targets([aa, standby, never])["rows"]}
    first = verdicts["ACTIVE_ACTIVE L2amphora_kill"]
    assert first["window_le_0.35s"] is False  # one repeat of three at 0.4 s
    assert first["standby_window_s"] == 3.0
    assert first["none_broken_elsewhere"] is True and first["full_strength_lt_10s"] is True
    assert verdicts["ACTIVE_STANDBYamphora_kill"]["window_le_0.35s"] is None  # the target is ACTIVE_ACTIVE's
    single = verdicts["SINGLEamphora_link"]
    assert single["none_broken_elsewhere"] is False and single["full_strength_lt_10s"] is False


def test_episodes_alternate_topologies_and_skip_faults_that_do_not_apply() -> None:
    cfg: Any = None
    ts = [Target("S", "single", cfg, True), Target("L2", "l2", cfg, True), Target("L2 boot", "l2", cfg, False)]
    plan = [(rep, fault, t.label) for rep, fault, t in episodes(ts, ["amphora_kill", "distributor_kill"], 2)]
    assert plan == [(0, "amphora_kill", "S"), (0, "amphora_kill", "L2"), (0, "amphora_kill", "L2 boot"),
                    (0, "distributor_kill", "L2"),
                    (1, "amphora_kill", "S"), (1, "amphora_kill", "L2"), (1, "amphora_kill", "L2 boot"),
                    (1, "distributor_kill", "L2")]


def test_ss_lines_give_the_client_ports() -> None:
    text = ("0 0 203.0.113.50:80 198.51.100.10:40001\n0 0 203.0.113.50:80 198.51.100.99:40002\n"
            "0 0 203.0.113.50:80 198.51.100.10:40003\n")
    assert parse_ss(text, "198.51.100.10") == {40001, 40003}


def test_quick_is_bounded_and_keeps_given_options() -> None:
    args = parse_args(["--quick", "--repeats", "2"])
    assert args.repeats == 2 and args.link_hold == 4.0 and not args.no_spare_row


def test_a_tool_outliving_its_time_is_killed_and_its_watchdog_never_holds_the_bench_at_exit() -> None:
    proc = subprocess.Popen(["sleep", "30"])
    timer = kill_after(proc, 0.1)
    assert proc.wait(timeout=10) == -9
    # A benchmark stopped by SIGTERM mid-episode exits at once, not when a 260 s watchdog fires.
    assert timer.daemon
