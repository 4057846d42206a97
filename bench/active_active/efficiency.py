"""1b. Scaling efficiency per amphora, each cluster measured right beside its load-matched baseline.

Owns the part that answers the efficiency target: for N = 2, 3, 4, the L2 cluster ``AA_N``, the
baseline ``SINGLExN`` (N SINGLE load balancers loaded at once, 1/N of the connections each) and
the L3 cluster ``L3AA_N`` run back to back, baseline in the middle, the two clusters swapping
places every other repetition; a cluster's figure in a repetition is its rate over the adjacent
baseline run's. The summary per cluster and mode is the median over repetitions with a
percentile-bootstrap 95% interval of that median.

Why adjacent runs: on this shared 2-vCPU machine one configuration's rate moves by 10-20% from
one 5 s run to the next (a capped amphora's CPU per request depends on what the other vCPU is
doing), and runs a minute apart, as the throughput part's rotation of ten configurations puts
them, differ by as much as the cluster's cost being measured.
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Callable
from typing import Any

from bench.active_active.census import wait_quiet
from bench.active_active.cli import console
from bench.active_active.setup import Baseline, Config, Distributor, Measured
from bench.active_active.throughput import Run, measure, prepare_measured, runs_json
from bench.common import MODES, BenchEnv, BenchError, median

EFFICIENCY_TARGET = 0.9  # issue 10: scaling efficiency of at least 0.9 per amphora
RESAMPLES = 4000
SEED = 20261127  # the interval is reproducible from the runs in the results file


def sequences(clusters: list[Config], baselines: list[Baseline], rep: int) -> list[list[Measured]]:
    """Per N, in order: one cluster, its baseline, the other cluster (swapped on odd repetitions)."""
    by_size = {b.size: b for b in baselines}
    out: list[list[Measured]] = []
    for size in sorted(by_size):
        mine = sorted((c for c in clusters if c.size == size), key=lambda c: c.l3)
        if not mine:
            continue
        if rep % 2:
            mine.reverse()
        out.append([mine[0], by_size[size], *mine[1:]])
    return out


def paired_ratios(runs: list[Run], clusters: list[Config],
                  baselines: list[Baseline]) -> dict[str, dict[str, list[float]]]:
    """mode -> cluster -> its rate over its baseline's in each repetition where both ran."""
    names = {b.name for b in baselines}
    base = {(r.mode, r.repetition, r.size): r.wrk.rps for r in runs if r.config in names}
    wanted = {c.name for c in clusters}
    out: dict[str, dict[str, list[float]]] = {mode: {} for mode in MODES}
    for r in runs:
        rate = base.get((r.mode, r.repetition, r.size))
        if r.config in wanted and rate:
            out[r.mode].setdefault(r.config, []).append(r.wrk.rps / rate)
    return out


def median_interval(values: list[float], level: float = 0.95, resamples: int = RESAMPLES,
                    seed: int = SEED) -> tuple[float, float]:
    """Percentile-bootstrap interval of the median of ``values``."""
    if not values:
        raise ValueError("no values")
    rng = random.Random(seed)
    medians = sorted(median(rng.choices(values, k=len(values))) for _ in range(resamples))
    tail = (1 - level) / 2
    return medians[int(tail * resamples)], medians[min(resamples - 1, int((1 - tail) * resamples))]


def summarise_efficiency(runs: list[Run], clusters: list[Config], baselines: list[Baseline],
                         target: float) -> dict[str, Any]:
    """mode -> cluster -> median, 95% interval, spread and the ratios; and whether each meets ``target``."""
    out: dict[str, Any] = {}
    for mode, per in paired_ratios(runs, clusters, baselines).items():
        out[mode] = {}
        for name, ratios in per.items():
            low, high = median_interval(ratios)
            mid = median(ratios)
            out[mode][name] = {"median": mid, "interval_95": [low, high], "min": min(ratios), "max": max(ratios),
                               "repetitions": len(ratios), "ratios": ratios,
                               "meets_target": mid >= target, "interval_above_target": low >= target}
    return out


def efficiency(env: BenchEnv, clusters: list[Config], baselines: list[Baseline], args: argparse.Namespace,
               member_pids: Callable[[], set[int]], dist: Distributor) -> dict[str, Any]:
    """Measure every cluster beside its baseline, ``args.efficiency_repetitions`` times in each mode."""
    if not baselines:
        raise BenchError("the efficiency part needs the load-matched baselines (--matched)")
    prepare_measured(env, [*clusters, *baselines], args)
    runs: list[Run] = []
    quiet = []
    replaced: list[dict[str, Any]] = []
    for rep in range(args.efficiency_repetitions):
        quiet.append(wait_quiet(env.lab, args.quiet_wait, args.quiet_threshold))
        for mode in MODES:
            for sequence in sequences(clusters, baselines, rep):
                replaced += replacements(env, sequence, rep, mode, args)
                done = [measure(env, cfg, mode, rep, args, member_pids, dist) for cfg in sequence]
                runs += done
                base = done[1].wrk.rps
                console.print(f"  rep {rep + 1} {mode:<14} {sequence[1].name:<9} {base:>9,.0f}/s  "
                              + "  ".join(f"{r.config} {r.wrk.rps / base:.2f}" for r in done if r is not done[1]))
    return {"repetitions": args.efficiency_repetitions, "seconds": args.seconds, "target": EFFICIENCY_TARGET,
            "order": "per N: cluster, N SINGLEs, the other cluster (L2 first on even repetitions)",
            "interval": f"percentile bootstrap of the median, {RESAMPLES} resamples, seed {SEED}",
            "figures": summarise_efficiency(runs, clusters, baselines, EFFICIENCY_TARGET), "quiet_waits": quiet,
            "replaced_amphorae": replaced, "runs": runs_json(runs)}


def replacements(env: BenchEnv, sequence: list[Measured], rep: int, mode: str,
                 args: argparse.Namespace) -> list[dict[str, Any]]:
    """Amphorae the controller replaced since the last look (a failover during the part), reported;
    the newcomers are prepared as their predecessors were, since an amphora left without its kernel
    threads pays for the client's and the router's work and slows its whole cluster."""
    found = []
    for cfg in sequence:
        for part in cfg.parts if isinstance(cfg, Baseline) else [cfg]:
            before = set(part.amphorae.values())
            part.refresh(env)
            after = set(part.amphorae.values())
            if after != before:
                gone, new = sorted(before - after), sorted(after - before)
                console.print(f"  [yellow]{cfg.name}: amphorae {gone} replaced by {new} before repetition "
                              f"{rep + 1} ({mode})[/yellow]")
                found.append({"config": cfg.name, "repetition": rep, "mode": mode, "gone": gone, "new": new})
                prepare_measured(env, [part], args)
    return found
