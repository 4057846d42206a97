"""The command's face: its arguments (with ``--quick``), its console and the command line it records."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from bench.chaos.faults import FAULTS
from bench.common import RESULTS, make_console

COMMAND = "flock /tmp/cohort-ns.lock .venv/bin/python -m bench.chaos"
console = make_console(160)

# --quick: every fault once on every topology, shorter holds, lighter load; a smoke run.
QUICK: dict[str, Any] = {
    "repeats": 1, "link_hold": 4.0, "heal_timeout": 20.0, "rate": 100.0, "keepalive": 10, "no_spare_row": False,
    "output": Path(tempfile.gettempdir()) / "cohort-bench" / "chaos-quick.json",
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos",
                                     description="Faults under load, side by side: SINGLE, ACTIVE_STANDBY, "
                                                 "ACTIVE_ACTIVE L2 and L3.")
    parser.add_argument("--repeats", type=int, default=3, help="episodes of each fault on each topology")
    parser.add_argument("--fault", choices=sorted(FAULTS), action="append", default=[],
                        help="only these faults (repeatable; default all)")
    parser.add_argument("--size", type=int, default=3, help="amphorae of each ACTIVE_ACTIVE cluster")
    parser.add_argument("--cap", type=float, default=0.0, help="CPU quota of every amphora (0: not capped)")
    parser.add_argument("--spares", type=int, default=2, help="spare amphora pool size (spare_amphora_pool_size)")
    parser.add_argument("--distributor-spare", action=argparse.BooleanOptionalAction, default=True,
                        help="keep a spare distributor ready (distributor_spare)")
    parser.add_argument("--controllers", type=int, choices=(1, 2), default=2,
                        help="cohort controller processes on the one SQLite database")
    parser.add_argument("--l3", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--bfd-ms", type=int, default=50,
                        help="BFD transmit and receive interval of the L3 amphorae's session profile (x 3)")
    parser.add_argument("--kind", choices=("single", "standby", "l2", "l3"), action="append", default=[],
                        help="only episodes on these topologies (repeatable; default all; all are still built)")
    parser.add_argument("--no-spare-row", action=argparse.BooleanOptionalAction, default=True,
                        help="also an L2 cluster whose flavor no spare has: amphora kills with a boot")
    parser.add_argument("--members", type=int, default=2)
    parser.add_argument("--member-workers", type=int, default=2)
    parser.add_argument("--rate", type=float, default=200.0, help="new connections started per second (open loop)")
    parser.add_argument("--keepalive", type=int, default=24, help="long-lived keep-alive connections")
    parser.add_argument("--keepalive-interval", type=float, default=0.05, help="seconds between their requests")
    parser.add_argument("--lead", type=float, default=1.5, help="seconds of load before the fault")
    parser.add_argument("--tail", type=float, default=1.0, help="seconds of load after full strength")
    parser.add_argument("--poll", type=float, default=0.1, help="seconds between observations")
    parser.add_argument("--link-hold", type=float, default=10.0,
                        help="a link stays down until the load balancer healed without it, at most this long")
    parser.add_argument("--controller-restart-after", type=float, default=1.0,
                        help="with one controller, restart the killed one after this long")
    parser.add_argument("--heal-timeout", type=float, default=30.0,
                        help="longest wait for full strength (then: never, and an amphora failover repairs it)")
    parser.add_argument("--boot-heal-timeout", type=float, default=90.0,
                        help="the same for the cluster without spares, whose replacements boot")
    parser.add_argument("--settle-timeout", type=float, default=120.0,
                        help="longest wait, before an episode, for the load balancer whole and the spares READY")
    parser.add_argument("--spare-wait", type=float, default=30.0,
                        help="longest wait, before an episode, for the spare pool to be full again")
    parser.add_argument("--output", type=Path, default=RESULTS / "chaos.json")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run of every fault once, lighter and shorter: "
                             + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in QUICK.items())
                             + "; other options given still apply")
    args = parser.parse_args(argv)
    if args.quick:
        parser.set_defaults(**QUICK)
        args = parser.parse_args(argv)
    if not (1 <= args.repeats <= 10 and 2 <= args.size <= 6 and 0 <= args.cap <= 1 and 0 <= args.spares <= 6
            and 10 <= args.rate <= 500 and 0 <= args.keepalive <= 200 and 0.01 <= args.keepalive_interval <= 1
            and 0.2 <= args.lead <= 10 and 0 <= args.tail <= 10 and 0.02 <= args.poll <= 1
            and 1 <= args.link_hold <= 60 and 0 <= args.controller_restart_after <= 30
            and 10 <= args.heal_timeout <= 180 and 10 <= args.boot_heal_timeout <= 300
            and 10 <= args.settle_timeout <= 300 and 0 <= args.spare_wait <= 300 and 20 <= args.bfd_ms <= 1000):
        parser.error("keep the run bounded: --repeats 1-10, --size 2-6, --cap [0, 1], --spares 0-6, --rate 10-500, "
                     "--keepalive <= 200, --lead 0.2-10, --tail <= 10, --poll 0.02-1, --link-hold 1-60, "
                     "--heal-timeout 10-180, --settle-timeout 10-300, --bfd-ms 20-1000")
    return args
