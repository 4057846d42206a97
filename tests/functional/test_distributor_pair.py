"""The L2 distributor pair for real: VRRP takeover under load, replacement, and no stray ARP.

Local drivers on a private lab: one ACTIVE_ACTIVE load balancer of two amphorae behind the pair.
Traffic comes from the lab's client namespace: loops of new connections (``Connection: close``)
and long-lived keep-alive connections. Figures are printed (``-s`` shows them).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.functional.test_local_active_active import namespace_pids
from tests.support import Api, local_cohort, wait_for

pytestmark = pytest.mark.root

SPARE = "distributor-l2-spare"

# New connections in four staggered loops (0.1 s timeout each) and keep-alive connections, for
# ``seconds``; prints the wall-clock start of every failed new connection and the keep-alive outcome.
LOAD = r"""
import http.client, json, socket, sys, threading, time
vip, seconds, keepalive = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
deadline = time.time() + seconds
failures, ok = [], [0]
def loop(offset):
    time.sleep(offset)
    while time.time() < deadline:
        started = time.time()
        try:
            with socket.create_connection((vip, 80), timeout=0.1) as s:
                s.settimeout(1.0)
                s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if not s.recv(64).startswith(b"HTTP/1.1 200"):
                    raise OSError("bad answer")
            ok[0] += 1
        except OSError:
            failures.append(started)
        time.sleep(max(0.0, 0.02 - (time.time() - started)))
connections = [http.client.HTTPConnection(vip, 80, timeout=3) for _ in range(keepalive)]
broken = [0]
def keep():
    while time.time() < deadline:
        for index, conn in enumerate(connections):
            if conn is None:
                continue
            try:
                conn.request("GET", "/")
                conn.getresponse().read()
            except Exception:
                broken[0] += 1
                connections[index] = None
        time.sleep(0.05)
threads = [threading.Thread(target=loop, args=(i * 0.005,)) for i in range(4)] + [threading.Thread(target=keep)]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps({"ok": ok[0], "failures": sorted(failures), "broken": broken[0],
                  "alive": sum(c is not None for c in connections)}))
