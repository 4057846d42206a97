"""What one amphora costs and carries: throughput through it vs. straight to its member, and build time.

In one run, on a private lab with Cohort on local drivers (see ``bench.common``):

1. requests/s over keep-alive connections (``wrk -t1 -c32``) through a SINGLE load balancer
   (HTTP listener, ROUND_ROBIN pool of one member) vs. straight to that member;
2. new connections/s, every request on a new TCP connection (``-H "Connection: close"``);
3. time from ``POST /v2/lbaas/loadbalancers`` (the whole tree in one call) to the first
   request served from the lab's client namespace, over several load balancers created one
   after another, each deleted afterwards;
4. (1) and (2) again through an amphora capped at 0.25 CPU by the flavor's
   ``compute_flavor``: the per-amphora baseline that active-active clusters are compared with.

The three targets are measured in turn within each repetition (the order rotating), so
machine noise hits all of them alike; figures are medians over the repetitions. Along with
each run goes the CPU used by the member server, the amphora (its whole cgroup) and wrk, and
how busy the whole machine was, which tells which part was the bottleneck.

Paths: through the amphora, wrk runs in the lab's client namespace (client -> gateway ->
VIP on the amphora's front-end port -> HAProxy -> back-end port -> member); direct, wrk runs
in a load-generator namespace plugged onto the back-end bridge (-> member), as the client
namespace has no route to the back-end network.

Run as root: ``.venv/bin/python bench/amphora.py`` (``--help`` for the knobs). Writes
``bench/results/amphora.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    # Run as a script: make the repository importable as it is for ``python -m bench.amphora``.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rich.table import Table  # noqa: E402

from bench.common import (  # noqa: E402
    MODES,
    REPO,
    RESULTS,
    BenchEnv,
    BenchError,
    CpuWatch,
    FirstRequestProbe,
    WrkResult,
    backend_loadgen,
    bench_env,
    cgroup_quota,
    cgroup_throttling,
    command_line,
    fmt,
    haproxy_pids,
    haproxy_server_counters,
    machine_facts,
    make_console,
    median,
    parameters,
    process_threads,
    require_root_and_tools,
    run_main,
    run_wrk,
    tune_load_namespace,
    utc_now,
    write_json,
)
from cohort import netns  # noqa: E402
from cohort.lab import Lab  # noqa: E402

COMMAND = ".venv/bin/python bench/amphora.py"
MEMBER = "web"
CAP_CPU = 0.25
CAP_MEMORY_MB = 256

# Wide enough for the tables when the output is not a terminal (logs, CI).
console = make_console(130)


@dataclass
class Target:
    name: str
    namespace: str  # where wrk runs
    url: str
    path: str
    amphora_ns: str | None = None
    stats_socket: Path | None = None

    def amphora_pids(self) -> set[int]:
        if self.amphora_ns is None:
            return set()
        return netns.cgroup_pids(Lab.instance_cgroup(self.amphora_ns))


@dataclass
class Run:
    target: str
    mode: str
    repetition: int
    wrk: WrkResult
    member_cpu: float
    member_busiest_worker_cpu: float
    amphora_cpu: float
    machine_busy_cpu: float
    throttled_periods: int | None
    member_connections_opened: int | None  # by HAProxy, from its server counters
    member_connections_reused: int | None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=5, help="length of each wrk run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--member-workers", type=int, default=2, help="processes of the member server")
    parser.add_argument("--create-count", type=int, default=5, help="load balancers timed from create to serve")
    parser.add_argument("--output", type=Path, default=RESULTS / "amphora.json")
    args = parser.parse_args(argv)
    if not 1 <= args.seconds <= 30 or not 1 <= args.repetitions <= 20 or not 1 <= args.create_count <= 20:
        parser.error("keep the run bounded: --seconds 1-30, --repetitions 1-20, --create-count 1-20")
    return args


# --- 3. create to first served request ---------------------------------------------------------


def time_to_first_request(env: BenchEnv, member: str, count: int) -> list[dict[str, float]]:
    samples = []
    for i in range(count):
        probe = FirstRequestProbe(env.lab.client_ns, expect=MEMBER)
        try:
            posted = time.monotonic()
            lb = env.create_lb(f"ttfr{i}", [member])
            returned = time.monotonic()
            probe.start(env.wait_vip(lb["id"]))
            env.wait_active(lb["id"])
            active = time.monotonic()
            served = probe.served_at()
        finally:
            probe.close()
        deleting = time.monotonic()
        env.delete_lb(lb["id"])
        samples.append({
            "post_returned_s": returned - posted,
            "api_active_seen_s": active - posted,
            "first_request_served_s": served - posted,
            "delete_to_gone_s": time.monotonic() - deleting,
        })
        console.print(f"  create #{i + 1}: first request served {served - posted:.2f}s after POST")
    return samples


# --- 1, 2, 4. throughput -----------------------------------------------------------------------


def serving_lb(env: BenchEnv, name: str, member: str, flavor_id: str | None) -> tuple[str, str, Path]:
    """Create a load balancer, wait until it serves the client; (VIP, amphora namespace, HAProxy socket)."""
    lb = env.create_lb(name, [member], flavor_id)
    probe = FirstRequestProbe(env.lab.client_ns, expect=MEMBER)
    try:
        vip = env.wait_vip(lb["id"])
        probe.start(vip)
        env.wait_active(lb["id"])
        probe.served_at()
    finally:
        probe.close()
    amphorae = env.amphora_namespaces_of(lb["id"])
    sock = env.haproxy_socket(amphorae[0], lb["id"]) if len(amphorae) == 1 else None
    if sock is None or not sock.exists():
        raise BenchError(f"{name}: expected one amphora with a HAProxy socket, found {amphorae}")
    return vip, amphorae[0], sock


def measure(target: Target, mode: str, rep: int, args: argparse.Namespace,
            member_pids: Callable[[], set[int]]) -> Run:
    cgroup = Lab.instance_cgroup(target.amphora_ns) if target.amphora_ns else None
    before = cgroup_throttling(cgroup) if cgroup else {}
    counters0 = haproxy_server_counters(target.stats_socket) if target.stats_socket else {}
    watch = CpuWatch({"member": member_pids, "amphora": target.amphora_pids})
    watch.start()
    result = run_wrk(target.namespace, target.url, threads=1, connections=args.connections,
                     seconds=args.seconds, close=MODES[mode])
    cpu, machine = watch.stop()
    after = cgroup_throttling(cgroup) if cgroup else {}
    counters1 = haproxy_server_counters(target.stats_socket) if target.stats_socket else {}
    throttled = after.get("nr_throttled", 0) - before.get("nr_throttled", 0) if cgroup else None
    opened, reused = (counters1["connect"] - counters0["connect"], counters1["reuse"] - counters0["reuse"]) \
        if target.stats_socket else (None, None)
    return Run(target.name, mode, rep, result, cpu["member"].total, cpu["member"].busiest,
               cpu["amphora"].total, machine, throttled, opened, reused)


def throughput(targets: list[Target], args: argparse.Namespace, member_ns: str) -> list[Run]:
    def member_pids() -> set[int]:
        return netns.netns_pids(member_ns)

    for target in targets:  # warm-up: connection pools, ARP, page cache; not recorded
        run_wrk(target.namespace, target.url, threads=1, connections=args.connections, seconds=1, close=False)
    runs: list[Run] = []
    for mode in MODES:
        for rep in range(args.repetitions):
            order = targets[rep % len(targets):] + targets[:rep % len(targets)]
            for target in order:
                run = measure(target, mode, rep, args, member_pids)
                runs.append(run)
                console.print(f"  {mode:<14} rep {rep + 1} {target.name:<16} {run.wrk.rps:>10,.0f} req/s"
                              f"  (errors {run.wrk.errors})")
    return runs


def summarise(runs: list[Run], targets: list[Target], seconds: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for mode in MODES:
        per_target: dict[str, Any] = {}
        for target in targets:
            mine = [r for r in runs if r.mode == mode and r.target == target.name]
            rps = [r.wrk.rps for r in mine]
            amphora_cpu = median([r.amphora_cpu for r in mine])
            member_cpu = median([r.member_cpu for r in mine])
            rate = median(rps)
            per_target[target.name] = {
                "path": target.path,
                "requests_per_s_median": rate,
                "requests_per_s_min": min(rps),
                "requests_per_s_max": max(rps),
                "latency_p50_ms_median": median([r.wrk.p50_ms for r in mine]),
                "latency_p99_ms_median": median([r.wrk.p99_ms for r in mine]),
                "errors_total": sum(r.wrk.errors for r in mine),
                "member_cpu_median": member_cpu,
                "member_busiest_worker_cpu_max": max(r.member_busiest_worker_cpu for r in mine),
                "amphora_cpu_median": amphora_cpu if target.amphora_ns else None,
                "amphora_cpu_us_per_request": 1e6 * amphora_cpu / rate if target.amphora_ns and rate else None,
                "member_cpu_us_per_request": 1e6 * member_cpu / rate if rate else None,
                "wrk_cpu_median": median([r.wrk.cpu_seconds / seconds for r in mine]),
                "machine_busy_cpu_median": median([r.machine_busy_cpu for r in mine]),
                # Kernel network processing not charged to a process, and everyone else's work.
                "rest_of_machine_cpu_median": median([r.machine_busy_cpu - r.member_cpu - r.amphora_cpu
                                                      - r.wrk.cpu_seconds / seconds for r in mine]),
                "throttled_periods_median": median([float(r.throttled_periods or 0) for r in mine])
                if target.amphora_ns else None,
                "member_connections_opened_per_request": median(
                    [(r.member_connections_opened or 0) / max(r.wrk.requests, 1) for r in mine])
                if target.stats_socket else None,
            }
        direct = per_target["direct"]["requests_per_s_median"]
        for name, figures in per_target.items():
            if name == "direct":
                continue
            paired = [a.wrk.rps / d.wrk.rps for a in runs for d in runs
                      if a.mode == d.mode == mode and a.target == name and d.target == "direct"
                      and a.repetition == d.repetition and d.wrk.rps]
            figures["ratio_to_direct"] = figures["requests_per_s_median"] / direct if direct else None
            figures["ratio_to_direct_paired_median"] = median(paired)
        out[mode] = per_target
    return out


# --- report ------------------------------------------------------------------------------------


def print_report(report: dict[str, Any]) -> None:
    nproc = report["machine"]["nproc"]
    rates = Table(title="Throughput: one amphora vs. straight to the member (medians of the repetitions)")
    cpu = Table(title="Where the CPU went (medians, in CPUs = CPU-seconds per second)")
    for column in ("mode", "target", "req/s", "min - max", "vs direct", "paired", "p50 ms", "p99 ms", "errors"):
        rates.add_column(column, justify="left" if column in ("mode", "target") else "right")
    for column in ("mode", "target", "member", "busiest worker", "amphora", "amphora µs/req",
                   "member conns/req", "wrk", "rest", f"machine (of {nproc})", "throttled"):
        cpu.add_column(column, justify="left" if column in ("mode", "target") else "right")
    for mode, per_target in report["throughput"].items():
        for name, f in per_target.items():
            rates.add_row(
                mode, name, f"{f['requests_per_s_median']:,.0f}",
                f"{f['requests_per_s_min']:,.0f} - {f['requests_per_s_max']:,.0f}",
                fmt(f.get("ratio_to_direct"), ".2f"), fmt(f.get("ratio_to_direct_paired_median"), ".2f"),
                f"{f['latency_p50_ms_median']:.2f}",
                f"{f['latency_p99_ms_median']:.2f}", str(f["errors_total"]),
            )
            cpu.add_row(
                mode, name, f"{f['member_cpu_median']:.2f}", f"{f['member_busiest_worker_cpu_max']:.2f}",
                fmt(f["amphora_cpu_median"], ".2f"), fmt(f["amphora_cpu_us_per_request"], ".0f"),
                fmt(f["member_connections_opened_per_request"], ".2f"), f"{f['wrk_cpu_median']:.2f}",
                f"{f['rest_of_machine_cpu_median']:.2f}", f"{f['machine_busy_cpu_median']:.2f}",
                fmt(f["throttled_periods_median"], ".0f"),
            )
        rates.add_section()
        cpu.add_section()
    console.print(rates)
    console.print("vs direct: ratio of the medians; paired: median of the per-repetition ratios "
                  "(each against the direct run of the same repetition)")
    console.print(cpu)
    paths = Table(title="Paths")
    paths.add_column("target")
    paths.add_column("path")
    for name, path in report["paths"].items():
        paths.add_row(name, path)
    console.print(paths)
    create = report["create_to_first_request"]
    ttfr = Table(title=f"POST /v2/lbaas/loadbalancers -> first request served ({create['count']} load balancers)")
    for column in ("from the POST to", "median s", "min s", "max s"):
        ttfr.add_column(column, justify="left" if column == "from the POST to" else "right")
    for key, label in (("post_returned_s", "POST returned"), ("api_active_seen_s", "API shows ACTIVE"),
                       ("first_request_served_s", "first request served"), ("delete_to_gone_s", "(delete -> 404)")):
        values = [s[key] for s in create["samples"]]
        ttfr.add_row(label, f"{median(values):.2f}", f"{min(values):.2f}", f"{max(values):.2f}")
    console.print(ttfr)
    amp = report["amphora"]
    console.print(f"HAProxy worker threads: {amp['haproxy_worker_threads']} (nproc {nproc}); capped amphora "
                  f"CPU quota: {amp['capped_cpu_quota']}; member server workers: {report['member']['workers']}; "
                  f"machine busy before the run (other load): {report['machine']['busy_cpu_before_run']:.2f} "
                  f"of {nproc} CPUs")
    console.print(f"Reproduce (as root, in {REPO}): [bold]{report.get('command', COMMAND)}[/bold]")


def haproxy_worker_threads(amphora_ns: str) -> int:
    # The master is ``haproxy -W``; its worker is the one with more than one thread, or any.
    return max((process_threads(p) for p in haproxy_pids(Lab.instance_cgroup(amphora_ns))), default=0)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    require_root_and_tools("wrk", "haproxy", "ip")
    started = time.monotonic()
    report: dict[str, Any] = {"benchmark": "amphora", "timestamp": utc_now(), "command": command_line(COMMAND, argv),
                              "machine": machine_facts(), "parameters": parameters(args)}
    with bench_env("b") as env:
        lab = env.lab
        tune_load_namespace(lab.client_ns)
        member = lab.add_member(MEMBER, workers=args.member_workers)
        report["member"] = {"address": member, "workers": args.member_workers, "server": "cohort.lab_member"}
        console.print(f"lab {lab.prefix} up; member {member} ({args.member_workers} workers)")

        console.print("create -> first request:")
        samples = time_to_first_request(env, member, args.create_count)
        served = [s["first_request_served_s"] for s in samples]
        report["create_to_first_request"] = {
            "count": len(samples), "median_s": median(served), "min_s": min(served), "max_s": max(served),
            "target_s": 3.0, "met": median(served) < 3.0, "samples": samples,
            "path": "client namespace -> gateway -> VIP (new TCP connection every 10 ms, 100 ms connect timeout)",
        }

        capped_flavor = env.flavor("capped", {"compute_flavor": {"cpu": CAP_CPU, "memory_mb": CAP_MEMORY_MB}})
        vip, amp_ns, amp_sock = serving_lb(env, "plain", member, None)
        capped_vip, capped_ns, capped_sock = serving_lb(env, "capped", member, capped_flavor)
        report["amphora"] = {
            "plain": {"vip": vip, "namespace": amp_ns, "cpu_quota": cgroup_quota(Lab.instance_cgroup(amp_ns))},
            "capped": {"vip": capped_vip, "namespace": capped_ns,
                       "compute_flavor": {"cpu": CAP_CPU, "memory_mb": CAP_MEMORY_MB}},
            "capped_cpu_quota": cgroup_quota(Lab.instance_cgroup(capped_ns)),
            "haproxy_worker_threads": haproxy_worker_threads(amp_ns),
        }
        if report["amphora"]["capped_cpu_quota"] != CAP_CPU:
            raise BenchError(f"capped amphora has CPU quota {report['amphora']['capped_cpu_quota']}, not {CAP_CPU}")

        with backend_loadgen(lab) as (loadgen_ns, loadgen_ip):
            through = "lab client namespace -> gateway -> VIP -> HAProxy -> member"
            targets = [
                Target("direct", loadgen_ns, f"http://{member}/",
                       f"load-generator namespace {loadgen_ip} on the back-end bridge -> member {member}"),
                Target("amphora", lab.client_ns, f"http://{vip}/", f"{through} (no CPU cap)", amp_ns, amp_sock),
                Target("amphora_0.25cpu", lab.client_ns, f"http://{capped_vip}/",
                       f"{through} (amphora cgroup quota {CAP_CPU} CPU)", capped_ns, capped_sock),
            ]
            report["paths"] = {t.name: t.path for t in targets}
            console.print("throughput:")
            runs = throughput(targets, args, lab.member_ns(MEMBER))
        report["throughput"] = summarise(runs, targets, args.seconds)
        report["runs"] = [{**asdict(r), "wrk": asdict(r.wrk)} for r in runs]
    report["elapsed_s"] = time.monotonic() - started
    write_json(args.output, report)
    print_report(report)
    console.print(f"wrote {args.output} ({report['elapsed_s']:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, console))
