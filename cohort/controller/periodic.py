"""The loop the controller's keepers share: a pass every ``interval`` seconds in its own thread until
stopped (the failover watcher, the spare amphora pool, the spare distributors)."""

from __future__ import annotations

import logging
import threading

log = logging.getLogger(__name__)


class Periodic:
    """Runs ``tick()`` every ``interval`` seconds from ``run()`` until ``stop()``.

    A pass that fails is logged and the next one runs: a keeper must outlive any one failure.
    """

    what = "periodic pass"  # how the log names a failed pass

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._stop = threading.Event()

    def tick(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - see the class docstring
                log.exception("%s failed", self.what)
