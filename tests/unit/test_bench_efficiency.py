"""The efficiency part's pairing and statistics (bench.active_active.efficiency), without a lab."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from bench.active_active import efficiency
from bench.active_active.efficiency import median_interval, paired_ratios, sequences, summarise_efficiency
from bench.active_active.setup import Baseline, Config
from bench.active_active.throughput import Run
from bench.common import WrkResult


def config(name: str, size: int, l3: bool = False) -> Config:
    return Config(name, size, f"lb-{name}", "203.0.113.100", {}, "cluster" if size > 1 else None, l3=l3)


def baseline(size: int) -> Baseline:
    return Baseline(f"SINGLEx{size}", [config(f"S{i}", 1) for i in range(size)])


def run(name: str, size: int, mode: str, rep: int, rps: float) -> Run:
    wrk = WrkResult(requests=int(rps * 5), seconds=5.0, rps=rps, p50_ms=1.0, p99_ms=2.0, socket_errors={},
                    non_2xx=0, cpu_seconds=0.1)
    return Run(name, size, mode, rep, wrk, 1.0, 0.1, 0.05, 0.05, {}, {}, {}, {}, {}, 0.0, 0.0, None,
               {"kthread": 0.0, "other": 0.0})


CLUSTERS = [config("AA2", 2), config("L3AA2", 2, l3=True), config("AA3", 3), config("L3AA3", 3, l3=True)]
BASELINES = [baseline(2), baseline(3)]


def test_each_cluster_runs_right_beside_its_baseline_and_the_clusters_swap_places() -> None:
    even = [[c.name for c in seq] for seq in sequences(CLUSTERS, BASELINES, 0)]
    odd = [[c.name for c in seq] for seq in sequences(CLUSTERS, BASELINES, 1)]
    assert even == [["AA2", "SINGLEx2", "L3AA2"], ["AA3", "SINGLEx3", "L3AA3"]]
    assert odd == [["L3AA2", "SINGLEx2", "AA2"], ["L3AA3", "SINGLEx3", "AA3"]]


def test_a_size_without_a_cluster_or_without_a_baseline_is_left_out() -> None:
    names = [[c.name for c in seq] for seq in sequences([config("AA2", 2)], [baseline(2), baseline(4)], 0)]
    assert names == [["AA2", "SINGLEx2"]]
    assert sequences([config("AA3", 3)], [baseline(2)], 0) == []


def test_a_cluster_is_divided_by_the_baseline_of_its_own_size_mode_and_repetition() -> None:
    runs = [run("SINGLEx2", 2, "new_connection", 0, 1000.0), run("AA2", 2, "new_connection", 0, 950.0),
            run("SINGLEx2", 2, "new_connection", 1, 800.0), run("AA2", 2, "new_connection", 1, 720.0),
            run("SINGLEx3", 3, "new_connection", 0, 3000.0), run("AA3", 3, "new_connection", 0, 1500.0),
            run("SINGLEx2", 2, "keepalive", 0, 2000.0), run("AA2", 2, "keepalive", 0, 2100.0),
            run("AA2", 2, "keepalive", 1, 9999.0)]  # its baseline never ran: no ratio
    ratios = paired_ratios(runs, CLUSTERS, BASELINES)
    assert ratios["new_connection"]["AA2"] == pytest.approx([0.95, 0.9])
    assert ratios["new_connection"]["AA3"] == pytest.approx([0.5])
    assert ratios["keepalive"] == {"AA2": pytest.approx([1.05])}


def test_the_interval_holds_the_median_and_narrows_with_more_agreeing_repetitions() -> None:
    spread = [0.82, 0.97, 0.91, 1.04, 0.88, 0.95, 0.99, 0.93]
    low, high = median_interval(spread)
    assert low <= 0.94 <= high and low >= 0.82 and high <= 1.04
    assert median_interval(spread) == (low, high)  # seeded: reproducible from the results file
    many_low, many_high = median_interval(spread * 6)
    assert many_high - many_low < high - low
    assert median_interval([0.9] * 5) == (0.9, 0.9)
    with pytest.raises(ValueError):
        median_interval([])


def test_the_target_is_met_by_the_median_and_the_interval_says_how_surely() -> None:
    runs = []
    for rep, (base, aa, l3) in enumerate([(100, 95, 88), (100, 92, 86), (100, 99, 91), (100, 93, 84)]):
        runs += [run("SINGLEx2", 2, "new_connection", rep, base), run("AA2", 2, "new_connection", rep, aa),
                 run("L3AA2", 2, "new_connection", rep, l3)]
    figures = summarise_efficiency(runs, CLUSTERS, BASELINES, 0.9)["new_connection"]
    assert figures["AA2"]["median"] == pytest.approx(0.94) and figures["AA2"]["meets_target"]
    assert figures["AA2"]["interval_above_target"] and figures["AA2"]["repetitions"] == 4
    assert figures["L3AA2"]["median"] == pytest.approx(0.87) and not figures["L3AA2"]["meets_target"]
    assert figures["L3AA2"]["min"] == pytest.approx(0.84) and figures["L3AA2"]["max"] == pytest.approx(0.91)


class Amphorae:
    """What the admin API lists per load balancer: namespace -> amphora id."""

    def __init__(self, live: dict[str, dict[str, str]]) -> None:
        self.live = live

    def amphorae_of(self, lb_id: str) -> dict[str, str]:
        return dict(self.live.get(lb_id, {}))


def test_a_replaced_amphora_is_reported_and_its_successor_prepared(monkeypatch: pytest.MonkeyPatch) -> None:
    l3 = Config("L3AA2", 2, "lb-L3AA2", "203.0.113.100", {"ns-a": "a", "ns-b": "b"}, "cluster", l3=True)
    single = Config("S0", 1, "lb-S0", "203.0.113.101", {"ns-s": "s"}, None)
    base = Baseline("SINGLEx2", [single])
    prepared: list[list[str]] = []
    monkeypatch.setattr(efficiency, "prepare_measured",
                        lambda _env, cfgs, _args: prepared.append([c.name for c in cfgs]))
    env: Any = Amphorae({"lb-L3AA2": {"ns-a": "a", "ns-b": "b"}, "lb-S0": {"ns-s": "s"}})
    assert efficiency.replacements(env, [l3, base], 0, "keepalive", argparse.Namespace()) == []
    assert prepared == []
    env.live["lb-L3AA2"] = {"ns-a": "a", "ns-c": "c"}  # b failed over
    found = efficiency.replacements(env, [l3, base], 3, "new_connection", argparse.Namespace())
    assert found == [{"config": "L3AA2", "repetition": 3, "mode": "new_connection", "gone": ["b"], "new": ["c"]}]
    assert prepared == [["L3AA2"]] and l3.amphorae == {"ns-a": "a", "ns-c": "c"}
