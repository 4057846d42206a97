"""UDP through the whole system: the API builds an amphora whose kernel (nftables) load balances UDP.

Members are UDP echo servers (each answers with its name) started in the lab's member
namespaces; the client sends datagrams to the VIP from the lab's client namespace. Shown: both
members are used; SOURCE_IP persistence keeps a client on one member; a member that stops
answering is taken out by a UDP-CONNECT monitor and traffic avoids it; statistics come from
nftables counters and conntrack; a TCP listener on the same port and load balancer is untouched.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from cohort.lab import Lab
from tests.support import Api, local_cohort, wait_for

pytestmark = pytest.mark.root

PORT = 5353
ECHO = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[2])))
while True:
    data, peer = s.recvfrom(2048)
    s.sendto(sys.argv[1].encode(), peer)
"""
# Sends ``count`` datagrams, each from a new source port (a new flow) unless ``same`` is 1; JSON answers.
CLIENT = r"""
import json, socket, sys
vip, port, count, same = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
answers = []
sock = None
for i in range(count):
    if sock is None or not same:
        if sock is not None:
            sock.close()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.settimeout(1.0)
    try:
        sock.sendto(b"ping", (vip, port))
        answers.append(sock.recv(2048).decode())
    except OSError as e:
        answers.append(type(e).__name__)
print(json.dumps(answers))
"""


class Echoes:
    """UDP echo servers in member namespaces, killed by pid afterwards."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str) -> str:
        address = self.lab.add_member(name)
        ns = self.lab.member_ns(name)
        self.procs[name] = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", ECHO, name, str(PORT)])
        return address

    def stop(self, name: str) -> None:
        proc = self.procs.pop(name)
        proc.kill()
        proc.wait(5)

    def close(self) -> None:
        for name in list(self.procs):
            self.stop(name)


def send(lab: Lab, vip: str, count: int, same: bool = False) -> list[str]:
    result = lab.exec_client([sys.executable, "-c", CLIENT, vip, str(PORT), str(count), "1" if same else "0"])
    assert result.returncode == 0, result.stderr
    return list(json.loads(result.stdout))


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Api, Lab, Echoes]]:
    with local_cohort(tmp_path_factory.mktemp("cohort"), heartbeat_stale_after=3.0) as (_, base, lab):
        echoes = Echoes(lab)
        try:
            yield Api(base), lab, echoes
        finally:
            echoes.close()


def _lb(api: Api, members: list[str], pool_extra: dict[str, Any]) -> tuple[dict[str, Any], str]:
    pool: dict[str, Any] = {"protocol": "UDP", "lb_algorithm": "ROUND_ROBIN", "members": [
        {"address": address, "protocol_port": PORT, "subnet_id": "private-subnet"} for address in members],
        **pool_extra}
    body = {"name": "dns", "vip_subnet_id": "public-subnet", "listeners": [
        {"protocol": "UDP", "protocol_port": PORT, "default_pool": pool}]}
    status, created = api.post("/v2/lbaas/loadbalancers", {"loadbalancer": body})
    assert status == 201, created
    lb = api.wait_active(f"/v2/lbaas/loadbalancers/{created['loadbalancer']['id']}", "loadbalancer", timeout=60)
    assert lb["provisioning_status"] == "ACTIVE", lb
    return lb, str(lb["vip_address"])


def test_udp_members_share_flows_and_a_dead_one_is_taken_out(env: tuple[Api, Lab, Echoes]) -> None:
    api, lab, echoes = env
    addresses = [echoes.start(name) for name in ("u1", "u2")]
    lb, vip = _lb(api, addresses, {"healthmonitor": {"type": "UDP-CONNECT", "delay": 3, "timeout": 1,
                                                       "max_retries": 1, "max_retries_down": 1}})
    wait_for(lambda: "u1" in send(lab, vip, 4) or None, timeout=20)
    answers = Counter(send(lab, vip, 20))
    assert set(answers) == {"u1", "u2"} and min(answers.values()) >= 8, answers
    # One flow (a fixed source port) stays on its member: conntrack keeps the UDP "session".
    assert len(set(send(lab, vip, 10, same=True))) == 1
    # Heartbeats bring statuses and statistics read from nftables and conntrack.
    wait_for(lambda: api.get(f"/v2/lbaas/loadbalancers/{lb['id']}")[1]["loadbalancer"]
             ["operating_status"] == "ONLINE" or None, timeout=15)
    stats = wait_for(lambda: (s := api.get(f"/v2/lbaas/loadbalancers/{lb['id']}/stats")[1]["stats"])
                     ["total_connections"] >= 20 and s, timeout=15)
    assert stats["bytes_in"] > 0 and stats["bytes_out"] > 0, stats
    # u2 stops answering (its port is closed: ICMP port unreachable): out within one interval.
    echoes.stop("u2")
    stopped = time.monotonic()

    def degraded() -> dict[str, Any] | None:
        tree = api.get(f"/v2/lbaas/loadbalancers/{lb['id']}/status")[1]["statuses"]["loadbalancer"]
        return tree if tree["operating_status"] == "DEGRADED" else None

    wait_for(lambda: set(send(lab, vip, 6)) == {"u1"} or None, timeout=10)
    print(f"dead member out of the kernel map after {time.monotonic() - stopped:.1f}s (delay 3s)")
    assert time.monotonic() - stopped < 3 + 1 + 3  # one interval plus the probe's timeout, plus the sampling
    tree = wait_for(degraded, timeout=15)
    members = {mb["address"]: mb["operating_status"] for mb in tree["listeners"][0]["pools"][0]["members"]}
    assert members == {addresses[0]: "ONLINE", addresses[1]: "ERROR"}, members
    # Back when it answers again.
    echoes.start("u2")
    wait_for(lambda: "u2" in send(lab, vip, 10) or None, timeout=15)
    assert api.delete(f"/v2/lbaas/loadbalancers/{lb['id']}?cascade=true")[0] == 204
    wait_for(lambda: api.get(f"/v2/lbaas/loadbalancers/{lb['id']}")[0] == 404 or None, timeout=30)
    echoes.close()


def test_source_ip_persistence_keeps_a_client_on_one_member(env: tuple[Api, Lab, Echoes]) -> None:
    api, lab, echoes = env
    addresses = [echoes.start(name) for name in ("p1", "p2")]
    lb, vip = _lb(api, addresses, {"session_persistence": {"type": "SOURCE_IP", "persistence_timeout": 60}})
    wait_for(lambda: "p" in "".join(send(lab, vip, 2)) or None, timeout=20)
    # Every new flow (new source port) of this client goes to the same member.
    answers = Counter(send(lab, vip, 20))
    assert len(answers) == 1 and next(iter(answers)) in ("p1", "p2"), answers
    # A TCP listener beside it on the same port, and its changes, leave the UDP flows alone.
    status, body = api.post("/v2/lbaas/listeners", {"listener": {
        "loadbalancer_id": lb["id"], "protocol": "TCP", "protocol_port": PORT}})
    assert status == 201, body
    api.wait_active(f"/v2/lbaas/loadbalancers/{lb['id']}", "loadbalancer", timeout=60)
    assert Counter(send(lab, vip, 10)) == Counter({next(iter(answers)): 10})
    assert api.delete(f"/v2/lbaas/loadbalancers/{lb['id']}?cascade=true")[0] == 204
    wait_for(lambda: api.get(f"/v2/lbaas/loadbalancers/{lb['id']}")[0] == 404 or None, timeout=30)
    echoes.close()
