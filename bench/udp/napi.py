"""An amphora's kernel data path on a CPU budget: its veth links' receive in capped NAPI kernel threads.

A UDP listener is served by nftables in the amphora's namespace: no process of the amphora
touches a datagram. On one machine a packet is processed, through every namespace it crosses, in
the context of whoever sent it (or of a ksoftirqd), so the amphora's DNAT, conntrack and
forwarding are billed to the client, the distributor's path or the member, and the amphora's
cgroup cap never applies. In a VM the guest kernel runs on the amphora's capped vCPUs. This
module gives each amphora that model:

- both ends of each of its data links (``fe0`` and ``be0`` in its namespace, their switch-side
  ports in the lab's switch namespace) get GRO on and TSO off, so that veth hands every packet
  to the receiving end's NAPI (``veth_skb_is_eligible_for_gro``), and threaded NAPI, so that
  the receive runs in a kernel thread ``napi/<dev>-<id>`` of its own (as
  ``bench.common.client_nic_kthread`` does for the client's port): everything the amphora's
  kernel does with a packet it received, up to handing it to the next link, runs in the
  threads of its own ends; the switch-side threads are the network's;
- the budget (:meth:`AmphoraLinks.place`). Moving the threads into the amphora's cgroup does
  not cap them on this kernel: since Linux 6.18 CFS bandwidth control throttles a task when it
  returns to user space, and a kernel thread never does (measured: 0.17 CPU used in a cgroup
  capped at 0.05 and "throttled" in every period). So the amphora's threads get a
  SCHED_DEADLINE reservation instead, ``cap`` CPU split evenly between its links' threads
  (runtime per period), which the scheduler enforces on kernel threads too; ``capped=False``
  puts them back to SCHED_OTHER: an uncapped amphora.

:func:`unthread_links` puts every thread back to SCHED_OTHER and the links' features back as
they were, before the benchmark deletes anything. Pids are learnt by name: the ``napi/<dev>``
kernel threads that appear when ``threaded`` is switched on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import BenchError
from cohort import netns
from cohort.lab import Lab

PF_KTHREAD = 0x00200000
COMM_LEN = 15  # TASK_COMM_LEN - 1: kernel thread names are cut there


def napi_threads() -> dict[int, str]:
    """pid -> name of every ``napi/...`` kernel thread on the machine."""
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        flags = int(stat[stat.rindex(")") + 2:].split()[6])
        if comm.startswith("napi/") and flags & PF_KTHREAD:
            found[int(entry.name)] = comm
    return found


def thread_of(dev: str, before: dict[int, str], after: dict[int, str]) -> int:
    """The one new ``napi/<dev>-<id>`` thread between two listings (names cut at 15 characters)."""
    prefix = f"napi/{dev}-"[:COMM_LEN]
    new = [pid for pid, comm in after.items() if pid not in before and comm.startswith(prefix)]
    if len(new) != 1:
        raise BenchError(f"expected one new NAPI thread for {dev}, found {len(new)}: "
                         f"{[after[p] for p in new]}")
    return new[0]


def _features(ns: str, dev: str) -> dict[str, str]:
    """``ethtool -k`` of a link: feature -> on/off (the ones this module changes)."""
    out = netns.run_in(ns, ["ethtool", "-k", dev]).stdout
    found = dict(re.findall(r"^([a-z-]+): (on|off)", out, re.MULTILINE))
    return {k: found[k] for k in ("generic-receive-offload", "tcp-segmentation-offload") if k in found}


def _sysfs(ns: str, dev: str, name: str, value: str | None = None) -> str:
    path = f"/sys/class/net/{dev}/{name}"
    if value is not None:
        netns.run_in(ns, ["sh", "-c", f"echo {value} > {path}"])
    return netns.run_in(ns, ["cat", path]).stdout.strip()


@dataclass
class End:
    """One end of a veth link and its NAPI thread."""

    ns: str
    dev: str
    features: dict[str, str] = field(default_factory=dict)  # as the lab made them
    pid: int | None = None


@dataclass
class AmphoraLinks:
    """The data links of one amphora with their NAPI threads; the amphora's ends are ``inner``."""

    namespace: str
    inner: list[End]
    outer: list[End]

    budget: tuple[float, int] | None = None  # (cap, period us) of the threads' reservation; None: SCHED_OTHER

    @property
    def cgroup(self) -> str:
        return Lab.instance_cgroup(self.namespace)

    def inner_pids(self) -> set[int]:
        return {e.pid for e in self.inner if e.pid}

    def outer_pids(self) -> set[int]:
        return {e.pid for e in self.outer if e.pid}

    def place(self, capped: bool, cap: float, period_us: int) -> None:
        """The amphora's own threads on a reservation of ``cap`` CPU in all (capped), or not."""
        wanted = (cap, period_us) if capped else None
        if wanted == self.budget:
            return
        pids = sorted(self.inner_pids())
        for pid in pids:
            cmd = chrt_command(pid, cap / len(pids), period_us) if capped else chrt_command(pid, None, period_us)
            proc = netns.run(cmd, check=False)
            if proc.returncode != 0:
                raise BenchError(f"cannot set the budget of NAPI thread {pid} of {self.namespace}: "
                                 f"{proc.stderr.strip()}")
        self.budget = wanted


