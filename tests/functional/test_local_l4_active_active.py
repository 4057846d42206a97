"""UDP and SCTP on ACTIVE_ACTIVE load balancers, through the API with local drivers and real traffic.

L2: the distributor pair spreads UDP flows (pinned by source address and port) and SCTP
associations over the amphorae, whose kernels pick the members; every amphora dispatches flows, and
an open UDP flow stays on its amphora while the cluster scales out. L3 (the lab router, plain
hash-threshold ECMP on layer 4): every amphora gets flows, and the flows the router moves when a
next hop joins are new flows on the amphora they land on (counted and printed; with a SOURCE_IP_PORT
pool they still reach the same member, which each amphora picks alike).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from cohort import harness
from cohort.lab import Lab
from tests.functional.test_l3_bgp import PASSWORD, _l3, _speaker, l3_lab
from tests.functional.test_local_l4 import PORT, Echoes, send
from tests.functional.test_local_l4_topologies import new_flows
from tests.support import Api, local_cohort, wait_for

pytestmark = pytest.mark.root

SCTP_PORT = 3868
# Holds ``count`` UDP flows (one socket each), a datagram on each every 50 ms until SIGTERM (at most
# ``seconds``); prints the source ports, then per flow the answers and the count of unanswered datagrams.
HOLD = r"""
import json, signal, socket, sys, time
vip, port, count, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
socks = []
for _ in range(count):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", 0))
    s.settimeout(0.5)
    socks.append(s)
print(json.dumps([s.getsockname()[1] for s in socks]), flush=True)
answers = [dict() for _ in socks]
lost = [0] * count
deadline = time.monotonic() + seconds
while time.monotonic() < deadline and not stop:
    for i, s in enumerate(socks):
        s.sendto(b"ping", (vip, port))
        try:
            a = s.recv(2048).decode()
            answers[i][a] = answers[i].get(a, 0) + 1
        except OSError:
            lost[i] += 1
    time.sleep(0.05)
