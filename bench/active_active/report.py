"""The report: the tables printed at the end of a run, and the plot of throughput against N (L2, L3).

Reads only the report dictionary that ``__main__`` writes to ``active_active.json``, so a
results file can be printed and plotted again without a run.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from rich.table import Table

from bench.active_active.cli import COMMAND, console
from bench.active_active.report_l3 import print_l3
from bench.common import REPO, fmt


def throughput_tables(figures: dict[str, Any], cap: float, runs: str, nproc: int) -> list[Table]:
    table = Table(title=f"Throughput, every amphora capped at {cap} CPU (medians of {runs})")
    for col in ("mode", "config", "rate/s", "min - max", "x SINGLE", "paired", "efficiency", "load-matched",
                "p50 ms", "p99 ms", "errors", "share min-max"):
        table.add_column(col, justify="left" if col in ("mode", "config") else "right")
    cpu = Table(title=f"Where the CPU went at cap {cap} (medians; CPUs = CPU-seconds per second)")
    for col in ("mode", "config", f"machine/{nproc}", "members", "busiest worker", "wrk", "amphorae",
                "each (HAProxy / BIRD)", "throttled", "distributor agent", "bench+Cohort", "kthreads", "other procs",
                "unattributed*"):
        cpu.add_column(col, justify="left" if col in ("mode", "config") else "right")
    for mode, per in figures.items():
        for name, f in per.items():
            table.add_row(mode, name, f"{f['rate_per_s_median']:,.0f}",
                          f"{f['rate_per_s_min']:,.0f} - {f['rate_per_s_max']:,.0f}", fmt(f["ratio_to_single"], ".2f"),
                          fmt(f["ratio_to_single_paired_median"], ".2f"), fmt(f["efficiency"], ".2f"),
                          fmt(f.get("efficiency_load_matched"), ".2f"), f"{f['latency_p50_ms_median']:.2f}",
                          f"{f['latency_p99_ms_median']:.2f}",
                          str(f["errors_total"]), f"{f['request_share_min']:.2f}-{f['request_share_max']:.2f}")
            cpu.add_row(mode, name, f"{f['machine_busy_cpu_median']:.2f}", f"{f['member_cpu_median']:.2f}",
                        f"{f['member_busiest_worker_cpu_max']:.2f}", f"{f['wrk_cpu_median']:.2f}",
                        f"{f['amphorae_cpu_median']:.2f}",
                        f"{f['amphora_cpu_median_each']:.3f} ({f['haproxy_cpu_median_each']:.3f}"
                        f" / {f.get('speaker_cpu_median_each', 0.0):.4f})",
                        f"{f['amphora_throttled_fraction_median']:.0%}", f"{f['distributor_agent_cpu_median']:.2f}",
                        f"{f['bench_process_cpu_median']:.2f}", f"{f['kernel_threads_cpu_median']:.2f}",
                        f"{f['other_processes_cpu_median']:.2f}", f"{f['unattributed_cpu_median']:.2f}")
        table.add_section()
        cpu.add_section()
    return [table, cpu]


def efficiency_table(eff: dict[str, Any]) -> Table:
    """Each cluster over the N SINGLEs run right beside it: median, 95% interval, range."""
    figures = eff["figures"]
    names = sorted({name for per in figures.values() for name in per}, key=lambda n: (n.startswith("L3"), n))
    table = Table(title=f"Scaling efficiency against N SINGLEs loaded at once, in adjacent runs (medians of "
                        f"{eff['repetitions']} x {eff['seconds']} s; [95% interval]; target {eff['target']})")
    table.add_column("mode")
    for name in names:
        table.add_column(name, justify="right")
    for mode, per in figures.items():
        cells = []
        for name in names:
            f = per.get(name)
            cells.append("-" if f is None else
                         f"{f['median']:.2f} [{f['interval_95'][0]:.2f}-{f['interval_95'][1]:.2f}]"
                         f" ({f['min']:.2f}-{f['max']:.2f})")
        table.add_row(mode, *cells)
    return table


def latency_table(lat: dict[str, Any]) -> Table:
    table = Table(title=f"Latency the distributor adds (one request at a time; {lat['load_balancer']}, "
                        f"amphorae capped at {lat['cap_cpu']} CPU)")
    for col in ("sample", "direct p50 µs", "p99", "via distributor p50", "p99 ", "added p50", "added p90",
                "added p99", "added p50 / p99, round medians", "n each"):
        table.add_column(col, justify="left" if col == "sample" else "right")
    for kind, k in lat["kinds"].items():
        table.add_row("TCP connect (SYN->SYN-ACK)" if kind == "connect" else "HTTP request, keep-alive",
                      f"{k['direct']['p50_us']:.1f}", f"{k['direct']['p99_us']:.1f}",
                      f"{k['distributor']['p50_us']:.1f}", f"{k['distributor']['p99_us']:.1f}",
                      f"{k['added_p50_us']:+.1f}", f"{k['added_p90_us']:+.1f}", f"{k['added_p99_us']:+.1f}",
                      f"{k['added_p50_us_round_median']:+.1f} / {k['added_p99_us_round_median']:+.1f}",
                      str(k["direct"]["n"]))
    return table


def scaling_table(scaling: dict[str, Any]) -> Table:
    table = Table(title="Scaling under load (60 keep-alive connections, a request each every 50 ms, "
                        "+ a stream of new connections)")
    for col in ("event", "API->ACTIVE s", "long-lived broken", "on removed amphora", "changed amphora",
                "clean closes", "short conns ok / failed", "new flows moved", "ideal", "buckets changed"):
        table.add_column(col, justify="left" if col == "event" else "right")
    for key in ("scale_out", "scale_in"):
        e = scaling[key]
        ll, nf, short = e["long_lived"], e["new_flows"], e["short_connections"]
        table.add_row(f"{e['from']} -> {e['to']}", f"{e['api_to_active_s']:.1f}",
                      f"{ll['broken']} ({ll['broken_connections']}/{ll['connections']} conns)",
                      f"{ll['on_removed_amphora']} (broken {ll['broken_on_removed_amphora']})",
                      str(ll["changed_amphora_while_open"]), str(ll["closed_cleanly_by_server"]),
                      f"{short.get('ok', 0)} / {sum(v for k, v in short.items() if k != 'ok')}",
                      f"{nf['moved_fraction']:.3f} ({nf['moved']}/{nf['ports_compared']})",
                      f"{nf['ideal_fraction']:.3f}", f"{nf['bucket_slots_changed_fraction']:.3f}")
    return table


def print_report(report: dict[str, Any]) -> None:
    nproc, params = report["machine"]["nproc"], report["parameters"]
    if "throughput" in report:
        for table in throughput_tables(report["throughput"], report["cap_cpu"],
                                       f"{params['repetitions']} x {params['seconds']} s", nproc):
            console.print(table)
        console.print("x SINGLE: ratio of medians; paired: median of per-repetition ratios; efficiency = "
                      "(AA_N / SINGLE) / N; load-matched: median of per-repetition AA_N / SINGLExN (N SINGLE "
                      "load balancers loaded at once: the same machine load); share: each amphora's part of the "
                      "requests (HAProxy counters); "
                      "*unattributed: busy time charged to no process seen at both ends of the run (softirq: "
                      "forwarding, bridges; processes that started and ended within it)")
    if "efficiency" in report:
        console.print(efficiency_table(report["efficiency"]))
    if "compare" in report:
        c = report["compare"]
        for table in throughput_tables(c["throughput"], c["cap_cpu"], f"{c['repetitions']} x {c['seconds']} s",
                                       nproc):
            console.print(table)
    if "latency" in report:
        console.print(latency_table(report["latency"]))
        for path, text in report["latency"]["paths"].items():
            console.print(f"  {path}: {text}")
    if "scaling" in report:
        console.print(scaling_table(report["scaling"]))
        again = report["scaling"]["new_flows_3_then_3_again"]
        console.print(f"3 -> 4 -> 3: {again['moved']} of {again['ports_compared']} fixed-port flows and "
                      f"{again['bucket_slots_changed_fraction']:.3f} of the bucket slots differ from before "
                      f"the scale-out")
    if "other_processes_cpu" in report:
        o = report["other_processes_cpu"]
        console.print(f"Other processes on this shared machine (not the lab, not this process): median "
                      f"{o['median']:.2f} CPU, max {o['max']:.2f}, above 0.25 CPU in {o['runs_above_0.25']} of "
                      f"{o['runs']} runs")
    print_l3(report)
    mach, mem = report["machine"], report["members"]
    if "amphora_packets" in report:
        console.print(f"Packets: the client's {report['client_packets']}; the amphorae's {report['amphora_packets']}")
    console.print(f"Machine: {nproc} vCPUs ({mach['cpu_model']}), busy {mach['busy_cpu_before_run']:.2f} CPU before "
                  f"the run; members: {mem['count']} x {mem['workers']} workers")
    console.print(f"Reproduce (as root, in {REPO}): [bold]{report.get('command', COMMAND)}[/bold]")


def plot(report: dict[str, Any], path: Path) -> Path:
    """Throughput against N (SINGLE is N=1), L2 and L3, with the ideal N x SINGLE, per cap and mode; PNG, or an SVG."""
    panels = [(report["cap_cpu"], report["throughput"])]
    if "compare" in report:
        panels.append((report["compare"]["cap_cpu"], report["compare"]["throughput"]))
    series = {(cap, mode): [(int(f["amphorae"]), float(f["rate_per_s_median"])) for name, f in per.items()
                            if name == "SINGLE" or name.startswith("AA")]
              for cap, figures in panels for mode, per in figures.items()}
    l3 = {(cap, mode): [(int(f["amphorae"]), float(f["rate_per_s_median"])) for name, f in per.items()
                        if name == "SINGLE" or name.startswith("L3AA")]
          for cap, figures in panels for mode, per in figures.items()}
    matched = {(cap, mode): [(int(f["amphorae"]), float(f["rate_per_s_median"])) for name, f in per.items()
                             if name == "SINGLE" or name.startswith("SINGLEx")]
               for cap, figures in panels for mode, per in figures.items()}
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return _plot_svg(series, path.with_suffix(".svg"))
    fig, axes = plt.subplots(len(panels), 2, figsize=(10, 3.8 * len(panels)), squeeze=False)
    for ax, ((cap, mode), points) in zip(axes.flat, series.items(), strict=True):
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        ax.plot(xs, [ys[0] * x for x in xs], "--", color="grey", label="ideal: N x SINGLE")
        if len(matched[(cap, mode)]) > 1:
            mx, my = zip(*matched[(cap, mode)], strict=True)
            ax.plot(mx, my, "s:", color="tab:green", label="N SINGLE load balancers loaded at once")
        ax.plot(xs, ys, "o-", label="ACTIVE_ACTIVE L2 (distributor), N amphorae (median)")
        for x, y in points:
            ax.annotate(f"{y / ys[0] / x:.2f}", (x, y), textcoords="offset points", xytext=(0, -14), ha="center",
                        fontsize=8)
        if len(l3[(cap, mode)]) > 1:
            lx, ly = zip(*l3[(cap, mode)], strict=True)
            ax.plot(lx, ly, "^-", color="tab:red", label="ACTIVE_ACTIVE L3 (BGP + router ECMP), N amphorae (median)")
            for x, y in l3[(cap, mode)][1:]:
                ax.annotate(f"{y / ly[0] / x:.2f}", (x, y), textcoords="offset points", xytext=(0, 7), ha="center",
                            fontsize=8, color="tab:red")
        ax.set_title(f"{'requests/s, keep-alive' if mode == 'keepalive' else 'new connections/s'}; cap {cap} CPU",
                     fontsize=10)
        ax.set_xlabel("amphorae N (1 = SINGLE)")
        ax.set_xticks(xs)
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8, loc="upper left")
    fig.suptitle("Cohort ACTIVE_ACTIVE throughput vs N, L2 and L3 (labels: scaling efficiency (X_N/SINGLE)/N)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _svg_point(x0: int, y0: int, top: float, x: float, y: float) -> str:
    return f"{x0 + (x - 1) * 100:.0f},{y0 + 240 - y / top * 200:.0f}"


def _plot_svg(series: dict[tuple[float, str], list[tuple[int, float]]], path: Path) -> Path:
    parts = ['<svg xmlns="http://www.w3.org/2000/svg" width="760" height="600" font-size="11">']
    for i, ((cap, mode), points) in enumerate(series.items()):
        x0, y0, top = 40 + 380 * (i % 2), 280 * (i // 2), max(max(y for _, y in points), points[0][1] * 4)
        at = functools.partial(_svg_point, x0, y0, top)
        parts.append(f'<text x="{x0}" y="{y0 + 20}">{mode}, cap {cap} CPU (grey: N x SINGLE)</text>')
        parts.append(f'<polyline fill="none" stroke="grey" stroke-dasharray="4" points="'
                     f'{" ".join(at(x, points[0][1] * x) for x, _ in points)}"/>')
        parts.append(f'<polyline fill="none" stroke="blue" points="{" ".join(at(x, y) for x, y in points)}"/>')
        parts += [f'<text x="{at(x, y).split(",")[0]}" y="{at(x, y).split(",")[1]}">{y:,.0f}</text>' for x, y in points]
    path.write_text("\n".join([*parts, "</svg>"]) + "\n")
    return path
