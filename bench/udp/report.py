"""The figures: medians and ratios of the runs, what limited each target, and the tables.

Works on the runs as JSON values (as ``udp.json`` keeps them), so a results file can be
summarised and printed again without a run.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from rich.table import Table

from bench.common import REPO, fmt, median
from bench.udp.cli import COMMAND, console

PHASES = ("kthread", "inline")
PHASE_TITLES = {
    "kthread": "amphora kernel in its NAPI threads (on its CPU reservation unless -uncapped)",
    "inline": "the lab's own path: the amphora's kernel work runs in its senders' context",
}


def _rates(runs: Sequence[dict[str, Any]], target: str) -> dict[int, float]:
    return {int(r["repetition"]): float(r["rate"]) for r in runs if r["target"] == target}


def _paired(mine: Sequence[dict[str, Any]], base: dict[int, float]) -> float | None:
    ratios = [float(r["rate"]) / base[int(r["repetition"])] for r in mine if base.get(int(r["repetition"]))]
    return median(ratios) if ratios else None


def _mean(values: dict[str, float]) -> float:
    return statistics.fmean(values.values()) if values else 0.0


def _by_link(runs: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Link (fe0, be0) -> median over the runs of its NAPI thread's CPUs, averaged over the amphorae."""
    per: dict[str, list[float]] = {}
    for r in runs:
        seen: dict[str, list[float]] = {}
        for key, cpu in r.get("thread_cpu", {}).items():
            seen.setdefault(key.rsplit("/", 1)[1], []).append(float(cpu))
        for link, values in seen.items():
            per.setdefault(link, []).append(statistics.fmean(values))
    return {link: median(values) for link, values in sorted(per.items())}


def bottleneck(fig: dict[str, Any], nproc: int, processes: int) -> str:
    """What limited a target, from its medians: the amphorae's kernel reservation when each used most
    of it, or its busiest link's thread most of its share, else the generator's NIC thread (one kernel
    thread: one CPU at most) when it was nearly always running, else the machine when its CPUs were
    nearly all busy, else the generator when its workers were, else none of them (the closed loop's
    latency)."""
    used = max(fig.get("kernel_cap_used_median") or 0.0, fig.get("busiest_link_share_used_median") or 0.0)
    if fig["amphorae"] and fig["capped"] and used >= 0.85:
        return "amphora cap"
    if fig["nic_cpu_median"] >= 0.9:
        return "NIC thread"
    if fig["machine_busy_cpu_median"] >= 0.9 * nproc:
        return "machine"
    if fig["generator_cpu_median"] >= 0.9 * processes:
        return "generator"
    return "none saturated"


def summarise(runs: Sequence[dict[str, Any]], nproc: int, processes: int, kernel_cap: float) -> dict[str, Any]:
    """phase -> metric -> target -> figures (medians over repetitions, ratios to SINGLE and DIRECT)."""
    out: dict[str, Any] = {}
    for phase in PHASES:
        in_phase = [r for r in runs if r["phase"] == phase]
        if not in_phase:
            continue
        out[phase] = {}
        for metric in ("pps", "flows"):
            these = [r for r in in_phase if r["metric"] == metric]
            single, direct = _rates(these, "SINGLE"), _rates(these, "DIRECT")
            single_median = median(list(single.values())) if single else None
            direct_median = median(list(direct.values())) if direct else None
            per: dict[str, Any] = {}
            for target in dict.fromkeys(r["target"] for r in these):
                mine = [r for r in these if r["target"] == target]
                rate = median([float(r["rate"]) for r in mine])
                size = int(mine[0]["size"])
                kernel_each = [v for r in mine for v in r["amphora_kernel_cpu"].values()]
                fig: dict[str, Any] = {
                    "amphorae": size,
                    "capped": bool(mine[0]["capped"]),
                    "runs": len(mine),
                    "offered": int(mine[0]["offered"]),
                    "rate_per_s_median": rate,
                    "rate_per_s_min": min(float(r["rate"]) for r in mine),
                    "rate_per_s_max": max(float(r["rate"]) for r in mine),
                    "ratio_to_single": rate / single_median if size and single_median else None,
                    "ratio_to_single_paired_median": _paired(mine, single) if size else None,
                    "efficiency": rate / single_median / size if size and single_median else None,
                    "ratio_to_direct": rate / direct_median if direct_median else None,
                    "ratio_to_direct_paired_median": _paired(mine, direct),
                    "lost_total": sum(int(r["counts"]["lost"]) for r in mine),
                    "refused_total": sum(int(r["counts"]["refused"]) for r in mine),
                    "answered_total": sum(int(r["counts"]["answered"]) for r in mine),
                    "exhausted_runs": sum(1 for r in mine if r["counts"].get("exhausted")),
                    "generator_cpu_median": median([float(r["generator_cpu"]) for r in mine]),
                    "machine_busy_cpu_median": median([float(r["machine_busy_cpu"]) for r in mine]),
                    "member_cpu_median": median([float(r["member_cpu"]) for r in mine]),
                    "nic_cpu_median": median([float(r["nic_cpu"]) for r in mine]),
                    "amphora_kernel_cpu_median_each": median([_mean(r["amphora_kernel_cpu"]) for r in mine])
                    if size else None,
                    "amphora_kernel_cpu_min_each": min(kernel_each) if kernel_each else None,
                    "amphora_kernel_cpu_max_each": max(kernel_each) if kernel_each else None,
                    "amphora_process_cpu_median_each": median([_mean(r["amphora_process_cpu"]) for r in mine])
                    if size else None,
                    "link_thread_cpu_median_each": _by_link(mine),
                    "network_kernel_cpu_median": median([float(r["network_kernel_cpu"]) for r in mine]),
                    "distributor_cpu_median": median([float(r["distributor_cpu"]) for r in mine]),
                    # the amphora cgroup's processes (its agent); its kernel threads are not in it
                    "throttled_median": median([_mean(r["throttled"]) for r in mine]) if size else 0.0,
                    "throttled_min": min((min(r["throttled"].values()) for r in mine if r["throttled"]),
                                         default=None),
                    "kthreads_cpu_median": median([float(r["processes"]["kthread"]) for r in mine]),
                    "other_processes_cpu_median": median([float(r["processes"]["other"]) for r in mine]),
                    "other_processes_cpu_max": max(float(r["processes"]["other"]) for r in mine),
                }
                capped = fig["capped"] and fig["amphora_kernel_cpu_median_each"] is not None and phase == "kthread"
                fig["kernel_cap_used_median"] = (fig["amphora_kernel_cpu_median_each"] / kernel_cap if capped
                                                 else None)
                links = fig["link_thread_cpu_median_each"]
                # The reservation is split evenly over the links' threads: the busiest one may be at its
                # share while the amphora's total is not (a new flow costs more on the way in).
                fig["busiest_link_share_used_median"] = (max(links.values()) / (kernel_cap / len(links))
                                                         if capped and links else None)
                fig["bottleneck"] = bottleneck(fig, nproc, processes)
                per[target] = fig
            out[phase][metric] = per
    return out