print(json.dumps({"answers": answers, "lost": lost}), flush=True)
"""


def _flavor(api: Api, name: str, data: dict[str, Any]) -> str:
    return api.flavor(name, {"loadbalancer_topology": "ACTIVE_ACTIVE", **data})


def _udp_lb(api: Api, name: str, flavor_id: str, members: list[str], algorithm: str) -> dict[str, Any]:
    pool = {"protocol": "UDP", "lb_algorithm": algorithm,
            "healthmonitor": {"type": "UDP-CONNECT", "delay": 3, "timeout": 1, "max_retries": 1},
            "members": [{"address": a, "protocol_port": PORT, "subnet_id": "private-subnet"} for a in members]}
    status, created = api.post("/v2/lbaas/loadbalancers", {"loadbalancer": {
        "name": name, "vip_subnet_id": "public-subnet", "flavor_id": flavor_id,
        "listeners": [{"protocol": "UDP", "protocol_port": PORT, "default_pool": pool}]}})
    assert status == 201, created
    lb = api.wait_active(f"/v2/lbaas/loadbalancers/{created['loadbalancer']['id']}", "loadbalancer", timeout=150)
    assert lb["provisioning_status"] == "ACTIVE", lb
    return dict(lb)


def _namespaces(api: Api, lab: Lab, lb_id: str) -> dict[str, str]:
    """amphora id -> its namespace."""
    return {a["id"]: lab.instance_ns(a["id"], "amphora")
            for a in api.get(f"/v2/octavia/amphorae?loadbalancer_id={lb_id}")[1]["amphorae"]}


def _owners(namespaces: dict[str, str], ports: list[int]) -> dict[int, set[str]]:
    """Client source port -> the amphorae whose conntrack saw that UDP flow (a moved flow: two)."""
    owners: dict[int, set[str]] = {}
    for amphora_id, ns in namespaces.items():
        table = subprocess.run(["ip", "netns", "exec", ns, "cat", "/proc/net/nf_conntrack"],
                               capture_output=True, text=True, check=False).stdout
        for line in table.splitlines():
            fields = line.split()
            if "udp" not in fields:
                continue
            sport = next((f for f in fields if f.startswith("sport=")), "")
            if sport and int(sport[6:]) in ports:
                owners.setdefault(int(sport[6:]), set()).add(amphora_id)
    return owners


def _resize(api: Api, lb_id: str, size: int) -> None:
    cluster = api.get(f"/v2/octavia/clusters?loadbalancer_id={lb_id}")[1]["clusters"][0]
    assert api.put(f"/v2/octavia/clusters/{cluster['id']}", {"cluster": {"desired_size": size}})[0] == 200
    api.wait_active(f"/v2/lbaas/loadbalancers/{lb_id}", "loadbalancer", timeout=150)
    wait_for(lambda: len(api.get(f"/v2/octavia/amphorae?loadbalancer_id={lb_id}")[1]["amphorae"]) == size,
             timeout=60)


def _spread_and_scale(api: Api, lab: Lab, lb: dict[str, Any], ready: Callable[[int], bool]) -> dict[str, Any]:
    """Flows reach every amphora; held flows across a scale-out from 2 to 3: where they went and what they lost."""
    lb_id, vip = lb["id"], lb["vip_address"]
    wait_for(lambda: ready(2) and set(send(lab, vip, 4)) <= {"u1", "u2"} or None, timeout=60, interval=0.5)
    namespaces = _namespaces(api, lab, lb_id)
    before = {a: new_flows(ns, lb_id) for a, ns in namespaces.items()}
    answers = Counter(send(lab, vip, 40))
    assert set(answers) == {"u1", "u2"}, answers
    dispatched = {a: new_flows(ns, lb_id) - before[a] for a, ns in namespaces.items()}
    print(f"40 UDP flows: members {dict(answers)}, new flows per amphora {sorted(dispatched.values())}")
    assert all(n > 0 for n in dispatched.values()), dispatched

    holder = subprocess.Popen(["ip", "netns", "exec", lab.client_ns, sys.executable, "-c", HOLD, vip, str(PORT),
                               "12", "240"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        ports = json.loads(holder.stdout.readline())
        time.sleep(2.0)
        first = wait_for(lambda: (found := _owners(namespaces, ports)) and len(found) == len(ports) and found,
                         timeout=10)
        assert all(len(owners) == 1 for owners in first.values()), first
        started = time.monotonic()
        _resize(api, lb_id, 3)
        print(f"scale-out 2 -> 3 took {time.monotonic() - started:.1f}s")
        grown = _namespaces(api, lab, lb_id)
        wait_for(lambda: ready(3) or None, timeout=30, interval=0.2)
        time.sleep(2.0)
        after = _owners(grown, ports)
        holder.terminate()
        out, _ = holder.communicate(timeout=60)
    finally:
        if holder.poll() is None:
            holder.kill()
    held = json.loads(out.strip().splitlines()[-1])
    newcomer = set(grown) - set(namespaces)
    moved = sorted(p for p in ports if after.get(p, set()) - first[p])
    before = {a: new_flows(ns, lb_id) for a, ns in grown.items()}
    send(lab, vip, 40)
    dispatched = {a: new_flows(ns, lb_id) - before[a] for a, ns in grown.items()}
    result = {"moved": len(moved), "to_newcomer": sum(bool(after.get(p, set()) & newcomer) for p in ports),
              "lost": held["lost"], "answers": held["answers"], "new_flows_after": sorted(dispatched.values()),
              "newcomer_flows": sum(dispatched[a] for a in newcomer)}
    print(f"12 held UDP flows across the scale-out: {result}")
    return result


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Api, Lab]]:
    with local_cohort(tmp_path_factory.mktemp("cohort-l4aa"), heartbeat_stale_after=3.0,
                      drain_timeout=5.0) as (cohort, base, lab):
        yield cohort, Api(base), lab


def test_udp_on_an_l2_cluster_spreads_and_keeps_flows_across_a_scale_out(env: tuple[Any, Api, Lab]) -> None:
    _cohort, api, lab = env
    echoes = Echoes(lab)
    try:
        members = [echoes.start(name) for name in ("u1", "u2")]
        flavor = _flavor(api, "aa-udp", {"amp_cluster_size": 2, "distributor_affinity": "SOURCE_IP_PORT"})
        lb = _udp_lb(api, "udp-aa", flavor, members, "ROUND_ROBIN")
        result = _spread_and_scale(api, lab, lb, lambda size: True)
        # Pinned: no held flow changed amphora or lost a datagram, and new flows reach the newcomer.
        assert result["moved"] == 0 and result["to_newcomer"] == 0, result
        assert sum(result["lost"]) == 0, result
        assert result["newcomer_flows"] > 0, result
        assert api.delete(f"/v2/lbaas/loadbalancers/{lb['id']}?cascade=true")[0] == 204
        wait_for(lambda: api.get(f"/v2/lbaas/loadbalancers/{lb['id']}")[0] == 404, timeout=60)
    finally:
        echoes.close()
        for name in ("u1", "u2"):
            lab.remove_member(name)


def test_sctp_on_an_l2_cluster_spreads_associations(env: tuple[Any, Api, Lab]) -> None:
    _cohort, api, lab = env
    members = [lab.add_member(name, port=SCTP_PORT, protocol="SCTP") for name in ("s1", "s2")]
    try:
        flavor = _flavor(api, "aa-sctp", {"amp_cluster_size": 2, "distributor_affinity": "SOURCE_IP_PORT"})
        pool = {"protocol": "SCTP", "lb_algorithm": "ROUND_ROBIN",
                "members": [{"address": a, "protocol_port": SCTP_PORT, "subnet_id": "private-subnet"}
                            for a in members]}
        status, created = api.post("/v2/lbaas/loadbalancers", {"loadbalancer": {
            "name": "sctp-aa", "vip_subnet_id": "public-subnet", "flavor_id": flavor,
            "listeners": [{"protocol": "SCTP", "protocol_port": SCTP_PORT, "default_pool": pool}]}})
        assert status == 201, created
        lb = api.wait_active(f"/v2/lbaas/loadbalancers/{created['loadbalancer']['id']}", "loadbalancer",
                             timeout=150)
        vip, lb_id = lb["vip_address"], lb["id"]

        def associations(count: int) -> list[str]:
            result = lab.sctp_client(vip, SCTP_PORT, ["--count", str(count), "--timeout", "2"])
            assert result.returncode == 0, result.stderr
            return [a.split(":", 1)[0] if a.endswith(": ping") else a for a in json.loads(result.stdout)]

        wait_for(lambda: set(associations(2)) <= {"s1", "s2"} or None, timeout=60, interval=0.5)
        namespaces = _namespaces(api, lab, lb_id)
        before = {a: new_flows(ns, lb_id) for a, ns in namespaces.items()}
        answers = Counter(associations(20))
        dispatched = {a: new_flows(ns, lb_id) - before[a] for a, ns in namespaces.items()}
        print(f"20 SCTP associations on L2 x2: members {dict(answers)}, per amphora {sorted(dispatched.values())}")
        # Every association answered, so each stayed on one amphora and one member from INIT to SHUTDOWN.
        assert set(answers) == {"s1", "s2"} and sum(answers.values()) == 20, answers
        assert all(n > 0 for n in dispatched.values()), dispatched
        assert api.delete(f"/v2/lbaas/loadbalancers/{lb_id}?cascade=true")[0] == 204
        wait_for(lambda: api.get(f"/v2/lbaas/loadbalancers/{lb_id}")[0] == 404, timeout=60)
    finally:
        for name in ("s1", "s2"):
            lab.remove_member(name)


@pytest.fixture(scope="module")
def l3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[harness.Instance, Api, Lab]]:
    with l3_lab(tmp_path_factory, "u") as found:
        yield found


def test_udp_on_an_l3_cluster_spreads_and_moved_flows_are_new_where_they_land(
        l3: tuple[harness.Instance, Api, Lab]) -> None:
    _cohort, api, lab = l3
    echoes = Echoes(lab)
    try:
        members = [echoes.start(name) for name in ("u1", "u2")]
        speaker_id = _speaker(api, "udp", PASSWORD)
        flavor = api.flavor("l3-udp", _l3(speaker_id, size=2))
        # SOURCE_IP_PORT: every amphora picks the same member for a flow, so a moved flow keeps its member.
        lb = _udp_lb(api, "udp-l3", flavor, members, "SOURCE_IP_PORT")
        vip = lb["vip_address"]
        result = _spread_and_scale(api, lab, lb, lambda size: len(lab.router.routes().get(vip, [])) == size)
        # Plain ECMP rehashes: the flows it moved are new flows on the amphora they reached, and they
        # go on being answered (by the same member) after at most a datagram or two.
        assert result["newcomer_flows"] > 0, result
        assert all(len(answers) == 1 for answers in result["answers"]), result
        assert max(result["lost"]) <= 3, result
        assert api.delete(f"/v2/lbaas/loadbalancers/{lb['id']}?cascade=true")[0] == 204
        wait_for(lambda: api.get(f"/v2/lbaas/loadbalancers/{lb['id']}")[0] == 404, timeout=60)
    finally:
        echoes.close()
        for name in ("u1", "u2"):
            lab.remove_member(name)
