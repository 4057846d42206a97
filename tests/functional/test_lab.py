"""The lab network: building, repairing, tearing down, members, and two labs side by side.

The member-server protocol tests at the end need no root (a fake transport, no sockets).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from cohort import netns
from cohort.lab import Lab, LabError
from cohort.lab.member_server import MemberProtocol, chunked_length, parse_bind
from cohort.netplan import plan_subnets as lab_subnets

root = pytest.mark.root


def ping(lab: Lab, which: str, address: str) -> bool:
    return lab.exec(which, ["ping", "-c1", "-W1", address]).returncode == 0


def http_get_many(lab: Lab, which: str, host: str, port: int, count: int) -> dict[str, Any]:
    """``count`` GETs on one connection from inside a namespace; bodies, members and peers seen."""
    code = f"""
import http.client, json
c = http.client.HTTPConnection({host!r}, {port}, timeout=5)
out = {{"bodies": [], "members": [], "peers": []}}
for _ in range({count}):
    c.request("GET", "/anything")
    r = c.getresponse()
    assert r.status == 200, r.status
    out["bodies"].append(r.read().decode())
    out["members"].append(r.getheader("X-Member"))
    out["peers"].append(r.getheader("X-Peer"))
print(json.dumps(out))
"""
    proc = lab.exec(which, [sys.executable, "-c", code], timeout=20)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


@root
def test_up_down_idempotent_repairs_and_leaves_nothing(lab_factory: Any) -> None:
    lab: Lab = lab_factory()
    lab.up()
    lab.up()
    assert lab.is_up()
    assert set(lab.status()["namespaces"]) == {lab.sw_ns, lab.client_ns, lab.gw_ns}
    assert (lab.host_if, f"{lab.mgmt_host_ip}/24") in netns.addresses()

    # A half-built (or half-broken) lab is finished by up().
    netns.del_netns(lab.gw_ns)
    netns.del_link(lab.host_if)
    assert not lab.is_up()
    lab.up()
    assert lab.is_up()
    assert ping(lab, "client", "203.0.113.1")
    lab.add_member("web1")
    member_pid = lab.snapshot()["members"]["web1"]["pid"]

    lab.down()
    lab.down()
    assert not [ns for ns in netns.list_netns() if ns.startswith(lab.prefix + "-")]
    assert not netns.link_exists(lab.host_if)
    assert netns.proc_starttime(member_pid) is None
    assert lab.snapshot() == {}
    assert lab.status()["up"] is False


@root
def test_client_reaches_gateway(lab: Lab) -> None:
    proc = lab.exec_client(["ping", "-c1", "-W1", "203.0.113.1"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert ping(lab, "gw", "198.51.100.10")
    # The back-end has no gateway: the router has no way to the members' network.
    assert lab.exec("gw", ["ip", "route", "get", "192.0.2.10"]).returncode != 0


@root
def test_subnets_are_stable_and_found_by_name_or_id(lab: Lab) -> None:
    subnets = {s["name"]: s for s in lab.status()["subnets"]}
    assert subnets["public-subnet"]["cidr"] == "203.0.113.0/24"
    assert subnets["public-subnet"]["gateway_ip"] == "203.0.113.1"
    assert subnets["private-subnet"]["gateway_ip"] is None
    for s in lab.subnets():
        assert lab.subnet(s.id) == lab.subnet(s.name) == s
    assert [s.id for s in lab_subnets(lab.prefix)] == [s.id for s in lab.subnets()]
    assert [s.id for s in lab_subnets("cohort")] != [s.id for s in lab.subnets()]
    assert lab.subnet("nope") is None


@root
def test_members_answer_with_their_name_over_keepalive(lab: Lab) -> None:
    a = lab.add_member("web1")
    b = lab.add_member("web2", port=8080)
    assert (a, b) == ("192.0.2.10", "192.0.2.11")
    assert lab.add_member("web1") == a  # idempotent
    assert Lab(lab.state_dir, lab.prefix).member_address("web2") == b  # state shared through the file

    seen = http_get_many(lab, "web1", b, 8080, 3)
    assert seen["bodies"] == ["web2\n"] * 3
    assert seen["members"] == ["web2"] * 3
    assert len(set(seen["peers"])) == 1  # one connection: keep-alive works
    assert seen["peers"][0].startswith(a + ":")
    health = lab.exec("web2", ["curl", "-s", f"http://{a}/healthz"])
    assert health.stdout == "ok\n"

    members = {m["name"]: m for m in lab.status()["members"]}
    assert members["web2"] == {
        "name": "web2", "address": b, "port": 8080, "namespace": lab.member_ns("web2"), "alive": True,
        "protocol": "HTTP",
    }

    lab.remove_member("web2")
    lab.remove_member("web2")
    assert not netns.netns_exists(lab.member_ns("web2"))
    assert lab.member_address("web2") is None
    assert lab.add_member("web3") == b  # its address was released
    lab.remove_member("web3")


@root
def test_up_restarts_a_crashed_member(lab: Lab) -> None:
    addr = lab.add_member("crashy", port=8081)
    pid = lab.snapshot()["members"]["crashy"]["pid"]
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while netns.proc_starttime(pid) is not None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not {m["name"]: m for m in lab.status()["members"]}["crashy"]["alive"]
    lab.up()
    assert http_get_many(lab, "crashy", addr, 8081, 1)["members"] == ["crashy"]
    lab.remove_member("crashy")


@root
def test_bad_member_names_and_ports_are_refused(lab: Lab) -> None:
    for name in ("Web", "web-1", "x" * 30, "", "client", "gw"):
        with pytest.raises(LabError):
            lab.add_member(name)
    with pytest.raises(LabError):
        lab.add_member("ok", port=70000)


@root
def test_cohort_lab_member_add_refuses_a_name_in_use(lab: Lab) -> None:
    address = lab.add_member("taken")
    env = {**os.environ, "COHORT_LAB_PREFIX": lab.prefix, "COHORT_STATE_DIR": str(lab.state_dir.parent)}
    assert lab.state_dir.name == "lab"  # cohort lab finds it in the layout's lab directory, <state dir>/lab
    done = subprocess.run([sys.executable, "-m", "cohort.cli", "lab", "member", "add", "taken"],
                          capture_output=True, text=True, env=env, timeout=60, check=False)
    assert done.returncode == 1 and done.stdout == "", done
    assert "in use" in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert lab.member_address("taken") == address
    lab.remove_member("taken")


@root
def test_two_labs_coexist(lab: Lab, lab_factory: Any) -> None:
    other: Lab = lab_factory()
    assert other.prefix != lab.prefix and other.mgmt_cidr != lab.mgmt_cidr
    assert other.host_if != lab.host_if
    other.up()
    other.add_member("web1")
    assert ping(other, "client", "203.0.113.1")
    assert ping(lab, "client", "203.0.113.1")
    assert lab.resolve_ns("client") != other.resolve_ns("client")
    other.down()
    assert ping(lab, "client", "203.0.113.1")
    assert lab.is_up()
    assert lab.sw_ns in netns.list_netns()


@root
def test_second_lab_on_a_used_management_network_is_refused(lab: Lab, tmp_path: Path) -> None:
    clash = Lab(tmp_path, prefix="cohort-tclash", mgmt_cidr=lab.mgmt_cidr)
    with pytest.raises(LabError, match="already used"):
        clash.up()
    assert not netns.netns_exists(clash.sw_ns)


# --- the member server's protocol, without sockets ------------------------------------------


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.out = bytearray()
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.out += data

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("198.51.100.10", 40000) if name == "peername" else default


def feed(*chunks: bytes) -> FakeTransport:
    proto, transport = MemberProtocol("web1"), FakeTransport()
    proto.connection_made(transport)
    for chunk in chunks:
        proto.data_received(chunk)
    return transport


def test_member_answers_pipelined_requests_split_anywhere() -> None:
    raw = (
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
        b"POST /p HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"
        b"GET /healthz HTTP/1.1\r\n\r\n"
    )
    t = feed(*(raw[i : i + 7] for i in range(0, len(raw), 7)))
    responses = bytes(t.out).split(b"HTTP/1.1 200 OK\r\n")[1:]
    assert len(responses) == 3
    assert responses[0].endswith(b"\r\n\r\nweb1\n") and b"X-Member: web1\r\n" in responses[0]
    assert b"X-Peer: 198.51.100.10:40000\r\n" in responses[0]
    assert responses[2].endswith(b"\r\n\r\nok\n")
    assert not t.closed


def test_member_closes_when_asked_and_for_http10() -> None:
    assert feed(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n").closed
    assert feed(b"GET / HTTP/1.0\r\n\r\n").closed
    assert not feed(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").closed


def test_member_head_chunked_and_bad_requests() -> None:
    head = feed(b"HEAD / HTTP/1.1\r\n\r\n")
    assert head.out.endswith(b"\r\n\r\n") and b"Content-Length: 5" in head.out
    chunked = feed(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel", b"lo\r\n0\r\n\r\n")
    assert chunked.out.endswith(b"web1\n") and chunked.out.count(b"200 OK") == 1
    waiting = feed(b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc")
    assert waiting.out == b""
    bad = feed(b"NONSENSE\r\n\r\n")
    assert bad.out.startswith(b"HTTP/1.1 400") and bad.closed
    body = b"3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n"
    assert chunked_length(bytearray(b"xx" + body + b"GET"), 2) == len(body)
    assert chunked_length(bytearray(b"3\r\nabc\r\n"), 0) is None
    assert parse_bind("192.0.2.10:80") == ("192.0.2.10", 80)
    assert parse_bind("[2001:db8::10]:8080") == ("2001:db8::10", 8080)
    with pytest.raises(ValueError):
        parse_bind("192.0.2.10")
