"""1. Throughput: every configuration loaded by wrk from the client namespace, in rotating order.

Owns the measured runs (rates, and the CPU of members, wrk, amphorae and their HAProxy, the
distributor agent, this process, kernel threads and other processes; each amphora's cgroup
throttling and its share of the requests from HAProxy's counters; whether the distributor's
Maglev table changed during the run), their summary (medians, scaling efficiency, load-matched
efficiency) and the comparison at a second CPU cap on fresh load balancers.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from bench.active_active.census import census_delta, lab_netns_inodes, process_census, wait_quiet
from bench.active_active.cli import console
from bench.active_active.setup import (
    Baseline,
    Config,
    Distributor,
    Measured,
    all_load_balancers,
    build_configs,
    config_report,
    member_pids_of,
)
from bench.common import (
    MODES,
    BenchEnv,
    BenchError,
    CpuWatch,
    WrkResult,
    amphora_nic_kthreads,
    cgroup_throttling,
    command_pids,
    haproxy_frontend_requests,
    haproxy_pids,
    median,
    run_wrk,
)
from cohort import netns
from cohort.lab import Lab


@dataclass
class Run:
    """One wrk run against one configuration, with where the CPU went meanwhile."""

    config: str
    size: int
    mode: str
    repetition: int
    wrk: WrkResult
    machine_busy_cpu: float
    member_cpu: float
    member_busiest_worker_cpu: float
    wrk_cpu: float
    amphora_cpu: dict[str, float]  # the whole cgroup: HAProxy and the amphora agent
    haproxy_cpu: dict[str, float]
    speaker_cpu: dict[str, float]  # the amphora's BIRD (L3 only; 0 elsewhere)
    amphora_throttled_fraction: dict[str, float]  # of the CFS periods in the run
    amphora_requests: dict[str, int]  # HAProxy frontend requests during the run
    distributor_agent_cpu: float
    bench_process_cpu: float  # this process: Cohort's API + controller threads and the bench
    buckets_changed: bool | None  # the Maglev table changed during the run (health flaps)
    processes: dict[str, Any]  # CPUs of lab / kernel-thread / other processes (process_census)


def run_wrk_on(env: BenchEnv, vips: list[str], args: argparse.Namespace, close: bool) -> WrkResult:
    """One wrk on one VIP; on several, one wrk each (its share of the connections) at once, added up."""
    if len(vips) == 1:
        return run_wrk(env.lab.client_ns, f"http://{vips[0]}/", threads=args.threads, connections=args.connections,
                       seconds=args.seconds, close=close)
    results: list[WrkResult | BaseException] = [BenchError("wrk did not run")] * len(vips)

    def one(index: int) -> None:
        try:
            results[index] = run_wrk(env.lab.client_ns, f"http://{vips[index]}/", threads=1,
                                     connections=max(1, args.connections // len(vips)), seconds=args.seconds,
                                     close=close)
        except BaseException as exc:  # noqa: BLE001 - re-raised below, in the caller's thread
            results[index] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(vips))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done = []
    for result in results:
        if isinstance(result, BaseException):
            raise result
        done.append(result)
    errors: dict[str, int] = {}
    for result in done:
        for key, value in result.socket_errors.items():
            errors[key] = errors.get(key, 0) + value
    return WrkResult(requests=sum(r.requests for r in done), seconds=max(r.seconds for r in done),
                     rps=sum(r.rps for r in done), p50_ms=median([r.p50_ms for r in done]),
                     p99_ms=max(r.p99_ms for r in done), socket_errors=errors,
                     non_2xx=sum(r.non_2xx for r in done), cpu_seconds=sum(r.cpu_seconds for r in done))


def measure(env: BenchEnv, cfg: Measured, mode: str, rep: int, args: argparse.Namespace,
            member_pids: Callable[[], set[int]], dist: Distributor) -> Run:
    cgroups = {ns: Lab.instance_cgroup(ns) for ns in cfg.amphorae}
    sockets = cfg.sockets(env)
    groups: dict[str, Callable[[], set[int]]] = {
        "member": member_pids,
        "distributor": lambda: netns.cgroup_pids(Lab.instance_cgroup(dist.namespace)),
        "bench": lambda: {os.getpid()},
    }
    for ns, cg in cgroups.items():
        groups[ns] = functools.partial(netns.cgroup_pids, cg)
        groups["haproxy:" + ns] = functools.partial(haproxy_pids, cg)
        groups["speaker:" + ns] = functools.partial(command_pids, cg, "bird")
    clustered = isinstance(cfg, Config) and cfg.size > 1 and not cfg.l3  # behind the L2 distributor
    buckets0 = dist.buckets(cfg) if isinstance(cfg, Config) and clustered else None
    throttle0 = {ns: cgroup_throttling(cg) for ns, cg in cgroups.items()}
    requests0 = {ns: haproxy_frontend_requests(s) for ns, s in sockets.items()}
    inodes = lab_netns_inodes(env.lab)
    watch = CpuWatch(groups)
    census0, t0 = process_census(inodes), time.monotonic()
    watch.start()
    result = run_wrk_on(env, cfg.vips, args, close=MODES[mode])
    cpu, machine = watch.stop()
    processes = census_delta(census0, process_census(inodes), time.monotonic() - t0)
    throttle1 = {ns: cgroup_throttling(cg) for ns, cg in cgroups.items()}
    requests1 = {ns: haproxy_frontend_requests(s) for ns, s in sockets.items()}
    throttled = {ns: (throttle1[ns].get("nr_throttled", 0) - throttle0[ns].get("nr_throttled", 0))
                 / max(1, throttle1[ns].get("nr_periods", 0) - throttle0[ns].get("nr_periods", 0)) for ns in cgroups}
    return Run(cfg.name, cfg.size, mode, rep, result, machine, cpu["member"].total, cpu["member"].busiest,
               result.cpu_seconds / result.seconds if result.seconds else 0.0,
               {ns: cpu[ns].total for ns in cgroups}, {ns: cpu["haproxy:" + ns].total for ns in cgroups},
               {ns: cpu["speaker:" + ns].total for ns in cgroups}, throttled,
               {ns: requests1[ns] - requests0[ns] for ns in sockets}, cpu["distributor"].total,
               cpu["bench"].total,
               None if buckets0 is None or not isinstance(cfg, Config) else dist.buckets(cfg) != buckets0, processes)


def prepare_measured(env: BenchEnv, configs: list[Measured], args: argparse.Namespace) -> None:
    """The amphorae's sends in kernel threads (``--amphora-kthread``), and a warm-up run on each VIP
    (ARP, HAProxy's connections to the members), not recorded; repeating it changes nothing."""
    if args.amphora_kthread:
        for cfg in configs:
            for ns in cfg.amphorae:
                amphora_nic_kthreads(env.lab, ns)
    for cfg in configs:
        for vip in cfg.vips:
            run_wrk(env.lab.client_ns, f"http://{vip}/", threads=args.threads, connections=args.connections,
                    seconds=1, close=False)


def throughput(env: BenchEnv, configs: list[Measured], args: argparse.Namespace,
               member_pids: Callable[[], set[int]], dist: Distributor,
               repetitions: int) -> tuple[list[Run], list[dict[str, float]]]:
    prepare_measured(env, configs, args)
    runs, quiet = [], []
    for rep in range(repetitions):
        quiet.append(wait_quiet(env.lab, args.quiet_wait, args.quiet_threshold))
        order = configs[rep % len(configs):] + configs[:rep % len(configs)]
        for mode in MODES:
            for cfg in order:
                run = measure(env, cfg, mode, rep, args, member_pids, dist)
                runs.append(run)
                console.print(f"  rep {rep + 1} {mode:<14} {cfg.name:<6} {run.wrk.rps:>9,.0f}/s  errors "
                              f"{run.wrk.errors}  machine {run.machine_busy_cpu:.2f} CPU  throttled "
                              f"{min(run.amphora_throttled_fraction.values()):.0%}-"
                              f"{max(run.amphora_throttled_fraction.values()):.0%}  others "
                              f"{run.processes['other']:.2f} CPU")
    return runs, quiet


def summarise(runs: list[Run], configs: list[Measured]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for mode in MODES:
        def rates(name: str, mode: str = mode) -> dict[int, float]:
            return {r.repetition: r.wrk.rps for r in runs if r.mode == mode and r.config == name}

        single_runs = rates("SINGLE")
        single = median(list(single_runs.values()))
        per: dict[str, Any] = {}
        for cfg in configs:
            mine = [r for r in runs if r.mode == mode and r.config == cfg.name]
            rate = median([r.wrk.rps for r in mine])
            paired = [r.wrk.rps / single_runs[r.repetition] for r in mine if single_runs.get(r.repetition)]
            # AA_N against N SINGLEs loaded at once in the same repetition (when the baseline was run).
            matched_runs = rates(f"SINGLEx{cfg.size}") if isinstance(cfg, Config) and cfg.size > 1 else {}
            matched = [r.wrk.rps / matched_runs[r.repetition] for r in mine if matched_runs.get(r.repetition)]
            shares = [{ns: n / max(1, sum(r.amphora_requests.values())) for ns, n in r.amphora_requests.items()}
                      for r in mine]
            amp_cpu = [sum(r.amphora_cpu.values()) for r in mine]
            per[cfg.name] = {
                "amphorae": cfg.size,
                "rate_per_s_median": rate,
                "rate_per_s_min": min(r.wrk.rps for r in mine),
                "rate_per_s_max": max(r.wrk.rps for r in mine),
                "ratio_to_single": rate / single if single else None,
                "ratio_to_single_paired_median": median(paired),
                "efficiency": rate / single / cfg.size if single else None,
                "efficiency_load_matched": median(matched) if matched else None,
                "latency_p50_ms_median": median([r.wrk.p50_ms for r in mine]),
                "latency_p99_ms_median": median([r.wrk.p99_ms for r in mine]),
                "errors_total": sum(r.wrk.errors for r in mine),
                "machine_busy_cpu_median": median([r.machine_busy_cpu for r in mine]),
                "member_cpu_median": median([r.member_cpu for r in mine]),
                "member_busiest_worker_cpu_max": max(r.member_busiest_worker_cpu for r in mine),
                "wrk_cpu_median": median([r.wrk_cpu for r in mine]),
                "amphorae_cpu_median": median(amp_cpu),
                "amphora_cpu_median_each": median([c / cfg.size for c in amp_cpu]),
                "haproxy_cpu_median_each": median([sum(r.haproxy_cpu.values()) / cfg.size for r in mine]),
                # The rest of the cgroup is the amphora agent (and what it runs).
                "speaker_cpu_median_each": median([sum(r.speaker_cpu.values()) / cfg.size for r in mine]),
                "amphora_throttled_fraction_min": min(min(r.amphora_throttled_fraction.values()) for r in mine),
                "amphora_throttled_fraction_median": median([statistics.fmean(r.amphora_throttled_fraction.values())
                                                             for r in mine]),
                "distributor_agent_cpu_median": median([r.distributor_agent_cpu for r in mine]),
                "bench_process_cpu_median": median([r.bench_process_cpu for r in mine]),
                # softirq/irq time charged to no process (the distributor's forwarding, the bridges).
                "unattributed_cpu_median": median([r.machine_busy_cpu - r.member_cpu - r.wrk_cpu
                                                   - sum(r.amphora_cpu.values()) - r.distributor_agent_cpu
                                                   - r.bench_process_cpu - r.processes["kthread"]
                                                   - r.processes["other"] for r in mine]),
                "kernel_threads_cpu_median": median([r.processes["kthread"] for r in mine]),
                "other_processes_cpu_median": median([r.processes["other"] for r in mine]),
                "other_processes_cpu_max": max(r.processes["other"] for r in mine),
                "request_share_min": min(min(s.values()) for s in shares) if shares else None,
                "request_share_max": max(max(s.values()) for s in shares) if shares else None,
                "bucket_table_changed_in_runs": sum(1 for r in mine if r.buckets_changed),
            }
        out[mode] = per
    return out


def compare_cap(env: BenchEnv, configs: list[Config], baselines: list[Baseline], args: argparse.Namespace,
                names: list[str], members: list[str], dist: Distributor) -> tuple[dict[str, Any], list[Config]]:
    """The same throughput at another cap (fewer, shorter runs), on fresh load balancers; (figures, them)."""
    for cfg in all_load_balancers(configs, baselines):
        env.delete_lb(cfg.lb_id)
    console.print(f"throughput at cap {args.compare_cap} (comparison):")
    others, other_baselines = build_configs(env, members, set(names), args.compare_cap, args.matched)
    measured: list[Measured] = [*others, *other_baselines]
    quick = argparse.Namespace(**{**vars(args), "seconds": args.compare_seconds})
    runs, quiet = throughput(env, measured, quick, member_pids_of(env.lab, names), dist, args.compare_repetitions)
    return {"cap_cpu": args.compare_cap, "repetitions": args.compare_repetitions, "seconds": args.compare_seconds,
            "configs": config_report(others, other_baselines),
            "throughput": summarise(runs, measured), "quiet_waits": quiet,
            "runs": runs_json(runs)}, others


def runs_json(runs: list[Run]) -> list[dict[str, Any]]:
    """The runs as JSON values, for the results file."""
    return [asdict(r) for r in runs]