def chrt_command(pid: int, cpu: float | None, period_us: int) -> list[str]:
    """``chrt`` giving ``pid`` a SCHED_DEADLINE reservation of ``cpu`` CPU per ``period_us`` (runtime =
    deadline-relative budget), or SCHED_OTHER when ``cpu`` is None."""
    if cpu is None:
        return ["chrt", "-o", "-p", "0", str(pid)]
    period_ns = period_us * 1000
    runtime_ns = max(1024, int(cpu * period_ns))  # the kernel's smallest runtime is 1024 ns
    if runtime_ns > period_ns:
        raise BenchError(f"a reservation of {cpu} CPU does not fit its period")
    return ["chrt", "-d", "-T", str(runtime_ns), "-D", str(period_ns), "-P", str(period_ns), "-p", "0", str(pid)]


def amphora_links(lab: Lab, namespace: str) -> AmphoraLinks:
    """The amphora's ports as the lab recorded them (inner name in the amphora, outer in the switch)."""
    ports = [r for r in lab.snapshot().get("ports", {}).values() if r["compute_id"] == namespace]
    if not ports:
        raise BenchError(f"amphora {namespace} has no data ports in the lab")
    ports.sort(key=lambda r: str(r["inner"]))
    return AmphoraLinks(namespace, [End(namespace, str(r["inner"])) for r in ports],
                        [End(lab.sw_ns, str(r["outer"])) for r in ports])


def thread_links(links: AmphoraLinks) -> None:
    """GRO on, TSO off and threaded NAPI on both ends of every link; the threads' pids recorded."""
    for inner, outer in zip(links.inner, links.outer, strict=True):
        for end in (inner, outer):
            end.features = _features(end.ns, end.dev)
        # A sender's TSO keeps veth from handing its packets to the peer's NAPI.
        for end in (inner, outer):
            netns.run_in(end.ns, ["ethtool", "-K", end.dev, "tso", "off", "gro", "on"])
        for end in (inner, outer):
            before = napi_threads()
            if _sysfs(end.ns, end.dev, "threaded", "1") != "1":
                raise BenchError(f"threaded NAPI did not take on {end.dev} in {end.ns}")
            end.pid = thread_of(end.dev, before, napi_threads())


def unthread_links(links: AmphoraLinks) -> None:
    """Threads back to the root group, threaded NAPI off, the features as they were (best effort:
    a link already gone with its amphora is skipped)."""
    for end in links.inner:
        if end.pid and Path(f"/proc/{end.pid}").exists():
            netns.run(chrt_command(end.pid, None, 0), check=False)
    links.budget = None
    for end in (*links.inner, *links.outer):
        if not netns.netns_exists(end.ns):
            continue
        try:
            _sysfs(end.ns, end.dev, "threaded", "0")
            wanted = {"generic-receive-offload": "gro", "tcp-segmentation-offload": "tso"}
            args = [arg for key, short in wanted.items() if key in end.features
                    for arg in (short, end.features[key])]
            if args:
                netns.run_in(end.ns, ["ethtool", "-K", end.dev, *args])
        except netns.CommandError:
            continue
        end.pid = None

