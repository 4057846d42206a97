"""The faults a chaos episode injects, and what each applies to.

Every kill is by pid: the processes of one namespace (``ip netns pids``), HAProxy's processes in
one amphora's cgroup (``bench.common.haproxy_pids``), or a controller process the benchmark
started (``plane.ControlPlane``). A link goes down at the switch's end (the lab's switch
namespace), so the instance itself notices nothing but silence, and comes back up afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, field

from bench.active_active.failover import kill_amphora, switch_port
from bench.common import BenchEnv, BenchError, haproxy_pids
from cohort import netns
from cohort.lab import Lab

# fault -> (label, the topologies it applies to)
FAULTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "amphora_kill": ("amphora processes killed", ("single", "standby", "l2", "l3")),
    "amphora_link": ("amphora front-end link down", ("single", "standby", "l2", "l3")),
    "haproxy_kill": ("HAProxy killed", ("single", "standby", "l2", "l3")),
    "distributor_link": ("distributor links down", ("l2",)),
    "distributor_kill": ("distributor processes killed", ("l2",)),
    "controller_kill": ("controller killed mid-replacement", ("single", "standby", "l2", "l3")),
}
AMPHORA_FAULTS = ("amphora_kill", "amphora_link", "haproxy_kill", "controller_kill")
LINK_FAULTS = ("amphora_link", "distributor_link")


def applies(fault: str, kind: str) -> bool:
    return kind in FAULTS[fault][1]


@dataclass
class Injected:
    """What was done; ``restore`` undoes it where it can be undone (links)."""

    detail: dict[str, object] = field(default_factory=dict)
    restore: Callable[[], None] | None = None


def kill_pids(pids: set[int]) -> int:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return len(pids)


def switch_ends(env: BenchEnv, ns: str) -> list[str]:
    """The switch's ends (in the lab's switch namespace) of every veth of namespace ``ns``."""
    inner = [x for x in json.loads(netns.run_in(ns, ["ip", "-j", "link", "show"]).stdout)
             if "link_index" in x and x.get("ifname") != "lo"]
    outer = {x["ifindex"]: str(x["ifname"]) for x in json.loads(netns.run_in(env.lab.sw_ns, ["ip", "-j", "link",
                                                                                             "show"]).stdout)}
    ends = [outer[x["link_index"]] for x in inner if x["link_index"] in outer]
    if not ends:
        raise BenchError(f"no link of {ns} ends in {env.lab.sw_ns}")
    return ends


def links(env: BenchEnv, ports: list[str], state: str) -> None:
    for port in ports:
        netns.run_in(env.lab.sw_ns, ["ip", "link", "set", port, state], check=state == "down")


def amphora_kill(env: BenchEnv, amphora_id: str) -> Injected:
    return Injected({"processes_killed": kill_amphora(env, amphora_id)})


def haproxy_kill(env: BenchEnv, amphora_id: str) -> Injected:
    pids = haproxy_pids(Lab.instance_cgroup(env.lab.instance_ns(amphora_id, "amphora")))
    if not pids:
        raise BenchError(f"no HAProxy process in amphora {amphora_id}")
    return Injected({"processes_killed": kill_pids(pids)})


def amphora_link(env: BenchEnv, amphora_id: str, front_end: str) -> Injected:
    port = switch_port(env, amphora_id, front_end)
    links(env, [port], "down")
    return Injected({"switch_ports": [port]}, lambda: links(env, [port], "up"))


def distributor_link(env: BenchEnv, namespace: str) -> Injected:
    """Every link of the distributor (front end and management): it falls silent."""
    ports = switch_ends(env, namespace)
    links(env, ports, "down")
    return Injected({"switch_ports": ports}, lambda: links(env, ports, "up"))


def distributor_kill(env: BenchEnv, namespace: str) -> Injected:
    return Injected({"processes_killed": kill_pids(netns.netns_pids(namespace))})
