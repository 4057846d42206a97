"""The report's L3 and failure tables: throughput L2 against L3, failure windows, scaling, speakers.

Reads only the report dictionary (``active_active.json``): ``throughput`` (with the ``L3AA*``
configurations beside ``AA*``), ``failover`` and ``l3``.
"""

from __future__ import annotations

from typing import Any

from rich.table import Table

from bench.active_active.cli import console
from bench.common import fmt

EFFICIENCY_TARGET = 0.9


def side_by_side(figures: dict[str, Any], cap: float) -> Table:
    """Per mode and N: rate and efficiency of SINGLE, L2 (AA_N) and L3 (L3AA_N)."""
    table = Table(title=f"Throughput L2 vs L3 at cap {cap} CPU (medians; efficiency = (X_N / SINGLE) / N, "
                        f"target {EFFICIENCY_TARGET})")
    for col in ("mode", "N", "SINGLE", "L2 rate/s", "L2 x SINGLE", "L2 efficiency", "L3 rate/s", "L3 x SINGLE",
                "L3 efficiency", "L3 / L2"):
        table.add_column(col, justify="left" if col == "mode" else "right")
    for mode, per in figures.items():
        single = per["SINGLE"]["rate_per_s_median"]
        table.add_row(mode, "1", f"{single:,.0f}", "", "", "", "", "", "", "")
        for n in (2, 3, 4):
            l2, l3 = per.get(f"AA{n}"), per.get(f"L3AA{n}")
            if l2 is None or l3 is None:
                continue
            table.add_row(mode, str(n), "", f"{l2['rate_per_s_median']:,.0f}", fmt(l2["ratio_to_single"], ".2f"),
                          fmt(l2["efficiency"], ".2f"), f"{l3['rate_per_s_median']:,.0f}",
                          fmt(l3["ratio_to_single"], ".2f"), fmt(l3["efficiency"], ".2f"),
                          f"{l3['rate_per_s_median'] / l2['rate_per_s_median']:.2f}")
        table.add_section()
    return table


def failover_table(windows: dict[str, Any]) -> Table:
    table = Table(title="An amphora dies under a stream of new connections: kill (kill -9 of every process in its "
                        "namespace) or link (its front-end link down at the switch)")
    for col in ("kind", "LB", "repeats", "window s (median / max)", "failed (median)", "failed / attempts, each",
                "out of data path s", "replacement carries traffic s (kill)", "target"):
        table.add_column(col, justify="left" if col in ("kind", "LB") else "right")
    names = {"L2": "L2 distributor probes", "L3_bfd": "L3, BFD 100 ms x 3", "L3_hold": "L3, hold 3 s / keepalive 1 s"}
    for mode, kinds in windows.items():
        for key, w in kinds.items():
            if "error" in w:
                table.add_row(f"{mode}: {names.get(key, key)}", "failed: " + w["error"][:60])
            else:
                _failover_row(table, f"{mode}: {names.get(key, key)}", w)
        table.add_section()
    return table


def _failover_row(table: Table, kind: str, w: dict[str, Any]) -> None:
    target = "-" if w["target_window_s"] is None else \
        f"<= {w['target_window_s']} s: {'met' if w['meets_target'] else 'MISSED'}"
    table.add_row(kind, w["load_balancer"], str(w["repeats"]),
                  f"{w['window_s_median']:.3f} / {w['window_s_max']:.3f}", f"{w['failed_median']:.0f}",
                  ", ".join(f"{r['new_connections']['failed']}/{r['new_connections']['attempts']}" for r in w["runs"]),
                  f"{w['out_of_data_path_s_median']:.3f}", fmt(w.get("replacement_carries_traffic_s_median"), ".1f"),
                  target)


def l3_scaling_table(scaling: dict[str, Any]) -> Table:
    table = Table(title="L3 scaling under load (long-lived keep-alive connections + a stream of new ones)")
    for col in ("router", "event", "API->ACTIVE s", "->router hops s", "long-lived broken", "on removed amphora",
                "changed amphora", "clean closes", "short conns ok / failed"):
        table.add_column(col, justify="left" if col in ("router", "event") else "right")
    for router, part in scaling.items():
        if "error" in part:
            table.add_row(router, "failed: " + part["error"][:60])
            continue
        for key in ("scale_out", "scale_in"):
            e = part[key]
            ll, short = e["long_lived"], e["short_connections"]
            table.add_row(router, f"{e['from']} -> {e['to']}", f"{e['api_to_active_s']:.1f}",
                          f"{e['api_to_router_next_hops_s']:.1f}",
                          f"{ll['broken']} ({ll['broken_connections']}/{ll['connections']} conns)",
                          f"{ll['on_removed_amphora']} (broken {ll['broken_on_removed_amphora']})",
                          str(ll["changed_amphora_while_open"]), str(ll["closed_cleanly_by_server"]),
                          f"{short.get('ok', 0)} / {sum(v for k, v in short.items() if k != 'ok')}")
    return table


def print_l3(report: dict[str, Any]) -> None:
    if "throughput" in report and any(k.startswith("L3AA") for k in report["throughput"]["keepalive"]):
        console.print(side_by_side(report["throughput"], report["cap_cpu"]))
    if report.get("failover"):
        console.print(failover_table(report["failover"]))
    l3 = report.get("l3", {})
    if "scaling" in l3:
        console.print(l3_scaling_table(l3["scaling"]))
    if "router_restart" in l3:
        r = l3["router_restart"]
        console.print(f"Router restarted with resilient next-hop groups in {r['restart_s']:.1f}s; every L3 VIP had "
                      f"all its next hops again after {r['all_routes_back_s']:.1f}s")
    if "speaker_memory" in l3:
        m = l3["speaker_memory"]
        console.print(f"Speaker memory (bird, {m['amphorae']} amphorae, as the jail uid: "
                      f"{m['all_run_as_jail_uid']}): RSS median {m['rss_mb_median']:.2f} MB, max "
                      f"{m['rss_mb_max']:.2f} MB (anonymous {m['rss_anon_mb_median']:.2f} MB, PSS "
                      f"{m['pss_mb_median']:.2f} MB); target < {m['target_mb']} MB: "
                      f"{'met' if m['meets_target'] else 'MISSED'}")
