"""ACTIVE_ACTIVE through the public API with local drivers: a distributor and N real amphorae.

The tenant creates a flavor and a load balancer; the client's traffic is spread over every
amphora of the cluster (their stats all grow), and the cluster scales without breaking the
long-lived connections of the amphorae that stay.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cohort.agents.amphora import stats
from cohort.db import models as m
from tests.support import Api, local_cohort, wait_for

pytestmark = pytest.mark.root

KEEPALIVE_CLIENT = r"""
import http.client, json, sys, time
vip, count, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
connections = [http.client.HTTPConnection(vip, 80, timeout=3) for _ in range(count)]
broken = 0
deadline = time.monotonic() + seconds
while time.monotonic() < deadline:
    for index, conn in enumerate(connections):
        if conn is None:
            continue
        try:
            conn.request("GET", "/")
            response = conn.getresponse()
            response.read()
        except Exception:
            broken += 1
            connections[index] = None
    time.sleep(0.05)
print(json.dumps({"broken": broken, "alive": sum(c is not None for c in connections)}))
"""


RETRYING_CLIENT = r"""
import http.client, json, sys, time
vip, count, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
connections = [http.client.HTTPConnection(vip, 80, timeout=3) for _ in range(count)]
ok = failed = reconnects = 0
deadline = time.monotonic() + seconds
while time.monotonic() < deadline:
    for index in range(count):
        for attempt in (1, 2):
            try:
                connections[index].request("GET", "/")
                response = connections[index].getresponse()
                response.read()
                if response.getheader("Connection", "").lower() == "close":
                    connections[index].close()
                ok += 1
                break
            except (http.client.RemoteDisconnected, ConnectionError, http.client.CannotSendRequest) as exc:
                connections[index].close()
                connections[index] = http.client.HTTPConnection(vip, 80, timeout=3)
                reconnects += 1
                if attempt == 2:
                    failed += 1
            except Exception:
                failed += 1
                connections[index] = http.client.HTTPConnection(vip, 80, timeout=3)
                break
    time.sleep(0.05)
print(json.dumps({"ok": ok, "failed": failed, "reconnects": reconnects}))
"""


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Api, Any]]:
    with local_cohort(tmp_path_factory.mktemp("cohort-aa"), drain_timeout=5.0) as (cohort, base, lab):
        yield cohort, Api(base), lab


def openstack(base: str, *args: str) -> Any:
    """The unmodified openstack CLI, as a tenant or operator runs it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    result = subprocess.run([str(Path(sys.executable).parent / "openstack"), "--os-auth-type", "none",
                             "--os-endpoint", base, "loadbalancer", *args, "-f", "json"],
                            capture_output=True, text=True, env=env, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout) if result.stdout.strip() else None


def amphora_stats(base: str, amphora_id: str) -> int:
    rows = openstack(base, "amphora", "stats", "show", amphora_id)
    return int(rows["total_connections"]) if isinstance(rows, dict) else \
        sum(int(row["total_connections"]) for row in rows)


def namespace_pids(namespace: str) -> list[int]:
    result = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True, check=False)
    return [int(pid) for pid in result.stdout.split()]


def health_frontend_sessions(cohort: Any, lab: Any, lb_id: str, amphora_id: str) -> int:
    """Sessions HAProxy has accepted on the port the distributor probes (cohort-cluster-health)."""
    suffix = lab.instance_ns(amphora_id, "amphora").rsplit("-", 1)[1]
    sock = Path(cohort.settings.state_dir) / "i" / suffix / "jail" / "haproxy" / f"{lb_id}.sock"
    rows = stats.query(str(sock), "show stat").splitlines()
    fields = rows[0].lstrip("# ").split(",")
    for row in rows[1:]:
        values = dict(zip(fields, row.split(","), strict=False))
        if values.get("pxname") == "cohort-cluster-health" and values.get("svname") == "FRONTEND":
            return int(values["stot"])
    raise AssertionError(f"no cohort-cluster-health frontend in {sock}")


