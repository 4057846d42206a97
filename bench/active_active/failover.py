"""An amphora dies: the new-connection failure window, and the time until its replacement carries traffic.

For one cluster (L2 behind the distributor, L3 with BFD, L3 with BGP hold timers only): a
stream of new connections from the client namespace (``tools stream``: a few loops, one
request per connection, every attempt timed on CLOCK_MONOTONIC, which this process shares),
then ``kill -9`` of every process in one amphora's namespace (``lab.instance_ns``; ``ip netns
pids``). Observed from outside: when the dead amphora leaves the data path (L3: its next hop
leaves the router's installed route, polled every 10 ms; L2: the distributor agent's status
marks it unhealthy), when the admin API lists a replacement, when the replacement is in the
data path again (L3: the router's route has N next hops again; L2: the distributor lists it
healthy) and when its HAProxy's frontend request counter grows (it serves the stream). The
failure window is the span of the start times of the failed new connections (first to last).

A killed amphora's kernel lives on and closes its BGP session (a FIN to the router) at once, so
a kill does not show what BFD or hold timers detect. The ``link`` mode is the silent death:
the switch's end of the amphora's front-end link goes down, so nothing more arrives from it or
reaches it; detection is then BFD's, the hold timer's or the distributor probes'. No
replacement follows (the amphora's management link and heartbeats live on): the link comes back
up, and the time until the amphora is in the data path again is recorded.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import time
from collections.abc import Callable
from typing import Any

from bench.active_active.cli import console
from bench.active_active.l3 import front_ends
from bench.active_active.setup import Config, Distributor
from bench.active_active.tools import start_tool
from bench.common import BenchEnv, BenchError, haproxy_frontend_requests, kill_after, median
from cohort import netns

# Rounds of SIGSTOP over an amphora's processes before they are killed (a stopped process forks nothing).
STOP_ROUNDS = 20

EPISODE_GAP = 0.5  # failures further apart than this are separate episodes


class Stream:
    """The ``stream`` tool in the client namespace: new connections until stopped."""

    def __init__(self, env: BenchEnv, vip: str, args: argparse.Namespace) -> None:
        self.proc = start_tool(env.lab.client_ns, "stream", vip, "--short-workers", str(args.failover_workers),
                               "--short-pause", str(args.failover_pause), "--max-seconds", "200")
        self.timer = kill_after(self.proc, 220)
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            self.close()
            raise BenchError("connection stream did not start")

    def stop(self) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        out = self.proc.stdout.read()
        self.close()
        if self.proc.returncode != 0 or not out.strip():
            raise BenchError(f"connection stream failed ({self.proc.returncode})")
        return dict(json.loads(out.strip().splitlines()[-1]))

    def close(self) -> None:
        self.timer.cancel()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def kill_amphora(env: BenchEnv, amphora_id: str) -> int:
    """The amphora dies as its VM would, all at once; how many processes it had.

    Every process in its namespace is stopped first (SIGSTOP, again until no new one appears), then
    killed: signalled one by one, its agent's supervisor restarted a killed HAProxy before the agent
    itself was killed, and in one chaos run that HAProxy outlived the rest of the amphora."""
    ns = env.lab.instance_ns(amphora_id, "amphora")
    stopped: set[int] = set()
    for _ in range(STOP_ROUNDS):
        pids = set(netns.netns_pids(ns)) - stopped
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        stopped |= pids
    for pid in stopped:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return len(stopped)


def switch_port(env: BenchEnv, amphora_id: str, address: str) -> str:
    """The switch's end (in the lab's switch namespace) of the amphora's link holding ``address``."""
    ns = env.lab.instance_ns(amphora_id, "amphora")
    links = json.loads(netns.run_in(ns, ["ip", "-j", "-4", "addr", "show"]).stdout)
    link = next((x for x in links if any(a.get("local") == address for a in x.get("addr_info", []))), None)
    if link is None or "link_index" not in link:
        raise BenchError(f"no veth with {address} in {ns}")
    for peer in json.loads(netns.run_in(env.lab.sw_ns, ["ip", "-j", "link", "show"]).stdout):
        if peer["ifindex"] == link["link_index"]:
            return str(peer["ifname"])
    raise BenchError(f"the switch end of {ns}'s {link['ifname']} is not in {env.lab.sw_ns}")


def window(stream: dict[str, Any], killed_at: float) -> dict[str, Any]:
    """The failures of the stream relative to the kill: span, count, episodes, errors."""
    fails = sorted(stream["failures"], key=lambda f: f["t0"])
    after = [f for f in fails if f["t1"] >= killed_at]
    episodes: list[dict[str, Any]] = []
    for f in after:
        if episodes and f["t0"] - episodes[-1]["end_s"] - killed_at <= EPISODE_GAP:
            episodes[-1]["end_s"] = max(episodes[-1]["end_s"], f["t1"] - killed_at)
            episodes[-1]["failures"] += 1
        else:
            episodes.append({"start_s": f["t0"] - killed_at, "end_s": f["t1"] - killed_at, "failures": 1})
    return {
        "attempts": int(stream["ok"]) + len(fails), "ok": int(stream["ok"]), "failed": len(after),
        "failed_before_kill": len(fails) - len(after),
        "rate_per_s": (int(stream["ok"]) + len(fails)) / max(1e-3, stream["end_t"] - stream["first_t"]),
        "window_s": (after[-1]["t0"] - after[0]["t0"]) if after else 0.0,
        "first_failure_after_kill_s": after[0]["t0"] - killed_at if after else None,
        "last_failure_end_after_kill_s": max(f["t1"] for f in after) - killed_at if after else None,
        "episodes": [{k: round(v, 4) for k, v in e.items()} for e in episodes],
        "errors": {e: sum(1 for f in after if f["error"] == e) for e in {f["error"] for f in after}},
    }


