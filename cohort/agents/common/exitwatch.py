"""Sleeping until a process exits: pidfds polled together with a wake-up pipe.

A watchdog that must notice a death within milliseconds but costs nothing while all is well (a
capped amphora has a twentieth of a CPU) cannot poll ``/proc``: it sleeps in ``poll`` on a pidfd
per watched process, which becomes readable when the process exits, zombie or not.
"""

from __future__ import annotations

import contextlib
import os
import select


class ExitWatch:
    """Watch a set of pids; ``wait`` returns the ones that exited, ``wake`` ends a ``wait`` early."""

    def __init__(self) -> None:
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._pidfds: dict[int, int] = {}
        self._exited: set[int] = set()  # never watched again, so a zombie cannot wake us forever

    def wake(self) -> None:
        # BlockingIOError: a wake-up is pending already; OSError: closed, nobody waits any more.
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"!")

    def wait(self, pids: set[int], timeout: float) -> set[int]:
        """Watch exactly ``pids`` from now on; sleep until one exits, ``wake`` or ``timeout`` seconds.

        Returns the pids seen to exit (in this call or gone before it could be watched)."""
        self._exited &= pids
        wanted = pids - self._exited
        for pid in set(self._pidfds) - wanted:
            os.close(self._pidfds.pop(pid))
        gone: set[int] = set()
        for pid in wanted - set(self._pidfds):
            try:
                self._pidfds[pid] = os.pidfd_open(pid)
            except ProcessLookupError:
                gone.add(pid)
        if gone:
            self._exited |= gone
            return gone
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        by_fd = {fd: pid for pid, fd in self._pidfds.items()}
        for fd in by_fd:
            poller.register(fd, select.POLLIN)
        for fd, _ in poller.poll(max(0.0, timeout) * 1000):
            if fd == self._wake_r:
                with contextlib.suppress(BlockingIOError):
                    while os.read(self._wake_r, 64):
                        pass
            else:
                pid = by_fd[fd]
                os.close(self._pidfds.pop(pid))
                gone.add(pid)
        self._exited |= gone
        return gone

    def close(self) -> None:
        for fd in self._pidfds.values():
            os.close(fd)
        self._pidfds.clear()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
