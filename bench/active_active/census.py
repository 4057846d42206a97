"""Whose CPU it was: every process on the machine, by owner, over a run.

A census reads every process's CPU time and sorts it to an owner: this benchmark process
(Cohort's API and controller run in it), the lab (any process in one of the lab's network
namespaces: amphorae, members, the distributor, wrk), kernel threads, or everything else on
this shared machine. Two censuses make a delta; :func:`wait_quiet` waits for a lull in the rest.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any

from bench.common import CLK_TCK
from cohort import netns
from cohort.lab import Lab

PF_KTHREAD = 0x00200000


def process_census(lab_netns: set[int]) -> dict[int, tuple[str, str, float]]:
    """pid -> (owner, comm, CPU seconds) of every process; owner: bench | lab | kthread | other.

    ``lab`` processes run in one of the lab's namespaces (amphorae, members, distributor, wrk);
    ``other`` is everything else on the machine: system daemons and other people's work.
    """
    out: dict[int, tuple[str, str, float]] = {}
    me = os.getpid()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            inode = os.stat(f"/proc/{pid}/ns/net").st_ino
        except OSError:
            continue
        comm, fields = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
        cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
        owner = "bench" if pid == me else "kthread" if int(fields[6]) & PF_KTHREAD else \
            "lab" if inode in lab_netns else "other"
        out[pid] = (owner, comm, cpu)
    return out


def census_delta(before: dict[int, tuple[str, str, float]], after: dict[int, tuple[str, str, float]],
                 wall: float) -> dict[str, Any]:
    """CPUs used per owner between two censuses, and the busiest ``other`` processes."""
    totals = {"lab": 0.0, "kthread": 0.0, "other": 0.0}
    others: dict[str, float] = {}
    for pid, (owner, comm, cpu) in after.items():
        used = (cpu - before[pid][2] if pid in before else cpu) / wall
        if owner in totals:
            totals[owner] += used
        if owner == "other" and used > 0.005:
            others[comm] = others.get(comm, 0.0) + used
    top = dict(sorted(others.items(), key=lambda kv: -kv[1])[:5])
    return {**totals, "other_top": {k: round(v, 3) for k, v in top.items()}}


def lab_netns_inodes(lab: Lab) -> set[int]:
    found = set()
    for ns in netns.list_netns():
        if ns.startswith(lab.prefix + "-"):
            with contextlib.suppress(OSError):
                found.add(os.stat(netns.NETNS_DIR / ns).st_ino)
    return found


def wait_quiet(lab: Lab, max_wait: float, threshold: float) -> dict[str, float]:
    """Wait (at most ``max_wait`` s) until processes outside the lab use < ``threshold`` CPU over 1 s.

    The machine is shared (other people's tests and benchmarks): a repetition waits for a lull.
    """
    inodes, t0 = lab_netns_inodes(lab), time.monotonic()
    while True:
        census, t1 = process_census(inodes), time.monotonic()
        time.sleep(1.0)
        other = census_delta(census, process_census(inodes), time.monotonic() - t1)["other"]
        if other < threshold or time.monotonic() - t0 >= max_wait:
            return {"waited_s": round(time.monotonic() - t0, 1), "other_cpu_last_s": round(other, 3)}
