"""ACTIVE_ACTIVE over L3 with the real lab router (FRR) and real amphora speakers (BIRD), through the API.

An operator defines a BGP speaker and its peer (MD5, GTSM, BFD) and an L3_BGP flavor; a tenant's
load balancer becomes N amphorae that each announce the VIP to the lab's router, which installs
one multipath route: every amphora carries traffic, no distributor exists. A dead amphora's next
hop leaves the router within BFD's detection time and a replacement is announced; a speaker with
the wrong password never reaches ONLINE, and says why.
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
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from cohort import harness, netns
from cohort.lab import Lab
from cohort.lab.router import RouterSettings
from tests.functional.test_local_active_active import KEEPALIVE_CLIENT, RETRYING_CLIENT
from tests.support import Api, wait_for

pytestmark = pytest.mark.root

PASSWORD = "s3cret-md5"
SPEAKER_AS = 64600


@contextmanager
def l3_lab(tmp_path_factory: pytest.TempPathFactory, tag: str,
           resilient: bool = False) -> Iterator[tuple[harness.Instance, Api, Lab]]:
    """Cohort on a private lab whose router asks for the MD5 password (and is resilient if asked)."""
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    with harness.private_cohort(tmp_path_factory.mktemp(tag), tag=tag, heartbeat_interval=0.5,
                                heartbeat_stale_after=3.0, drain_timeout=5.0) as cohort:
        assert cohort.lab is not None
        cohort.lab.router.configure(RouterSettings(password=PASSWORD, resilient=resilient))
        yield cohort, Api(cohort.base), cohort.lab


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[harness.Instance, Api, Lab]]:
    with l3_lab(tmp_path_factory, "l") as found:
        yield found


def _speaker(api: Api, name: str, password: str) -> str:
    status, speaker = api.post("/v2/octavia/bgp_speakers", {"bgp_speaker": {"name": name, "local_as": SPEAKER_AS}})
    assert status == 201, speaker
    speaker_id = speaker["bgp_speaker"]["id"]
    status, peer = api.post("/v2/octavia/bgp_peers", {"bgp_peer": {
        "name": f"{name}-tor", "bgp_speaker_id": speaker_id, "peer_ip": "203.0.113.1", "remote_as": 64512,
        "auth_type": "md5", "md5_password": password, "ttl_hops": 1, "hold_time": 9,
        "bfd_enabled": True, "bfd_min_rx": 100, "bfd_min_tx": 100, "bfd_multiplier": 3}})
    assert status == 201, peer
    assert "md5_password" not in peer["bgp_peer"] and PASSWORD not in json.dumps(peer)
    return str(speaker_id)


def _l3(speaker_id: str, size: int = 3) -> dict[str, Any]:
    return {"loadbalancer_topology": "ACTIVE_ACTIVE", "amp_cluster_size": size, "amp_cluster_min_size": 2,
            "distributor_type": "L3_BGP", "bgp_speaker_id": speaker_id}


def _create(api: Api, name: str, flavor_id: str, member: str) -> dict[str, Any]:
    status, body = api.post("/v2/lbaas/loadbalancers", {"loadbalancer": {
        "name": name, "vip_subnet_id": "public-subnet", "flavor_id": flavor_id, "listeners": [{
            "protocol": "HTTP", "protocol_port": 80, "default_pool": {
                "protocol": "HTTP", "lb_algorithm": "ROUND_ROBIN",
                "members": [{"address": member, "protocol_port": 80, "subnet_id": "private-subnet"}]}}]}})
    assert status == 201, body
    return dict(body["loadbalancer"])


def _amphorae(api: Api, lb_id: str) -> list[dict[str, Any]]:
    return list(api.get(f"/v2/octavia/amphorae?loadbalancer_id={lb_id}")[1]["amphorae"])


def test_bad_l3_flavors_are_refused(env: tuple[harness.Instance, Api, Lab]) -> None:
    _cohort, api, _lab = env
    status, speaker = api.post("/v2/octavia/bgp_speakers", {"bgp_speaker": {"name": "lonely", "local_as": 64601}})
    assert status == 201
    for data in ({"loadbalancer_topology": "ACTIVE_ACTIVE", "distributor_type": "L3_BGP"},
                 {"loadbalancer_topology": "ACTIVE_ACTIVE", "distributor_type": "L3_BGP", "bgp_speaker_id": "nope"},
                 _l3(speaker["bgp_speaker"]["id"])):
        flavor_id = api.flavor(f"bad-{len(json.dumps(data))}", data)
        status, body = api.post("/v2/lbaas/loadbalancers", {"loadbalancer": {
            "vip_subnet_id": "public-subnet", "flavor_id": flavor_id}})
        assert status == 400 and "bgp_speaker_id" in body["faultstring"], body
    for peer in ({"peer_ip": "203.0.113.1%x", "remote_as": 64512}, {"peer_ip": "203.0.113.1", "remote_as": 0},
                 {"peer_ip": "203.0.113.1", "remote_as": 64512, "hold_time": 2},
                 {"peer_ip": "203.0.113.1", "remote_as": 64512, "auth_type": "md5", "md5_password": 'a"b'}):
        status, body = api.post("/v2/octavia/bgp_peers", {"bgp_peer": peer})
        assert status == 400, (peer, body)
    assert api.get("/v2/lbaas/loadbalancers")[1]["loadbalancers"] == []


def test_l3_cluster_announces_spreads_fails_over_and_refuses_deletes(env: tuple[harness.Instance, Api, Lab]) -> None:
    _cohort, api, lab = env
    member = lab.add_member("l3m1")
    speaker_id = _speaker(api, "tor", PASSWORD)
    lb = _create(api, "l3", api.flavor("l3x3", _l3(speaker_id)), member)
    lb_id = lb["id"]
    lb = api.wait_active(f"/v2/lbaas/loadbalancers/{lb_id}", "loadbalancer", timeout=120)
    assert lb["provisioning_status"] == "ACTIVE", lb
    vip = lb["vip_address"]
    amphorae = _amphorae(api, lb_id)
    fronts = sorted(a["vrrp_ip"] for a in amphorae)
    assert len(fronts) == 3
    assert api.get("/v2/octavia/distributors")[1]["distributors"] == []  # no distributor box at all

    # The router installs one route with a next hop per amphora, learnt over MD5 + GTSM + BFD sessions.
    wait_for(lambda: lab.router.routes().get(vip) == fronts, timeout=30, interval=0.2)
    assert all(state == "Established" for state in lab.router.neighbors().values())
    wait_for(lambda: lab.router.bfd_sessions() == dict.fromkeys(fronts, "up"), timeout=10)
    wait_for(lambda: api.get(f"/v2/lbaas/loadbalancers/{lb_id}")[1]["loadbalancer"]["operating_status"]
             == "ONLINE", timeout=20)
    cluster = api.get(f"/v2/octavia/clusters?loadbalancer_id={lb_id}")[1]["clusters"][0]
    assert cluster["operating_status"] == "ONLINE" and cluster["distributor_id"] is None, cluster
    assert all(report and vip in report["announced"] for report in cluster["bgp"].values()), cluster

    # Every speaker runs as its amphora's own user, chrooted in its jail, with net_admin at most.
    cohort = env[0]
    for amphora in amphorae:
        namespace = lab.instance_ns(amphora["id"], "amphora")
        birds = [p for p in netns.run_in(None, ["ip", "netns", "pids", namespace]).stdout.split()
                 if Path(f"/proc/{p}/comm").read_text().strip() == "bird"]
        assert len(birds) == 1, birds
        status = dict(line.split(":", 1) for line in Path(f"/proc/{birds[0]}/status").read_text().splitlines())
        assert "0" not in status["Uid"].split() and "0" not in status["Gid"].split(), status["Uid"]
        assert int(status["CapEff"], 16) & ~(1 << 12) == 0, status["CapEff"]  # CAP_NET_ADMIN only
        assert os.readlink(f"/proc/{birds[0]}/root") == str(cohort.layout.amphora_jail(amphora["id"]).resolve())
        rss_kb = int(status["VmRSS"].split()[0])
        assert rss_kb < 10 * 1024, rss_kb  # the speaker stays under 10 MB per amphora
    # Traffic from the client reaches every amphora (ECMP hashes on ports).
    wait_for(lambda: lab.exec_client(["curl", "-s", "--max-time", "2", f"http://{vip}/"]).stdout.strip() == "l3m1",
             timeout=20)
    answers = [lab.exec_client(["curl", "-s", "--max-time", "2", f"http://{vip}/"]).stdout.strip() for _ in range(30)]
    assert answers == ["l3m1"] * 30
    served = wait_for(lambda: {a["id"]: sum(r["total_connections"] for r in api.get(
        f"/v2/octavia/amphorae/{a['id']}/stats")[1]["amphora_stats"]) for a in amphorae}, timeout=10)
    wait_for(lambda: all(count > 0 for count in {a["id"]: sum(r["total_connections"] for r in api.get(
        f"/v2/octavia/amphorae/{a['id']}/stats")[1]["amphora_stats"]) for a in amphorae}.values()), timeout=10)
    print(f"connections per amphora: {served}")

    # A speaker or peer in use is not deleted.
    assert api.delete(f"/v2/octavia/bgp_speakers/{speaker_id}")[0] == 409
    peer_id = api.get("/v2/octavia/bgp_peers")[1]["bgp_peers"][0]["id"]
    assert api.delete(f"/v2/octavia/bgp_peers/{peer_id}")[0] == 409

    # A dead amphora (every process killed): BFD takes its next hop out within half a second.
    victim = amphorae[0]
    started = time.monotonic()
    namespace = lab.instance_ns(victim["id"], "amphora")
    for pid in [int(p) for p in netns.run_in(None, ["ip", "netns", "pids", namespace]).stdout.split()]:
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: victim["vrrp_ip"] not in lab.router.routes().get(vip, []), timeout=5, interval=0.01)
    gone = time.monotonic() - started
    print(f"dead amphora's next hop gone after {gone:.3f}s")
    assert gone < 0.5 + 0.2  # BFD 100 ms x 3, plus this poll and the kernel route update
    answers = [lab.exec_client(["curl", "-s", "--max-time", "2", f"http://{vip}/"]).stdout.strip() for _ in range(20)]
    assert answers == ["l3m1"] * 20, answers

    # N+1: a replacement is built and announced.
    wait_for(lambda: victim["id"] not in {a["id"] for a in _amphorae(api, lb_id)} and len(_amphorae(api, lb_id)) == 3,
             timeout=90, interval=0.5)
    api.wait_active(f"/v2/lbaas/loadbalancers/{lb_id}", "loadbalancer", timeout=90)
    fronts = sorted(a["vrrp_ip"] for a in _amphorae(api, lb_id))
    wait_for(lambda: lab.router.routes().get(vip) == fronts, timeout=30, interval=0.2)

    # Links down: nothing closes the TCP session, only BFD can tell the router.
    amphorae = _amphorae(api, lb_id)
    silent = amphorae[0]
    started = time.monotonic()
    netns.run_in(lab.instance_ns(silent["id"], "amphora"), ["ip", "link", "set", "fe0", "down"])
    wait_for(lambda: silent["vrrp_ip"] not in lab.router.routes().get(vip, []), timeout=5, interval=0.01)
    print(f"silent amphora's next hop gone after {time.monotonic() - started:.3f}s (BFD)")
    assert time.monotonic() - started < 0.5 + 0.2
    wait_for(lambda: silent["id"] not in {a["id"] for a in _amphorae(api, lb_id)} and len(_amphorae(api, lb_id)) == 3,
             timeout=90, interval=0.5)
    api.wait_active(f"/v2/lbaas/loadbalancers/{lb_id}", "loadbalancer", timeout=90)

    # Only HAProxy dies: the agent withdraws the VIP (its watchdog), the speaker stays up.
    amphorae = _amphorae(api, lb_id)
    wait_for(lambda: lab.router.routes().get(vip) == sorted(a["vrrp_ip"] for a in amphorae), timeout=30,
             interval=0.2)
    broken = amphorae[0]
    namespace = lab.instance_ns(broken["id"], "amphora")
    haproxies = [int(p) for p in netns.run_in(None, ["ip", "netns", "pids", namespace]).stdout.split()
                 if Path(f"/proc/{p}/comm").read_text().strip() == "haproxy"]
    started = time.monotonic()
    for pid in haproxies:
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: broken["vrrp_ip"] not in lab.router.routes().get(vip, []), timeout=5, interval=0.01)
    print(f"VIP withdrawn {time.monotonic() - started:.3f}s after its HAProxy died")
    assert time.monotonic() - started < 0.5
    assert any(state == "Established" for state in lab.router.neighbors().values())
    # The agent's supervisor starts it again, and the VIP is announced again at once, not at the
    # watchdog's slow tick (5 s).
    wait_for(lambda: broken["vrrp_ip"] in lab.router.routes().get(vip, []), timeout=10, interval=0.01)
    print(f"VIP announced again {time.monotonic() - started:.3f}s after its HAProxy died")
    assert time.monotonic() - started < 3.0

    assert api.delete(f"/v2/lbaas/loadbalancers/{lb_id}?cascade=true")[0] == 204
    wait_for(lambda: api.get(f"/v2/lbaas/loadbalancers/{lb_id}")[0] == 404, timeout=60)
    wait_for(lambda: vip not in lab.router.routes(), timeout=10)
    lab.remove_member("l3m1")


def _scale(api: Api, lab: Lab, lb_id: str, vip: str, size: int, client: str) -> dict[str, int]:
    cluster_id = api.get(f"/v2/octavia/clusters?loadbalancer_id={lb_id}")[1]["clusters"][0]["id"]
    runner = subprocess.Popen(["ip", "netns", "exec", lab.client_ns, sys.executable, "-c", client, vip,
                               "40", "16"], stdout=subprocess.PIPE, text=True)
    time.sleep(3)
    assert api.put(f"/v2/octavia/clusters/{cluster_id}", {"cluster": {"desired_size": size}})[0] == 200
    api.wait_active(f"/v2/lbaas/loadbalancers/{lb_id}", "loadbalancer", timeout=90)
    wait_for(lambda: len(lab.router.routes().get(vip, [])) == size, timeout=30, interval=0.2)
    out, _ = runner.communicate(timeout=60)
    result: dict[str, int] = json.loads(out.strip().splitlines()[-1])
    print(f"scale to {size} under 40 long-lived connections: {result}")
    return result


def _detours(api: Api, lab: Lab, lb_id: str) -> int:
    """Packets the cluster's amphorae copied to their peers (the second chance's counters)."""
    total = 0
    for amphora in _amphorae(api, lb_id):
        listing = netns.run_in(lab.instance_ns(amphora["id"], "amphora"),
                               ["nft", "list", "table", "ip", "cohort_second_chance"]).stdout
        total += sum(int(n) for n in re.findall(r"counter packets (\d+) bytes \d+ dup to", listing))
    return total


def _scaling_keeps_connections(api: Api, lab: Lab, name: str, member: str, moves_flows: bool = True) -> None:
    speaker_id = _speaker(api, name, PASSWORD)
    lb_id = _create(api, name, api.flavor(name, _l3(speaker_id)), member)["id"]
    vip = api.wait_active(f"/v2/lbaas/loadbalancers/{lb_id}", "loadbalancer", timeout=120)["vip_address"]
    wait_for(lambda: len(lab.router.routes().get(vip, [])) == 3, timeout=30, interval=0.2)
    # Scale-out: flows the router moves to the new amphora reach their owner through it.
    assert _scale(api, lab, lb_id, vip, 4, KEEPALIVE_CLIENT) == {"broken": 0, "alive": 40}
    # ... and they did take that path when the router moved them (hash-threshold ECMP does).
    detours = _detours(api, lab, lb_id)
    print(f"packets copied to their owner after the scale-out: {detours}")
    assert detours > 0 or not moves_flows
    # Scale-in: the leaving amphora withdraws, keeps serving what the router still sends it or
    # its peers copy to it, then soft-stops: idle keep-alive connections are closed cleanly and
    # clients reconnect, as HTTP clients do; no request fails.
    result = _scale(api, lab, lb_id, vip, 3, RETRYING_CLIENT)
    assert result["failed"] == 0 and result["ok"] > 100, result
    assert api.delete(f"/v2/lbaas/loadbalancers/{lb_id}?cascade=true")[0] == 204
    wait_for(lambda: api.get(f"/v2/lbaas/loadbalancers/{lb_id}")[0] == 404, timeout=60)


def test_scaling_breaks_no_open_connection_with_a_plain_router(env: tuple[harness.Instance, Api, Lab]) -> None:
    """Hash-threshold ECMP moves open flows when next hops come and go; the second chance saves them."""
    _cohort, api, lab = env
    member = lab.add_member("l3m3", workers=2)
    _scaling_keeps_connections(api, lab, "l3plain", member)
    lab.remove_member("l3m3")


BLIP_TABLE = "cohort_test_bfd_blip"


def test_bfd_blips_take_an_amphora_out_briefly_and_never_replace_it(env: tuple[harness.Instance, Api, Lab]) -> None:
    """An amphora whose BFD packets are lost for 0.5 s, four times in a row, leaves the route and comes
    back each time, well within ``bgp_sessions_down_after``: it is not replaced, and no open connection
    breaks (the flows the router moves meanwhile reach it through the other amphora's second chance).
    Before BIRD's wait after errors was capped at 2 s, the third blip kept it out 4.7 s and the
    controller, then patient for 3 s, replaced it and broke its connections."""
    cohort, api, lab = env
    member = lab.add_member("l3m4", workers=2)
    speaker_id = _speaker(api, "blip", PASSWORD)
    lb_id = _create(api, "l3blip", api.flavor("l3blip", _l3(speaker_id, size=2)), member)["id"]
    vip = api.wait_active(f"/v2/lbaas/loadbalancers/{lb_id}", "loadbalancer", timeout=120)["vip_address"]
    amphorae = _amphorae(api, lb_id)
    wait_for(lambda: lab.router.routes().get(vip) == sorted(a["vrrp_ip"] for a in amphorae), timeout=30, interval=0.2)
    blipped = amphorae[0]
    namespace = lab.instance_ns(blipped["id"], "amphora")

    client = subprocess.Popen(["ip", "netns", "exec", lab.client_ns, sys.executable, "-c", KEEPALIVE_CLIENT, vip,
                               "40", "28"], stdout=subprocess.PIPE, text=True)
    returns = []
    try:
        time.sleep(1)
        for _ in range(4):
            # BGP comes up before BFD does, and a BFD session that is not up cannot go down.
            wait_for(lambda: lab.router.bfd_sessions().get(blipped["vrrp_ip"]) == "up", timeout=10, interval=0.1)
            started = time.monotonic()
            netns.run_in(namespace, ["nft", f"add table inet {BLIP_TABLE}; add chain inet {BLIP_TABLE} out "
                                     "{ type filter hook output priority 0; }; "
                                     f"add rule inet {BLIP_TABLE} out udp dport 3784 drop"])
            wait_for(lambda: blipped["vrrp_ip"] not in lab.router.routes().get(vip, []), timeout=2, interval=0.02)
            time.sleep(max(0.0, 0.5 - (time.monotonic() - started)))
            netns.run_in(namespace, ["nft", f"delete table inet {BLIP_TABLE}"])
            wait_for(lambda: blipped["vrrp_ip"] in lab.router.routes().get(vip, []),
                     timeout=cohort.settings.bgp_sessions_down_after, interval=0.05)
            returns.append(round(time.monotonic() - started, 2))
        print(f"back in the route after each BFD blip of 0.5 s: {returns} s")
        out, _ = client.communicate(timeout=60)
    finally:
        netns.run_in(namespace, ["nft", f"delete table inet {BLIP_TABLE}"], check=False)
        if client.poll() is None:
            client.kill()
    # Back sooner each time than the controller waits, with a margin for a heartbeat and a scan.
    assert max(returns) < cohort.settings.bgp_sessions_down_after - 2, returns
    time.sleep(2 * cohort.settings.heartbeat_interval + 1)
    assert {a["id"] for a in _amphorae(api, lb_id)} == {a["id"] for a in amphorae}  # none replaced
    assert json.loads(out.strip().splitlines()[-1]) == {"broken": 0, "alive": 40}
    # The router's log says when each session dropped.
    log = (lab.router.dir / "bgpd.log").read_text()
    downs = [line for line in log.splitlines() if "ADJCHANGE" in line and blipped["vrrp_ip"] in line and "Down" in line]
    assert len(downs) >= 4, log[-3000:]
    assert api.delete(f"/v2/lbaas/loadbalancers/{lb_id}?cascade=true")[0] == 204
    wait_for(lambda: api.get(f"/v2/lbaas/loadbalancers/{lb_id}")[0] == 404, timeout=60)
    lab.remove_member("l3m4")


def test_wrong_password_never_comes_online(env: tuple[harness.Instance, Api, Lab]) -> None:
    _cohort, api, lab = env
    member = lab.add_member("l3m2")
    speaker_id = _speaker(api, "wrong", "not-the-password")
    lb = _create(api, "l3bad", api.flavor("l3bad", _l3(speaker_id, size=2)), member)
    lb_id = lb["id"]
    lb = api.wait_active(f"/v2/lbaas/loadbalancers/{lb_id}", "loadbalancer", timeout=120)
    time.sleep(6)  # several connect retries and heartbeats
    vip = api.get(f"/v2/lbaas/loadbalancers/{lb_id}")[1]["loadbalancer"]["vip_address"]
    assert vip not in lab.router.routes()
    lb = api.get(f"/v2/lbaas/loadbalancers/{lb_id}")[1]["loadbalancer"]
    assert lb["operating_status"] == "ERROR", lb
    cluster = api.get(f"/v2/octavia/clusters?loadbalancer_id={lb_id}")[1]["clusters"][0]
    assert cluster["operating_status"] == "ERROR" and "no BGP session established" in cluster["status_reason"], cluster
    assert api.delete(f"/v2/lbaas/loadbalancers/{lb_id}?cascade=true")[0] == 204
    wait_for(lambda: api.get(f"/v2/lbaas/loadbalancers/{lb_id}")[0] == 404, timeout=60)
    lab.remove_member("l3m2")


def test_lab_status_shows_the_router(env: tuple[harness.Instance, Api, Lab]) -> None:
    _cohort, _api, lab = env
    status = lab.status()["router"]
    assert status["asn"] == 64512 and status["address"] == "203.0.113.1" and status["running"] and status["md5"]
    assert Path(f"/run/cohort-lab/{lab.prefix}").exists()
