"""SCTP through the whole system: the API builds an amphora whose kernel (nftables) load balances SCTP.

Members are the lab's SCTP echo members (``cohort.lab.sctp_peer``: userspace SCTP over raw
sockets, since these kernels have no SCTP stack), each answering ``NAME: message``; the client
opens one association per message from the lab's client namespace. Every answer that comes back
shows the association stayed on one member from INIT to SHUTDOWN COMPLETE: each member signs its
state cookie with its own secret, so a COOKIE ECHO reaching another member would be dropped.
Shown: both members are used; SOURCE_IP persistence keeps a client on one member; a member that
stops answering is taken out by the SCTP monitor (INIT, INIT ACK, ABORT) within its interval
and comes back when it answers again; statistics come from nftables counters and conntrack.
LEAST_CONNECTIONS sends new associations to the member with fewer open ones (long-lived ones held
by a client process; ended ones do not count). On ACTIVE_STANDBY the MASTER's kernel serves the
VIP and, once the MASTER dies as a VM dies, the BACKUP's kernel serves new associations; the
amphora the controller rebuilds carries the SCTP program too.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from cohort import netns
from cohort.lab import Lab, sctp_setup
from tests.functional.test_local_l4 import amphorae, flows
from tests.functional.test_local_l4_topologies import _outages, answered_once, kill_like_a_dead_vm, new_flows
from tests.support import Api, local_cohort, wait_for

pytestmark = pytest.mark.root

PORT = 3868  # Diameter's


class Env(NamedTuple):
    api: Api
    lab: Lab
    cohort: Any

    def amphorae(self, lb_id: str) -> dict[str, str]:
        return amphorae(self.cohort, lb_id)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    with local_cohort(tmp_path_factory.mktemp("cohort"), heartbeat_stale_after=3.0) as (cohort, base, lab):
        yield Env(Api(base), lab, cohort)


def send(lab: Lab, vip: str, count: int, close: str = "shutdown", timeout: float = 2.0,
         pause: float = 0.0, first_port: int | None = None) -> list[str]:
    """One association per message; each answer's member name (or the error's class name)."""
    ports = ["--first-port", str(first_port)] if first_port is not None else []
    result = lab.sctp_client(vip, PORT, ["--count", str(count), "--close", close, "--timeout", str(timeout),
                                         "--pause", str(pause), *ports])
    assert result.returncode == 0, result.stderr
    return [a.split(":", 1)[0] if a.endswith(": ping") else a for a in json.loads(result.stdout)]


def kill_member(lab: Lab, name: str) -> None:
    pid = lab.snapshot()["members"][name]["pid"]
    os.kill(pid, signal.SIGKILL)

    def gone() -> bool:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # the lab spawned it from this process: reap it
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
        except FileNotFoundError:
            return True

    wait_for(gone, timeout=5)


def _lb(api: Api, members: list[str], pool_extra: dict[str, Any], **lb_extra: Any) -> tuple[dict[str, Any], str]:
    pool: dict[str, Any] = {"protocol": "SCTP", "lb_algorithm": "ROUND_ROBIN", "members": [
        {"address": address, "protocol_port": PORT, "subnet_id": "private-subnet"} for address in members],
        **pool_extra}
    body = {"name": "diameter", "vip_subnet_id": "public-subnet", "listeners": [
        {"protocol": "SCTP", "protocol_port": PORT, "default_pool": pool}], **lb_extra}
    status, created = api.post("/v2/lbaas/loadbalancers", {"loadbalancer": body})
    assert status == 201, created
    lb = api.wait_active(f"/v2/lbaas/loadbalancers/{created['loadbalancer']['id']}", "loadbalancer", timeout=90)
    assert lb["provisioning_status"] == "ACTIVE", lb
    return lb, str(lb["vip_address"])


def _delete(api: Api, lb: dict[str, Any]) -> None:
    assert api.delete(f"/v2/lbaas/loadbalancers/{lb['id']}?cascade=true")[0] == 204
    wait_for(lambda: api.get(f"/v2/lbaas/loadbalancers/{lb['id']}")[0] == 404 or None, timeout=30)


def _sctp_flows(env: Env, lb_id: str) -> int:
    """The amphora's SCTP conntrack entries that carry a load-balancing mark."""
    [ns] = env.amphorae(lb_id).values()
    text = subprocess.run(["ip", "netns", "exec", ns, "cat", "/proc/net/nf_conntrack"], capture_output=True,
                          text=True, check=True).stdout
    return sum(1 for line in text.splitlines() if " sctp " in f" {line}" and re.search(r" mark=[1-9]", line))


