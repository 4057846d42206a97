"""An amphora heartbeat's body, read defensively into typed reports for the health manager.

A signed payload is authentic, not well formed: the agent inside a tenant's amphora is the
one that signs it. Anything of the wrong type is dropped here (a malformed section makes the
whole body unusable, a malformed entry or counter is skipped), so the consumer never raises.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

COUNTERS = ("bytes_in", "bytes_out", "active_connections", "total_connections", "request_errors")
MAX_COUNTER = 2**63 - 1  # a BIGINT column


@dataclass(frozen=True)
class ListenerReport:
    status: str | None
    # Only the counters that were well formed; the others keep their stored value.
    stats: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class PoolReport:
    status: str | None
    members: dict[str, str] = field(default_factory=dict)


# A speaker's word on how long a session has been down is believed this far back at most.
MAX_DOWN_FOR = 60.0


@dataclass(frozen=True)
class BgpReport:
    """An L3 amphora's speaker: each peer's session state and the VIPs it announces."""

    sessions: dict[str, str]
    announced: tuple[str, ...]
    # Seconds each session that is not Established has been down, as the speaker says.
    down_for: dict[str, float] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"sessions": self.sessions, "announced": list(self.announced), "down_for": self.down_for}


@dataclass(frozen=True)
class AmphoraReport:
    listeners: dict[str, ListenerReport]
    pools: dict[str, PoolReport]
    bgp: BgpReport | None = None


def _status(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _counter(value: object) -> int | None:
    if not isinstance(value, int) or isinstance(value, bool):
        return None
    return min(max(value, 0), MAX_COUNTER)


def _listener(report: Mapping[str, Any]) -> ListenerReport:
    stats = report.get("stats")
    counters: dict[str, int] = {}
    if isinstance(stats, dict):
        for name in COUNTERS:
            value = _counter(stats.get(name, 0))
            if value is not None:
                counters[name] = value
    return ListenerReport(_status(report.get("status")), counters)


def _pool(report: Mapping[str, Any]) -> PoolReport:
    members = report.get("members")
    statuses: dict[str, str] = {}
    if isinstance(members, dict):
        statuses = {k: v for k, v in members.items() if isinstance(k, str) and isinstance(v, str)}
    return PoolReport(_status(report.get("status")), statuses)


def seconds_down(value: object) -> float | None:
    """An agent's "down for" in seconds, at most ``MAX_DOWN_FOR``; None when it is not a sane number."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < float("inf"):
        return None
    return min(float(value), MAX_DOWN_FOR)


def _bgp(section: object) -> BgpReport | None:
    if not isinstance(section, dict):
        return None
    sessions = section.get("sessions")
    announced = section.get("announced")
    down_for = section.get("down_for")
    return BgpReport(
        {k[:64]: v[:32] for k, v in sessions.items() if isinstance(k, str) and isinstance(v, str)}
        if isinstance(sessions, dict) else {},
        tuple(v[:64] for v in announced if isinstance(v, str))[:64] if isinstance(announced, list) else (),
        {k[:64]: seconds for k, v in down_for.items()
         if isinstance(k, str) and (seconds := seconds_down(v)) is not None}
        if isinstance(down_for, dict) else {},
    )


def parse_amphora_report(payload: Mapping[str, Any]) -> AmphoraReport | None:
    """The listeners and pools an amphora reports, or None when a section is not an object."""
    listeners = payload.get("listeners") or {}
    pools = payload.get("pools") or {}
    if not isinstance(listeners, dict) or not isinstance(pools, dict):
        return None
    return AmphoraReport(
        listeners={k: _listener(v) for k, v in listeners.items() if isinstance(v, dict)},
        pools={k: _pool(v) for k, v in pools.items() if isinstance(v, dict)},
        bgp=_bgp(payload.get("bgp")),
    )