def test_cluster_of_three_serves_one_vip(env: tuple[Any, Api, Any]) -> None:
    cohort, api, lab = env
    address = lab.add_member("aa1", workers=2)
    base = api.base
    openstack(base, "flavorprofile", "create", "--name", "aa3", "--provider", "amphora", "--flavor-data",
              json.dumps({"loadbalancer_topology": "ACTIVE_ACTIVE", "amp_cluster_size": 3,
                          "distributor_affinity": "SOURCE_IP_PORT"}))
    openstack(base, "flavor", "create", "--name", "aa3", "--flavorprofile", "aa3", "--enable")
    started = time.monotonic()
    lb_id = openstack(base, "create", "--name", "big", "--vip-subnet-id", "public-subnet", "--flavor", "aa3")["id"]
    lb = api.wait_active(f"/v2/lbaas/loadbalancers/{lb_id}", "loadbalancer", timeout=120)
    assert lb["provisioning_status"] == "ACTIVE", lb
    status, body = api.post("/v2/lbaas/listeners", {"listener": {
        "loadbalancer_id": lb_id, "protocol": "HTTP", "protocol_port": 80, "default_pool": {
            "protocol": "HTTP", "lb_algorithm": "ROUND_ROBIN",
            "members": [{"address": address, "protocol_port": 80, "subnet_id": "private-subnet"}]}}})
    assert status == 201, body
    lb = api.wait_active(f"/v2/lbaas/loadbalancers/{lb_id}", "loadbalancer", timeout=60)
    assert lb["provisioning_status"] == "ACTIVE", lb
    vip = lb["vip_address"]
    print(f"ACTIVE_ACTIVE x3 ACTIVE after {time.monotonic() - started:.1f}s")
    amphorae = api.get(f"/v2/octavia/amphorae?loadbalancer_id={lb_id}")[1]["amphorae"]
    assert sorted(a["role"] for a in amphorae) == ["IN_CLUSTER"] * 3
    wait_for(lambda: lab.exec_client(["curl", "-s", "--max-time", "2", f"http://{vip}/"]).stdout.strip() == "aa1",
             timeout=30)
    before = {a["id"]: amphora_stats(base, a["id"]) for a in amphorae}
    for _ in range(60):
        lab.exec_client(["curl", "-s", "--max-time", "2", "-o", "/dev/null", f"http://{vip}/"])
    after = wait_for(lambda: (now := {a["id"]: amphora_stats(base, a["id"]) for a in amphorae})
                     and all(now[i] > before[i] for i in now) and now, timeout=15)
    print(f"connections per amphora: {[after[i] - before[i] for i in after]}")
    # The distributor probes every amphora ten times a second; HAProxy never accepts a probe.
    probed = {a["id"]: health_frontend_sessions(cohort, lab, lb_id, a["id"]) for a in amphorae}
    assert probed == {a["id"]: 0 for a in amphorae}, probed
    cluster = api.get(f"/v2/octavia/clusters?loadbalancer_id={lb_id}")[1]["clusters"][0]
    assert cluster["actual_size"] == 3 and cluster["distributor_id"]
    wait_for(lambda: api.get(f"/v2/lbaas/loadbalancers/{lb_id}")[1]["loadbalancer"]["operating_status"]
             == "ONLINE", timeout=15)

    # Scale out to 4 under long-lived keep-alive connections: none of them breaks.
    runner = subprocess.Popen(["ip", "netns", "exec", lab.client_ns, sys.executable, "-c", KEEPALIVE_CLIENT, vip,
                               "30", "14"], stdout=subprocess.PIPE, text=True)
    time.sleep(2)
    assert api.put(f"/v2/octavia/clusters/{cluster['id']}", {"cluster": {"desired_size": 4}})[0] == 200
    api.wait_active(f"/v2/lbaas/loadbalancers/{lb_id}", "loadbalancer", timeout=90)
    out, _ = runner.communicate(timeout=60)
    result = json.loads(out.strip().splitlines()[-1])
    assert result == {"broken": 0, "alive": 30}, result
    amphorae = api.get(f"/v2/octavia/amphorae?loadbalancer_id={lb_id}")[1]["amphorae"]
    assert len(amphorae) == 4
    wait_for(lambda: api.get(f"/v2/lbaas/loadbalancers/{lb_id}")[1]["loadbalancer"]["operating_status"]
             == "ONLINE", timeout=15)

    # Scale in 4 -> 3 under keep-alive load: the leaving amphora drains gracefully. Clients behave as
    # HTTP clients do: a request on a keep-alive connection the server closed is retried once on a
    # new connection; no request may fail even so.
    runner = subprocess.Popen(["ip", "netns", "exec", lab.client_ns, sys.executable, "-c", RETRYING_CLIENT, vip,
                               "30", "16"], stdout=subprocess.PIPE, text=True)
    time.sleep(2)
    assert api.put(f"/v2/octavia/clusters/{cluster['id']}", {"cluster": {"desired_size": 3}})[0] == 200
    api.wait_active(f"/v2/lbaas/loadbalancers/{lb_id}", "loadbalancer", timeout=90)
    out, _ = runner.communicate(timeout=60)
    result = json.loads(out.strip().splitlines()[-1])
    print(f"scale-in under load: {result}")
    assert result["failed"] == 0 and result["ok"] > 100, result
    assert api.put(f"/v2/octavia/clusters/{cluster['id']}", {"cluster": {"desired_size": 4}})[0] == 200
    api.wait_active(f"/v2/lbaas/loadbalancers/{lb_id}", "loadbalancer", timeout=90)
    amphorae = api.get(f"/v2/octavia/amphorae?loadbalancer_id={lb_id}")[1]["amphorae"]

    # N+1: an amphora dies; the others carry its traffic at once and a replacement is built.
    victim = amphorae[0]
    for pid in namespace_pids(lab.instance_ns(victim["id"], "amphora")):
        os.kill(pid, signal.SIGKILL)
    # The distributor's probes take it out of the table within 500 ms (measured precisely in
    # tests/functional/test_distributor.py); after that, every new connection is served.
    time.sleep(1.0)
    answers = [lab.exec_client(["curl", "-s", "--max-time", "2", f"http://{vip}/"]).stdout.strip()
               for _ in range(20)]
    assert answers == ["aa1"] * 20, answers
    wait_for(lambda: victim["id"] not in {a["id"] for a in api.get(
        f"/v2/octavia/amphorae?loadbalancer_id={lb_id}")[1]["amphorae"]}, timeout=60)
    api.wait_active(f"/v2/lbaas/loadbalancers/{lb_id}", "loadbalancer", timeout=90)
    cluster = api.get(f"/v2/octavia/clusters/{cluster['id']}")[1]["cluster"]
    assert cluster["actual_size"] == 4, cluster

    assert api.delete(f"/v2/lbaas/loadbalancers/{lb_id}?cascade=true")[0] == 204
    wait_for(lambda: api.get(f"/v2/lbaas/loadbalancers/{lb_id}")[0] == 404, timeout=60)
    lab.remove_member("aa1")


