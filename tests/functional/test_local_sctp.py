"""SCTP through the whole system: the API builds an amphora whose kernel (nftables) load balances SCTP.

Members are the lab's SCTP echo members (``cohort.lab.sctp_peer``: userspace SCTP over raw
sockets, since these kernels have no SCTP stack), each answering ``NAME: message``; the client
opens one association per message from the lab's client namespace. Every answer that comes back
shows the association stayed on one member from INIT to SHUTDOWN COMPLETE: each member signs its
state cookie with its own secret, so a COOKIE ECHO reaching another member would be dropped.
Shown: both members are used; SOURCE_IP persistence keeps a client on one member; a member that
stops answering is taken out by the SCTP monitor (INIT, INIT ACK, ABORT) within its interval
and comes back when it answers again; statistics come from nftables counters and conntrack.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from sqlalchemy import select

from cohort.db import models as m
from cohort.lab import Lab
from tests.support import Api, local_cohort, wait_for

pytestmark = pytest.mark.root

PORT = 3868  # Diameter's


class Env(NamedTuple):
    api: Api
    lab: Lab
    cohort: Any


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    with local_cohort(tmp_path_factory.mktemp("cohort"), heartbeat_stale_after=3.0) as (cohort, base, lab):
        yield Env(Api(base), lab, cohort)


def send(lab: Lab, vip: str, count: int, close: str = "shutdown", timeout: float = 2.0) -> list[str]:
    """One association per message; each answer's member name (or the error's class name)."""
    result = lab.sctp_client(vip, PORT, ["--count", str(count), "--close", close, "--timeout", str(timeout)])
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


def _lb(api: Api, members: list[str], pool_extra: dict[str, Any]) -> tuple[dict[str, Any], str]:
    pool: dict[str, Any] = {"protocol": "SCTP", "lb_algorithm": "ROUND_ROBIN", "members": [
        {"address": address, "protocol_port": PORT, "subnet_id": "private-subnet"} for address in members],
        **pool_extra}
    body = {"name": "diameter", "vip_subnet_id": "public-subnet", "listeners": [
        {"protocol": "SCTP", "protocol_port": PORT, "default_pool": pool}]}
    status, created = api.post("/v2/lbaas/loadbalancers", {"loadbalancer": body})
    assert status == 201, created
    lb = api.wait_active(f"/v2/lbaas/loadbalancers/{created['loadbalancer']['id']}", "loadbalancer", timeout=60)
    assert lb["provisioning_status"] == "ACTIVE", lb
    return lb, str(lb["vip_address"])


def _delete(api: Api, lb: dict[str, Any]) -> None:
    assert api.delete(f"/v2/lbaas/loadbalancers/{lb['id']}?cascade=true")[0] == 204
    wait_for(lambda: api.get(f"/v2/lbaas/loadbalancers/{lb['id']}")[0] == 404 or None, timeout=30)


def _sctp_flows(env: Env, lb_id: str) -> int:
    """The amphora's SCTP conntrack entries that carry a load-balancing mark."""
    with env.cohort.sessions() as session:
        [ns] = session.scalars(select(m.Amphora.compute_id).where(m.Amphora.load_balancer_id == lb_id,
                                                                  m.Amphora.status == "ALLOCATED"))
    text = subprocess.run(["ip", "netns", "exec", str(ns), "cat", "/proc/net/nf_conntrack"], capture_output=True,
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
