"""One chaos episode: a load balancer under load, one fault, and watching it heal.

In order: wait until the load balancer is whole and the spare pool full (``settle``); start the
load (open-loop new connections and long-lived keep-alive ones, ``load``); after ``--lead``
seconds check it is at full strength under load and note which amphora holds each long-lived
connection; inject the fault; observe every ``--poll`` seconds until full strength
(``strength.shortfalls``) or ``--heal-timeout``. Links come back up once the load balancer healed
without them or after ``--link-hold`` seconds. The controller fault kills an amphora, then, as
soon as its replacement is listed, the controller holding the load balancer's lease (``kill -9``);
with one controller it is restarted after ``--controller-restart-after`` s (a supervisor's
restart), with two the other one has to finish and the killed one is restarted after the
episode. The load runs ``--tail`` seconds past full strength, then the figures are taken.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import Any

from bench.active_active.failover import window
from bench.active_active.setup import Config, wait_serving
from bench.chaos import faults
from bench.chaos.load import Arrivals, KeepAlive, connection_map
from bench.chaos.measure import breaks
from bench.chaos.plane import ControlPlane
from bench.chaos.strength import DISTRIBUTOR_POLL, Expectation, Observation, Observer, master, shortfalls
from bench.common import BenchEnv, BenchError

TIMELINE_MAX = 80  # changes of the shortfall list kept per episode
MASTER_LOOKS = 5  # observations before a distributor fault finds no MASTER and gives up


@dataclass
class Target:
    """A load balancer under test."""

    label: str  # SINGLE | ACTIVE_STANDBY | ACTIVE_ACTIVE L2 | ACTIVE_ACTIVE L3 | ... no spares
    kind: str  # single | standby | l2 | l3
    cfg: Config
    spares: bool  # its compute flavor is the spares' (a replacement can take one)
    bodies: frozenset[str] = frozenset()  # what its members answer (it serves when one comes back)

    def observer(self, env: BenchEnv) -> Observer:
        return Observer(env, self.cfg.lb_id, self.cfg.vip, self.kind)


def ready_spares(env: BenchEnv) -> set[str]:
    return {str(r["id"]) for r in env.admin_list("amphorae", "amphorae")
            if r.get("loadbalancer_id") is None and r["status"] == "READY"}


def ready_distributor_spare(env: BenchEnv) -> bool:
    return any(str(r["name"]).endswith("-spare") and r["status"] == "READY"
               for r in env.admin_list("distributors", "distributors"))


def settle(env: BenchEnv, target: Target, pool: int, timeout: float, spare_wait: float,
           distributor_spare: bool = False) -> tuple[list[str], int]:
    """Until the load balancer is whole (no load yet, so not the serving check): what is still missing
    after ``timeout`` (empty: settled); then at most ``spare_wait`` more until ``pool`` spares (and,
    with ``distributor_spare``, the spare distributor) are READY. Returns (missing, READY spares).
    A spare left building by a killed controller holds its place in the pool until its builder's
    lease lapses (``reconcile_lease``) and another controller rebuilds it; the episode goes on with
    fewer spares rather than waiting for that, and says so."""
    observer, exp = target.observer(env), Expectation(target.kind, target.cfg.size)
    deadline = time.monotonic() + timeout
    while (missing := shortfalls(None, observer.observe(), exp, serving=False)) and time.monotonic() < deadline:
        time.sleep(0.5)
    if not missing and target.bodies:
        try:
            wait_serving(env, target.cfg.vip, set(target.bodies), timeout=max(5.0, deadline - time.monotonic()))
        except BenchError as exc:
            missing.append(str(exc))
    deadline = time.monotonic() + spare_wait
    while (((spares := len(ready_spares(env)) if pool else 0) < pool
            or (distributor_spare and not ready_distributor_spare(env))) and time.monotonic() < deadline):
        time.sleep(0.5)
    return missing, spares


def repair(env: BenchEnv, target: Target, obs: Observation, victim: str) -> list[str]:
    """After an episode that never got back to full strength, what an operator would do: an amphora
    failover (admin API) of the failed amphora if still listed and of every amphora whose HAProxy does
    not answer. The ids failed over."""
    doomed = sorted({a for a in obs.amphorae if obs.requests.get(a, -1) < 0} | ({victim} & set(obs.amphorae)))
    done = []
    for amphora_id in doomed:
        deadline = time.monotonic() + 30
        while (status := env.api.call("PUT", f"/v2/octavia/amphorae/{amphora_id}/failover")[0]) == 409 \
                and time.monotonic() < deadline:
            time.sleep(0.5)  # the load balancer is busy
        if status == 202:
            done.append(amphora_id)
    return done


def pick_victim(target: Target, base: Observation, rep: int) -> str:
    live = sorted(base.amphorae)
    if not live:
        raise BenchError(f"{target.label}: no amphora")
    if target.kind == "standby" and base.vip_holders:
        return sorted(base.vip_holders)[0]
    return live[rep % len(live)]


class Watch:
    """The milestones of an episode, from successive observations."""

    def __init__(self, t_fault: float, base: Observation, spares: set[str], victim: str | None,
                 distributor: str | None) -> None:
        self.t_fault, self.base, self.spares = t_fault, base, spares
        self.victim, self.distributor = victim, distributor
        self.marks: dict[str, Any] = {}

    def mark(self, name: str, t: float) -> None:
        self.marks.setdefault(name, round(t - self.t_fault, 3))

    def see(self, obs: Observation) -> set[str]:
        new = set(obs.amphorae) - set(self.base.amphorae)
        if new:
            self.mark("replacement_listed_s", obs.t)
            self.marks.setdefault("replacement_from_spare", bool(new & self.spares))
        if self.victim and obs.data_path is not None and self.victim not in obs.data_path:
            self.mark("out_of_data_path_s", obs.t)
        if self.victim and obs.vip_holders is not None and obs.vip_holders and self.victim not in obs.vip_holders:
            self.mark("vip_moved_s", obs.t)
        if self.distributor and obs.distributors is not None:
            ids = {d.id for d in obs.distributors if d.status == "ACTIVE"}
            old = {d.id for d in self.base.distributors or []}
            if ids - old and self.distributor not in ids:
                self.mark("new_distributor_listed_s", obs.t)
        return new


def run_episode(env: BenchEnv, plane: ControlPlane, target: Target, fault: str, rep: int,
                args: argparse.Namespace) -> dict[str, Any]:
    """One fault on ``target`` under load; the record ``measure.row`` reads."""
    missing, ready = settle(env, target, args.spares if target.spares else 0, args.settle_timeout, args.spare_wait,
                            args.distributor_spare and target.kind == "l2")
    if missing:
        raise BenchError(f"{target.label} not settled before {fault}: {missing}")
    observer = target.observer(env)
    spares = ready_spares(env)
    out: dict[str, Any] = {"fault": fault, "target": target.label, "repeat": rep, "spares_ready": ready}
    if target.kind == "l2":
        out["distributor_spare_ready"] = ready_distributor_spare(env)
    keep = KeepAlive(env, target.cfg.vip, args.keepalive, args.keepalive_interval)
    arrivals: Arrivals | None = None
    injected = faults.Injected()
    restored: float | None = None
    killed: dict[str, Any] = {}
    try:
        arrivals = Arrivals(env, target.cfg.vip, args.rate)
        time.sleep(args.lead)
        warm = observer.observe()
        time.sleep(max(args.poll, 0.3))
        base = observer.observe()
        out["baseline_shortfalls"] = shortfalls(warm, base, Expectation(target.kind, target.cfg.size))
        pins = connection_map(env, {a: observer.namespace(a) for a in base.amphorae})
        victim = pick_victim(target, base, rep)
        dist = master(env, base.distributors or []) if fault.startswith("distributor") else None
        for _ in range(MASTER_LOOKS if fault.startswith("distributor") and dist is None else 0):
            # An agent busy under the load may miss one status deadline: look again before giving up.
            time.sleep(max(args.poll, DISTRIBUTOR_POLL))
            base = observer.observe()
            if (dist := master(env, base.distributors or [])) is not None:
                break
        if fault.startswith("distributor") and dist is None:
            raise BenchError("no distributor is MASTER by its VRRP state")
        failed_amphorae = {victim} if fault in ("amphora_kill", "controller_kill") else set()
        exp = Expectation(target.kind, target.cfg.size, frozenset(failed_amphorae),
                          frozenset({dist.ref.id}) if dist else frozenset())
        watch = Watch(0.0, base, spares, None if dist else victim, dist.ref.id if dist else None)
        front_end = next((str(r["vrrp_ip"]) for r in observer.amphorae() if r["id"] == victim), "")
        t_fault = watch.t_fault = time.monotonic()
        if fault in ("amphora_kill", "controller_kill"):
            injected = faults.amphora_kill(env, victim)
        elif fault == "haproxy_kill":
            injected = faults.haproxy_kill(env, victim)
        elif fault == "amphora_link":
            injected = faults.amphora_link(env, victim, front_end)
        elif fault == "distributor_link" and dist is not None:
            injected = faults.distributor_link(env, dist.namespace)
        elif dist is not None:
            injected = faults.distributor_kill(env, dist.namespace)
        out.update({"victim": dist.ref.id if dist else victim, **injected.detail})
        # The first observation after the fault is compared with none: counters that grew before the
        # fault must not pass for serving after it.
        heal = args.heal_timeout if target.spares else args.boot_heal_timeout
        deadline, full, obs = t_fault + heal, None, base
        timeline: list[list[Any]] = []
        last_short: list[str] | None = None
        prev: Observation | None = None
        while time.monotonic() < deadline:
            obs = observer.observe()
            new = watch.see(obs)
            now = time.monotonic()
            if fault == "controller_kill" and not killed and (new or now - t_fault > heal / 2):
                killed = kill_controller(plane, target, now - t_fault, obs, new)
            if killed and len(plane.controllers()) == 1 and not killed.get("restarted_s") \
                    and now - t_fault - killed["killed_s"] >= args.controller_restart_after:
                plane.start(killed["name"])
                killed["restarted_s"] = round(time.monotonic() - t_fault, 3)
            short = shortfalls(prev, obs, exp)
            if short != last_short and len(timeline) < TIMELINE_MAX:
                # Which condition held longest is where the heal time goes.
                timeline.append([round(obs.t - t_fault, 3), short])
                last_short = short
            if injected.restore is not None and restored is None and (not short or now - t_fault >= args.link_hold):
                out["healed_while_down"] = not short
                injected.restore()
                restored = time.monotonic()
                out["restored_s"] = round(restored - t_fault, 3)
            if not short and (not killed or killed.get("restarted_s") or len(plane.controllers()) > 1):
                full = obs.t
                break
            prev = obs
            out["shortfalls_at_end"] = short
            time.sleep(args.poll)
        out["full_strength_s"] = None if full is None else round(full - t_fault, 3)
        if full is not None:
            out.pop("shortfalls_at_end", None)
        else:
            out["gave_up_after_s"] = heal
        out["milestones"] = watch.marks
        out["shortfall_timeline"] = timeline
        time.sleep(args.tail)
        stream = arrivals.stop()
        client = keep.stop()
        out["new_connections"] = window(stream, t_fault)
        out["new_connections"]["skipped"] = int(stream.get("skipped", 0))
        # An amphora fault fails the amphora's connections, whether or not it is replaced.
        out["established"] = breaks(client, pins, set() if dist else {victim}, t_fault)
        if full is None and not dist:
            out["repaired_by_failover"] = repair(env, target, obs, victim)
    finally:
        if arrivals is not None:
            arrivals.close()
        keep.close()
        if injected.restore is not None and restored is None:
            injected.restore()
        if killed and not plane.alive(killed["name"]):
            plane.start(killed["name"])
            killed.setdefault("restarted_s", "after the episode")
    if killed:
        out["controller"] = killed
    return out


def kill_controller(plane: ControlPlane, target: Target, at: float, obs: Observation,
                    new: set[str]) -> dict[str, Any]:
    """``kill -9`` of the controller holding ``target``'s lease (else the first one)."""
    holder = plane.lease_holder(target.cfg.lb_id)
    name = holder or plane.controllers()[0]
    pid = plane.kill(name)
    return {"name": name, "pid": pid, "lease_holder": holder is not None, "killed_s": round(at, 3),
            "controllers": len(plane.controllers()),
            "replacement_state": {a[:8]: obs.amphorae.get(a) for a in sorted(new)}}
