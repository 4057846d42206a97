"""Health probes: TCP connects from the distributor to each amphora's health port.

Only a liveness hint for the bucket table: a failing amphora stops getting *new* flows,
while its pinned flows stay where they are (a false alarm therefore breaks nothing).
Probes run concurrently with non-blocking sockets bound to the load balancer's interface
(``SO_BINDTODEVICE``: interfaces of different load balancers may share a subnet), and
are closed with a RST so the distributor keeps no TIME_WAIT sockets.

Timing (defaults): a probe every ``interval`` (0.1 s), a connect ``timeout`` of 0.05 s (a
SYN-ACK on the same L2 segment takes well under a millisecond, and it is answered by the
amphora's kernel, not by a process that could be busy), and while a target is between
states it is probed again after ``interval / 8`` (HAProxy's ``fastinter``). Down after
``fall`` (2) consecutive failures, up after ``rise`` (2) successes: an amphora that stops
answering is out of the bucket table at most 0.1 + 0.05 + 0.0125 + 0.05 = 0.2125 s after its
last answer, plus the ~2 ms a rewrite of the table takes. The amphora's HAProxy binds the probed
port with ``defer-accept``: a probe, which sends nothing, is answered by its kernel and never
accepted, so probing ten times a second costs the amphora nothing (it was every 0.2 s, with every
probe accepted).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field

LOG = logging.getLogger(__name__)
FAST_DIVISOR = 8  # fastinter = interval / 8 while a verdict is about to change


@dataclass(frozen=True)
class ProbeSettings:
    interval: float = 0.1
    timeout: float = 0.05
    fall: int = 2
    rise: int = 2

    def validate(self) -> ProbeSettings:
        if not 0.02 <= self.interval <= 60:
            raise ValueError("probe interval must be within 0.02..60 s")
        if not 0.005 <= self.timeout <= self.interval:
            raise ValueError("probe timeout must be within 0.005 s..interval")
        if not (1 <= self.fall <= 10 and 1 <= self.rise <= 10):
            raise ValueError("probe fall and rise must be within 1..10")
        return self


@dataclass(frozen=True)
class ProbeTarget:
    key: Hashable  # (lb_id, amphora_id) for the agent
    address: str
    port: int
    device: str | None
    healthy: bool  # the owner's current verdict: the prober reports only changes of it
    settings: ProbeSettings = field(default_factory=ProbeSettings)


def probe_many(targets: Sequence[ProbeTarget]) -> dict[Hashable, bool]:
    """Connect to every target at once; True for those that accepted within their timeout."""
    results: dict[Hashable, bool] = {}
    pending: dict[socket.socket, tuple[ProbeTarget, float]] = {}
    sel = selectors.DefaultSelector()
    start = time.monotonic()
    try:
        for t in targets:
            sock = _start_connect(t)
            if sock is None:
                results[t.key] = False
                continue
            pending[sock] = (t, start + t.settings.timeout)
            sel.register(sock, selectors.EVENT_WRITE)
        while pending:
            deadline = min(d for _, d in pending.values())
            for key, _ in sel.select(max(0.0, deadline - time.monotonic())):
                ready = key.fileobj
                assert isinstance(ready, socket.socket)
                target, _ = pending.pop(ready)
                results[target.key] = ready.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
                _close(sel, ready)
            now = time.monotonic()
            for sock, (target, due) in list(pending.items()):
                if due <= now:
                    # We may have been descheduled past the deadline: look once more before failing it.
                    results[target.key] = _connected(sock)
                    del pending[sock]
                    _close(sel, sock)
    finally:
        for sock in pending:
            _close(sel, sock)
        sel.close()
    return results


def _start_connect(t: ProbeTarget) -> socket.socket | None:
    family = socket.AF_INET6 if ":" in t.address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        if t.device:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, t.device.encode())
        code = sock.connect_ex((t.address, t.port))
        if code in (0, errno.EINPROGRESS):
            return sock
    except OSError as e:
        LOG.debug("probe of %s:%d failed to start: %s", t.address, t.port, e)
    sock.close()
    return None


def _connected(sock: socket.socket) -> bool:
    try:
        sock.getpeername()
    except OSError:
        return False
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0


def _close(sel: selectors.BaseSelector, sock: socket.socket) -> None:
    with contextlib.suppress(KeyError, ValueError):
        sel.unregister(sock)
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@dataclass
class _Track:
    fails: int = 0
    oks: int = 0
    due: float = 0.0


class Prober:
    """A thread probing ``targets()`` and calling ``report`` with every change of verdict.

    ``targets`` is asked afresh each round, so membership changes need no bookkeeping here;
    ``wake()`` makes the next round start at once (a new member is probed without delay).
    """

    def __init__(
        self,
        targets: Callable[[], list[ProbeTarget]],
        report: Callable[[dict[Hashable, bool]], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._targets = targets
        self._report = report
        self._clock = clock
        self._tracks: dict[Hashable, _Track] = {}
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.rounds = 0

    def wake(self) -> None:
        self._wake.set()

    def step(self, now: float, results: dict[Hashable, bool], targets: Sequence[ProbeTarget]) -> dict[Hashable, bool]:
        """Account probe ``results``; returns the verdicts that change. Pure bookkeeping, no I/O."""
        changes: dict[Hashable, bool] = {}
        for t in targets:
            if t.key not in results:
                continue
            tr = self._tracks.setdefault(t.key, _Track())
            if results[t.key]:
                tr.oks, tr.fails = tr.oks + 1, 0
            else:
                tr.fails, tr.oks = tr.fails + 1, 0
            s = t.settings
            if t.healthy and tr.fails >= s.fall:
                changes[t.key] = False
            elif not t.healthy and tr.oks >= s.rise:
                changes[t.key] = True
            settling = (t.healthy and tr.fails > 0 and t.key not in changes) or (
                not t.healthy and tr.oks > 0 and t.key not in changes
            )
            tr.due = now + (s.interval / FAST_DIVISOR if settling else s.interval)
        return changes

    def due(self, targets: Sequence[ProbeTarget], now: float) -> list[ProbeTarget]:
        known = {t.key for t in targets}
        for key in [k for k in self._tracks if k not in known]:
            del self._tracks[key]
        return [t for t in targets if self._tracks.get(t.key, _Track()).due <= now]

    def run_once(self) -> float:
        """Probe what is due; returns how long to sleep before the next round."""
        targets = self._targets()
        now = self._clock()
        due = self.due(targets, now)
        if due:
            results = probe_many(due)
            changes = self.step(self._clock(), results, due)
            self.rounds += 1
            if changes:
                self._report(changes)
        if not targets:
            return 1.0
        nxt = min(self._tracks.get(t.key, _Track()).due for t in targets)
        return min(1.0, max(0.005, nxt - self._clock()))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                pause = self.run_once()
            except Exception:
                LOG.exception("probe round failed")
                pause = 1.0
            self._wake.wait(pause)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="probes", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
