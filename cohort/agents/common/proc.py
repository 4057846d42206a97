"""Running an agent's system commands (ip, nft, sysctl, haproxy, keepalived) and reading processes.

Owns ``CommandFailed`` (a command's own message, readable in API errors), the ``/proc``
readers both agents use to adopt the daemons a previous agent left running, and ``ExitWatch``,
which wakes a supervisor the moment a daemon exits.
"""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
from collections.abc import Iterable, Sequence


class CommandFailed(RuntimeError):
    """A command exited non-zero; ``output`` holds what it said (stderr, else stdout)."""

    def __init__(self, cmd: Sequence[str], returncode: int, output: str) -> None:
        super().__init__(f"{' '.join(cmd)} exited {returncode}: {output.strip()}")
        self.cmd = list(cmd)
        self.returncode = returncode
        self.output = output


def run(cmd: Sequence[str], stdin: str | None = None, timeout: float = 30.0) -> str:
    """Run ``cmd`` (fed ``stdin``), return its stdout; raise CommandFailed with its message when it fails."""
    proc = subprocess.run(list(cmd), input=stdin, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise CommandFailed(cmd, proc.returncode, proc.stderr or proc.stdout)
    return proc.stdout


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            # A zombie has exited; only its parent's wait() is missing.
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def read_pid(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


class ExitWatch:
    """Waits for any of a set of processes to exit, through pidfds: woken by the exit itself, not by
    the next poll (a supervisor polling every 0.5 s left a dead HAProxy refusing connections for up
    to that long), and at no cost while they live. Not thread-safe: one supervisor owns it."""

    def __init__(self) -> None:
        self._fds: dict[int, int] = {}
        self._exited: set[int] = set()  # seen exit, maybe not reaped yet: never watched again

    def wait(self, pids: Iterable[int], timeout: float) -> set[int]:
        """Watch ``pids`` (no longer watching others) and wait up to ``timeout`` seconds for one of
        them to exit; returns those that exited. A pid already gone is not waited for (its owner's
        own check finds it)."""
        wanted = set(pids) - self._exited
        for pid in [p for p in self._fds if p not in wanted]:
            os.close(self._fds.pop(pid))
        self._exited &= set(pids)  # forget pids nobody asks about any more (they may be reused)
        gone: set[int] = set()
        for pid in wanted - set(self._fds):
            try:
                self._fds[pid] = os.pidfd_open(pid)
            except ProcessLookupError:
                gone.add(pid)
        if gone:  # exited since the caller last looked: no wait
            self._exited |= gone
            return gone
        poller = select.poll()
        by_fd = {fd: pid for pid, fd in self._fds.items()}
        for fd in by_fd:
            poller.register(fd, select.POLLIN)
        exited = {by_fd[fd] for fd, _events in poller.poll(max(0.0, timeout) * 1000)}
        for pid in exited:
            os.close(self._fds.pop(pid))
        self._exited |= exited
        return exited

    def close(self) -> None:
        for fd in self._fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()
