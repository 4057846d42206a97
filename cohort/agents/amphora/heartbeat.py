"""What the amphora reports in its heartbeats: every load balancer's listeners and pools.

HAProxy's counters start from zero in the new workers of every reload. The body
builder keeps them monotonic for the health manager by adding what the previous
workers had counted when a counter goes backwards (lost only if the agent
itself restarts).
"""

from __future__ import annotations

import time
from typing import Any

from cohort.agents.amphora import stats
from cohort.agents.amphora.bgp import STATUS_MAX_AGE, BgpManager
from cohort.agents.amphora.haproxy import HaproxyManager
from cohort.agents.amphora.l4 import L4Manager

HEARTBEAT_VERSION = 1
CUMULATIVE = ("bytes_in", "bytes_out", "total_connections", "request_errors")


class HeartbeatBody:
    """Callable building the heartbeat body (``ver``, ``listeners``, ``pools``) across all HAProxy instances."""

    def __init__(self, haproxy: HaproxyManager, bgp: BgpManager | None = None, l4: L4Manager | None = None) -> None:
        self.haproxy = haproxy
        self.bgp = bgp
        self.l4 = l4
        self._last: dict[tuple[str, str], int] = {}
        self._offset: dict[tuple[str, str], int] = {}

    def _monotonic(self, listener_id: str, counters: dict[str, int]) -> None:
        for name in CUMULATIVE:
            key, raw = (listener_id, name), counters[name]
            if raw < self._last.get(key, 0):
                self._offset[key] = self._offset.get(key, 0) + self._last[key]
            self._last[key] = raw
            counters[name] = raw + self._offset.get(key, 0)

    def __call__(self) -> dict[str, Any]:
        listeners: dict[str, Any] = {}
        pools: dict[str, Any] = {}
        for lb_id in self.haproxy.lb_ids():
            lb_listeners, lb_pools = stats.summarize(self.haproxy.show_stat(lb_id))
            listeners.update(lb_listeners)
            pools.update(lb_pools)
        # UDP and SCTP listeners: nftables counters and conntrack (already monotonic: kept across changes).
        l4 = self.l4
        for lb_listeners, lb_pools in (l4.stats(i) for i in l4.lb_ids()) if l4 is not None else ():
            listeners.update(lb_listeners)
            pools.update(lb_pools)
        for listener_id, report in listeners.items():
            self._monotonic(listener_id, report["stats"])
        body: dict[str, Any] = {"ver": HEARTBEAT_VERSION, "listeners": listeners, "pools": pools}
        if self.bgp is not None:
            status = self.bgp.status(max_age=STATUS_MAX_AGE)
            if status["configured"]:
                sessions = status["sessions"]
                # How long each session that is not up has been down, as of now (the status is up to
                # STATUS_MAX_AGE old): the controller counts from when it went down.
                age = max(0.0, time.monotonic() - status.get("checked_at", time.monotonic()))
                body["bgp"] = {"sessions": {peer: s["state"] for peer, s in sessions.items()},
                               "announced": status["announced"],
                               "down_for": {peer: round(s["down_for"] + age, 3)
                                            for peer, s in sessions.items() if "down_for" in s}}
        return body
