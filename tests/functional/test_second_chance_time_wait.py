"""The second chance in real namespaces: a moved flow reaches its owner even where it meets a
TIME-WAIT socket of an earlier connection with the same four-tuple.

A client reuses a source port; the amphora that served the earlier connection closed first, so it
holds that four-tuple in TIME-WAIT for a minute. When a router then moves the new connection to it,
that amphora must still hand the packets to their owner. A TIME-WAIT socket takes them as its own
(it answers with its own ACK), so a second chance that asks only "is there a socket here?" loses
them (nftables' ``socket`` expression: it broke open connections on surviving amphorae in the chaos
benchmark, 5 of 9 L3 episodes, 2-6 of 24 connections). The BPF program reads the socket's state.

One router namespace with a bridge, two amphora namespaces (``b`` and ``o``) with the VIP on ``lo``
and the real ruleset (``second_chance.render`` and ``load``), and a client; the router's route to the
VIP is what moves the flow.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from cohort import netns
from cohort.harness import private_prefix
from tests.functional.conftest import IS_ROOT

pytestmark = pytest.mark.root

VIP = "203.0.113.100"
ROUTER_FE, ROUTER_CLIENT, CLIENT = "203.0.113.1", "198.51.100.1", "198.51.100.2"
AMPHORAE = {"b": "203.0.113.11", "o": "203.0.113.12"}
CLIENT_PORT = 41234

SERVER = """
import socket, sys, threading
name, vip = sys.argv[1], sys.argv[2]
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind((vip, 80))
listener.listen(16)
print("ready", flush=True)

def serve(conn):
    for line in conn.makefile("rb"):
        word = line.strip().decode()
        if word == "bye":
            break
        conn.sendall(f"{name}:{word}\\n".encode())
    conn.close()  # the server closes first: the four-tuple stays here in TIME-WAIT

while True:
    conn, _ = listener.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""

CLIENT_LOOP = """
import socket, sys
vip, address, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
sock = None
for line in sys.stdin:
    command, _, word = line.strip().partition(" ")
    try:
        if command == "connect":
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((address, port))
            sock.settimeout(5)
            sock.connect((vip, 80))
            print("connected")
        elif command == "send":
            sock.sendall(word.encode() + b"\\n")
            print(sock.recv(100).decode().strip() or "closed")
        elif command == "bye":
            sock.sendall(b"bye\\n")
            print("closed" if sock.recv(100) == b"" else "data")
            sock.close()
    except OSError as exc:
        print(f"error {exc}")
    sys.stdout.flush()
"""

LOAD = """
import sys
from cohort.agents.amphora.second_chance import Cluster, interfaces, load, render
vip, peer, router_mac = sys.argv[1:4]
clusters = {vip: Cluster(peers=(peer,), interface="fe0", routers=(router_mac,))}
load(render(clusters), interfaces(clusters), set())
"""


@dataclass
class Fabric:
    router: str
    client: str
    amphorae: dict[str, str]  # name -> namespace

    def route_vip_to(self, name: str) -> None:
        netns.run_in(self.router, ["ip", "route", "replace", f"{VIP}/32", "via", AMPHORAE[name]])


@pytest.fixture
def fabric() -> Iterator[Fabric]:
    if not IS_ROOT:
        pytest.skip("needs root (network namespaces)")
    prefix = private_prefix("sc")
    found = Fabric(router=f"{prefix}-r", client=f"{prefix}-c",
                   amphorae={name: f"{prefix}-{name}" for name in AMPHORAE})
    made = [found.router, found.client, *found.amphorae.values()]
    try:
        for ns in made:
            netns.add_netns(ns)
        netns.add_veth("c0", found.client, "rc", found.router)
        netns.add_addr("c0", found.client, f"{CLIENT}/24")
        netns.add_addr("rc", found.router, f"{ROUTER_CLIENT}/24")
        netns.set_link("c0", found.client)
        netns.set_link("rc", found.router)
        netns.add_route(found.client, "default", ROUTER_CLIENT)
        netns.add_bridge("br0", found.router)
        netns.add_addr("br0", found.router, f"{ROUTER_FE}/24")
        netns.sysctl(found.router, "net.ipv4.ip_forward", 1)
        for name, ns in found.amphorae.items():
            netns.add_veth("fe0", ns, f"r{name}", found.router)
            netns.set_link(f"r{name}", found.router, master="br0")
            netns.add_addr("fe0", ns, f"{AMPHORAE[name]}/24")
            netns.set_link("fe0", ns)
            netns.add_addr("lo", ns, f"{VIP}/32")
            netns.add_route(ns, "default", ROUTER_FE)
        router_mac = netns.link_mac("br0", found.router)
        for name, ns in found.amphorae.items():
            peer = next(address for other, address in AMPHORAE.items() if other != name)
            loaded = netns.run(netns.in_ns(ns, [sys.executable, "-c", LOAD, VIP, peer, router_mac]), check=False)
            assert loaded.returncode == 0, loaded.stderr[-2000:]
        yield found
    finally:
        for ns in made:
            netns.del_netns(ns)


def _start(ns: str, code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(netns.in_ns(ns, [sys.executable, "-u", "-c", code, *args]), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)


def _ask(client: subprocess.Popen[str], command: str) -> str:
    assert client.stdin is not None and client.stdout is not None
    client.stdin.write(command + "\n")
    client.stdin.flush()
    return client.stdout.readline().strip()


def test_a_moved_flow_meeting_a_time_wait_socket_still_reaches_its_owner(fabric: Fabric) -> None:
    servers = {name: _start(ns, SERVER, name, VIP) for name, ns in fabric.amphorae.items()}
    client = _start(fabric.client, CLIENT_LOOP, VIP, CLIENT, str(CLIENT_PORT))
    try:
        for server in servers.values():
            assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        # An earlier connection from the same port, served by b, which closes first.
        fabric.route_vip_to("b")
        assert _ask(client, "connect") == "connected"
        assert _ask(client, "send 1") == "b:1"
        assert _ask(client, "bye") == "closed"
        waiting = netns.run_in(fabric.amphorae["b"], ["ss", "-Htn", "state", "time-wait"]).stdout
        assert f"{CLIENT}:{CLIENT_PORT}" in waiting, waiting  # the trap is set
        # The same four-tuple again, now owned by o.
        fabric.route_vip_to("o")
        assert _ask(client, "connect") == "connected"
        assert _ask(client, "send 2") == "o:2"
        # The router moves it back to b: b's TIME-WAIT socket must not keep its packets.
        fabric.route_vip_to("b")
        assert _ask(client, "send 3") == "o:3"
        assert _ask(client, "send 4") == "o:4"
    finally:
        for proc in (client, *servers.values()):
            proc.kill()
            proc.wait()
