"""A distributor's front-end link flaps (issue 11): its routes to the amphorae come back at once,
it does not take the VIPs from the working MASTER, and once it is MASTER it serves the VIP.

Same lab and load balancer as ``test_distributor_pair`` (its ``env`` fixture). The kernel drops
the routes and permanent neighbours through a link that goes down, and nothing else puts them
back when it comes up: the distributor agent watches link events and re-applies its state.
"""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any

import pytest

from tests.functional.test_distributor_pair import env, load, mac_of, namespace, pair, result  # noqa: F401
from tests.support import Api, wait_for

pytestmark = pytest.mark.root

ROUTES_BACK_WITHIN = 1.0  # seconds after the link is up again


def amphora_routes(ns: str, vip: str) -> list[str]:
    """The distributor's routes to the VIP through an amphora (one per mark table)."""
    out = subprocess.run(["ip", "-n", ns, "-4", "-j", "route", "show", "table", "all"], capture_output=True,
                         text=True, check=True).stdout
    return sorted(f"{r['table']} via {r['gateway']}" for r in json.loads(out)
                  if str(r.get("table", "")).isdigit() and r.get("dst") == vip and "gateway" in r)


def test_a_link_flap_loses_no_route_keeps_the_master_and_the_flapped_member_serves_as_master(
        env: tuple[Any, Api, Any, str, str]) -> None:  # noqa: F811
    _cohort, api, lab, _lb_id, vip = env
    roles = wait_for(lambda: pair(api), timeout=60)
    master, backup = roles["MASTER"], roles["BACKUP"]
    ns = namespace(lab, backup)
    before = amphora_routes(ns, vip)
    assert len(before) == 2, before

    subprocess.run(["ip", "-n", ns, "link", "set", "fe0", "down"], check=True)
    time.sleep(3.0)
    down = amphora_routes(ns, vip)  # the kernel took them with the link (the agent cannot route via it)
    subprocess.run(["ip", "-n", ns, "link", "set", "fe0", "up"], check=True)
    up = time.monotonic()
    wait_for(lambda: amphora_routes(ns, vip) == before, timeout=5, interval=0.02)
    back = time.monotonic() - up
    print(f"\nfe0 down 3 s ({len(down)} routes meanwhile), then up: {len(before)} routes back after {back:.3f}s")
    assert back <= ROUTES_BACK_WITHIN

    # nopreempt: the flapped member stays BACKUP, the working MASTER keeps the VIP (and ARP for it).
    time.sleep(2.0)
    assert (p := pair(api)) and p["MASTER"]["id"] == master["id"], p
    master_mac = mac_of(lab, namespace(lab, master))
    answers = lab.exec("gw", ["arping", "-c", "3", "-w", "2", "-I", "fe0", vip]).stdout.lower()
    assert master_mac in answers and mac_of(lab, ns) not in answers, answers

    # The flapped member becomes MASTER (the other's links go down) and serves the VIP.
    for ifname in ("fe0", "mgmt0"):
        subprocess.run(["ip", "-n", namespace(lab, master), "link", "set", ifname, "down"], check=True)
    wait_for(lambda: vip in subprocess.run(["ip", "-n", ns, "-4", "addr", "show", "dev", "fe0"],
                                           capture_output=True, text=True).stdout, timeout=10, interval=0.05)
    figures = result(load(lab, vip, 3.0, keepalive=5))
    print(f"flapped member as MASTER: {figures['ok']} served, {len(figures['failures'])} failed new connections, "
          f"keep-alive broken {figures['broken']} of 5")
    assert figures["ok"] > 0 and figures["failures"] == [] and figures["broken"] == 0, figures
    # The controller replaces the dark member; the pair is whole again around the flapped MASTER.
    wait_for(lambda: (p := pair(api)) and p["MASTER"]["id"] == backup["id"] and p, timeout=60, interval=0.2)