def test_sctp_members_share_associations_and_a_dead_one_is_taken_out(env: Env) -> None:
    api, lab, _ = env
    addresses = [lab.add_member(name, PORT, protocol="SCTP") for name in ("s1", "s2")]
    try:
        lb, vip = _lb(api, addresses, {"healthmonitor": {"type": "SCTP", "delay": 2, "timeout": 1,
                                                           "max_retries": 1, "max_retries_down": 1}})
        wait_for(lambda: "s1" in send(lab, vip, 2) or None, timeout=20)
        started = time.monotonic()
        answers = Counter(send(lab, vip, 20))
        elapsed = time.monotonic() - started
        print(f"20 associations (INIT..SHUTDOWN COMPLETE) through the VIP in {elapsed:.2f}s: {dict(answers)}")
        assert answers == Counter({"s1": 10, "s2": 10}), answers
        assert Counter(send(lab, vip, 4, close="abort")) == Counter({"s1": 2, "s2": 2})
        assert _sctp_flows(env, lb["id"]) >= 20  # one conntrack entry per association, marked with its member
        wait_for(lambda: api.get(f"/v2/lbaas/loadbalancers/{lb['id']}")[1]["loadbalancer"]
                 ["operating_status"] == "ONLINE" or None, timeout=15)
        stats = wait_for(lambda: (s := api.get(f"/v2/lbaas/loadbalancers/{lb['id']}/stats")[1]["stats"])
                         ["total_connections"] >= 24 and s, timeout=15)
        assert stats["bytes_in"] > 0 and stats["bytes_out"] > 0, stats
        print(f"stats {stats}")
        # s2 stops answering (its process is killed; its kernel stays silent): out within one interval.
        kill_member(lab, "s2")
        stopped = time.monotonic()
        wait_for(lambda: set(send(lab, vip, 4, timeout=0.5)) == {"s1"} or None, timeout=10, interval=0.05)
        out_after = time.monotonic() - stopped
        print(f"dead SCTP member out of the kernel map after {out_after:.1f}s (delay 2 s, timeout 1 s)")
        assert out_after < 2 + 1 + 1.5  # one interval plus the probe's timeout, plus the sampling

        def degraded() -> dict[str, Any] | None:
            tree = api.get(f"/v2/lbaas/loadbalancers/{lb['id']}/status")[1]["statuses"]["loadbalancer"]
            return tree if tree["operating_status"] == "DEGRADED" else None

        tree = wait_for(degraded, timeout=15)
        members = {mb["address"]: mb["operating_status"] for mb in tree["listeners"][0]["pools"][0]["members"]}
        assert members == {addresses[0]: "ONLINE", addresses[1]: "ERROR"}, members
        assert Counter(send(lab, vip, 6)) == {"s1": 6}
        # Back when it answers again.
        lab.add_member("s2", PORT, protocol="SCTP")
        restarted = time.monotonic()
        wait_for(lambda: "s2" in send(lab, vip, 2) or None, timeout=15, interval=0.05)
        back_after = time.monotonic() - restarted
        print(f"revived SCTP member back in the kernel map after {back_after:.1f}s")
        assert back_after < 2 + 1.5
        _delete(api, lb)
    finally:
        for name in ("s1", "s2"):
            lab.remove_member(name)


