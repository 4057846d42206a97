"""The command's face: its arguments (with ``--quick``), its console and how to reproduce it."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import bench.active_active
from bench.common import RESULTS, make_console

COMMAND = ".venv/bin/python -m bench.active_active"
console = make_console(140)

# --quick: every part once, small and short (the README's figures come from the defaults).
QUICK: dict[str, Any] = {
    "repetitions": 1, "efficiency_repetitions": 2, "seconds": 1, "latency_rounds": 1, "latency_samples": 100,
    "long_lived": 10,
    "probe_ports": 200, "settle": 0.5, "compare_cap": 0.0, "quiet_wait": 0.0, "failover_repeats": 1,
    "output": Path(tempfile.gettempdir()) / "cohort-bench" / "active_active-quick.json",
}


def quick_summary() -> str:
    return ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in QUICK.items())


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.active_active",
                                     description=(bench.active_active.__doc__ or "").splitlines()[0])
    parser.add_argument("--cap", type=float, default=0.05, help="CPU quota of every amphora (compute_flavor cpu)")
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--efficiency-repetitions", type=int, default=12,
                        help="repetitions of the efficiency part: each cluster beside its load-matched baseline")
    parser.add_argument("--seconds", type=int, default=5, help="length of each wrk run")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--members", type=int, default=2)
    parser.add_argument("--member-workers", type=int, default=2)
    parser.add_argument("--latency-rounds", type=int, default=4)
    parser.add_argument("--latency-samples", type=int, default=750, help="samples per path in a batch")
    parser.add_argument("--latency-realtime", action=argparse.BooleanOptionalAction, default=True,
                        help="run the latency sampler SCHED_FIFO (chrt -f 1) so other work does not delay it")
    parser.add_argument("--latency-gap-ms", type=float, default=1.0,
                        help="pause between samples: keeps a capped amphora far below its quota")
    parser.add_argument("--long-lived", type=int, default=60)
    parser.add_argument("--long-lived-interval", type=float, default=0.05)
    parser.add_argument("--short-workers", type=int, default=2, help="loops making new short connections")
    parser.add_argument("--probe-ports", type=int, default=2000, help="fixed source ports probed for new flows")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds of load kept after a scale event")
    parser.add_argument("--compare-cap", type=float, default=0.25,
                        help="afterwards, throughput again at this cap (0: skip), to show where the machine saturates")
    parser.add_argument("--compare-repetitions", type=int, default=2)
    parser.add_argument("--compare-seconds", type=int, default=3)
    parser.add_argument("--quiet-wait", type=float, default=6.0,
                        help="before each repetition, wait at most this long for other processes to calm down")
    parser.add_argument("--quiet-threshold", type=float, default=0.25, help="CPUs of other processes deemed calm")
    parser.add_argument("--client-kthread", action=argparse.BooleanOptionalAction, default=True,
                        help="process the client's packets in a kernel thread (bench.common.client_nic_kthread)")
    parser.add_argument("--amphora-kthread", action=argparse.BooleanOptionalAction, default=True,
                        help="process what the measured amphorae send in kernel threads of their switch ports "
                             "(bench.common.amphora_nic_kthreads), so each is billed for its own work only")
    parser.add_argument("--matched", action=argparse.BooleanOptionalAction, default=True,
                        help="also measure N SINGLE load balancers loaded at once (the load-matched baselines)")
    parser.add_argument("--l3", action=argparse.BooleanOptionalAction, default=True,
                        help="also L3 ACTIVE_ACTIVE (BGP to the lab router, ECMP): throughput, scaling with the "
                             "plain and the resilient router, failure windows, speaker memory")
    parser.add_argument("--failover-repeats", type=int, default=3, help="amphora deaths per failure-window kind")
    parser.add_argument("--failover-lead", type=float, default=1.0, help="seconds of new connections before a kill")
    parser.add_argument("--failover-workers", type=int, default=2, help="loops making new connections meanwhile")
    parser.add_argument("--failover-pause", type=float, default=0.005, help="pause of each loop between connections")
    parser.add_argument("--replace-timeout", type=float, default=120.0, help="longest wait for a replacement")
    parser.add_argument("--silence-timeout", type=float, default=15.0,
                        help="the controller's heartbeat_stale_after and distributor_stale_after in this run: the "
                             "throughput part saturates the machine and throttles every amphora, and with the "
                             "defaults (5 s / 3 s) late heartbeats got amphorae and distributors replaced "
                             "mid-measurement; deaths are still seen at once (instance death, BFD, probes)")
    parser.add_argument("--skip", choices=("throughput", "efficiency", "latency", "scaling", "failover", "l3-scaling"),
                        action="append", default=[])
    parser.add_argument("--output", type=Path, default=RESULTS / "active_active.json")
    parser.add_argument("--quick", action="store_true",
                        help=f"a smoke run of every part, small and short (about 6 minutes on a busy 2-vCPU "
                             f"machine, most of it building 25 amphorae): {quick_summary()}; other options given "
                             "still apply")
    args = parser.parse_args(argv)
    if args.quick:
        parser.set_defaults(**QUICK)
        args = parser.parse_args(argv)
    if not (1 <= args.seconds <= 30 and 1 <= args.repetitions <= 10 and 1 <= args.efficiency_repetitions <= 30
            and 0 < args.cap <= 1
            and 1 <= args.probe_ports <= 5000 and 1 <= args.latency_rounds <= 50 and args.connections <= 1000
            and 0 <= args.compare_cap <= 1 and 1 <= args.compare_repetitions <= 10 and 1 <= args.compare_seconds <= 30
            and 1 <= args.failover_repeats <= 10 and 0 < args.failover_lead <= 10 and 1 <= args.failover_workers <= 8
            and 0.001 <= args.failover_pause <= 1 and 10 <= args.replace_timeout <= 300
            and 1 <= args.silence_timeout <= 120):
        parser.error("keep the run bounded: --seconds 1-30, --repetitions 1-10, --efficiency-repetitions 1-30, "
                     "--cap (0, 1], --probe-ports <= 5000, "
                     "--failover-repeats 1-10, --failover-workers 1-8, --failover-pause >= 0.001, "
                     "--replace-timeout 10-300, --silence-timeout 1-120")
    return args
