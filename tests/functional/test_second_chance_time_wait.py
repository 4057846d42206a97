"""The second chance in real namespaces: a moved flow reaches its owner even where it meets a
TIME-WAIT socket of an earlier connection with the same four-tuple, and when its packets carry IP
options.

A client reuses a source port; the amphora that served the earlier connection closed first, so it
holds that four-tuple in TIME-WAIT for a minute. When a router then moves the new connection to it,
that amphora must still hand the packets to their owner. A TIME-WAIT socket takes them as its own
(it answers with its own ACK), so a second chance that asks only "is there a socket here?" loses
them (nftables' ``socket`` expression: it broke open connections on surviving amphorae in the chaos
benchmark, 5 of 9 L3 episodes, 2-6 of 24 connections). The BPF program reads the socket's state.
It finds TCP after the IP header's options too: it once let such packets through unasked, and the
amphora a moved flow reached answered them with a reset.

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

CLIENT_PORT = 41234


@dataclass(frozen=True)
class Plan:
    """The fabric's addresses in one IP family."""

    vip: str
    router_fe: str
    router_client: str
    client: str
    amphorae: dict[str, str]
    prefix: int
    host: int  # the VIP's prefix length


IPV4 = Plan("203.0.113.100", "203.0.113.1", "198.51.100.1", "198.51.100.2",
            {"b": "203.0.113.11", "o": "203.0.113.12"}, 24, 32)
IPV6 = Plan("2001:db8:1::100", "2001:db8:1::1", "2001:db8:2::1", "2001:db8:2::2",
            {"b": "2001:db8:1::11", "o": "2001:db8:1::12"}, 64, 128)
VIP, CLIENT, AMPHORAE = IPV4.vip, IPV4.client, IPV4.amphorae

