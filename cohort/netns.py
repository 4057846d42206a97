"""Host plumbing for the lab: commands, network namespaces, links, sysctls, cgroups, processes.

This is the one module that shells out to ``ip``, ``sysctl``, ``nft`` and ``bridge`` and that
touches ``/sys/fs/cgroup``; the lab and the local drivers describe *what* they want and call
these small idempotent helpers. Every helper that creates something tolerates it already
existing, and every helper that removes something tolerates it being gone, so a crashed
run can simply be repeated.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

NETNS_DIR = Path("/run/netns")
CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_CONTROLLERS = ("cpu", "memory")
# A capped group runs its quota and then stops until the period ends. With the default 100 ms a
# 0.05-CPU amphora stood still for 95 ms at a time under load, long enough for BFD (100 ms x 3) to
# flap its BGP sessions; a vCPU that slow would still run every few ms. The shortest period whose
# quota is at least the kernel's 1 ms minimum, and never below 20 ms (scheduling overhead):
MIN_CFS_PERIOD_US = 20_000
MAX_CFS_PERIOD_US = 100_000


class CommandError(RuntimeError):
    """A command exited non-zero; carries its stderr so callers can tell 'exists' from real faults."""

    def __init__(self, cmd: Sequence[str], returncode: int, stderr: str) -> None:
        super().__init__(f"{shlex.join(cmd)} failed ({returncode}): {stderr.strip()}")
        self.cmd = list(cmd)
        self.returncode = returncode
        self.stderr = stderr


def run(
    cmd: Sequence[str], *, check: bool = True, input: str | None = None, timeout: float = 30.0
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        list(cmd), input=input, capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and proc.returncode != 0:
        raise CommandError(cmd, proc.returncode, proc.stderr)
    return proc


def in_ns(ns: str | None, cmd: Sequence[str]) -> list[str]:
    """The command line that runs ``cmd`` inside namespace ``ns`` (the root namespace for None)."""
    return list(cmd) if ns is None else ["ip", "netns", "exec", ns, *cmd]


def run_in(
    ns: str | None, cmd: Sequence[str], *, check: bool = True, timeout: float = 30.0
) -> subprocess.CompletedProcess[str]:
    return run(in_ns(ns, cmd), check=check, timeout=timeout)


def run_attached(ns: str | None, cmd: Sequence[str]) -> int:
    """Run ``cmd`` in ``ns`` on the caller's terminal (no capture, no timeout); its exit code."""
    return subprocess.run(in_ns(ns, cmd), check=False).returncode