def test_app_cookie_persistence_holds_across_the_cluster(env: tuple[Any, Api, Any]) -> None:
    """Stick tables are shared through HAProxy peers: a session's requests reach its member on every
    amphora (SOURCE_IP_PORT spreads one client's connections over all three)."""
    _cohort, api, lab = env
    members = {name: lab.add_member(name) for name in ("pc1", "pc2", "pc3")}
    _, profile = api.post("/v2/lbaas/flavorprofiles", {"flavorprofile": {
        "name": "aa3cookie", "provider_name": "amphora", "flavor_data": json.dumps({
            "loadbalancer_topology": "ACTIVE_ACTIVE", "amp_cluster_size": 3,
            "distributor_affinity": "SOURCE_IP_PORT"})}})
    _, flavor = api.post("/v2/lbaas/flavors", {"flavor": {
        "name": "aa3cookie", "flavor_profile_id": profile["flavorprofile"]["id"]}})
    status, body = api.post("/v2/lbaas/loadbalancers", {"loadbalancer": {
        "name": "cookies", "vip_subnet_id": "public-subnet", "flavor_id": flavor["flavor"]["id"], "listeners": [{
            "protocol": "HTTP", "protocol_port": 80, "default_pool": {
                "protocol": "HTTP", "lb_algorithm": "ROUND_ROBIN",
                "session_persistence": {"type": "APP_COOKIE", "cookie_name": "SESSION"},
                "members": [{"address": a, "protocol_port": 80, "subnet_id": "private-subnet"}
                            for a in members.values()]}}]}})
    assert status == 201, body
    lb_id = body["loadbalancer"]["id"]
    vip = api.wait_active(f"/v2/lbaas/loadbalancers/{lb_id}", "loadbalancer", timeout=120)["vip_address"]

    def get(path: str, cookie: str | None = None) -> str:
        command = ["curl", "-s", "--max-time", "2", f"http://{vip}{path}"]
        if cookie:
            command[1:1] = ["-H", f"Cookie: SESSION={cookie}"]
        return str(lab.exec_client(command).stdout.strip())

    wait_for(lambda: get("/") in members, timeout=30)
    sessions = {}
    for token in ("s1", "s2", "s3", "s4"):
        sessions[token] = get(f"/set-cookie/SESSION={token}")  # the member that started the session
    # Established peer sessions replicate each new entry at once, but a peer that was not listening
    # yet when a neighbour started (the amphorae of a new cluster start one by one) is retried by
    # HAProxy only after 5 s; the entries learnt meanwhile are taught on connection.
    for token, owner in sessions.items():
        wait_for(lambda t=token, o=owner: {get("/", t) for _ in range(6)} == {o}, timeout=15)
    for token, owner in sessions.items():
        answers = {get("/", token) for _ in range(12)}
        assert answers == {owner}, (token, owner, answers)
    assert api.delete(f"/v2/lbaas/loadbalancers/{lb_id}?cascade=true")[0] == 204
    wait_for(lambda: api.get(f"/v2/lbaas/loadbalancers/{lb_id}")[0] == 404, timeout=60)
    for name in members:
        lab.remove_member(name)


