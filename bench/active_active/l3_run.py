"""The L3 parts of a run and the failure windows, in the order they must go.

Set-up (before throughput, so the L3 load balancers join the same rotation): the lab router
with MD5 and plain ECMP, a speaker whose peer runs BFD, ``L3AA2..4``. After the L2 scaling:
a second speaker with hold timers only and ``L3HOLD3``; the speakers' memory; 3->4->3 of
``L3AA3`` with the plain router; the failure windows (L2 ``AA3``, L3 with BFD ``L3AA3``, L3
with hold timers ``L3HOLD3``), an amphora killed (with the replacement times) and its
front-end link taken down (the silent death BFD and hold timers are for); then the router restarted with
resilient next-hop groups (this restarts FRR, so it goes last), and 3->4->3 again. Every L3
load balancer is deleted at the end, so the comparison at a second cap and the latency run
on the machine as before.
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable
from typing import Any

from bench.active_active.cli import console
from bench.active_active.failover import failure_windows
from bench.active_active.l3 import (
    ROUTER_AS,
    ROUTER_IP,
    SESSIONS,
    build_l3,
    configure_router,
    create_speaker,
    speaker_memory,
)
from bench.active_active.l3_scaling import go_resilient, l3_scaling
from bench.active_active.setup import SIZES, Config, Distributor, config_report
from bench.common import BenchEnv, BenchError

BFD_TARGET_S = 0.5


def guarded(what: str, part: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """One part's figures, or the reason it failed: one misbehaving part does not lose the whole run."""
    try:
        return part()
    except BenchError as exc:
        console.print(f"  [red]{what} failed:[/red] {exc}")
        return {"error": str(exc)}


def setup_l3(env: BenchEnv, members: list[str], names: set[str], cap: float) -> tuple[list[Config], dict[str, Any]]:
    """The router (plain ECMP), the BFD speaker and L3AA2..4; (configs, the report's ``l3`` section so far)."""
    configure_router(env, resilient=False)
    speaker = create_speaker(env, "bfd")
    configs = build_l3(env, members, names, cap, speaker, [(f"L3AA{n}", n) for n in SIZES])
    return configs, {
        "router": {"asn": ROUTER_AS, "address": ROUTER_IP, "md5": True, "ttl_security": True,
                   "ecmp": "plain hash-threshold (FRR multipath, fib_multipath_hash_policy=1)"},
        "speakers": {"bfd": {"id": speaker, **SESSIONS["bfd"]}},
        "configs": config_report(configs, []),
    }


def l3_parts(env: BenchEnv, args: argparse.Namespace, l3: list[Config], l2_cluster: Config | None,
             dist: Distributor, members: list[str], names: set[str], report: dict[str, Any]) -> dict[str, Any]:
    """Everything after throughput and the L2 scaling; fills ``report["l3"]``, returns the failure windows."""
    section: dict[str, Any] = report.setdefault("l3", {})
    by_name = {c.name: c for c in l3}
    hold: list[Config] = []
    windows: dict[str, Any] = {}
    if "failover" not in args.skip and l3:
        console.print("L3 with hold timers only:")
        speaker = create_speaker(env, "hold")
        section["speakers"]["hold"] = {"id": speaker, **SESSIONS["hold"]}
        hold = build_l3(env, members, names, args.cap, speaker, [("L3HOLD3", 3)])
        section["configs"].update(config_report(hold, []))
    if l3:
        section["speaker_memory"] = mem = speaker_memory(env, [*l3, *hold])
        console.print(f"speaker memory: bird RSS median {mem['rss_mb_median']:.1f} MB, max "
                      f"{mem['rss_mb_max']:.1f} MB over {mem['amphorae']} amphorae (PSS median "
                      f"{mem['pss_mb_median']:.1f} MB)")
    if "l3-scaling" not in args.skip and l3:
        console.print("L3 scaling, plain router:")
        section["scaling"] = {"plain": guarded("L3 scaling, plain", functools.partial(
            l3_scaling, env, by_name["L3AA3"], args, "plain"))}
    if "failover" not in args.skip:
        console.print("failure windows:")
        for mode in ("kill", "link"):
            found: dict[str, Any] = windows.setdefault(mode, {})
            if l2_cluster is not None:
                found["L2"] = guarded(f"L2 {mode}", functools.partial(
                    failure_windows, env, "L2 distributor", l2_cluster, args, dist, None, mode))
            if l3:
                found["L3_bfd"] = guarded(f"L3 BFD {mode}", functools.partial(
                    failure_windows, env, "L3 BFD", by_name["L3AA3"], args, None, BFD_TARGET_S, mode))
                found["L3_hold"] = guarded(f"L3 hold {mode}", functools.partial(
                    failure_windows, env, "L3 hold timers", hold[0], args, None, None, mode))
        if l3:
            section["replacement"] = {
                k: {"median_s": windows["kill"][k]["replacement_carries_traffic_s_median"],
                    "runs_s": [r["replacement_carries_traffic_s"] for r in windows["kill"][k]["runs"]]}
                for k in ("L3_bfd", "L3_hold") if "error" not in windows["kill"][k]}
    if "l3-scaling" not in args.skip and l3:
        console.print("L3 scaling, resilient router:")
        section["router_restart"] = go_resilient(env, [*l3, *hold])
        console.print(f"  router restarted; every L3 route back after "
                      f"{section['router_restart']['all_routes_back_s']:.1f}s")
        section["scaling"]["resilient"] = guarded("L3 scaling, resilient", functools.partial(
            l3_scaling, env, by_name["L3AA3"], args, "resilient"))
    for cfg in [*l3, *hold]:  # the rest of the run on the machine as before
        env.delete_lb(cfg.lb_id, timeout=120)
    return windows
