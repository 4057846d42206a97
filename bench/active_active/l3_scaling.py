"""Scale-out 3->4 and scale-in 4->3 of an L3 cluster under load, with the plain and the resilient router.

The same method as the L2 part (``bench.active_active.scaling``): 60 long-lived keep-alive
connections each sending a request every 50 ms and a stream of new short connections from the
client namespace (``tools client``), ``ss`` in every amphora's namespace for which amphora holds
each connection before and after, ``PUT /v2/octavia/clusters/{id}``; a request that fails on a
long-lived connection is a broken connection, a clean close by the server between requests is
counted apart. L3 adds the router's view: the change is done when the router's route for the
VIP has the new number of next hops, the amphorae's front-end addresses.

The plain router is FRR's hash-threshold ECMP, which moves open flows between next hops when
their number changes (the amphorae's second chance must save them); the resilient router
(``RouterSettings(resilient=True)``) uses resilient next-hop groups. Reconfiguring the router
restarts FRR, so the resilient part runs last and first waits for every session to come back.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from bench.active_active.cli import console
from bench.active_active.l3 import configure_router, wait_routes
from bench.active_active.scaling import LoadClient, established, long_lived_summary, resize
from bench.active_active.setup import Config
from bench.common import BenchEnv


def l3_scale_event(env: BenchEnv, cfg: Config, target: int, args: argparse.Namespace) -> dict[str, Any]:
    """Scale ``cfg`` to ``target`` under load; what happened to the long-lived and new connections."""
    before = dict(cfg.amphorae)
    client = LoadClient(env, cfg.vip, args)
    try:
        time.sleep(1.0)
        held_before = established(list(before))
        hops_before = env.lab.router.routes().get(cfg.vip, [])
        took = resize(env, cfg, target)
        routed = took + wait_routes(env, cfg, target)
        held_after = established(list(cfg.amphorae))
        time.sleep(args.settle)
        outcome = client.stop()
    finally:
        client.close()
    cfg.size = target
    added, removed = set(cfg.amphorae) - set(before), set(before) - set(cfg.amphorae)
    return {
        "from": len(before), "to": target, "api_to_active_s": took, "api_to_router_next_hops_s": routed,
        "added": sorted(added), "removed": sorted(removed),
        "router_next_hops_before": hops_before, "router_next_hops_after": env.lab.router.routes().get(cfg.vip, []),
        "client_seconds": outcome["seconds"],
        "long_lived": long_lived_summary(outcome["connections"], before, removed, held_before, held_after),
        "short_connections": outcome["short"],
    }


def l3_scaling(env: BenchEnv, cfg: Config, args: argparse.Namespace, router: str) -> dict[str, Any]:
    """3 -> 4 -> 3 of ``cfg`` under load, with the router as it is now (``router``: plain | resilient)."""
    out: dict[str, Any] = {"router": router, "load_balancer": cfg.name}
    for key, target in (("scale_out", cfg.size + 1), ("scale_in", cfg.size)):
        event = l3_scale_event(env, cfg, target, args)
        out[key] = event
        ll, short = event["long_lived"], event["short_connections"]
        console.print(f"  {router} router {event['from']}->{event['to']}: API {event['api_to_active_s']:.1f}s, "
                      f"router {event['api_to_router_next_hops_s']:.1f}s, long-lived broken {ll['broken']} of "
                      f"{ll['connections']}, clean closes {ll['closed_cleanly_by_server']}, short ok/failed "
                      f"{short.get('ok', 0)}/{sum(v for k, v in short.items() if k != 'ok')}")
    return out


def go_resilient(env: BenchEnv, configs: list[Config]) -> dict[str, Any]:
    """Restart the router with resilient next-hop groups; seconds until every L3 VIP has all its hops again."""
    started = time.monotonic()
    configure_router(env, resilient=True)
    restarted = time.monotonic() - started
    for cfg in configs:
        cfg.refresh(env)
        wait_routes(env, cfg, len(cfg.amphorae), timeout=120)
    return {"restart_s": restarted, "all_routes_back_s": time.monotonic() - started}
