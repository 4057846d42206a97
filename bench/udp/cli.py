"""The command's face: its arguments (with ``--quick``), its console and the command line it records."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from bench.common import RESULTS, make_console

COMMAND = "flock /tmp/cohort-ns.lock .venv/bin/python -m bench.udp"
console = make_console(160)

# --quick: every part once, small and short, on a smaller lab (SINGLE and one cluster of 2).
QUICK: dict[str, Any] = {
    "repetitions": 1, "inline_repetitions": 1, "seconds": 1.0, "warmup": 0.3, "sizes": "2", "quiet_wait": 0.0,
    "output": Path(tempfile.gettempdir()) / "cohort-bench" / "udp-quick.json",
}


def parse_sizes(text: str) -> list[int]:
    sizes = sorted({int(s) for s in text.split(",") if s.strip()})
    if not sizes or not all(2 <= n <= 8 for n in sizes):
        raise argparse.ArgumentTypeError("cluster sizes 2-8, comma-separated")
    return sizes


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.udp",
                                     description="UDP packets/s and new flows/s: direct, one amphora, "
                                                 "ACTIVE_ACTIVE N (L2) against SINGLE.")
    parser.add_argument("--cap", type=float, default=0.05,
                        help="CPU quota of every amphora's cgroup (compute_flavor cpu): its processes, the agent")
    parser.add_argument("--kernel-cap", type=float, default=0.02,
                        help="CPU reservation of every amphora's kernel data path (SCHED_DEADLINE on its links' "
                             "NAPI threads, split evenly; bench.udp.napi)")
    parser.add_argument("--kernel-period-ms", type=float, default=20.0, help="period of that reservation")
    parser.add_argument("--sizes", default="2,3,4", help="ACTIVE_ACTIVE cluster sizes, comma-separated")
    parser.add_argument("--repetitions", type=int, default=4)
    parser.add_argument("--inline-repetitions", type=int, default=2,
                        help="repetitions of the last part, the lab's own path (no amphora NAPI threads)")
    parser.add_argument("--seconds", type=float, default=3.0, help="counted length of each generator run")
    parser.add_argument("--warmup", type=float, default=0.5, help="uncounted start of each run")
    parser.add_argument("--processes", type=int, default=2, help="generator worker processes")
    parser.add_argument("--per-amphora", type=int, default=128,
                        help="pps: flows (sockets) per amphora of the target, each with --window outstanding")
    parser.add_argument("--window", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=0.2, help="pps: a socket's datagrams lost after this")
    parser.add_argument("--flows-per-amphora", type=int, default=128, help="flows: new flows in flight per amphora")
    parser.add_argument("--flow-timeout", type=float, default=0.5, help="flows: a flow unanswered after this failed")
    parser.add_argument("--max-flows", type=int, default=100_000, help="flows: at most this many flows in a run")
    parser.add_argument("--payload", type=int, default=64, help="bytes of each datagram")
    parser.add_argument("--members", type=int, default=2)
    parser.add_argument("--member-workers", type=int, default=2, help="echo processes of each member")
    parser.add_argument("--client-sources", type=int, default=64,
                        help="extra client addresses for new flows (each reused only after --source-age)")
    parser.add_argument("--source-age", type=float, default=130.0,
                        help="seconds before a source address serves new flows again (distributor pins: 120 s)")
    parser.add_argument("--silence-timeout", type=float, default=15.0,
                        help="the controller's heartbeat silence timeouts (amphorae, distributors), as the "
                             "active-active benchmark: a loaded, capped amphora's agent heartbeats late")
    parser.add_argument("--quiet-wait", type=float, default=4.0,
                        help="before each repetition, wait at most this long for other processes to calm down")
    parser.add_argument("--quiet-threshold", type=float, default=0.25, help="CPUs of other processes deemed calm")
    parser.add_argument("--output", type=Path, default=RESULTS / "udp.json")
    parser.add_argument("--report", type=Path, metavar="FILE",
                        help="no run: recompute the figures of a results file from its runs, write them back, print")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run of every part, small and short: "
                             + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in QUICK.items())
                             + "; other options given still apply")
    args = parser.parse_args(argv)
    if args.quick:
        parser.set_defaults(**QUICK)
        args = parser.parse_args(argv)
    try:
        args.sizes = parse_sizes(args.sizes)
    except (ValueError, argparse.ArgumentTypeError) as exc:
        parser.error(str(exc))
    args.kernel_period_us = int(args.kernel_period_ms * 1000)
    if not (0 < args.cap <= 1 and 0 < args.kernel_cap <= 0.5 and 1_000 <= args.kernel_period_us <= 1_000_000
            and 1 <= args.repetitions <= 10 and 0 <= args.inline_repetitions <= 10
            and 0 < args.seconds <= 30 and 0 <= args.warmup <= 5 and 1 <= args.processes <= 8
            and 1 <= args.per_amphora <= 512 and 1 <= args.window <= 16 and 1 <= args.flows_per_amphora <= 512
            and 1_000 <= args.max_flows <= 1_000_000 and 1 <= args.members <= 8 and 1 <= args.member_workers <= 8
            and 8 <= args.client_sources <= 200 and 0 <= args.source_age <= 600 and 1 <= args.silence_timeout <= 120):
        parser.error("keep the run bounded: --cap (0, 1], --kernel-cap (0, 0.5], --kernel-period-ms 1-1000, "
                     "--repetitions 1-10, --seconds (0, 30], --processes 1-8, --per-amphora/--flows-per-amphora "
                     "1-512, --max-flows 1,000-1,000,000, --client-sources 8-200")
    return args