"""


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Api, Any, str, str]]:
    # A spare distributor is kept: each replacement below is the spare taking the failed member's place.
    with local_cohort(tmp_path_factory.mktemp("cohort-pair"), distributor_spare=True) as (cohort, base, lab):
        api = Api(base)
        address = lab.add_member("pair1", workers=2)
        # SOURCE_IP_PORT: the client's connections spread over the amphorae (and the table's buckets).
        flavor = api.flavor("aa2", {"loadbalancer_topology": "ACTIVE_ACTIVE", "amp_cluster_size": 2,
                                    "distributor_affinity": "SOURCE_IP_PORT"})
        status, body = api.post("/v2/lbaas/loadbalancers", {"loadbalancer": {
            "name": "pair", "vip_subnet_id": "public-subnet", "flavor_id": flavor, "listeners": [{
                "protocol": "HTTP", "protocol_port": 80, "default_pool": {
                    "protocol": "HTTP", "lb_algorithm": "ROUND_ROBIN",
                    "members": [{"address": address, "protocol_port": 80, "subnet_id": "private-subnet"}]}}]}})
        assert status == 201, body
        lb_id = body["loadbalancer"]["id"]
        vip = api.wait_active(f"/v2/lbaas/loadbalancers/{lb_id}", "loadbalancer", timeout=120)["vip_address"]
        wait_for(lambda: lab.exec_client(["curl", "-s", "--max-time", "1", f"http://{vip}/"]).stdout.strip()
                 == "pair1", timeout=30)
        try:
            yield cohort, api, lab, lb_id, vip
        finally:
            lab.remove_member("pair1")


def pair(api: Api) -> dict[str, dict[str, Any]]:
    """The live members by role, once there is one MASTER and one BACKUP (else {})."""
    rows = [d for d in api.get("/v2/octavia/distributors")[1]["distributors"]
            if d["status"] not in ("DELETED", "ERROR") and d["name"] != SPARE]
    by_role = {d["role"]: d for d in rows}
    return by_role if len(rows) == 2 and set(by_role) == {"MASTER", "BACKUP"} else {}


def ready_spare(api: Api, not_id: str = "") -> dict[str, Any]:
    """The spare distributor once it is READY (and is not ``not_id``)."""
    def ready() -> dict[str, Any] | None:
        rows = api.get("/v2/octavia/distributors")[1]["distributors"]
        return next((d for d in rows if d["name"] == SPARE and d["status"] == "READY" and d["id"] != not_id), None)
    return dict(wait_for(ready, timeout=60, interval=0.2))


def namespace(lab: Any, distributor: dict[str, Any]) -> str:
    return str(lab.instance_ns(distributor["id"], "distributor"))


def load(lab: Any, vip: str, seconds: float, keepalive: int = 10) -> subprocess.Popen[str]:
    return subprocess.Popen(["ip", "netns", "exec", lab.client_ns, sys.executable, "-c", LOAD, vip, str(seconds),
                             str(keepalive)], stdout=subprocess.PIPE, text=True)


def result(runner: subprocess.Popen[str]) -> dict[str, Any]:
    out, _ = runner.communicate(timeout=120)
    data: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    failures = data["failures"]
    data["window"] = failures[-1] - failures[0] + 0.1 if failures else 0.0  # + one attempt's timeout
    return data


def copy_rule(lab: Any, amphora_id: str) -> str:
    """The second chance's copy rule of the amphora's VIP, as its kernel lists it (with its counter)."""
    rules = subprocess.run(["ip", "netns", "exec", lab.instance_ns(amphora_id, "amphora"), "nft", "list", "table",
                            "ip", "cohort_second_chance"], capture_output=True, text=True, check=True)
    return next(line.strip() for line in rules.stdout.splitlines() if "dup to" in line)


def mac_of(lab: Any, ns: str, ifname: str = "fe0") -> str:
    out = subprocess.run(["ip", "-n", ns, "-j", "link", "show", "dev", ifname], capture_output=True, text=True,
                         check=True).stdout
    return str(json.loads(out)[0]["address"]).lower()


def arp_answers(lab: Any, vip: str) -> set[str]:
    """The MACs that answer ARP for ``vip`` on the front-end network, asked from the gateway."""
    out = lab.exec("gw", ["arping", "-c", "4", "-w", "3", "-I", "fe0", vip]).stdout
    return {mac.lower() for mac in re.findall(r"\[([0-9A-Fa-f:]{17})\]", out)}


def test_the_master_goes_dark_under_load_the_backup_takes_over_and_a_new_backup_joins(
        env: tuple[Any, Api, Any, str, str]) -> None:
    _cohort, api, lab, lb_id, vip = env
    roles = wait_for(lambda: pair(api), timeout=30)
    master, backup = roles["MASTER"], roles["BACKUP"]
    spare = ready_spare(api)
    # The MACs the gateway learns for the VIP, in order: once the BACKUP's (the takeover), only the BACKUP's;
    # a joining member never takes the VIP (it may reuse the failed member's address and MAC).
    learnt = subprocess.Popen(["ip", "-n", lab.gw_ns, "monitor", "neigh"], stdout=subprocess.PIPE, text=True)
    try:
        runner = load(lab, vip, 14.0)
        time.sleep(3.0)
        went_dark = time.time()
        for ifname in ("fe0", "mgmt0"):
            subprocess.run(["ip", "-n", namespace(lab, master), "link", "set", ifname, "down"], check=True)
        # Declared failed after distributor_stale_after (3 s), destroyed, replaced; the survivor is MASTER.
        now = wait_for(lambda: (p := pair(api)) and p["MASTER"]["id"] == backup["id"]
                       and p["BACKUP"]["id"] != master["id"] and p, timeout=60, interval=0.1)
        new_standby = time.time() - went_dark
        figures = result(runner)
    finally:
        learnt.terminate()
    vip_macs = re.findall(rf"^{re.escape(vip)} dev \S+ lladdr ([0-9a-f:]{{17}})", learnt.communicate()[0], re.M)
    print(f"\nmaster links down: {len(figures['failures'])} failed of {figures['ok'] + len(figures['failures'])} "
          f"new connections, window {figures['window']:.2f}s; keep-alive broken {figures['broken']} of 10; "
          f"new standby (role BACKUP) after {new_standby:.1f}s")
    assert figures["window"] <= 0.5, figures
    assert figures["broken"] == 0 and figures["alive"] == 10, figures
    survivor = mac_of(lab, namespace(lab, backup))
    assert survivor in vip_macs and set(vip_macs[vip_macs.index(survivor):]) == {survivor}, vip_macs
    # The failed member is destroyed while its replacement comes in, and the pass then ends.
    old = wait_for(lambda: (d := api.get(f"/v2/octavia/distributors/{master['id']}")[1]["distributor"])
                   and d["status"] == "DELETED" and d, timeout=15)
    assert "no heartbeat" in (old["status_reason"] or ""), old
    assert subprocess.run(["ip", "netns", "pids", namespace(lab, master)], capture_output=True,
                          check=False).returncode != 0  # its namespace is gone
    api.wait_active(f"/v2/lbaas/loadbalancers/{lb_id}", "loadbalancer", timeout=30)
    assert now["BACKUP"]["operating_status"] == "ONLINE"
    assert now["BACKUP"]["id"] == spare["id"]  # the spare took the failed member's place, no build waited for
    assert ready_spare(api, not_id=spare["id"])["id"] not in (master["id"], backup["id"])  # and the next is ready

    # Only the MASTER answers ARP for the VIP: not the new BACKUP, and not the replaced one.
    assert arp_answers(lab, vip) == {mac_of(lab, namespace(lab, now["MASTER"]))}


def test_the_standby_is_killed_traffic_notices_nothing_and_a_new_standby_joins(
        env: tuple[Any, Api, Any, str, str]) -> None:
    _cohort, api, lab, _lb_id, vip = env
    roles = wait_for(lambda: pair(api), timeout=30)
    master, backup = roles["MASTER"], roles["BACKUP"]
    spare = ready_spare(api)
    runner = load(lab, vip, 12.0)
    time.sleep(2.0)
    killed = time.time()
    for pid in namespace_pids(namespace(lab, backup)):
        os.kill(pid, signal.SIGKILL)
    now = wait_for(lambda: (p := pair(api)) and p["MASTER"]["id"] == master["id"]
                   and p["BACKUP"]["id"] != backup["id"] and p, timeout=60, interval=0.1)
    new_standby = time.time() - killed
    figures = result(runner)
    print(f"\nstandby killed: {len(figures['failures'])} failed of {figures['ok'] + len(figures['failures'])} "
          f"new connections; keep-alive broken {figures['broken']}; new standby after {new_standby:.1f}s")
    assert figures["failures"] == [] and figures["broken"] == 0 and figures["alive"] == 10, figures
    assert now["BACKUP"]["id"] == spare["id"]
    assert arp_answers(lab, vip) == {mac_of(lab, namespace(lab, now["MASTER"]))}


def test_flows_pinned_before_a_scale_event_over_a_takeover(env: tuple[Any, Api, Any, str, str]) -> None:
    """The new MASTER has no pins, so a flow the old MASTER had pinned to an amphora the table (after
    a scale-out) gives another amphora is sent there; that amphora finds it invalid (it never saw
    the flow), copies it to its cluster peers and drops it, and the owner answers: the second
    chance, told its peers by the controller on the scale-out. No keep-alive connection is broken,
    and new connections are served throughout as in the first test."""
    _cohort, api, lab, lb_id, vip = env
    roles = wait_for(lambda: pair(api), timeout=30)
    cluster = api.get(f"/v2/octavia/clusters?loadbalancer_id={lb_id}")[1]["clusters"][0]
    runner = load(lab, vip, 40.0, keepalive=30)
    time.sleep(2.0)
    assert api.put(f"/v2/octavia/clusters/{cluster['id']}", {"cluster": {"desired_size": 3}})[0] == 200
    api.wait_active(f"/v2/lbaas/loadbalancers/{lb_id}", "loadbalancer", timeout=60)
    time.sleep(1.0)
    amphorae = api.get(f"/v2/octavia/amphorae?loadbalancer_id={lb_id}")[1]["amphorae"]
    fronts = {a["id"]: a["vrrp_ip"] for a in amphorae}
    assert len(fronts) == 3
    for amphora_id, front in fronts.items():
        copy = copy_rule(lab, amphora_id)
        assert f"ip daddr {vip} meta mark 0x40000000 ether saddr != {{" in copy, copy
        assert sorted(re.findall(r"dup to (\S+)", copy)) == sorted(set(fronts.values()) - {front}), copy
    for ifname in ("fe0", "mgmt0"):
        subprocess.run(["ip", "-n", namespace(lab, roles["MASTER"]), "link", "set", ifname, "down"], check=True)
    figures = result(runner)
    copied = sum(int(re.findall(r"counter packets (\d+)", copy_rule(lab, a))[0]) for a in fronts)
    print(f"\nscale-out 2 -> 3, then the MASTER's links down: keep-alive broken {figures['broken']} of 30 "
          f"(their pins predate the scale-out); packets handed to their owner by the second chance {copied}; "
          f"new connections failed {len(figures['failures'])} in {figures['window']:.2f}s")
    assert figures["window"] <= 0.5 and figures["broken"] == 0 and figures["alive"] == 30, figures
    assert copied > 0  # some flows did reach another amphora (P(none of 30 moved) is about 5e-6)
    wait_for(lambda: (p := pair(api)) and p["BACKUP"]["id"] != roles["MASTER"]["id"], timeout=60, interval=0.1)
