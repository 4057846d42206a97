"""2. Latency the distributor adds, at low load, on one ACTIVE_ACTIVE load balancer.

Owns the sampler's namespace on the lab's front-end bridge (two source addresses: from one the
VIP is on-link, answered by the distributor; the other is policy-routed to one amphora's
front-end address, which the distributor agent's status names), the sampler process
(``tools latency``) and the percentiles of its samples per path.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
from typing import Any

from bench.active_active.setup import Config, Distributor
from bench.active_active.tools import start_tool
from bench.common import BenchEnv, BenchError, cgroup_quota, cgroup_throttling, lab_namespace, median
from cohort import netns
from cohort.lab import Lab


class LatencyWorker:
    """A sampler running in a namespace; ``batch(kind, n, gap)`` asks it for n samples per source."""

    def __init__(self, ns: str, vip: str, sources: dict[str, str], realtime: bool) -> None:
        spec = ",".join(f"{k}={v}" for k, v in sources.items())
        self.proc = start_tool(ns, "latency", vip, "--sources", spec, realtime=realtime)
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            self.close()
            raise BenchError(f"latency sampler in {ns} did not start")

    def batch(self, kind: str, count: int, gap: float) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{kind} {count} {gap}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise BenchError("latency sampler died")
        return dict(json.loads(line))

    def close(self) -> None:
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def percentiles(samples: list[float]) -> dict[str, float]:
    if len(samples) < 2:
        return {"p50_us": float("nan"), "p90_us": float("nan"), "p99_us": float("nan"), "n": len(samples)}
    cuts = statistics.quantiles(samples, n=100)
    return {"p50_us": cuts[49], "p90_us": cuts[89], "p99_us": cuts[98], "n": len(samples)}


PATHS = ("direct", "distributor")


def latency(env: BenchEnv, cfg: Config, dist: Distributor, args: argparse.Namespace) -> dict[str, Any]:
    """Connect and keep-alive request times via the distributor vs. straight to one amphora.

    One sampler in one namespace alternates sample by sample between two source addresses: from
    one the VIP is on-link (the distributor answers ARP for it), the other has a policy rule to
    a table whose /32 route sends the VIP to one amphora's front-end address. So both paths see
    the same machine noise at the same time.
    """
    target_ns = sorted(cfg.amphorae)[0]
    # The amphora's front-end address, where the distributor forwards its share of the VIP.
    member = dist.status(env)["vips"][cfg.lb_id]["members"].get(cfg.amphorae[target_ns], {})
    if not member.get("frontend_ip"):
        raise BenchError(f"the distributor does not forward {cfg.name}'s VIP to amphora {target_ns}")
    amphora_ip = str(member["frontend_ip"])
    cgroups = [Lab.instance_cgroup(ns) for ns in cfg.amphorae]
    with lab_namespace(env.lab, "latency", "public", 2) as (ns, (via_dist, via_direct)):
        netns.run_in(ns, ["ip", "rule", "add", "pref", "100", "from", via_direct, "lookup", "100"])
        netns.run_in(ns, ["ip", "route", "add", f"{cfg.vip}/32", "via", amphora_ip, "dev", "eth0", "onlink",
                          "table", "100"])
        sources = {"distributor": via_dist, "direct": via_direct}
        worker = LatencyWorker(ns, cfg.vip, sources, args.latency_realtime)
        batches: list[dict[str, Any]] = []
        throttled0 = sum(cgroup_throttling(cg).get("nr_throttled", 0) for cg in cgroups)
        try:
            for rnd in range(args.latency_rounds):
                for kind in ("connect", "http"):
                    batches.append({"round": rnd, "kind": kind,
                                    **worker.batch(kind, args.latency_samples, args.latency_gap_ms / 1e3)})
        finally:
            worker.close()
        throttled = sum(cgroup_throttling(cg).get("nr_throttled", 0) for cg in cgroups) - throttled0
    out: dict[str, Any] = {
        "cap_cpu": cgroup_quota(cgroups[0]), "load_balancer": cfg.name, "vip": cfg.vip,
        "paths": {
            "distributor": f"{via_dist} (a namespace on the front-end bridge) -> VIP, on-link: the distributor "
                           f"answers ARP -> distributor -> one of {cfg.size} amphorae -> straight back",
            "direct": f"{via_direct} (same namespace, policy-routed) -> VIP via {amphora_ip}, one amphora's "
                      f"front-end address -> that amphora -> straight back",
        },
        "method": f"one sampler alternating sample by sample between the two paths, {args.latency_gap_ms} ms apart; "
                  f"{args.latency_rounds} rounds of {args.latency_samples} samples per path and kind; sampler "
                  f"{'SCHED_FIFO 1' if args.latency_realtime else 'SCHED_OTHER'}",
        "amphora_throttled_periods_during": throttled, "kinds": {}}
    for kind in ("connect", "http"):
        mine = [b for b in batches if b["kind"] == kind]
        stats = {p: percentiles([x for b in mine for x in b["samples_us"][p]]) for p in PATHS}
        per_round = []
        for b in mine:
            got = {p: percentiles(b["samples_us"][p]) for p in PATHS}
            per_round.append({q: got["distributor"][q] - got["direct"][q] for q in ("p50_us", "p99_us")})
        out["kinds"][kind] = {
            **{p: {**stats[p], "failures": sum(b["failures"][p] for b in mine)} for p in PATHS},
            **{f"added_{q}": stats["distributor"][q] - stats["direct"][q] for q in ("p50_us", "p90_us", "p99_us")},
            "added_p50_us_round_median": median([d["p50_us"] for d in per_round]),
            "added_p99_us_round_median": median([d["p99_us"] for d in per_round]),
            "per_round_added": per_round,
        }
    return out