def _until(check: Callable[[], bool], timeout: float, interval: float, what: str) -> float:
    """Poll ``check`` until true; the monotonic time it first was."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise BenchError(f"{what} not within {timeout}s")
        time.sleep(interval)
    return time.monotonic()


def one_failure(env: BenchEnv, cfg: Config, victim_index: int, args: argparse.Namespace,
                dist: Distributor | None, mode: str) -> dict[str, Any]:
    """Kill one amphora of ``cfg`` (``mode`` kill) or take its front-end link down (``link``) under a
    stream of new connections; what the client and the system saw."""
    cfg.refresh(env)
    fronts = front_ends(env, cfg.lb_id)
    victim = sorted(fronts)[victim_index % len(fronts)]
    size = len(fronts)
    new: list[str] = []

    def members() -> dict[str, Any]:
        assert dist is not None
        return dict(dist.status(env)["vips"].get(cfg.lb_id, {}).get("members", {}))

    def out_of_path() -> bool:
        if cfg.l3:
            return fronts[victim] not in env.lab.router.routes().get(cfg.vip, [])
        return not members().get(victim, {}).get("healthy", False)

    def listed() -> bool:
        new[:] = sorted(set(front_ends(env, cfg.lb_id)) - set(fronts))
        return bool(new)

    def in_path() -> bool:
        if cfg.l3:
            hops = env.lab.router.routes().get(cfg.vip, [])
            return len(hops) == size and set(hops) == set(front_ends(env, cfg.lb_id).values())
        return bool(members().get(new[0] if new else victim, {}).get("healthy", False))

    def serving() -> bool:
        return haproxy_frontend_requests(env.haproxy_socket(env.lab.instance_ns(new[0], "amphora"), cfg.lb_id)) > 0

    port = switch_port(env, victim, fronts[victim]) if mode == "link" else ""
    out: dict[str, Any] = {"mode": mode, "victim": victim}
    stream = Stream(env, cfg.vip, args)
    try:
        time.sleep(args.failover_lead)
        killed_at = time.monotonic()
        if mode == "link":
            netns.run_in(env.lab.sw_ns, ["ip", "link", "set", port, "down"])
        else:
            out["processes_killed"] = kill_amphora(env, victim)
        out["out_of_data_path_s"] = _until(out_of_path, 30, 0.01, "the victim out of the data path") - killed_at
        if mode == "link":
            time.sleep(1.5)  # the stream's attempts caught by the dead link time out (1 s)
            result = stream.stop()
            netns.run_in(env.lab.sw_ns, ["ip", "link", "set", port, "up"])
            up = time.monotonic()
            out["link_down_s"] = up - killed_at
            out["back_in_data_path_after_link_up_s"] = _until(in_path, args.replace_timeout, 0.05,
                                                              "the amphora back in the data path") - up
        else:
            out["replacement_listed_s"] = _until(listed, args.replace_timeout, 0.1, "a replacement") - killed_at
            routed = _until(in_path, args.replace_timeout, 0.05, "the replacement in the data path")
            served = _until(serving, 30, 0.05, "the replacement's HAProxy serving")
            time.sleep(0.5)
            result = stream.stop()
            out.update({"replacement": new[0], "replacement_in_data_path_s": routed - killed_at,
                        "replacement_serving_s": served - killed_at,
                        "replacement_carries_traffic_s": max(routed, served) - killed_at})
    finally:
        stream.close()
        if port:
            netns.run_in(env.lab.sw_ns, ["ip", "link", "set", port, "up"], check=False)
    env.wait_active(cfg.lb_id, timeout=120)
    cfg.refresh(env)
    return {**out, "new_connections": window(result, killed_at)}


def failure_windows(env: BenchEnv, label: str, cfg: Config, args: argparse.Namespace,
                    dist: Distributor | None, target_s: float | None, mode: str) -> dict[str, Any]:
    """``args.failover_repeats`` failures (``mode``: kill | link) of an amphora of ``cfg``, one at a time."""
    runs = []
    for rep in range(args.failover_repeats):
        run = one_failure(env, cfg, rep, args, dist, mode)
        runs.append(run)
        nc = run["new_connections"]
        then = (f"replacement carries traffic {run['replacement_carries_traffic_s']:.1f}s" if mode == "kill" else
                f"back {run['back_in_data_path_after_link_up_s']:.1f}s after link up")
        console.print(f"  {mode} {label} #{rep + 1}: window {nc['window_s']:.3f}s, {nc['failed']} of "
                      f"{nc['attempts']} failed, out of the data path {run['out_of_data_path_s']:.3f}s, {then}")
    windows = [r["new_connections"]["window_s"] for r in runs]
    out = {
        "mode": mode, "load_balancer": cfg.name, "amphorae": cfg.size, "repeats": len(runs),
        "stream": f"{args.failover_workers} loops of new connections (one request each, 1 s connect timeout), "
                  f"{args.failover_pause * 1e3:.0f} ms apart",
        "window_s_median": median(windows), "window_s_max": max(windows),
        "failed_median": median([r["new_connections"]["failed"] for r in runs]),
        "out_of_data_path_s_median": median([r["out_of_data_path_s"] for r in runs]),
        "target_window_s": target_s, "meets_target": None if target_s is None else max(windows) <= target_s,
        "runs": runs,
    }
    if mode == "kill":
        out["replacement_carries_traffic_s_median"] = median([r["replacement_carries_traffic_s"] for r in runs])
    return out
