"""``python -m bench.active_active``: the whole benchmark in order, or one of its tools (``tool ...``).

Owns the run: the lab and Cohort (``bench.common.bench_env``), then set-up (L2 and L3),
throughput, L2 scaling, the L3 parts and failure windows (``l3_run``), the comparison at a
second cap, latency, and the results file, tables and plot.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from bench.active_active.cli import COMMAND, console, parse_args
from bench.active_active.efficiency import efficiency
from bench.active_active.l3_run import l3_parts, setup_l3
from bench.active_active.latency import latency
from bench.active_active.report import plot, print_report
from bench.active_active.scaling import scaling
from bench.active_active.setup import (
    Config,
    Measured,
    build_configs,
    config_report,
    distributor_of,
    member_names,
    member_pids_of,
    prepare_lab,
)
from bench.active_active.throughput import compare_cap, runs_json, summarise, throughput
from bench.active_active.tools import tool_main
from bench.common import (
    BenchError,
    bench_env,
    cgroup_quota,
    command_line,
    machine_facts,
    median,
    parameters,
    require_root_and_tools,
    run_main,
    utc_now,
    write_json,
)
from cohort.lab import Lab


def run(args: argparse.Namespace, report: dict[str, Any], started: float) -> None:
    """Every part in order, on one lab; the figures go into ``report``."""
    with bench_env("aa", heartbeat_stale_after=args.silence_timeout,
                   distributor_stale_after=args.silence_timeout) as env:
        lab = env.lab
        report.update(prepare_lab(env, args.members, args.member_workers, args.client_kthread))
        names = member_names(args.members)
        members: list[str] = report["members"]["addresses"]
        console.print(f"lab {lab.prefix} up; members {members} ({args.member_workers} workers each); cap {args.cap}")
        configs, baselines = build_configs(env, members, set(names), args.cap, args.matched)
        dist = distributor_of(env)
        report["configs"] = config_report(configs, baselines)
        l3_configs: list[Config] = []
        if args.l3:
            l3_configs, report["l3"] = setup_l3(env, members, set(names), args.cap)
        measured: list[Measured] = [*configs, *l3_configs, *baselines]
        report["distributor"] = {"namespace": dist.namespace, "id": dist.ref.id}
        report["setup_s"] = time.monotonic() - started
        by_name = {c.name: c for c in configs}
        if "throughput" not in args.skip:
            console.print("throughput:")
            report["amphora_packets"] = (
                "what the measured amphorae send is processed in kernel threads of their switch ports, as a "
                "virtual machine's NIC would; see bench.common.amphora_nic_kthreads" if args.amphora_kthread
                else "processed in the amphora's context (the receivers' work billed to the capped amphora)")
            runs, quiet = throughput(env, measured, args, member_pids_of(lab, names), dist, args.repetitions)
            report["throughput"] = summarise(runs, measured)
            report["quiet_waits"] = quiet
            others = [r.processes["other"] for r in runs]
            report["other_processes_cpu"] = {"median": median(others), "max": max(others),
                                             "runs_above_0.25": sum(1 for o in others if o > 0.25), "runs": len(others)}
            report["runs"] = runs_json(runs)
        if "efficiency" not in args.skip:
            console.print("efficiency (each cluster beside its load-matched baseline):")
            report["efficiency"] = efficiency(env, [c for c in measured if isinstance(c, Config) and c.size > 1],
                                              baselines, args, member_pids_of(lab, names), dist)
        if "scaling" not in args.skip:
            console.print("scaling:")
            report["scaling"] = scaling(env, by_name["AA3"], dist, args)
        if args.l3 or "failover" not in args.skip:
            report["failover"] = l3_parts(env, args, l3_configs, by_name["AA3"], dist, members, set(names), report)
        if args.compare_cap:
            report["compare"], configs = compare_cap(env, configs, baselines, args, names, members, dist)
            by_name = {c.name: c for c in configs}
        if "latency" not in args.skip:
            console.print(f"latency (cap {cgroup_quota(Lab.instance_cgroup(next(iter(by_name['AA4'].amphorae))))}):")
            report["latency"] = latency(env, by_name["AA4"], dist, args)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    require_root_and_tools("wrk", "haproxy", "ip", "nft", "ss", "curl", "chrt", "ethtool",
                           *(("vtysh", "bird") if args.l3 else ()))
    started = time.monotonic()
    report: dict[str, Any] = {"benchmark": "active_active", "timestamp": utc_now(),
                              "command": command_line(COMMAND, argv), "machine": machine_facts(),
                              "cap_cpu": args.cap, "parameters": parameters(args)}
    try:
        run(args, report, started)
    except BenchError as exc:  # what was measured so far is kept beside the results file
        report["error"] = str(exc)
        write_json(args.output.with_suffix(".partial.json"), report)
        raise
    report["elapsed_s"] = time.monotonic() - started
    write_json(args.output, report)
    print_report(report)
    if "throughput" in report:
        console.print(f"plot: {plot(report, args.output.with_suffix('.png'))}")
    console.print(f"wrote {args.output} ({report['elapsed_s']:.0f}s)")
    return 0


def entry(argv: list[str]) -> int:
    if argv[:1] == ["tool"]:
        return tool_main(argv[1:])
    return run_main(lambda: main(argv), console)


if __name__ == "__main__":
    sys.exit(entry(sys.argv[1:]))
