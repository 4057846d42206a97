"""Wake the reconciler from another process: one datagram on a Unix socket in the state directory.

Inside one process the API calls the reconciler's ``wake`` directly. API worker processes (and a
separate ``cohort api`` on the same host) send a datagram to ``reconciler.sock`` instead, which
the controller listens on. A lost or unsendable datagram costs nothing but latency: the
reconciler also polls every ``reconcile_interval``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

class WakeListener:
    """Calls ``on_wake`` for every datagram that arrives on ``path`` (bound with mode 0600)."""

    def __init__(self, path: Path, on_wake: Callable[[], None]) -> None:
        self.path = path
        self.on_wake = on_wake
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # left by a controller that died; a live one would be woken by both
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        old_umask = os.umask(0o077)
        try:
            sock.bind(str(self.path))
        except OSError as e:  # e.g. a path longer than a socket address holds: polling still works
            log.warning("reconciler wake socket %s not bound (%s); other processes wake it by polling only",
                        self.path, e)
            sock.close()
            return
        finally:
            os.umask(old_umask)
        self._sock = sock
        self._thread = threading.Thread(target=self._loop, name="wake-listener", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        sock = self._sock
        assert sock is not None
        while True:
            try:
                data = sock.recv(64)
            except OSError:
                return
            if not data:  # shut down by close(); every sender sends one byte
                return
            self.on_wake()

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()
            self._sock = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        if self._thread is not None:
            self._thread.join(timeout=2)


class WakeSender:
    """Sends the wake datagram; never blocks and never fails the caller."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setblocking(False)

    def __call__(self) -> None:
        try:
            self._sock.sendto(b"w", self.path)
        except OSError as e:  # no controller here, or its queue is full: polling covers it
            log.debug("reconciler wake not sent: %s", e)