def tables(summary: dict[str, Any], cap: float, kernel_cap: float, nproc: int) -> list[Table]:
    found = []
    for phase, metrics in summary.items():
        table = Table(title=f"UDP, {PHASE_TITLES[phase]}; amphora kernel reservation {kernel_cap} CPU, "
                            f"cgroup cap {cap} CPU (medians)")
        for col in ("metric", "target", "rate/s", "min - max", "x SINGLE", "paired", "efficiency", "x DIRECT",
                    "lost", "bottleneck", "amphora kernel each (min-max)", "of reservation (busiest link)",
                    "agent throttled", "generator", "members", "NIC thread", f"machine/{nproc}", "other procs"):
            table.add_column(col, justify="left" if col in ("metric", "target", "bottleneck") else "right")
        for metric, per in metrics.items():
            for target, f in per.items():
                kernel = "-" if not f["amphora_kernel_cpu_median_each"] else (
                    f"{f['amphora_kernel_cpu_median_each']:.3f} ({f['amphora_kernel_cpu_min_each']:.3f}-"
                    f"{f['amphora_kernel_cpu_max_each']:.3f})")
                table.add_row(metric, target, f"{f['rate_per_s_median']:,.0f}",
                              f"{f['rate_per_s_min']:,.0f} - {f['rate_per_s_max']:,.0f}",
                              fmt(f["ratio_to_single"], ".2f"), fmt(f["ratio_to_single_paired_median"], ".2f"),
                              fmt(f["efficiency"], ".2f"), fmt(f["ratio_to_direct"], ".2f"), str(f["lost_total"]),
                              f["bottleneck"], kernel,
                              f"{fmt(f['kernel_cap_used_median'], '.0%')} "
                              f"({fmt(f['busiest_link_share_used_median'], '.0%')})",
                              f"{f['throttled_median']:.0%}" if f["amphorae"] else "-",
                              f"{f['generator_cpu_median']:.2f}", f"{f['member_cpu_median']:.2f}",
                              f"{f['nic_cpu_median']:.2f}", f"{f['machine_busy_cpu_median']:.2f}",
                              f"{f['other_processes_cpu_median']:.2f}")
            table.add_section()
        found.append(table)
    return found


def markdown(summary: dict[str, Any]) -> str:
    """The README's table: rates and ratios per target, one row per metric and phase."""
    rows = []
    main = summary.get("kthread", {})
    targets = list(dict.fromkeys(t for per in main.values() for t in per))
    rows.append("| | " + " | ".join(targets) + " |")
    rows.append("| --- |" + " --- |" * len(targets))
    names = {"pps": "request/response pairs/s", "flows": "new flows/s"}
    for metric, per in main.items():
        rows.append(f"| {names[metric]} | " + " | ".join(
            f"{per[t]['rate_per_s_median']:,.0f}" if t in per else "" for t in targets) + " |")
        rows.append("| X / SINGLE (efficiency) | " + " | ".join(
            "" if t not in per or per[t]["ratio_to_single"] is None or t == "SINGLE-uncapped"
            else f"{per[t]['ratio_to_single']:.2f} ({per[t]['efficiency']:.2f})" for t in targets) + " |")
    return "\n".join(rows)


def print_report(report: dict[str, Any]) -> None:
    summary, nproc = report["summary"], report["machine"]["nproc"]
    for table in tables(summary, report["cap_cpu"], report["kernel_cap_cpu"], nproc):
        console.print(table)
    console.print("x SINGLE: ratio of medians (SINGLE capped, same part); paired: median of per-repetition ratios; "
                  "efficiency = (X_N / SINGLE) / N; x DIRECT: against the members without an amphora; amphora "
                  "kernel: CPUs of each amphora's NAPI threads, and their share of its reservation; agent throttled: "
                  "the amphora cgroup's CFS periods throttled; CPUs = CPU-seconds per second")
    console.print(markdown(summary), markup=False)
    mach = report["machine"]
    console.print(f"Machine: {nproc} vCPUs ({mach['cpu_model']}), busy {mach['busy_cpu_before_run']:.2f} CPU before "
                  f"the run; kernel {mach['kernel']}")
    console.print(f"Reproduce (as root, in {REPO}): [bold]{report.get('command', COMMAND)}[/bold]")
