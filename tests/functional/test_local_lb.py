"""Whole system with local drivers: the API builds real amphorae that carry traffic in the lab.

Client requests go from the lab's client namespace through the gateway to the VIP; members are
the lab's HTTP servers on the back-end network. Everything is torn down, also on failure.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select

from cohort.db import models as m
from cohort.lab import Lab
from tests.support import Api, local_cohort, wait_for

pytestmark = pytest.mark.root


class LocalCohort:
    def __init__(self, cohort: Any, api: Api, lab: Lab) -> None:
        self.cohort, self.api, self.lab = cohort, api, lab

    def curl(self, url: str, timeout: float = 2.0) -> str:
        result = self.lab.exec_client(["curl", "-s", "--max-time", str(timeout), url])
        return result.stdout.strip()

    def create_lb(self, members: list[str], flavor_id: str | None = None, monitor: bool = True,
                  name: str = "web") -> dict[str, Any]:
        pool: dict[str, Any] = {"protocol": "HTTP", "lb_algorithm": "ROUND_ROBIN", "members": [
            {"address": address, "protocol_port": 80, "subnet_id": "private-subnet"} for address in members]}
        if monitor:
            pool["healthmonitor"] = {"type": "HTTP", "delay": 1, "timeout": 1, "max_retries": 1,
                                     "max_retries_down": 1, "url_path": "/healthz"}
        body: dict[str, Any] = {"name": name, "vip_subnet_id": "public-subnet", "listeners": [
            {"protocol": "HTTP", "protocol_port": 80, "default_pool": pool}]}
        if flavor_id:
            body["flavor_id"] = flavor_id
        status, created = self.api.post("/v2/lbaas/loadbalancers", {"loadbalancer": body})
        assert status == 201, created
        return dict(created["loadbalancer"])

    def amphorae(self, lb_id: str) -> list[m.Amphora]:
        with self.cohort.sessions() as session:
            return list(session.scalars(select(m.Amphora).where(
                m.Amphora.load_balancer_id == lb_id, m.Amphora.status != "DELETED")))

    def flavor(self, data: str) -> str:
        _, profile = self.api.post("/v2/lbaas/flavorprofiles", {"flavorprofile": {
            "name": "p", "provider_name": "amphora", "flavor_data": data}})
        _, flavor = self.api.post("/v2/lbaas/flavors", {"flavor": {
            "name": f"f{time.monotonic_ns()}", "flavor_profile_id": profile["flavorprofile"]["id"]}})
        return str(flavor["flavor"]["id"])


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCohort]:
    with local_cohort(tmp_path_factory.mktemp("cohort"), heartbeat_stale_after=3.0) as (cohort, base, lab):
        yield LocalCohort(cohort, Api(base), lab)


def test_single_serves_both_members_and_reports_health(local: LocalCohort) -> None:
    addresses = [local.lab.add_member(name) for name in ("s1", "s2")]
    started = time.monotonic()
    lb = local.create_lb(addresses)
    vip_lb = local.api.wait_active(f"/v2/lbaas/loadbalancers/{lb['id']}", "loadbalancer", timeout=60)
    assert vip_lb["provisioning_status"] == "ACTIVE", vip_lb
    vip = vip_lb["vip_address"]
    first = wait_for(lambda: local.curl(f"http://{vip}/"), timeout=20)
    print(f"create to first served request: {time.monotonic() - started:.2f}s")
    assert first in ("s1", "s2")
    answers = Counter(local.curl(f"http://{vip}/") for _ in range(10))
    assert set(answers) == {"s1", "s2"}, answers
    amps = local.amphorae(lb["id"])
    assert [a.role for a in amps] == ["STANDALONE"] and amps[0].status == "ALLOCATED"
    # Heartbeats bring real status and statistics.
    wait_for(lambda: local.api.get(f"/v2/lbaas/loadbalancers/{lb['id']}")[1]["loadbalancer"]
             ["operating_status"] == "ONLINE", timeout=15)
    stats = wait_for(lambda: (s := local.api.get(f"/v2/lbaas/loadbalancers/{lb['id']}/stats")[1]["stats"])
                     ["total_connections"] >= 10 and s, timeout=10)
    assert stats["bytes_out"] > 0
    # A stopped member turns ERROR; its pool, listener and load balancer DEGRADED; traffic avoids it.
    local.lab.remove_member("s2")

    def degraded() -> dict[str, Any] | None:
        tree = local.api.get(f"/v2/lbaas/loadbalancers/{lb['id']}/status")[1]["statuses"]["loadbalancer"]
        return tree if tree["operating_status"] == "DEGRADED" else None

    tree = wait_for(degraded, timeout=15)
    pool = tree["listeners"][0]["pools"][0]
    assert pool["operating_status"] == "DEGRADED"
    assert {mb["address"]: mb["operating_status"] for mb in pool["members"]}[addresses[1]] == "ERROR"
    assert {local.curl(f"http://{vip}/") for _ in range(6)} == {"s1"}
    # Deleting the load balancer removes its amphorae and namespaces.
    compute_ids = [a.compute_id for a in amps]
    assert local.api.delete(f"/v2/lbaas/loadbalancers/{lb['id']}?cascade=true")[0] == 204
    wait_for(lambda: local.api.get(f"/v2/lbaas/loadbalancers/{lb['id']}")[0] == 404, timeout=30)
    from cohort import netns

    assert not any(netns.netns_exists(c) for c in compute_ids if c)
    local.lab.remove_member("s1")


def test_active_standby_survives_master_death(local: LocalCohort) -> None:
    address = local.lab.add_member("a1")
    flavor = local.flavor('{"loadbalancer_topology": "ACTIVE_STANDBY"}')
    lb = local.create_lb([address], flavor_id=flavor, name="ha")
    lb = local.api.wait_active(f"/v2/lbaas/loadbalancers/{lb['id']}", "loadbalancer", timeout=90)
    assert lb["provisioning_status"] == "ACTIVE", lb
    vip = lb["vip_address"]
    assert wait_for(lambda: local.curl(f"http://{vip}/"), timeout=30) == "a1"
    amps = {a.role: a for a in local.amphorae(lb["id"])}
    assert set(amps) == {"MASTER", "BACKUP"}
    master = amps["MASTER"]
    # Kill every process of the master amphora (its namespace stays, like a hung VM).
    agent_pid = local.cohort.drivers.compute.agent_pid(master.compute_id)
    assert agent_pid
    for pid in _namespace_pids(master.compute_id):
        os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic()
    served = wait_for(lambda: local.curl(f"http://{vip}/", timeout=1.0) == "a1", timeout=15)
    print(f"backup served {time.monotonic() - killed_at:.2f}s after the master died")
    assert served
    # The controller notices and rebuilds the dead amphora (N+1).
    wait_for(lambda: master.id not in {a.id for a in local.amphorae(lb["id"])}, timeout=60)
    wait_for(lambda: len([a for a in local.amphorae(lb["id"]) if a.status == "ALLOCATED"]) == 2, timeout=60)
    # The survivor is the MASTER now; the replacement joined as its BACKUP.
    assert {a.role: a.id for a in local.amphorae(lb["id"])}["MASTER"] == amps["BACKUP"].id
    assert local.curl(f"http://{vip}/") == "a1"
    local.api.delete(f"/v2/lbaas/loadbalancers/{lb['id']}?cascade=true")
    wait_for(lambda: local.api.get(f"/v2/lbaas/loadbalancers/{lb['id']}")[0] == 404, timeout=30)
    local.lab.remove_member("a1")


def _namespace_pids(namespace: str) -> list[int]:
    output = os.popen(f"ip netns pids {namespace}").read()  # noqa: S605 - fixed command, our own namespace
    return [int(p) for p in output.split()]



def test_forged_and_replayed_heartbeats_change_nothing(local: LocalCohort) -> None:
    import socket
    from pathlib import Path

    from cohort.controller.wiring import agent_key_file, heartbeat_key, key_file
    from cohort.health.heartbeat import sign
    from cohort.health.keys import agent_key

    address = local.lab.add_member("h1")
    lb = local.create_lb([address], name="hb")
    lb = local.api.wait_active(f"/v2/lbaas/loadbalancers/{lb['id']}", "loadbalancer", timeout=60)
    pool_id = local.api.get(f"/v2/lbaas/listeners/{lb['listeners'][0]['id']}")[1]["listener"]["default_pool_id"]
    wait_for(lambda: local.api.get(f"/v2/lbaas/loadbalancers/{lb['id']}")[1]["loadbalancer"]
             ["operating_status"] == "ONLINE", timeout=20)
    amphora = local.amphorae(lb["id"])[0]
    member_id = local.api.get(f"/v2/lbaas/pools/{pool_id}/members")[1]["members"][0]["id"]
    wait_for(lambda: local.api.get(f"/v2/lbaas/pools/{pool_id}/members/{member_id}")[1]["member"]
             ["operating_status"] == "ONLINE", timeout=20)
    settings = local.cohort.settings
    # The agent was handed a private key of its own, never the master key.
    own_file = agent_key_file(settings, "amphora", amphora.id)
    own_key = own_file.read_bytes().strip()
    assert own_key != heartbeat_key(settings) and own_file.stat().st_mode & 0o777 == 0o600
    pid = local.cohort.drivers.compute.agent_pid(amphora.compute_id)
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert str(own_file).encode() in cmdline and str(key_file(settings)).encode() not in cmdline
    another_agents_key = agent_key(heartbeat_key(settings), "amphora", "another-tenants-amphora")
    receiver = local.cohort.receiver
    host, _, port = local.cohort.drivers.heartbeat_target.rpartition(":")
    lie = {"id": amphora.id, "ver": 1, "listeners": {}, "pools": {pool_id: {"status": "DOWN", "members": {
        member_id: "DOWN"}}}}
    rejected, accepted = receiver.rejected, receiver.accepted
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for datagram in (
            sign({**lie, "seq": time.time_ns(), "ts": time.time()}, b"not-the-key"),
            sign({**lie, "seq": time.time_ns(), "ts": time.time()}, another_agents_key),
            sign({**lie, "seq": time.time_ns(), "ts": time.time()}, heartbeat_key(settings)),
            # The agent's own key, but older than what it already sent (a replay) or off the clock.
            sign({**lie, "seq": time.time_ns() - 10 * 10**9, "ts": time.time() - 10}, own_key),
            sign({**lie, "seq": 2**62, "ts": time.time()}, own_key),
        ):
            sock.sendto(datagram, (host, int(port)))
    wait_for(lambda: receiver.rejected >= rejected + 5, timeout=5)
    # The genuine agent is not locked out by the huge sequence number: it stays heard, and alive.
    wait_for(lambda: receiver.accepted >= accepted + 3, timeout=10)
    time.sleep(settings.heartbeat_stale_after + 1)
    assert [a.id for a in local.amphorae(lb["id"]) if a.status == "ALLOCATED"] == [amphora.id]
    members = local.api.get(f"/v2/lbaas/pools/{pool_id}/members")[1]["members"]
    assert members[0]["operating_status"] == "ONLINE"
    local.api.delete(f"/v2/lbaas/loadbalancers/{lb['id']}?cascade=true")
    wait_for(lambda: local.api.get(f"/v2/lbaas/loadbalancers/{lb['id']}")[0] == 404, timeout=30)
    local.lab.remove_member("h1")
