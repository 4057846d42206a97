"""The measured runs: one generator run against one target, with where the CPU went meanwhile.

Owns what is loaded (:class:`Target`: the members directly, or a load balancer with its amphorae's
NAPI threads in or out of their capped cgroups), one run (:func:`measure`: the generator started
in its namespace, snapshots around it of every group's CPU, each amphora's cgroup throttling and
the machine's processes by owner), and the rotation of targets over repetitions
(:func:`rotation`).
"""

from __future__ import annotations

import argparse
import functools
import os
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.active_active.census import census_delta, lab_netns_inodes, process_census
from bench.active_active.setup import Config
from bench.common import CLK_TCK, BenchEnv, BenchError, cgroup_throttling, system_busy_seconds
from bench.udp.napi import AmphoraLinks
from bench.udp.setup import (
    UDP_PORT,
    LoadGen,
    Members,
    SourcePool,
    addresses_per_run,
    parse_result,
    read_ready,
    start_tool,
    stop_tool,
)
from cohort import netns
from cohort.lab import CLIENT_IP, Lab

METRICS = ("pps", "flows")


@dataclass
class Target:
    """What one run loads: ``DIRECT`` (the members, no amphora), or a load balancer whose amphorae's
    kernel threads are on their CPU reservation (``capped``) or not."""

    name: str  # DIRECT | SINGLE-uncapped | SINGLE | AA2 | AA3 | AA4
    size: int  # amphorae on the path (0: direct)
    capped: bool
    config: Config | None = None
    links: list[AmphoraLinks] = field(default_factory=list)  # empty: the lab's own path (inline)

    def destinations(self, members: Members) -> list[str]:
        return members.targets if self.config is None else [f"{self.config.vip}:{UDP_PORT}"]

    def place(self, cap: float, period_us: int) -> None:
        """Its amphorae's kernel threads on their reservation of ``cap`` CPU each, or not capped."""
        for links in self.links:
            links.place(self.capped, cap, period_us)


def rotation(items: Sequence[Target], rep: int) -> list[Target]:
    """The targets in the order of repetition ``rep``: rotated by one each time."""
    if not items:
        return []
    k = rep % len(items)
    return [*items[k:], *items[:k]]


@dataclass
class Run:
    phase: str  # kthread (amphora kernel in NAPI threads) | inline (the lab's own path)
    target: str
    size: int
    capped: bool
    metric: str
    repetition: int
    rate: float  # answers per second in the counted window
    offered: int  # pps: sockets (flows) with --window outstanding each; flows: flows in flight
    counts: dict[str, Any]  # the generator's Counts
    generator_cpu: float  # CPUs: CPU seconds per second of the run (the tool and its workers)
    machine_busy_cpu: float
    member_cpu: float
    nic_cpu: float  # the generator's NIC thread (what it sends, up to the amphora or the member)
    amphora_kernel_cpu: dict[str, float]  # each amphora's NAPI threads (its kernel's packet work)
    amphora_process_cpu: dict[str, float]  # each amphora's processes (the agent)
    network_kernel_cpu: float  # the switch-side NAPI threads of the target's amphora links
    distributor_cpu: float  # the distributor's processes (its agent; its forwarding is in nic_cpu)
    throttled: dict[str, float]  # of each amphora's cgroup's CFS periods, throttled (its processes: the agent)
    processes: dict[str, Any]  # lab / kthread / other processes (bench.active_active.census)
    wall_s: float
    thread_cpu: dict[str, float] = field(default_factory=dict)  # "amphora/link" -> its NAPI thread's CPUs


@dataclass
class Context:
    env: BenchEnv
    args: argparse.Namespace
    members: Members
    member_pids: set[int]
    direct: LoadGen
    client_nic: set[int]
    pool: SourcePool
    distributor_ns: str | None
    waits: list[float] = field(default_factory=list)