def _ip(ns: str | None, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run(["ip", *(["-n", ns] if ns else []), *args], check=check)


# --- namespaces -------------------------------------------------------------------------------


def list_netns() -> set[str]:
    try:
        return {p.name for p in NETNS_DIR.iterdir()}
    except FileNotFoundError:
        return set()


def netns_exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def add_netns(name: str) -> None:
    if not netns_exists(name):
        proc = run(["ip", "netns", "add", name], check=False)
        if proc.returncode != 0 and not netns_exists(name):
            raise CommandError(["ip", "netns", "add", name], proc.returncode, proc.stderr)
    _ip(name, "link", "set", "lo", "up")


def netns_pids(name: str) -> set[int]:
    if not netns_exists(name):
        return set()
    out = run(["ip", "netns", "pids", name], check=False).stdout
    return {int(tok) for tok in out.split() if tok.isdigit()}


def del_netns(name: str) -> None:
    """Kill every process left in the namespace, then remove it (its veths go with it)."""
    if not netns_exists(name):
        return
    kill_pids(netns_pids(name))
    proc = run(["ip", "netns", "del", name], check=False)
    if proc.returncode != 0 and netns_exists(name):
        raise CommandError(["ip", "netns", "del", name], proc.returncode, proc.stderr)


# --- links ------------------------------------------------------------------------------------


def link_exists(name: str, ns: str | None = None) -> bool:
    if ns is not None and not netns_exists(ns):
        return False
    return _ip(ns, "link", "show", "dev", name, check=False).returncode == 0


def del_link(name: str, ns: str | None = None) -> None:
    if link_exists(name, ns):
        _ip(ns, "link", "del", "dev", name, check=False)


def add_veth(
    name: str, ns: str | None, peer: str, peer_ns: str | None, *, mac: str | None = None
) -> None:
    """Create a veth pair with each end already in its namespace (one atomic call).

    A half-made pair (one end left over from a crash) is removed and made again.
    """
    for n in (name, peer):
        if len(n) > 15:
            raise ValueError(f"interface name {n!r} is longer than 15 characters")
    here, there = link_exists(name, ns), link_exists(peer, peer_ns)
    if here and there:
        return
    del_link(name, ns)
    del_link(peer, peer_ns)
    cmd = ["link", "add", name]
    if mac:
        cmd += ["address", mac]
    cmd += ["type", "veth", "peer", "name", peer]
    # A pid names the namespace of the caller, so the root end can be created from inside ``ns``.
    cmd += ["netns", peer_ns or str(os.getpid())]
    _ip(ns, *cmd)


def add_bridge(name: str, ns: str | None) -> None:
    if not link_exists(name, ns):
        _ip(ns, "link", "add", name, "type", "bridge", check=False)
    _ip(ns, "link", "set", name, "up")


def set_link(
    name: str, ns: str | None, *, master: str | None = None, up: bool = True, isolated: bool = False
) -> None:
    if master:
        _ip(ns, "link", "set", name, "master", master)
    if isolated:
        run(["bridge", *(["-n", ns] if ns else []), "link", "set", "dev", name, "isolated", "on"])
    if up:
        _ip(ns, "link", "set", name, "up")


def link_mac(name: str, ns: str | None = None) -> str:
    return _ip(ns, "-br", "link", "show", "dev", name).stdout.split()[2]


def add_addr(name: str, ns: str | None, cidr: str) -> None:
    _ip(ns, "addr", "replace", cidr, "dev", name)


def del_addr(name: str, ns: str | None, cidr: str) -> None:
    _ip(ns, "addr", "del", cidr, "dev", name, check=False)


def addresses(ns: str | None = None) -> list[tuple[str, str]]:
    """(interface, address/prefixlen) of every address in ``ns``."""
    out = json.loads(_ip(ns, "-j", "addr", "show").stdout or "[]")
    return [
        (link["ifname"], f"{a['local']}/{a['prefixlen']}") for link in out for a in link.get("addr_info", [])
    ]


def add_route(ns: str | None, dest: str, via: str) -> None:
    _ip(ns, "route", "replace", dest, "via", via)


def sysctl(ns: str | None, key: str, value: str | int) -> None:
    run(in_ns(ns, ["sysctl", "-qw", f"{key}={value}"]))


def nft_apply(ns: str | None, ruleset: str) -> None:
    """Load an nftables script in one atomic transaction."""
    run(in_ns(ns, ["nft", "-f", "-"]), input=ruleset)


# --- processes --------------------------------------------------------------------------------

# Children we spawned, kept so that a dead one is reaped (a zombie would look alive to kill(0)).
_children: dict[int, subprocess.Popen[bytes]] = {}


def proc_starttime(pid: int) -> int | None:
    """The process's start time in clock ticks, None when it is gone or a zombie.

    Recorded with a pid, it tells our process apart from a later one that reused the pid.
    """
    child = _children.get(pid)
    if child is not None and child.poll() is not None:
        del _children[pid]
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def pid_alive(pid: int | None, starttime: int | None) -> bool:
    if not pid:
        return False
    now = proc_starttime(pid)
    return now is not None and (starttime is None or now == starttime)


def kill_pids(pids: Iterable[int], timeout: float = 3.0) -> None:
    """SIGTERM, wait up to ``timeout``, then SIGKILL whatever is left."""
    pending = {p for p in pids if p > 1 and p != os.getpid()}
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pending:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            pending = {p for p in pending if proc_starttime(p) is not None}
            if pending:
                time.sleep(0.02)
        if not pending:
            return


def spawn(
    ns: str,
    cmd: Sequence[str],
    log_path: Path,
    *,
    cgroup: str | None = None,
    nofile: int | None = None,
    env: dict[str, str] | None = None,
) -> tuple[int, int | None]:
    """Start ``cmd`` detached inside ``ns`` (and cgroup), logging to ``log_path``; (pid, starttime).

    A tiny shell joins the cgroup and raises the file limit before it execs ``ip netns exec``,
    which execs the command: the returned pid is the command's, and everything it forks
    inherits the cgroup. The shell is used instead of ``preexec_fn``, which is unsafe in a
    threaded controller. When the hard file limit cannot be raised (no CAP_SYS_RESOURCE),
    the soft limit goes up to the hard one.
    """
    steps = ["set -e"]
    if cgroup:
        steps += [f"echo $$ > {shlex.quote(str(p))}" for p in cgroup_procs_files(cgroup)]
    if nofile:
        steps.append(f'ulimit -n {int(nofile)} 2>/dev/null || ulimit -n "$(ulimit -H -n)"')
    steps.append('exec "$@"')
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        child = subprocess.Popen(
            ["sh", "-c", "; ".join(steps), "sh", *in_ns(ns, cmd)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
    _children[child.pid] = child
    return child.pid, proc_starttime(child.pid)


def listening(pid: int, ns: str, port: int) -> bool:
    """True when ``pid`` has entered namespace ``ns`` and a TCP socket listens there on ``port``."""
    try:
        if os.stat(f"/proc/{pid}/ns/net").st_ino != os.stat(NETNS_DIR / ns).st_ino:
            return False
    except (FileNotFoundError, ProcessLookupError):
        return False
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except (FileNotFoundError, ProcessLookupError):
            return False
        for line in lines:
            cols = line.split()
            if cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                return True
    return False


# --- cgroups (v1) -----------------------------------------------------------------------------


def cgroup_dirs(name: str) -> list[Path]:
    return [CGROUP_ROOT / ctl / name for ctl in CGROUP_CONTROLLERS]


def cgroup_procs_files(name: str) -> list[Path]:
    return [d / "cgroup.procs" for d in cgroup_dirs(name)]


def cfs_period_us(cpu: float | None) -> int:
    """The CFS period for a quota of ``cpu`` CPUs: short, with a quota of at least 1 ms."""
    if cpu is None or cpu <= 0:
        return MAX_CFS_PERIOD_US
    return min(MAX_CFS_PERIOD_US, max(MIN_CFS_PERIOD_US, math.ceil(1000 / cpu)))


def cgroup_create(name: str, *, cpu: float | None, memory_mb: int | None) -> None:
    """Make the cpu and memory cgroups; ``cpu`` is a fraction of one CPU, None means no quota."""
    cpu_dir, mem_dir = cgroup_dirs(name)
    for d in (cpu_dir, mem_dir):
        d.mkdir(parents=True, exist_ok=True)
    period = cfs_period_us(cpu)
    quota = -1 if cpu is None else max(1000, int(cpu * period))
    # The quota goes first when the period shrinks: the kernel refuses a period shorter than the
    # group's children's share otherwise (and an unlimited quota fits any period).
    (cpu_dir / "cpu.cfs_quota_us").write_text("-1")
    (cpu_dir / "cpu.cfs_period_us").write_text(str(period))
    (cpu_dir / "cpu.cfs_quota_us").write_text(str(quota))
    limit = -1 if memory_mb is None else memory_mb * 1024 * 1024
    (mem_dir / "memory.limit_in_bytes").write_text(str(limit))


def cgroup_pids(name: str) -> set[int]:
    pids: set[int] = set()
    for f in cgroup_procs_files(name):
        with contextlib.suppress(FileNotFoundError):
            pids |= {int(tok) for tok in f.read_text().split()}
    return pids


def cgroup_remove(name: str, timeout: float = 3.0) -> None:
    """Kill what is left in the cgroup and remove its directories."""
    deadline = time.monotonic() + timeout
    while True:
        kill_pids(cgroup_pids(name))
        try:
            for d in cgroup_dirs(name):
                if d.exists():
                    d.rmdir()
            return
        except OSError:
            # Killed tasks leave the cgroup a moment after they die.
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