SERVER = """
import socket, sys, threading
name, vip = sys.argv[1], sys.argv[2]
listener = socket.socket(socket.AF_INET6 if ":" in vip else socket.AF_INET)
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
ip_options = bytes.fromhex(sys.argv[4]) if len(sys.argv) > 4 else b""
family = socket.AF_INET6 if ":" in vip else socket.AF_INET
sock = None
for line in sys.stdin:
    command, _, word = line.strip().partition(" ")
    try:
        if command == "connect":
            sock = socket.socket(family)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if ip_options and family == socket.AF_INET:
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_OPTIONS, ip_options)
            elif ip_options:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_DSTOPTS, ip_options)
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
    plan: Plan = IPV4

    def route_vip_to(self, name: str) -> None:
        netns.run_in(self.router, ["ip", "route", "replace", f"{self.plan.vip}/{self.plan.host}",
                                   "via", self.plan.amphorae[name]])


@pytest.fixture
def fabric(request: pytest.FixtureRequest) -> Iterator[Fabric]:
    if not IS_ROOT:
        pytest.skip("needs root (network namespaces)")
    plan: Plan = getattr(request, "param", IPV4)
    prefix = private_prefix("sc")
    found = Fabric(router=f"{prefix}-r", client=f"{prefix}-c",
                   amphorae={name: f"{prefix}-{name}" for name in plan.amphorae}, plan=plan)
    made = [found.router, found.client, *found.amphorae.values()]
    try:
        for ns in made:
            netns.add_netns(ns)
            if plan is IPV6:  # addresses usable at once, not after duplicate detection
                for scope in ("all", "default"):
                    netns.sysctl(ns, f"net.ipv6.conf.{scope}.accept_dad", 0)
        netns.add_veth("c0", found.client, "rc", found.router)
        netns.add_addr("c0", found.client, f"{plan.client}/{plan.prefix}")
        netns.add_addr("rc", found.router, f"{plan.router_client}/{plan.prefix}")
        netns.set_link("c0", found.client)
        netns.set_link("rc", found.router)
        netns.add_route(found.client, "default", plan.router_client)
        netns.add_bridge("br0", found.router)
        netns.add_addr("br0", found.router, f"{plan.router_fe}/{plan.prefix}")
        netns.sysctl(found.router, "net.ipv6.conf.all.forwarding" if plan is IPV6 else "net.ipv4.ip_forward", 1)
        for name, ns in found.amphorae.items():
            netns.add_veth("fe0", ns, f"r{name}", found.router)
            netns.set_link(f"r{name}", found.router, master="br0")
            netns.add_addr("fe0", ns, f"{plan.amphorae[name]}/{plan.prefix}")
            netns.set_link("fe0", ns)
            netns.add_addr("lo", ns, f"{plan.vip}/{plan.host}")
            netns.add_route(ns, "default", plan.router_fe)
        router_mac = netns.link_mac("br0", found.router)
        for name, ns in found.amphorae.items():
            peer = next(address for other, address in plan.amphorae.items() if other != name)
            loaded = netns.run(netns.in_ns(ns, [sys.executable, "-c", LOAD, plan.vip, peer, router_mac]),
                               check=False)
            assert loaded.returncode == 0, loaded.stderr[-2000:]
        yield found
    finally:
        for ns in made:
            netns.del_netns(ns)


def _start(ns: str, code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(netns.in_ns(ns, [sys.executable, "-u", "-c", code, *args]), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)


def _servers(fabric: Fabric) -> dict[str, subprocess.Popen[str]]:
    """A server on the VIP in each amphora, each listening once this returns."""
    servers = {name: _start(ns, SERVER, name, fabric.plan.vip) for name, ns in fabric.amphorae.items()}
    try:
        for server in servers.values():
            assert server.stdout is not None and server.stdout.readline().strip() == "ready"
    except BaseException:
        for server in servers.values():
            server.kill()
            server.wait()
        raise
    return servers


def _capture(ns: str, expression: str) -> subprocess.Popen[str]:
    """tcpdump of the first packet matching ``expression`` on ``ns``'s fe0, capturing once this returns."""
    dump = subprocess.Popen(netns.in_ns(ns, ["tcpdump", "-c", "1", "-nn", "-v", "-i", "fe0", expression]),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert dump.stderr is not None
    if "listening on" not in dump.stderr.readline():
        dump.kill()
        dump.wait()
        raise AssertionError("tcpdump did not start capturing")
    return dump


def _stop(procs: list[subprocess.Popen[str]]) -> None:
    """End what a test started, whether it passed or not."""
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def _ask(client: subprocess.Popen[str], command: str) -> str:
    assert client.stdin is not None and client.stdout is not None
    client.stdin.write(command + "\n")
    client.stdin.flush()
    return client.stdout.readline().strip()


def test_a_moved_flow_meeting_a_time_wait_socket_still_reaches_its_owner(fabric: Fabric) -> None:
    started: list[subprocess.Popen[str]] = []
    try:
        started += _servers(fabric).values()
        client = _start(fabric.client, CLIENT_LOOP, VIP, CLIENT, str(CLIENT_PORT))
        started.append(client)
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
        _stop(started)


# IPv4: three no-operation options and an end of list (a header of six 32-bit words). IPv6: a
# destination options header holding one 4-byte padding option, between the IPv6 header and TCP.
OPTIONS = {"ipv4": ("01010100", "tcp and ip[0] & 0xf = 6", "options (NOP,NOP,NOP,EOL)"),
           "ipv6": ("0000010400000000", "ip6 and ip6[6] = 60", "DSTOPT")}


@pytest.mark.parametrize("fabric", [IPV4, IPV6], ids=["ipv4", "ipv6"], indirect=True)
def test_a_moved_flow_whose_packets_carry_ip_options_still_reaches_its_owner(fabric: Fabric) -> None:
    plan = fabric.plan
    options, capture, shown = OPTIONS["ipv6" if plan is IPV6 else "ipv4"]
    started: list[subprocess.Popen[str]] = []
    try:
        started += _servers(fabric).values()
        client = _start(fabric.client, CLIENT_LOOP, plan.vip, plan.client, str(CLIENT_PORT + 1), options)
        started.append(client)
        dump = _capture(fabric.amphorae["b"], capture)
        started.append(dump)
        fabric.route_vip_to("o")
        assert _ask(client, "connect") == "connected"
        assert _ask(client, "send 1") == "o:1"
        # The router moves it to b, which has no socket for it: b hands it to o instead of resetting it.
        fabric.route_vip_to("b")
        assert _ask(client, "send 2") == "o:2"
        assert _ask(client, "send 3") == "o:3"
        # The packets b got did carry the options.
        seen, _ = dump.communicate(timeout=5)
        assert shown in seen, seen
    finally:
        _stop(started)