def test_an_amphora_whose_front_end_link_is_down_is_replaced(env: tuple[Any, Api, Any]) -> None:
    """Its agent still heartbeats over management; only the distributors' probes can tell. Once every
    live distributor has found it down for ``frontend_unreachable_after`` (3 s) it is failed over as a
    silent one is, and the replacement serves: the cluster is back to two."""
    cohort, api, lab = env
    address = lab.add_member("fe1")
    flavor = api.flavor("aa2fe", {"loadbalancer_topology": "ACTIVE_ACTIVE", "amp_cluster_size": 2,
                                  "distributor_affinity": "SOURCE_IP_PORT"})
    status, body = api.post("/v2/lbaas/loadbalancers", {"loadbalancer": {
        "name": "fe-down", "vip_subnet_id": "public-subnet", "flavor_id": flavor, "listeners": [{
            "protocol": "HTTP", "protocol_port": 80, "default_pool": {
                "protocol": "HTTP", "lb_algorithm": "ROUND_ROBIN",
                "members": [{"address": address, "protocol_port": 80, "subnet_id": "private-subnet"}]}}]}})
    assert status == 201, body
    lb_id = body["loadbalancer"]["id"]
    vip = api.wait_active(f"/v2/lbaas/loadbalancers/{lb_id}", "loadbalancer", timeout=120)["vip_address"]

    def serving() -> list[str]:
        return [a["id"] for a in api.get(f"/v2/octavia/amphorae?loadbalancer_id={lb_id}")[1]["amphorae"]
                if a["status"] == "ALLOCATED"]

    def connections(amphora_id: str) -> int:
        return sum(int(r["total_connections"]) for r in api.get(
            f"/v2/octavia/amphorae/{amphora_id}/stats")[1]["amphora_stats"])

    def every_amphora_serves(ids: list[str]) -> bool:
        before = {a: connections(a) for a in ids}
        for _ in range(30):
            lab.exec_client(["curl", "-s", "--max-time", "2", "-o", "/dev/null", f"http://{vip}/"])
        return bool(wait_for(lambda: all(connections(a) > before[a] for a in ids), timeout=10))

    wait_for(lambda: lab.exec_client(["curl", "-s", "--max-time", "2", f"http://{vip}/"]).stdout.strip() == "fe1",
             timeout=30)
    first = serving()
    assert len(first) == 2 and every_amphora_serves(first)
    victim = first[0]
    went_down = time.monotonic()
    subprocess.run(["ip", "-n", lab.instance_ns(victim, "amphora"), "link", "set", "fe0", "down"], check=True)
    # The distributors' probes take it out of the table at once: every new connection is served.
    time.sleep(1.0)
    answers = [lab.exec_client(["curl", "-s", "--max-time", "2", f"http://{vip}/"]).stdout.strip() for _ in range(20)]
    assert answers == ["fe1"] * 20, answers
    # Its agent still heartbeats, yet it is failed over: the distributors could not reach it.
    wait_for(lambda: victim not in serving(), timeout=30, interval=0.1)
    failed_over = time.monotonic() - went_down
    with cohort.sessions() as session:
        row = session.get(m.Amphora, victim)
        assert row is not None and "front-end unreachable from the distributors" in (row.status_reason or ""), \
            row and row.status_reason
    replaced = wait_for(lambda: (now := serving()) and len(now) == 2 and victim not in now and now,
                        timeout=90, interval=0.2)
    api.wait_active(f"/v2/lbaas/loadbalancers/{lb_id}", "loadbalancer", timeout=90)
    assert every_amphora_serves(replaced)
    whole = time.monotonic() - went_down
    print(f"\nfront-end link down: failed over after {failed_over:.1f}s, two amphorae serving after {whole:.1f}s")
    assert failed_over < cohort.settings.frontend_unreachable_after + 4  # probes, heartbeats, a scan
    assert whole < 60

    # A distributor whose own front-end link is down fails every probe: that replaces no amphora (it
    # still heartbeats over management, so it is not replaced either; the other member serves).
    distributor = next(d for d in api.get("/v2/octavia/distributors")[1]["distributors"]
                       if d["status"] == "ACTIVE" and d["role"] == "MASTER")
    ns = lab.instance_ns(distributor["id"], "distributor")
    cut = ["ip", "-n", ns, "link", "set", "fe0"]

    def routes() -> int:
        out = subprocess.run(["ip", "-n", ns, "-4", "route", "show", "table", "all"], capture_output=True,
                             text=True, check=False).stdout
        return sum(1 for line in out.splitlines() if line.startswith(vip) and " via " in line)

    before_cut = routes()
    subprocess.run([*cut, "down"], check=True)
    try:
        time.sleep(cohort.settings.frontend_unreachable_after + 4)
        assert sorted(serving()) == sorted(replaced)
    finally:
        subprocess.run([*cut, "up"], check=True)
    # Not asserted yet: the kernel drops a device's routes when it goes down, and the distributor agent
    # puts them back only on its next membership change (measured: 2 before, 0 after).
    time.sleep(2)
    print(f"cut-off distributor's per-amphora routes to the VIP: {before_cut} before, {routes()} after its link "
          "came back")
    assert every_amphora_serves(replaced)
    assert api.delete(f"/v2/lbaas/loadbalancers/{lb_id}?cascade=true")[0] == 204
    wait_for(lambda: api.get(f"/v2/lbaas/loadbalancers/{lb_id}")[0] == 404, timeout=60)
    lab.remove_member("fe1")
