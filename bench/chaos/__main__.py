"""``python -m bench.chaos``: the whole chaos run, or its load tool (``tool arrivals ...``)."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from bench.active_active.setup import member_names, prepare_lab
from bench.chaos.cli import COMMAND, console, parse_args
from bench.chaos.episode import Target, run_episode
from bench.chaos.faults import FAULTS, applies
from bench.chaos.load import tool_main
from bench.chaos.measure import row, targets
from bench.chaos.plane import chaos_env
from bench.chaos.report import print_report
from bench.chaos.topologies import build_targets
from bench.common import (
    BenchError,
    command_line,
    machine_facts,
    parameters,
    require_root_and_tools,
    run_main,
    utc_now,
    write_json,
)


def episodes(targets_: list[Target], faults: list[str], repeats: int, kinds: list[str] | None = None
             ) -> list[tuple[int, str, Target]]:
    """(repeat, fault, target) in run order: per repeat, each fault on every topology in turn, so
    that machine noise hits all of them; the no-spares cluster only for amphora kills."""
    return [(rep, fault, t) for rep in range(repeats) for fault in faults for t in targets_
            if applies(fault, t.kind) and (t.spares or fault == "amphora_kill") and (not kinds or t.kind in kinds)]


def summarise(targets_: list[Target], faults: list[str], runs: dict[tuple[str, str], list[dict[str, Any]]]
              ) -> list[dict[str, Any]]:
    return [row(fault, t.label, t.kind, runs[(fault, t.label)]) for fault in faults for t in targets_
            if (fault, t.label) in runs]


def line(run: dict[str, Any]) -> str:
    if "error" in run:
        return f"[red]error:[/red] {run['error']}"
    nc, est = run["new_connections"], run["established"]
    full = run["full_strength_s"]
    return (f"window {nc['window_s']:.3f}s ({nc['failed']} of {nc['attempts']} failed), broken "
            f"{est['broken_on_failed']} on failed / {est['broken_elsewhere']} elsewhere of {est['connections']}, "
            f"full strength {'never' if full is None else f'{full:.1f}s'} {run.get('milestones', {})}"
            + (f" short: {run['shortfalls_at_end']}" if full is None else ""))


def run(args: argparse.Namespace, report: dict[str, Any], started: float) -> None:
    compute = {"cpu": args.cap} if args.cap else {}
    overrides = {"spare_amphora_pool_size": args.spares, "spare_amphora_compute_flavor": compute,
                 "distributor_spare": args.distributor_spare}
    faults = args.fault or list(FAULTS)
    with chaos_env("ch", args.controllers, overrides) as (env, plane):
        report["control_plane"] = {
            "controllers": args.controllers, "database": "SQLite (one file, WAL)", "logs": str(plane.logs),
            "note": "API and controllers are processes of their own (cohort api / cohort controller, one TOML)"}
        report["members"] = prepare_lab(env, args.members, args.member_workers, False)["members"]
        names = member_names(args.members)
        console.print(f"lab {env.lab.prefix} up; {args.controllers} controller(s), {args.spares} spares, "
                      f"{'a' if args.distributor_spare else 'no'} spare distributor "
                      f"{compute or '(not capped)'}; logs {plane.logs}")
        targets_ = build_targets(env, report["members"]["addresses"], set(names), args.size, compute, args.l3,
                                 args.no_spare_row, args.bfd_ms)
        report["load_balancers"] = {t.label: {"lb_id": t.cfg.lb_id, "vip": t.cfg.vip, "amphorae": t.cfg.size,
                                              "spares": t.spares} for t in targets_}
        report["setup_s"] = round(time.monotonic() - started, 1)
        runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
        plan = episodes(targets_, faults, args.repeats, args.kind)
        for index, (rep, fault, target) in enumerate(plan, 1):
            try:
                result = run_episode(env, plane, target, fault, rep, args)
            except Exception as exc:  # noqa: BLE001 - one failed episode does not lose the run
                result = {"fault": fault, "target": target.label, "repeat": rep,
                          "error": f"{type(exc).__name__}: {exc}"}
            runs.setdefault((fault, target.label), []).append(result)
            console.print(f"  [{index}/{len(plan)}] {target.label}, {FAULTS[fault][0]} #{rep + 1}: {line(result)}")
            report["rows"] = summarise(targets_, faults, runs)
            report["runs"] = [r for rs in runs.values() for r in rs]
            write_json(args.output.with_suffix(".partial.json"), report)
        report["targets"] = targets(report["rows"])


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    require_root_and_tools("haproxy", "ip", "nft", "ss", "curl", *(("vtysh", "bird") if args.l3 else ()))
    started = time.monotonic()
    report: dict[str, Any] = {"benchmark": "chaos", "timestamp": utc_now(), "command": command_line(COMMAND, argv),
                              "machine": machine_facts(), "parameters": parameters(args)}
    try:
        run(args, report, started)
    except BenchError as exc:
        report["error"] = str(exc)
        write_json(args.output.with_suffix(".partial.json"), report)
        raise
    report["elapsed_s"] = round(time.monotonic() - started, 1)
    write_json(args.output, report)
    args.output.with_suffix(".partial.json").unlink(missing_ok=True)
    print_report(report)
    console.print(f"wrote {args.output} ({report['elapsed_s']:.0f}s)")
    return 0


def entry(argv: list[str]) -> int:
    if argv[:1] == ["tool"]:
        return tool_main(argv[1:])
    return run_main(lambda: main(argv), console)


if __name__ == "__main__":
    sys.exit(entry(sys.argv[1:]))