def tool_args(metric: str, destinations: Sequence[str], sources: Sequence[str], offered: int,
              args: argparse.Namespace) -> list[str]:
    """The generator's command line for one run (``bench.udp.load``)."""
    out = [metric, "--targets", ",".join(destinations), "--sources", ",".join(sources),
           "--processes", str(args.processes), "--seconds", str(args.seconds), "--warmup", str(args.warmup),
           "--payload", str(args.payload)]
    if metric == "pps":
        return [*out, "--sockets", str(offered), "--window", str(args.window), "--timeout", str(args.timeout)]
    return [*out, "--concurrency", str(offered), "--timeout", str(args.flow_timeout),
            "--max-count", str(args.max_flows)]


def offered_load(target: Target, metric: str, args: argparse.Namespace) -> int:
    """Sockets (pps) or flows in flight (flows): ``--per-amphora`` for each amphora, as much direct."""
    per = int(args.per_amphora if metric == "pps" else args.flows_per_amphora)
    return per * max(1, target.size)


def _sources(ctx: Context, target: Target, metric: str) -> list[str]:
    if target.config is None:
        return ctx.direct.sources
    if metric == "pps":
        return [CLIENT_IP]
    want = addresses_per_run(ctx.args.max_flows)
    chosen, wait = ctx.pool.take(want, time.monotonic())
    if wait > 0:  # every address was used too recently: its flows would not be new
        ctx.waits.append(wait)
        time.sleep(wait)
        chosen, wait = ctx.pool.take(want, time.monotonic())
        if wait > 0:
            raise BenchError("no fresh source addresses for new flows")
    return chosen


def measure(ctx: Context, target: Target, metric: str, rep: int, phase: str) -> Run:
    """One bounded generator run against ``target``; what it counted and where the CPU went."""
    args, lab = ctx.args, ctx.env.lab
    target.place(args.kernel_cap, args.kernel_period_us)
    amphorae = sorted(target.config.amphorae) if target.config is not None else []
    links = {lk.namespace: lk for lk in target.links}
    cgroups = {ns: Lab.instance_cgroup(ns) for ns in amphorae}
    groups: dict[str, Callable[[], set[int]]] = {"members": lambda: ctx.member_pids}
    # Kernel threads are timed by the scheduler's own clock (schedstat): their tick-sampled times
    # miss most of the short bursts of a thread on a reservation of a few ms a second.
    kthreads: dict[str, set[int]] = {
        "nic": ctx.direct.nic_threads if target.config is None else ctx.client_nic,
        "network": set().union(*(lk.outer_pids() for lk in target.links)),
    }
    for ns, cg in cgroups.items():
        kernel = links[ns].inner_pids() if ns in links else set()
        kthreads["kernel:" + ns] = kernel
        groups["processes:" + ns] = functools.partial(_cgroup_processes, cg, kernel)
        for end in links[ns].inner if ns in links else []:
            if end.pid:
                kthreads[f"thread:{ns}/{end.dev}"] = {end.pid}
    if target.size > 1 and ctx.distributor_ns:
        dist_cg = Lab.instance_cgroup(ctx.distributor_ns)
        groups["distributor"] = lambda: netns.cgroup_pids(dist_cg)
    ns = ctx.direct.namespace if target.config is None else lab.client_ns
    offered = offered_load(target, metric, args)
    proc = start_tool(ns, *tool_args(metric, target.destinations(ctx.members), _sources(ctx, target, metric),
                                     offered, args))
    try:
        read_ready(proc, f"{metric} generator")
        inodes = lab_netns_inodes(lab)
        throttle0 = {ns: cgroup_throttling(cg) for ns, cg in cgroups.items()}
        pids0 = {name: pids() for name, pids in groups.items()}
        busy0 = system_busy_seconds()
        census0, t0 = process_census(inodes), time.monotonic()
        tree0 = {name: tree_cpu(found) for name, found in pids0.items()}
        runtime0 = {name: runtime_seconds(pids) for name, pids in kthreads.items()}
        out, err = proc.communicate("go\n", timeout=args.warmup + args.seconds + 30)
        tree1 = {name: tree_cpu(pids() | pids0[name]) for name, pids in groups.items()}
        wall = time.monotonic() - t0
        machine = (system_busy_seconds() - busy0) / wall
        cpu = {name: tree_delta(tree0[name], tree1[name]) / wall for name in groups}
        kcpu = {name: (runtime_seconds(pids) - runtime0[name]) / wall for name, pids in kthreads.items()}
        processes = census_delta(census0, process_census(inodes), wall)
        throttle1 = {ns: cgroup_throttling(cg) for ns, cg in cgroups.items()}
    except subprocess.TimeoutExpired:
        raise BenchError(f"the {metric} generator overran its time against {target.name}") from None
    finally:
        stop_tool(proc)
    if proc.returncode != 0:
        raise BenchError(f"the {metric} generator failed against {target.name}: {err[-2000:]}")
    counts = parse_result(out)
    throttled = {ns: (throttle1[ns].get("nr_throttled", 0) - throttle0[ns].get("nr_throttled", 0))
                 / max(1, throttle1[ns].get("nr_periods", 0) - throttle0[ns].get("nr_periods", 0)) for ns in cgroups}
    counted = float(counts.get("counted_s") or 0.0)
    return Run(phase, target.name, target.size, target.capped, metric, rep,
               counts["answered"] / counted if counted > 0 else 0.0, offered, counts,
               float(counts["cpu_s"]) / max(1e-6, args.warmup + args.seconds), machine, cpu["members"],
               kcpu["nic"], {ns: kcpu["kernel:" + ns] for ns in cgroups},
               {ns: cpu["processes:" + ns] for ns in cgroups}, kcpu["network"],
               cpu.get("distributor", 0.0), throttled, processes, wall,
               {k.removeprefix("thread:"): v for k, v in kcpu.items() if k.startswith("thread:")})


