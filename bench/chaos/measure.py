"""The figures of chaos episodes (pure): broken connections, rows of medians, and the targets.

A run is one episode's record (``episode.run_episode``); a row gathers the runs of one fault on
one topology: medians over the repeats, with the worst repeat beside them. A target is met only
when every repeat meets it.

Targets (issue 11): at most ``WINDOW_TARGET_S`` of failed new connections for a distributor or
amphora failure in ACTIVE_ACTIVE (read beside ACTIVE_STANDBY's VRRP takeover of the same run);
no established connection broken except those on a failed amphora; full strength again in under
``FULL_STRENGTH_TARGET_S``.
"""

from __future__ import annotations

from typing import Any

from bench.common import median

WINDOW_TARGET_S = 0.35
FULL_STRENGTH_TARGET_S = 10.0


def breaks(client: dict[str, Any], pins: dict[int, str], failed: set[str], t_fault: float) -> dict[str, Any]:
    """What happened to the long-lived connections (the ``client`` tool's result, its clock started at
    ``client["started"]``) from ``t_fault`` on. ``pins``: client port -> amphora id of the connections
    open just before the fault; ``failed``: the failed amphorae.

    A pinned connection *broke* when a request on it failed, and was *closed* when the server closed
    it between requests (a FIN; the client reconnected, so a later port follows it). Breaks of
    connections made after the fault (reconnections: ports not in ``pins``) are counted apart."""
    counts = {(kind, where): 0 for kind in ("broken", "closed") for where in ("failed", "elsewhere")}
    reconnections = before = 0
    for conn in client["connections"]:
        broken_ports = set()
        for event in conn["broken"]:
            if client["started"] + float(event["t"]) < t_fault:
                before += 1
            elif isinstance(event.get("port"), int):
                broken_ports.add(int(event["port"]))
        reconnections += len(broken_ports - set(pins))
        ports = [int(p) for p in conn.get("ports", [])]
        for index, port in enumerate(ports):
            holder = pins.get(port)
            if holder is None or (index == len(ports) - 1 and port not in broken_ports):
                continue  # not open at the fault, or still open at the end
            kind = "broken" if port in broken_ports else "closed"
            counts[(kind, "failed" if holder in failed else "elsewhere")] += 1
    return {"connections": len(client["connections"]), "mapped": len(pins),
            "on_failed_amphora": sum(1 for holder in pins.values() if holder in failed),
            "broken": counts[("broken", "failed")] + counts[("broken", "elsewhere")],
            "broken_on_failed": counts[("broken", "failed")], "broken_elsewhere": counts[("broken", "elsewhere")],
            "closed_on_failed": counts[("closed", "failed")], "closed_elsewhere": counts[("closed", "elsewhere")],
            "reconnections_broken": reconnections, "broken_before_fault": before,
            "requests_ok": sum(int(c.get("ok", 0)) for c in client["connections"])}


def _values(runs: list[dict[str, Any]], *path: str) -> list[Any]:
    out = []
    for run in runs:
        value: Any = run
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        out.append(value)
    return out


def spread(values: list[Any]) -> dict[str, Any]:
    """Median and max of the numbers; ``missing`` counts the runs without one (None: never reached)."""
    numbers = [float(v) for v in values if isinstance(v, int | float)]
    return {"median": median(numbers) if numbers else None, "max": max(numbers) if numbers else None,
            "missing": len(values) - len(numbers)}


def _listed(marks: dict[str, Any]) -> Any:
    """When a replacement (an amphora, else a distributor) was first listed."""
    return marks.get("replacement_listed_s", marks.get("new_distributor_listed_s"))


def row(fault: str, target: str, kind: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One table row: the runs of ``fault`` on ``target`` (kind single | standby | l2 | l3)."""
    ok = [r for r in runs if "error" not in r]
    return {
        "fault": fault, "target": target, "kind": kind, "repeats": len(runs), "errors": len(runs) - len(ok),
        "window_s": spread(_values(ok, "new_connections", "window_s")),
        "failed": spread(_values(ok, "new_connections", "failed")),
        "attempts": spread(_values(ok, "new_connections", "attempts")),
        "broken_on_failed": spread(_values(ok, "established", "broken_on_failed")),
        "broken_elsewhere": spread(_values(ok, "established", "broken_elsewhere")),
        "closed_on_failed": spread(_values(ok, "established", "closed_on_failed")),
        "ended_on_failed": spread([e["broken_on_failed"] + e["closed_on_failed"] if e else None
                                   for e in _values(ok, "established")]),
        "closed_elsewhere": spread(_values(ok, "established", "closed_elsewhere")),
        "reconnections_broken": spread(_values(ok, "established", "reconnections_broken")),
        "connections": spread(_values(ok, "established", "connections")),
        "full_strength_s": spread(_values(ok, "full_strength_s")),
        "replacement_listed_s": spread([_listed(r.get("milestones", {})) for r in ok]),
        "from_spare": [r.get("milestones", {}).get("replacement_from_spare") for r in ok],
        "healed_while_down": [r.get("healed_while_down") for r in ok if "healed_while_down" in r],
    }


def _met(value: dict[str, Any], limit: float, strict: bool = False) -> bool | None:
    if value["median"] is None and not value["missing"]:
        return None
    if value["missing"] or value["max"] is None:
        return False
    return bool(value["max"] < limit) if strict else bool(value["max"] <= limit)


def targets(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Each row's verdict on the three targets, and the ACTIVE_STANDBY window to read each AA one beside."""
    standby = {r["fault"]: r["window_s"]["median"] for r in rows if r["kind"] == "standby"}
    verdicts = []
    for r in rows:
        if r["errors"] == r["repeats"]:
            verdicts.append({"fault": r["fault"], "target": r["target"], "error": True})
            continue
        window = _met(r["window_s"], WINDOW_TARGET_S) if r["kind"] in ("l2", "l3") else None
        verdicts.append({
            "fault": r["fault"], "target": r["target"],
            "window_le_0.35s": window,
            "standby_window_s": standby.get(r["fault"]) if r["kind"] in ("l2", "l3") else None,
            "none_broken_elsewhere": _met(r["broken_elsewhere"], 0),
            "full_strength_lt_10s": _met(r["full_strength_s"], FULL_STRENGTH_TARGET_S, strict=True),
        })
    keys = ("window_le_0.35s", "none_broken_elsewhere", "full_strength_lt_10s")
    summary = {k: {"met": sum(1 for v in verdicts if v.get(k) is True),
                   "missed": sum(1 for v in verdicts if v.get(k) is False)} for k in keys}
    return {"window_target_s": WINDOW_TARGET_S, "full_strength_target_s": FULL_STRENGTH_TARGET_S,
            "rule": "met only when every repeat meets it (the max over repeats)", "summary": summary,
            "rows": verdicts}
