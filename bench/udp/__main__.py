"""``python -m bench.udp``: the whole benchmark in order, on one lab that is removed afterwards.

Owns the run: the lab and Cohort (``bench.common.bench_env``), the echo members, the direct load
generator's namespace and the client's source addresses, the load balancers and their amphorae's
NAPI threads; then the measured repetitions, the lab's own path last, and the results file.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.active_active.census import wait_quiet
from bench.active_active.setup import distributor_of
from bench.common import (
    BenchError,
    bench_env,
    client_nic_kthread,
    command_line,
    machine_facts,
    parameters,
    require_root_and_tools,
    run_main,
    utc_now,
    write_json,
)
from bench.udp.cli import COMMAND, console, parse_args
from bench.udp.measure import METRICS, Context, Target, log_line, measure, rotation
from bench.udp.napi import AmphoraLinks, amphora_links, thread_links, unthread_links
from bench.udp.report import print_report, summarise
from bench.udp.setup import (
    SourcePool,
    add_client_sources,
    build_load_balancers,
    config_report,
    direct_loadgen,
    echo_members,
    new_nic_thread,
)

DIRECT_SOURCES = 2  # addresses of the direct load generator (no conntrack on that path: reused freely)


def unthread_all(links: dict[str, AmphoraLinks]) -> None:
    """Every amphora link back to the lab's own path (threads out of the amphorae's cgroups first)."""
    while links:
        _, lk = links.popitem()
        unthread_links(lk)


def repetitions(ctx: Context, targets: list[Target], count: int, phase: str, report: dict[str, Any]) -> None:
    """``count`` repetitions of every metric on every target, the order rotating; runs into ``report``."""
    for rep in range(count):
        report["quiet_waits"].append(wait_quiet(ctx.env.lab, ctx.args.quiet_wait, ctx.args.quiet_threshold))
        order = rotation(targets, rep)
        for metric in METRICS:
            for target in order:
                run = measure(ctx, target, metric, rep, phase)
                report["runs"].append(asdict(run))
                console.print(log_line(run), markup=False)


def run(args: argparse.Namespace, report: dict[str, Any], started: float) -> None:
    with bench_env("udp", heartbeat_stale_after=args.silence_timeout,
                   distributor_stale_after=args.silence_timeout) as env, ExitStack() as stack:
        lab = env.lab
        client_nic = new_nic_thread(lambda: client_nic_kthread(lab))
        members = stack.enter_context(echo_members(env, args.members, args.member_workers,
                                                   max_seconds=3600))
        direct = stack.enter_context(direct_loadgen(env, DIRECT_SOURCES))
        sources = add_client_sources(env, args.client_sources)
        console.print(f"lab {lab.prefix} up; echo members {members.addresses} ({args.member_workers} processes "
                      f"each); building SINGLE and ACTIVE_ACTIVE {args.sizes}, amphorae capped at {args.cap} CPU")
        configs = build_load_balancers(env, members, args.cap, args.sizes)
        dist = distributor_of(env) if any(c.size > 1 for c in configs) else None
        links: dict[str, AmphoraLinks] = {}
        stack.callback(unthread_all, links)  # before the load balancers and the lab go
        for cfg in configs:
            for ns in sorted(cfg.amphorae):
                links[ns] = amphora_links(lab, ns)
                thread_links(links[ns])
                links[ns].place(True, args.kernel_cap, args.kernel_period_us)
        report["configs"] = config_report(configs, links)
        report["distributor"] = None if dist is None else {"namespace": dist.namespace, "id": dist.ref.id}
        report["members"] = {"count": args.members, "workers": args.member_workers, "addresses": members.addresses,
                             "server": "bench.udp.load echo"}
        report["setup_s"] = time.monotonic() - started
        console.print(f"set up in {report['setup_s']:.0f}s: {len(links)} amphorae, their links' NAPI threads on "
                      f"{args.kernel_cap} CPU each")
        ctx = Context(env, args, members, members.pids(), direct, client_nic,
                      SourcePool(sources, args.source_age), None if dist is None else dist.namespace)
        by_name = {c.name: c for c in configs}

        def lb(name: str, size: int, capped: bool, threaded: bool = True) -> Target:
            cfg = by_name[name.removesuffix("-uncapped")]
            return Target(name, size, capped, cfg, [links[ns] for ns in sorted(cfg.amphorae)] if threaded else [])

        main_targets = [Target("DIRECT", 0, False), lb("SINGLE-uncapped", 1, False), lb("SINGLE", 1, True),
                        *(lb(f"AA{n}", n, True) for n in args.sizes)]
        repetitions(ctx, main_targets, args.repetitions, "kthread", report)
        if args.inline_repetitions:
            unthread_all(links)
            console.print("the lab's own path (amphora links without NAPI threads):")
            biggest = f"AA{max(args.sizes)}"
            inline = [Target("DIRECT", 0, False), lb("SINGLE", 1, True, threaded=False),
                      lb(biggest, by_name[biggest].size, True, threaded=False)]
            repetitions(ctx, inline, args.inline_repetitions, "inline", report)
        report["source_address_waits_s"] = ctx.waits


def report_again(path: Path) -> int:
    """The figures of a results file recomputed from its runs (the runs untouched), written back, printed."""
    report = json.loads(path.read_text())
    params = report["parameters"]
    report["summary"] = summarise(report["runs"], int(report["machine"]["nproc"] or 1), int(params["processes"]),
                                  float(params["kernel_cap"]))
    report["summary_recomputed"] = utc_now()
    write_json(path, report)
    print_report(report)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report:
        return report_again(args.report)
    require_root_and_tools("haproxy", "ip", "nft", "ethtool", "chrt")
    started = time.monotonic()
    machine = machine_facts()
    report: dict[str, Any] = {"benchmark": "udp", "timestamp": utc_now(), "command": command_line(COMMAND, argv),
                              "machine": machine,
                              "cap_cpu": args.cap, "kernel_cap_cpu": args.kernel_cap, "parameters": parameters(args),
                              "runs": [], "quiet_waits": []}
    try:
        run(args, report, started)
    except BenchError as exc:  # what was measured so far is kept beside the results file
        report["error"] = str(exc)
        write_json(args.output.with_suffix(".partial.json"), report)
        raise
    report["elapsed_s"] = time.monotonic() - started
    report["summary"] = summarise(report["runs"], int(machine["nproc"] or 1), args.processes, args.kernel_cap)
    write_json(args.output, report)
    print_report(report)
    console.print(f"wrote {args.output} ({report['elapsed_s']:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(lambda: main(sys.argv[1:]), console))
