"""3. Scale-out 3->4 and scale-in 4->3 of an ACTIVE_ACTIVE cluster under load.

Owns the scale events (``PUT /v2/octavia/clusters/{id}``, then the admin API's amphorae and the
load balancer's status until the cluster has its new size and is ACTIVE), the load kept on
during them (``tools client``), which amphora holds each long-lived connection (``ss`` in
every amphora's namespace) and which amphora each new fixed-port flow was pinned to (the
distributor's flow map, named through its agent's status), and how many of them moved.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from bench.active_active.cli import console
from bench.active_active.setup import Config, Distributor
from bench.active_active.tools import FIXED_PORT_FIRST, run_tool, start_tool
from bench.common import BenchEnv, BenchError, kill_after
from cohort import netns
from cohort.lab import CLIENT_IP


class LoadClient:
    """The long-lived + short-connection load of ``load_client``, running in the client namespace."""

    def __init__(self, env: BenchEnv, vip: str, args: argparse.Namespace) -> None:
        self.proc = start_tool(env.lab.client_ns, "client", vip, "--connections", str(args.long_lived),
                               "--interval", str(args.long_lived_interval), "--short-workers", str(args.short_workers),
                               "--max-seconds", "150")
        self.timer = kill_after(self.proc, 170)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("ready "):
            self.close()
            raise BenchError("load client did not start")
        self.ports: list[int] = json.loads(line[len("ready "):])

    def stop(self) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        out = self.proc.stdout.read()
        self.close()
        if self.proc.returncode != 0 or not out.strip():
            raise BenchError(f"load client failed ({self.proc.returncode})")
        return dict(json.loads(out.strip().splitlines()[-1]))

    def close(self) -> None:
        self.timer.cancel()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def established(namespaces: list[str]) -> dict[int, str]:
    """Client source port -> the amphora namespace holding that connection (``ss``)."""
    held: dict[int, str] = {}
    for ns in namespaces:
        out = netns.run_in(ns, ["ss", "-Htn", "state", "established"], check=False).stdout
        for line in out.splitlines():
            cols = line.split()
            if len(cols) >= 4 and cols[-2].endswith(":80"):
                host, _, port = cols[-1].rpartition(":")
                if host == CLIENT_IP:
                    held[int(port)] = ns
    return held


def probe_new_flows(env: BenchEnv, cfg: Config, dist: Distributor, args: argparse.Namespace) -> dict[str, Any]:
    """Which amphora each fixed source port's new connection went to (the distributor's pin)."""
    out = run_tool(env.lab.client_ns, "ports", cfg.vip, "--first", str(FIXED_PORT_FIRST),
                   "--count", str(args.probe_ports), timeout=120)
    served = {int(p): ok for p, ok in json.loads(out).items()}
    ports = range(FIXED_PORT_FIRST, FIXED_PORT_FIRST + args.probe_ports)
    pins, marks = dist.pinned(cfg, ports), dist.marks(env, cfg)
    return {"served": sum(served.values()), "failed": len(served) - sum(served.values()),
            "amphora_of_port": {p: marks.get(mark, f"mark:{mark}") for p, mark in pins.items() if served.get(p)},
            "buckets": [marks.get(mark, f"mark:{mark}") for mark in dist.buckets(cfg)]}


def moved(before: dict[str, Any], after: dict[str, Any], added: set[str], removed: set[str]) -> dict[str, Any]:
    """How many fixed-port flows (and Maglev slots) changed amphora between two probes.

    The ideal is the share of the amphora that joined or left: 1/4 for 3->4 and for 4->3.
    """
    a, b = before["amphora_of_port"], after["amphora_of_port"]
    common = sorted(set(a) & set(b))
    changed = [p for p in common if a[p] != b[p]]
    slots = list(zip(before["buckets"], after["buckets"], strict=False))
    largest = max(len(set(before["buckets"])), len(set(after["buckets"])))
    return {
        "ports_compared": len(common),
        "moved": len(changed),
        "moved_fraction": len(changed) / len(common) if common else None,
        "moved_to_new_amphora": sum(1 for p in changed if b[p] in added),
        "moved_from_removed_amphora": sum(1 for p in changed if a[p] in removed),
        "moved_between_staying_amphorae": sum(1 for p in changed if a[p] not in removed and b[p] not in added),
        "bucket_slots_changed_fraction": sum(1 for x, y in slots if x != y) / len(slots) if slots else None,
        "table_size_before_after": [len(before["buckets"]), len(after["buckets"])],
        "ideal_fraction": (len(added) + len(removed)) / largest if largest else None,
    }


def resize(env: BenchEnv, cfg: Config, target: int) -> float:
    """``PUT /v2/octavia/clusters/{id}`` to ``target``; seconds until the API lists ``target``
    amphorae and the load balancer is ACTIVE again (``cfg.amphorae`` refreshed)."""
    started = time.monotonic()
    while True:  # 409 while the load balancer is busy (a failover of its own): wait for it, then again
        status, body = env.api.call("PUT", f"/v2/octavia/clusters/{cfg.cluster_id}",
                                    {"cluster": {"desired_size": target}})
        if status == 200:
            break
        if status != 409 or time.monotonic() - started > 120:
            raise BenchError(f"scale to {target}: {status} {body}")
        env.wait_active(cfg.lb_id, timeout=120)
    deadline = started + 150
    while True:
        cfg.refresh(env)
        lb = env.api.get(f"/v2/lbaas/loadbalancers/{cfg.lb_id}")[1]["loadbalancer"]
        if lb["provisioning_status"] == "ACTIVE" and len(cfg.amphorae) == target:
            return time.monotonic() - started
        if lb["provisioning_status"] == "ERROR" or time.monotonic() > deadline:
            raise BenchError(f"scale to {target}: {lb['provisioning_status']}, {len(cfg.amphorae)} amphorae")
        time.sleep(0.2)


def long_lived_summary(conns: list[dict[str, Any]], before: dict[str, str], removed: set[str],
                       held_before: dict[int, str], held_after: dict[int, str]) -> dict[str, Any]:
    """What happened to the load client's long-lived connections across a scale event.

    ``before``: the amphorae (namespace -> id) before it; ``held_before`` / ``held_after``:
    client port -> amphora namespace holding it (``ss``) before the change and after it.
    """
    broken = [b for c in conns for b in c["broken"]]
    first_ports = [c["ports"][0] for c in conns]
    return {
        "connections": len(conns),
        "per_amphora_at_start": {ns: sum(1 for p in first_ports if held_before.get(p) == ns) for ns in before},
        "on_removed_amphora": sum(1 for p in first_ports if held_before.get(p) in removed),
        "requests_ok": sum(c["ok"] for c in conns),
        "bad_status": sum(c["bad_status"] for c in conns),
        "broken": len(broken),
        "broken_connections": sum(1 for c in conns if c["broken"]),
        "broken_on_removed_amphora": sum(1 for c in conns if c["broken"]
                                         and held_before.get(c["ports"][0]) in removed),
        "broken_errors": {e: sum(1 for b in broken if b["error"] == e) for e in {b["error"] for b in broken}},
        "broken_at_s": sorted(b["t"] for b in broken),
        "closed_cleanly_by_server": sum(c["server_closed"] for c in conns),
        "changed_amphora_while_open": sum(1 for p, ns in held_before.items()
                                          if p in held_after and held_after[p] != ns),
        "still_open_on_same_amphora": sum(1 for p, ns in held_before.items() if held_after.get(p) == ns),
    }


def scale_event(env: BenchEnv, cfg: Config, target: int, args: argparse.Namespace,
                dist: Distributor, before_probe: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Scale ``cfg`` to ``target`` under load; (what happened, the fixed-port probe afterwards)."""
    before = dict(cfg.amphorae)
    client = LoadClient(env, cfg.vip, args)
    try:
        time.sleep(1.0)
        held_before = established(list(before))
        took = resize(env, cfg, target)
        held_after = established(list(cfg.amphorae))
        time.sleep(args.settle)
        outcome = client.stop()
    finally:
        client.close()
    cfg.size = target
    after_probe = probe_new_flows(env, cfg, dist, args)
    added, removed = set(cfg.amphorae) - set(before), set(before) - set(cfg.amphorae)
    return {
        "from": len(before), "to": target, "api_to_active_s": took,
        "added": sorted(added), "removed": sorted(removed),
        "client_seconds": outcome["seconds"],
        "long_lived": long_lived_summary(outcome["connections"], before, removed, held_before, held_after),
        "short_connections": outcome["short"],
        "new_flows": moved(before_probe, after_probe, added, removed),
        "probe_after": {k: v for k, v in after_probe.items() if k in ("served", "failed")},
    }, after_probe


def scaling(env: BenchEnv, cfg: Config, dist: Distributor, args: argparse.Namespace) -> dict[str, Any]:
    probe3 = probe_new_flows(env, cfg, dist, args)
    out, probe4 = scale_event(env, cfg, cfg.size + 1, args, dist, probe3)
    console.print(f"  {out['from']}->{out['to']}: {out['api_to_active_s']:.1f}s, long-lived broken "
                  f"{out['long_lived']['broken']}, new flows moved {out['new_flows']['moved_fraction']:.3f}")
    back, probe3b = scale_event(env, cfg, cfg.size - 1, args, dist, probe4)
    console.print(f"  {back['from']}->{back['to']}: {back['api_to_active_s']:.1f}s, long-lived broken "
                  f"{back['long_lived']['broken']}, new flows moved {back['new_flows']['moved_fraction']:.3f}")
    same = moved(probe3, probe3b, set(), set())
    return {"probe_before": {k: v for k, v in probe3.items() if k in ("served", "failed")},
            "scale_out": out, "scale_in": back,
            "new_flows_3_then_3_again": {k: same[k] for k in ("ports_compared", "moved", "moved_fraction",
                                                                "bucket_slots_changed_fraction")}}
