"""The resilient fabric's programmer: bgpd's multipath set becomes resilient next-hop groups."""

from __future__ import annotations

import json

from cohort.lab.fib import commands, learnt_paths


def _show(routes: dict[str, list[tuple[str, bool, bool]]]) -> str:
    return json.dumps({"routes": {prefix: [{"valid": valid, "bestpath": best, "multipath": not best,
                                             "nexthops": [{"ip": hop}]} for hop, valid, best in paths]
                                  for prefix, paths in routes.items()}})


def test_learnt_paths_keep_selected_host_routes_only() -> None:
    shown = _show({"203.0.113.100/32": [("203.0.113.2", True, True), ("203.0.113.3", True, False),
                                        ("203.0.113.4", False, False)],
                   "203.0.113.0/24": [("203.0.113.2", True, True)]})
    assert learnt_paths(shown) == {"203.0.113.100": ["203.0.113.2", "203.0.113.3"]}
    assert learnt_paths("") == {}


def test_commands_change_only_what_changed_and_clean_up() -> None:
    first = commands({}, {"203.0.113.100": ["203.0.113.2", "203.0.113.3"]}, "fe0")
    group = next(c for c in first if c[:3] == ["ip", "nexthop", "replace"] and "group" in c)
    assert group[group.index("type") + 1] == "resilient" and "buckets" in group
    assert ["ip", "route", "replace", "203.0.113.100/32", "nhid", group[4], "proto", "bgp"] in first
    assert commands({"203.0.113.100": ["203.0.113.2"]}, {"203.0.113.100": ["203.0.113.2"]}, "fe0") == []
    grown = commands({"203.0.113.100": ["203.0.113.2"]}, {"203.0.113.100": ["203.0.113.2", "203.0.113.3"]}, "fe0")
    assert not any(c[:3] == ["ip", "route", "replace"] for c in grown)  # the route keeps its group
    gone = commands({"203.0.113.100": ["203.0.113.2"]}, {}, "fe0")
    assert gone == [["ip", "route", "del", "203.0.113.100/32", "proto", "bgp"],
                    ["ip", "nexthop", "del", "id", group[4]]]