def test_sctp_source_ip_persistence_keeps_a_client_on_one_member(env: Env) -> None:
    api, lab, _ = env
    addresses = [lab.add_member(name, PORT, protocol="SCTP") for name in ("q1", "q2")]
    try:
        lb, vip = _lb(api, addresses, {"session_persistence": {"type": "SOURCE_IP", "persistence_timeout": 60}})
        wait_for(lambda: set(send(lab, vip, 1)) & {"q1", "q2"} or None, timeout=20)
        # Every new association (a new source port and tags) of this client goes to the same member.
        answers = Counter(send(lab, vip, 20))
        assert len(answers) == 1 and next(iter(answers)) in ("q1", "q2"), answers
        print(f"SOURCE_IP persistence: {dict(answers)}")
        _delete(api, lb)
    finally:
        for name in ("q1", "q2"):
            lab.remove_member(name)


class Holder:
    """A client process holding ``count`` associations open (long-lived ones) until ``close``."""

    def __init__(self, lab: Lab, vip: str, count: int, first_port: int | None = None) -> None:
        sctp_setup.quiet_icmp(lab.client_ns)
        ports = ["--first-port", str(first_port)] if first_port is not None else []
        command = sctp_setup.send_command(vip, PORT, ["--count", str(count), "--close", "hold", *ports])
        self.proc = subprocess.Popen(netns.in_ns(lab.client_ns, command), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.answers = [a.split(":", 1)[0] for a in json.loads(self.proc.stdout.readline())]

    def close(self) -> list[str]:
        """Shut every association down (SHUTDOWN, SHUTDOWN ACK, SHUTDOWN COMPLETE); how each ended."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        ended = list(json.loads(self.proc.stdout.readline()))
        self.proc.wait(10)
        return ended

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def _least_marks(ns: str, lb_id: str) -> set[int]:
    """The member marks in the listener's LEAST_CONNECTIONS slot table."""
    table = f"cohort_l4_{lb_id.replace('-', '_')}"
    listing = subprocess.run(["ip", "netns", "exec", ns, "nft", "-j", "list", "table", "inet", table],
                             capture_output=True, text=True, check=True).stdout
    [least] = [i["map"] for i in json.loads(listing)["nftables"] if "map" in i and i["map"]["name"].startswith("lc")]
    return {e[1] for e in least.get("elem", [])}


def test_sctp_least_connections_sends_new_associations_to_the_member_with_fewer_open(env: Env) -> None:
    api, lab, _ = env
    first, second = (lab.add_member(name, PORT, protocol="SCTP") for name in ("c1", "c2"))
    holder: Holder | None = None
    try:
        lb, vip = _lb(api, [first], {"lb_algorithm": "LEAST_CONNECTIONS"})
        [ns] = env.amphorae(lb["id"]).values()
        wait_for(lambda: "c1" in send(lab, vip, 1) or None, timeout=20)
        # 20 long-lived associations on c1, held open by one client, then c2 joins. The clients' source
        # ports are apart: one drawn again would continue the held (or a just closed) association's entry.
        holder = Holder(lab, vip, 20, first_port=50000)
        assert Counter(holder.answers) == {"c1": 20}, holder.answers
        # Two quiet refills: the agent expects few new associations, as after any lull (were the 21 just opened
        # still expected, the water-filling would rightly give c1 a slot: 21 new ones would bring c2 past it).
        time.sleep(2.5)
        pool_id = api.get(f"/v2/lbaas/listeners/{lb['listeners'][0]['id']}")[1]["listener"]["default_pool_id"]
        status, body = api.post(f"/v2/lbaas/pools/{pool_id}/members", {"member": {
            "address": second, "protocol_port": PORT, "subnet_id": "private-subnet"}})
        assert status == 201, body
        api.wait_active(f"/v2/lbaas/loadbalancers/{lb['id']}", "loadbalancer", timeout=30)
        assert flows(ns, PORT, "sctp")[first][0] == 20
        # A refill delayed on a busy machine may have left the 21 just opened as the expected arrivals
        # when c2 joined (c1 would then rightly keep a sliver of slots); the next refill gives c2 them all.
        c1_mark = flows(ns, PORT, "sctp")[first][1]
        wait_for(lambda: len(loaded := _least_marks(ns, lb["id"])) == 1 and c1_mark not in loaded, timeout=5)
        # Every new association goes to c2, which has fewer open ones (round robin would split them), over
        # several refills: those c2 served and closed do not count, though conntrack keeps them 10 s.
        started = time.monotonic()
        answers = Counter(send(lab, vip, 40, pause=0.1, first_port=51000))
        print(f"40 paced associations in {time.monotonic() - started:.1f}s beside 20 held on c1: {dict(answers)}")
        assert answers == {"c2": 40}, answers
        open_now = {address: n for address, (n, _) in flows(ns, PORT, "sctp").items()}
        assert open_now == {first: 20}, open_now
        stats = wait_for(lambda: (s := api.get(f"/v2/lbaas/loadbalancers/{lb['id']}/stats")[1]["stats"])
                         ["total_connections"] >= 61 and s, timeout=15)
        assert stats["active_connections"] == 20, stats  # open associations, not the 40 ended ones
        # The held associations end (graceful SHUTDOWN): neither member has any open, so they share again.
        marks = {flows(ns, PORT, "sctp")[first][1], _least_marks(ns, lb["id"]).pop()}
        assert holder.close() == ["closed"] * 20
        ended = time.monotonic()
        wait_for(lambda: _least_marks(ns, lb["id"]) == marks, timeout=5, interval=0.02)
        reaction = time.monotonic() - ended
        print(f"least-connections table shared again {reaction:.2f}s after the 20 held associations ended")
        assert reaction < 2.0  # one refill interval (1 s) plus reading conntrack and loading the table
        answers = Counter(send(lab, vip, 20, first_port=52000))
        print(f"then 20 associations: {dict(answers)}")
        assert set(answers) == {"c1", "c2"} and min(answers.values()) >= 5, answers
        _delete(api, lb)
    finally:
        if holder is not None:
            holder.kill()
        for name in ("c1", "c2"):
            lab.remove_member(name)


def _program(ns: str, lb_id: str) -> str:
    table = f"cohort_l4_{lb_id.replace('-', '_')}"
    return subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "table", "inet", table], capture_output=True,
                          text=True, check=True).stdout


