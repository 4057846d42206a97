"""UDP through the whole system: the API builds an amphora whose kernel (nftables) load balances UDP.

Members are UDP echo servers (each answers with its name) started in the lab's member
namespaces; the client sends datagrams to the VIP from the lab's client namespace. Shown: both
members are used; SOURCE_IP persistence keeps a client on one member; a member that stops
answering is taken out by a UDP-CONNECT monitor and traffic avoids it; statistics come from
nftables counters and conntrack; a TCP listener on the same port and load balancer is untouched;
LEAST_CONNECTIONS sends new flows to the member with fewer active flows; ``allowed_cidrs`` drop
other sources, open flows included.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any, NamedTuple

import pytest
from sqlalchemy import select

from cohort.db import models as m
from cohort.lab import CLIENT_IP, Lab
from tests.support import Api, local_cohort, wait_for

pytestmark = pytest.mark.root

PORT = 5353
FIRST_SOURCE_PORT, LAST_SOURCE_PORT = 20000, 30000  # below the kernel's ephemeral range (32768-60999)
ECHO = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[2])))
while True:
    data, peer = s.recvfrom(2048)
    s.sendto(sys.argv[1].encode(), peer)
"""
# Sends ``count`` datagrams, each from a new source port (a new flow) unless ``same`` is 1, ``pause``
# seconds apart, the ports taken in order from ``first`` (0 or none: the kernel's); JSON answers.
CLIENT = r"""
import json, socket, sys, time
vip, port, count, same = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
pause, first = float(sys.argv[5]), int(sys.argv[6]) if len(sys.argv) > 6 else 0
answers = []
sock = None
for i in range(count):
    if sock is None or not same:
        if sock is not None:
            sock.close()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("0.0.0.0", first + i if first else 0))
        sock.settimeout(1.0)
    try:
        sock.sendto(b"ping", (vip, port))
        answers.append(sock.recv(2048).decode())
    except OSError as e:
        answers.append(type(e).__name__)
    time.sleep(pause)
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


# The client's source ports, handed out in order and never twice in a run: a port the kernel picked
# again within conntrack's 30 s continued an earlier flow instead of starting one, and a least-connections
# test counted 29 flows of 30.
_SOURCE_PORTS = {"next": FIRST_SOURCE_PORT}


def send(lab: Lab, vip: str, count: int, same: bool = False, pause: float = 0.0) -> list[str]:
    first = _SOURCE_PORTS["next"]
    if first + count > LAST_SOURCE_PORT:
        first = FIRST_SOURCE_PORT
    _SOURCE_PORTS["next"] = first + count
    result = lab.exec_client([sys.executable, "-c", CLIENT, vip, str(PORT), str(count), "1" if same else "0",
                              str(pause), str(first)])
    assert result.returncode == 0, result.stderr
    return list(json.loads(result.stdout))


class Env(NamedTuple):
    api: Api
    lab: Lab
    echoes: Echoes
    cohort: Any

    def amphorae(self, lb_id: str) -> dict[str, str]:
        return amphorae(self.cohort, lb_id)


def amphorae(cohort: Any, lb_id: str) -> dict[str, str]:
    """role -> the namespace of each of the load balancer's amphorae (its compute id in the lab)."""
    with cohort.sessions() as session:
        rows = session.scalars(select(m.Amphora).where(m.Amphora.load_balancer_id == lb_id,
                                                       m.Amphora.status == "ALLOCATED"))
        return {str(a.role): str(a.compute_id) for a in rows}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    with local_cohort(tmp_path_factory.mktemp("cohort"), heartbeat_stale_after=3.0) as (cohort, base, lab):
        echoes = Echoes(lab)
        try:
            yield Env(Api(base), lab, echoes, cohort)
        finally:
            echoes.close()


_REPLY = re.compile(r"^.*? src=\S+ dst=\S+ sport=\d+ dport=(\d+) .*?src=(\S+) .*?\bmark=(\d+)")


_ENDED = ("CLOSED", "SHUTDOWN_SENT", "SHUTDOWN_RECD", "SHUTDOWN_ACK_SENT")


def flows(ns: str, port: int = PORT, protocol: str = "udp") -> dict[str, tuple[int, int]]:
    """The amphora's flows to VIP:``port`` in conntrack: member address -> (count, mark).

    SCTP: the open associations (those shut down or aborted, which conntrack keeps a while, are left out).
    """
    text = subprocess.run(["ip", "netns", "exec", ns, "cat", "/proc/net/nf_conntrack"], capture_output=True,
                          text=True, check=True).stdout
    found: dict[str, tuple[int, int]] = {}
    for line in text.splitlines():
        hit = _REPLY.match(line)
        fields = line.split()
        if hit and fields[2] == protocol and int(hit.group(1)) == port and hit.group(3) != "0" and not (
                protocol == "sctp" and fields[5] in _ENDED):
            count, _ = found.get(hit.group(2), (0, 0))
            found[hit.group(2)] = (count + 1, int(hit.group(3)))
    return found


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


def test_udp_members_share_flows_and_a_dead_one_is_taken_out(env: Env) -> None:
    api, lab, echoes, _ = env
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


def test_source_ip_persistence_keeps_a_client_on_one_member(env: Env) -> None:
    api, lab, echoes, _ = env
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


