"""Verified heartbeats waiting to be recorded: only the newest of each sender, recorded by one thread.

On a loaded controller recording a heartbeat (a database transaction) can fall behind the
datagrams. A plain queue then grows, and every sender looks later and later, until the failover
watcher replaces healthy distributors (seen: 3.6 s behind under a benchmark). Here a sender's
newer heartbeat replaces its waiting one, so the backlog is at most one per sender; each carries
the time it arrived, which is what liveness is measured by; distributors (one pair serves every
L2 load balancer) are recorded first.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

LOG = logging.getLogger(__name__)

Record = Callable[[dict[str, Any], float], None]


class LatestPerSender:
    def __init__(self, record: Record) -> None:
        self._record = record
        self._pending: dict[tuple[bool, str], tuple[dict[str, Any], float]] = {}
        self._ready = threading.Condition()
        self._stopped = False
        self.replaced = 0  # heartbeats superseded before they were recorded
        self.recorded = 0

    def put(self, payload: dict[str, Any]) -> None:
        key = (payload.get("distributor") is not True, str(payload.get("id", "")))
        with self._ready:
            if key in self._pending:
                self.replaced += 1
            self._pending[key] = (payload, time.time())
            self._ready.notify()

    def run(self) -> None:
        while True:
            with self._ready:
                self._ready.wait_for(lambda: bool(self._pending) or self._stopped)
                if self._stopped:
                    return
                batch, self._pending = self._pending, {}
            for _key, (payload, received_at) in sorted(batch.items(), key=lambda item: item[0]):
                try:
                    self._record(payload, received_at)
                    self.recorded += 1
                except Exception:  # noqa: BLE001 - one bad heartbeat must not stop the others
                    LOG.exception("recording a heartbeat failed")

    def stop(self) -> None:
        with self._ready:
            self._stopped = True
            self._ready.notify_all()