def tree_cpu(pids: set[int]) -> dict[int, float]:
    """pid -> CPU seconds of the process and of its children it has reaped (utime + stime + cutime +
    cstime): an agent's short-lived ``nft`` children are counted in it once they are gone."""
    found: dict[int, float] = {}
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        found[pid] = sum(int(f) for f in fields[11:15]) / CLK_TCK
    return found


def tree_delta(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds between two :func:`tree_cpu` readings: the growth of every process seen both times
    and all of those started since; one gone since counts nothing (its parent reaped it, or it is
    lost: never a negative share, as subtracting what it had used before would give)."""
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


def runtime_seconds(pids: set[int]) -> float:
    """CPU time the scheduler ran these threads (``/proc/PID/schedstat``, ns), summed; 0 for one gone."""
    total = 0
    for pid in pids:
        try:
            total += int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return total / 1e9


def _cgroup_processes(cgroup: str, kernel: set[int]) -> set[int]:
    """The processes of an amphora's cgroup, without the kernel threads placed there."""
    return netns.cgroup_pids(cgroup) - kernel


def log_line(run: Run) -> str:
    throttled = (f"throttled {min(run.throttled.values()):.0%}-{max(run.throttled.values()):.0%}"
                 if run.throttled else "")
    kernel = f"amphora kernel {sum(run.amphora_kernel_cpu.values()):.2f}" if run.amphora_kernel_cpu else ""
    c = run.counts
    return (f"  {run.phase:<7} rep {run.repetition + 1} {run.metric:<5} {run.target:<15} {run.rate:>9,.0f}/s  "
            f"lost {c['lost']} refused {c['refused']}  generator {run.generator_cpu:.2f}  machine "
            f"{run.machine_busy_cpu:.2f} CPU  {kernel}  {throttled}  others {run.processes['other']:.2f}")


def pids_of(namespaces: Sequence[str]) -> set[int]:
    return set().union(*(netns.netns_pids(ns) for ns in namespaces)) - {os.getpid()}
