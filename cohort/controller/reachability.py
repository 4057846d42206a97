"""The front-end data path as the distributor pair sees it: which L2 amphorae it cannot reach, since when.

An amphora whose front-end link is down still heartbeats over the management network, so its own
heartbeats say it is fine; the distributors' probes (``cohort.distributor.probes``) find it down and
send it no new flows, and the cluster would stay short for good. Every distributor heartbeat carries
its verdict per VIP and member; the health manager keeps, per distributor, since when each member
has been reported down (``record``, stored in ``distributor_health.probes``), and the failover
watcher replaces an amphora that every trustworthy distributor reporting it has reported down for
longer than ``frontend_unreachable_after`` (``unreachable_for``), as it replaces a silent one.

Whom to believe: only live distributors (ACTIVE, heartbeating, keepalived running: the watcher
chooses), and of those only a view of a VIP in which at least one member is reachable. A
distributor whose own link is down fails every probe; so does one whose VIP's amphorae all refuse
(the load balancer is administratively down, say). Neither is evidence against one amphora, and
replacing every amphora of a cluster would not help; a cluster of one amphora is therefore never
replaced on the probes' word.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from cohort.health.report import seconds_down

# lb_id -> amphora_id -> when it was first reported down, continuously since (None: reported up).
Probes = dict[str, dict[str, float | None]]
# lb_id -> amphora_id -> seconds the distributor has found it down (None: up), as one heartbeat reports it.
Report = dict[str, dict[str, float | None]]



def parse_report(vips: object) -> Report | None:
    """The probe verdicts of a distributor heartbeat's ``vips`` section; None when it is not one.

    Drained members are left out (they are not probed any more, so their verdict is stale);
    malformed entries are skipped: a signed body is authentic, not necessarily well formed."""
    if not isinstance(vips, Mapping):
        return None
    report: Report = {}
    for lb_id, vip in vips.items():
        members = vip.get("members") if isinstance(vip, Mapping) else None
        if not isinstance(lb_id, str) or not isinstance(members, Mapping):
            continue
        report[lb_id] = {
            amphora_id: None if member["healthy"] else _down_for(member.get("down_for"))
            for amphora_id, member in members.items()
            if isinstance(amphora_id, str) and isinstance(member, Mapping)
            and isinstance(member.get("healthy"), bool) and member.get("drained") is not True
        }
    return report


def _down_for(value: object) -> float:
    """Seconds down, as reported; 0 when missing or not a sane number (an older agent says nothing)."""
    return seconds_down(value) or 0.0


def load(text: str | None) -> Probes:
    if not text:
        return {}
    try:
        data: Any = json.loads(text)
    except ValueError:
        return {}
    if not isinstance(data, dict):
        return {}
    probes: Probes = {}
    for lb_id, members in data.items():
        if isinstance(members, dict):
            probes[lb_id] = {aid: float(since) if isinstance(since, int | float) else None
                             for aid, since in members.items()}
    return probes


def dump(probes: Probes) -> str:
    return json.dumps(probes, sort_keys=True, separators=(",", ":"))


def record(stored: Probes, report: Report, seen: float, partial: bool) -> Probes:
    """The stored view after one heartbeat received at ``seen``.

    A member reported down keeps the time it went down (the first report's arrival less the seconds
    it says the member has been down) while every report since says so; a report of it up clears
    it. A partial heartbeat (a distributor with more VIPs than fit one datagram) updates only the
    VIPs it carries; a whole one replaces the view."""
    probes: Probes = {lb_id: dict(members) for lb_id, members in stored.items()} if partial else {}
    for lb_id, members in report.items():
        before = stored.get(lb_id, {})
        probes[lb_id] = {aid: None if down_for is None else _first(before.get(aid), seen - down_for)
                         for aid, down_for in members.items()}
    return probes


def _first(since: float | None, went_down: float) -> float:
    return went_down if since is None else since


def unreachable_for(views: Iterable[Probes], now: float) -> dict[str, float]:
    """Seconds each amphora has been reported down by every trusted view that reports it.

    ``views`` are those of live distributors. Within them a view of a VIP in which no member is
    reachable is not trusted (see the module's docstring); an amphora that any trusted view reports
    up is not listed, and it is down since the latest of the trusted views' first reports."""
    down_since: dict[str, float] = {}
    reachable: set[str] = set()
    for probes in views:
        for members in probes.values():
            if all(since is not None for since in members.values()):
                continue  # reaches none of them (an empty VIP included): no evidence against one amphora
            for amphora_id, since in members.items():
                if since is None:
                    reachable.add(amphora_id)
                else:
                    down_since[amphora_id] = max(since, down_since.get(amphora_id, since))
    return {aid: max(0.0, now - since) for aid, since in down_since.items() if aid not in reachable}