# A new association (INIT to SHUTDOWN COMPLETE, 0.5 s to complete) every 50 ms until terminated;
# prints "<wall time> <member or ->" for each.
PROBE = r"""
import signal, sys, time
from cohort.lab.sctp_peer import LocalPorts, request
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
ports = LocalPorts()
while True:
    try:
        answer = request(sys.argv[1], int(sys.argv[2]), b"ping", 0.5, local_ports=ports).decode().split(":", 1)[0]
    except OSError:
        answer = "-"
    print(f"{time.time():.3f} {answer}", flush=True)
    time.sleep(0.05)
"""


def test_sctp_on_active_standby_fails_over_to_the_backup(env: Env) -> None:
    api, lab, _ = env
    addresses = [lab.add_member(name, PORT, protocol="SCTP") for name in ("h1", "h2")]
    prober: subprocess.Popen[str] | None = None
    try:
        flavor = api.flavor("standby-sctp", {"loadbalancer_topology": "ACTIVE_STANDBY"})
        lb, vip = _lb(api, addresses, {"healthmonitor": {"type": "SCTP", "delay": 2, "timeout": 1,
                                                           "max_retries": 1, "max_retries_down": 1}},
                      flavor_id=flavor)
        roles = env.amphorae(lb["id"])
        assert set(roles) == {"MASTER", "BACKUP"}, roles
        wait_for(lambda: "h1" in send(lab, vip, 2) or None, timeout=30)
        # Both amphorae carry the SCTP program; the MASTER's kernel dispatches every association, the BACKUP idles.
        for ns in roles.values():
            assert f"sctp dport {PORT} jump" in _program(ns, lb["id"])
        before = {role: new_flows(ns, lb["id"]) for role, ns in roles.items()}
        assert Counter(send(lab, vip, 10)) == {"h1": 5, "h2": 5}
        assert new_flows(roles["MASTER"], lb["id"]) - before["MASTER"] >= 10
        assert new_flows(roles["BACKUP"], lb["id"]) == before["BACKUP"]
        prober = subprocess.Popen(netns.in_ns(lab.client_ns, [sys.executable, "-c", PROBE, vip, str(PORT)]),
                                  stdout=subprocess.PIPE, text=True)
        early = answered_once(prober)
        # The MASTER dies as a VM dies; new associations go through the BACKUP's kernel once keepalived gives it
        # the VIP (an association open then is lost: conntrack is not replicated; its client opens a new one).
        killed = time.time()
        kill_like_a_dead_vm(roles["MASTER"])
        wait_for(lambda: new_flows(roles["BACKUP"], lb["id"]) > before["BACKUP"] or None, timeout=20, interval=0.1)
        taken_over = time.time() - killed
        # The controller rebuilds the dead amphora: it carries the SCTP program too, and associations go on.
        # The survivor is the MASTER now and keeps the VIP: the replacement joins as BACKUP and never takes
        # it (a preempting replacement took it moments after the takeover, a second outage).
        wait_for(lambda: roles["MASTER"] not in env.amphorae(lb["id"]).values()
                 and len(env.amphorae(lb["id"])) == 2 or None, timeout=120, interval=1.0)
        api.wait_active(f"/v2/lbaas/loadbalancers/{lb['id']}", "loadbalancer", timeout=60)
        rebuilt = time.time() - killed
        now = env.amphorae(lb["id"])
        assert now["MASTER"] == roles["BACKUP"], now
        for ns in now.values():
            assert f"sctp dport {PORT} jump" in _program(ns, lb["id"])
        wait_for(lambda: set(send(lab, vip, 6)) == {"h1", "h2"} or None, timeout=30, interval=0.5)
        time.sleep(2.0)
        by_backup = new_flows(roles["BACKUP"], lb["id"]) - before["BACKUP"]
        assert new_flows(now["BACKUP"], lb["id"]) == 0, "the replacement took the VIP from the survivor"
        prober.terminate()
        lines = early + [line.split() for line in prober.communicate(timeout=10)[0].splitlines()]
    finally:
        if prober is not None and prober.poll() is None:
            prober.kill()
            prober.wait(10)
        for name in ("h1", "h2"):
            lab.remove_member(name)
    samples = [(float(t), answer) for t, answer in lines]
    after = [(t, answer) for t, answer in samples if t > killed]
    lost = next(t for t, answer in after if answer == "-")
    back = next(t for t, answer in after if t > lost and answer != "-")
    outages = _outages([(t, answer != "-") for t, answer in samples if t > killed - 0.5])
    answered = Counter(answer for t, answer in after if t >= back)
    print(f"SCTP on ACTIVE_STANDBY: the BACKUP dispatching {taken_over:.2f}s and new associations answered again "
          f"{back - killed:.2f}s after the MASTER died; outages (s, last answer to next) "
          f"{[round(o, 2) for o in outages]}; the dead amphora rebuilt and ACTIVE {rebuilt:.1f}s after; then "
          f"{dict(answered)} ({len(after)} tried after the kill, {by_backup} dispatched by the old BACKUP)")
    assert len(outages) == 1 and outages[0] < 10, (outages, samples[-20:])
    assert answered["h1"] > 10 and answered["h2"] > 10 and samples[-1][1] in ("h1", "h2"), answered
    _delete(api, lb)
