"""Operating status, derived only from what amphorae report (never assumed).

Maps the heartbeat vocabulary to Octavia's and rolls member health up to pools, listeners
and the load balancer: a member in ERROR makes its pool, listener and load balancer DEGRADED.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from cohort.db import models as m

LISTENER_STATUS = {"OPEN": "ONLINE", "FULL": "DEGRADED", "DOWN": "OFFLINE"}
POOL_STATUS = {"UP": "ONLINE", "DOWN": "ERROR"}
MEMBER_STATUS = {"UP": "ONLINE", "DOWN": "ERROR", "MAINT": "OFFLINE", "DRAIN": "DRAINING",
                 "no check": "NO_MONITOR"}

HEALTHY = {"ONLINE", "NO_MONITOR", "DRAINING"}


def pool_from_members(reported: str, members: Iterable[str]) -> str:
    """A pool is ERROR when no member can serve, DEGRADED when some members are in ERROR."""
    statuses = [s for s in members if s != "OFFLINE"]
    if reported == "ERROR" or (statuses and all(s == "ERROR" for s in statuses)):
        return "ERROR"
    if any(s == "ERROR" for s in statuses):
        return "DEGRADED"
    return "ONLINE"


def worst(own: str, children: Iterable[str]) -> str:
    """A parent that is up is DEGRADED as soon as any child is DEGRADED or in ERROR."""
    if own not in HEALTHY:
        return own
    if any(child in ("ERROR", "DEGRADED") for child in children):
        return "DEGRADED"
    return own


def cluster_status(healthy: int, desired: int, minimum: int) -> str:
    """ACTIVE_ACTIVE: ONLINE at full size, DEGRADED below it, ERROR below the minimum."""
    if healthy >= desired:
        return "ONLINE"
    if healthy >= minimum:
        return "DEGRADED"
    return "ERROR"


def bgp_problem(health: m.AmphoraHealth | None, vip: str | None) -> str | None:
    """Why an L3 amphora's route is not in the fabric, or None when it announces ``vip``."""
    if health is None or not health.bgp:
        return "no BGP report yet"
    try:
        report = json.loads(health.bgp)
    except ValueError:
        return "unreadable BGP report"
    sessions = report.get("sessions") or {}
    if not any(state == "Established" for state in sessions.values()):
        states = ", ".join(f"{peer} {state}" for peer, state in sorted(sessions.items())) or "no peer"
        return f"no BGP session established ({states})"
    if vip not in (report.get("announced") or []):
        return f"VIP {vip} not announced"
    return None