def _delete(api: Api, lb: dict[str, Any]) -> None:
    assert api.delete(f"/v2/lbaas/loadbalancers/{lb['id']}?cascade=true")[0] == 204
    wait_for(lambda: api.get(f"/v2/lbaas/loadbalancers/{lb['id']}")[0] == 404 or None, timeout=30)


def test_least_connections_sends_new_flows_to_the_member_with_fewer(env: Env) -> None:
    api, lab, echoes, _ = env
    first, second = echoes.start("c1"), echoes.start("c2")
    lb, vip = _lb(api, [first], {"lb_algorithm": "LEAST_CONNECTIONS"})
    [ns] = env.amphorae(lb["id"]).values()
    wait_for(lambda: "c1" in send(lab, vip, 1) or None, timeout=20)
    # 30 flows on c1 (conntrack holds each for 30 s after its last datagram), then c2 joins.
    assert Counter(send(lab, vip, 29)) == {"c1": 29}
    time.sleep(2.5)  # a quiet interval: the agent expects few new flows, as after any lull
    pool_id = api.get(f"/v2/lbaas/listeners/{lb['listeners'][0]['id']}")[1]["listener"]["default_pool_id"]
    status, body = api.post(f"/v2/lbaas/pools/{pool_id}/members", {"member": {
        "address": second, "protocol_port": PORT, "subnet_id": "private-subnet"}})
    assert status == 201, body
    api.wait_active(f"/v2/lbaas/loadbalancers/{lb['id']}", "loadbalancer", timeout=30)
    assert flows(ns)[first][0] >= 30
    # Every new flow goes to c2, which has fewer active flows (round robin would split them 10/10).
    assert Counter(send(lab, vip, 20)) == {"c2": 20}
    # Then the two level out: 20 more flows over 4 s (four refills), to c2 until it reaches c1, then shared.
    more = Counter(send(lab, vip, 20, pause=0.2))
    counts = {address: n for address, (n, _) in flows(ns).items()}
    print(f"paced flows {dict(more)}; active flows per member {counts}")
    assert more["c2"] >= 10 and abs(counts[first] - counts[second]) <= 4, (more, counts)
    # c2's flows end (deleted from conntrack): the agent's next refill sends every new flow to c2.
    _, mark = flows(ns)[second]
    table = f"cohort_l4_{lb['id'].replace('-', '_')}"
    subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c",
                    f"from cohort.agents.amphora import conntrack; conntrack.delete_by_mark({mark})"], check=True)
    emptied = time.monotonic()

    def only_c2() -> bool:
        listing = subprocess.run(["ip", "netns", "exec", ns, "nft", "-j", "list", "table", "inet", table],
                                 capture_output=True, text=True, check=True).stdout
        maps = [i["map"] for i in json.loads(listing)["nftables"] if "map" in i and i["map"]["name"].startswith("lc")]
        return bool(maps) and {e[1] for e in maps[0]["elem"]} == {mark}

    wait_for(only_c2, timeout=5, interval=0.02)
    reaction = time.monotonic() - emptied
    print(f"least-connections table leaned to the emptied member {reaction:.2f}s after its flows ended")
    assert reaction < 2.0  # one refill interval (1 s) plus reading conntrack and loading the table
    assert Counter(send(lab, vip, 10)) == {"c2": 10}
    _delete(api, lb)
    echoes.close()


def test_allowed_cidrs_drop_other_sources_open_flows_included(env: Env) -> None:
    api, lab, echoes, _ = env
    address = echoes.start("f1")
    lb, vip = _lb(api, [address], {})
    listener_id = lb["listeners"][0]["id"]

    def allow(cidrs: list[str]) -> None:
        status, body = api.put(f"/v2/lbaas/listeners/{listener_id}", {"listener": {"allowed_cidrs": cidrs}})
        assert status == 200 and body["listener"]["allowed_cidrs"] == cidrs, body
        api.wait_active(f"/v2/lbaas/loadbalancers/{lb['id']}", "loadbalancer", timeout=30)

    wait_for(lambda: "f1" in send(lab, vip, 1) or None, timeout=20)
    allow(["192.0.2.0/24", "203.0.113.0/24"])  # neither is the client's
    assert send(lab, vip, 3) == ["TimeoutError"] * 3  # dropped in silence, as a security group drops
    allow([f"{CLIENT_IP}/32", "192.0.2.0/24"])
    assert send(lab, vip, 3) == ["f1"] * 3
    # A flow open while its source is allowed stops when the list no longer admits it.
    holder = subprocess.Popen(["ip", "netns", "exec", lab.client_ns, sys.executable, "-c", HOLD, vip, str(PORT)],
                              stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)
        allow(["198.51.100.128/25"])  # the client is 198.51.100.10
        time.sleep(2.0)
        holder.terminate()
        answers = holder.communicate(timeout=10)[0].split()
    finally:
        if holder.poll() is None:
            holder.kill()
    assert answers[:5] == ["f1"] * 5 and answers[-5:] == ["-"] * 5, answers
    _delete(api, lb)
    echoes.close()


# One flow (one source port) sending every 50 ms until terminated; prints each answer or "-".
HOLD = r"""
import signal, socket, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(0.2)
while True:
    s.sendto(b"ping", (sys.argv[1], int(sys.argv[2])))
    try:
        print(s.recv(2048).decode(), flush=True)
    except OSError:
        print("-", flush=True)
    time.sleep(0.05)
"""

