"""The lab router's resilient fabric: each VIP's route as a resilient next-hop group, from bgpd's paths.

With the lab option ``resilient``, bgpd installs nothing (``-n``) and this program, running in the
gateway namespace, reads the multipath set bgpd has selected for each VIP every ``--interval``
and programs it as ``ip nexthop ... group ... type resilient``: when an amphora joins, only a
fair share of buckets moves to it, and when one leaves, only its own buckets move. That is how
fabrics with resilient hashing behave, so both kinds of router can be measured on one lab.

Run as ``python -m cohort.lab.fib --vty-dir DIR [--interval S]``; it stops on SIGTERM and removes
the routes and groups it made.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import signal
import subprocess
import threading
from collections.abc import Sequence
from types import FrameType

BUCKETS = 64
# Buckets idle for a second may move; an unbalanced group is rebalanced within three.
IDLE_TIMER = 1
UNBALANCED_TIMER = 3
NEXTHOP_BASE = 10_000
GROUP_BASE = 20_000


def learnt_paths(show_bgp_json: str) -> dict[str, list[str]]:
    """VIP -> the next hops of the paths bgpd selected (best and multipath) for host routes."""
    data = json.loads(show_bgp_json or "{}")
    result: dict[str, list[str]] = {}
    for prefix, paths in (data.get("routes") or {}).items():
        network = ipaddress.ip_network(prefix, strict=False)
        if network.prefixlen != network.max_prefixlen:
            continue
        hops = sorted({hop["ip"] for path in paths if path.get("valid") and (path.get("bestpath") or
                       path.get("multipath")) for hop in path.get("nexthops", []) if "ip" in hop})
        if hops:
            result[str(network.network_address)] = hops
    return result


def _id(base: int, address: str) -> int:
    # Lab addresses are in /24s: the host number makes a stable, unique id per address.
    return base + int(ipaddress.ip_address(address)) % 65536


def commands(before: dict[str, list[str]], after: dict[str, list[str]], device: str) -> list[list[str]]:
    """The ``ip`` commands that turn the programmed routes ``before`` into ``after``."""
    out: list[list[str]] = []
    for vip, hops in sorted(after.items()):
        if before.get(vip) == hops:
            continue
        for hop in hops:
            out.append(["ip", "nexthop", "replace", "id", str(_id(NEXTHOP_BASE, hop)), "via", hop, "dev", device])
        group = "/".join(str(_id(NEXTHOP_BASE, hop)) for hop in hops)
        out.append(["ip", "nexthop", "replace", "id", str(_id(GROUP_BASE, vip)), "group", group, "type",
                    "resilient", "buckets", str(BUCKETS), "idle_timer", str(IDLE_TIMER), "unbalanced_timer",
                    str(UNBALANCED_TIMER)])
        if vip not in before:
            out.append(["ip", "route", "replace", f"{vip}/32", "nhid", str(_id(GROUP_BASE, vip)), "proto", "bgp"])
    for vip in sorted(set(before) - set(after)):
        out.append(["ip", "route", "del", f"{vip}/32", "proto", "bgp"])
        out.append(["ip", "nexthop", "del", "id", str(_id(GROUP_BASE, vip))])
    return out


def run(vty_dir: str, interval: float, device: str, stop: threading.Event) -> None:
    programmed: dict[str, list[str]] = {}
    while not stop.wait(interval):
        shown = subprocess.run(["vtysh", "--vty_socket", vty_dir, "-c", "show bgp ipv4 unicast json"],
                               capture_output=True, text=True, timeout=10, check=False).stdout
        try:
            wanted = learnt_paths(shown)
        except (ValueError, KeyError, TypeError):
            continue
        for command in commands(programmed, wanted, device):
            subprocess.run(command, capture_output=True, check=False)
        programmed = wanted
    for command in commands(programmed, {}, device):
        subprocess.run(command, capture_output=True, check=False)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cohort.lab.fib")
    parser.add_argument("--vty-dir", required=True)
    parser.add_argument("--device", default="fe0")
    parser.add_argument("--interval", type=float, default=0.1)
    args = parser.parse_args(argv)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    run(args.vty_dir, args.interval, args.device, stop)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
