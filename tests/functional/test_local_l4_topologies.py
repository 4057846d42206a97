"""UDP on an ACTIVE_STANDBY load balancer: the MASTER's kernel serves the VIP, the BACKUP takes over.

Both amphorae load the same nftables program; only the one keepalived gives the VIP receives
traffic. The MASTER is killed as a dead VM dies (every process, and its links down, so its
kernel forwards nothing any more): the BACKUP's keepalived takes the VIP, and UDP goes on
through the BACKUP's kernel, for an open flow (its next datagram is a new flow there: conntrack
is not replicated) and for new ones. The controller then rebuilds the dead amphora.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator

import pytest

from tests.functional.test_local_l4 import PORT, Echoes, Env, send
from tests.support import Api, local_cohort, wait_for

pytestmark = pytest.mark.root

# One flow (one source port), a datagram every 50 ms until terminated; prints "<wall time> <answer or ->".
HOLD = r"""
import signal, socket, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(0.1)
while True:
    s.sendto(b"ping", (sys.argv[1], int(sys.argv[2])))
    try:
        answer = s.recv(2048).decode()
    except OSError:
        answer = "-"
    print(f"{time.time():.3f} {answer}", flush=True)
    time.sleep(0.05)
"""


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    with local_cohort(tmp_path_factory.mktemp("cohort"), heartbeat_stale_after=3.0) as (cohort, base, lab):
        echoes = Echoes(lab)
        try:
            yield Env(Api(base), lab, echoes, cohort)
        finally:
            echoes.close()


def new_flows(ns: str, lb_id: str) -> int:
    """New UDP flows the amphora in ``ns`` dispatched (its listeners' nftables counters)."""
    table = f"cohort_l4_{lb_id.replace('-', '_')}"
    listing = subprocess.run(["ip", "netns", "exec", ns, "nft", "-j", "list", "counters", "table", "inet", table],
                             capture_output=True, text=True, check=True).stdout
    return sum(int(c["counter"]["packets"]) for c in json.loads(listing)["nftables"]
               if "counter" in c and c["counter"]["name"].endswith("_new") and c["counter"]["name"][1:-4].isdigit())


def kill_like_a_dead_vm(ns: str) -> None:
    for pid in map(int, subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()):
        os.kill(pid, signal.SIGKILL)
    links = subprocess.run(["ip", "-n", ns, "-o", "link", "show"], capture_output=True, text=True).stdout
    for line in links.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if name != "lo":
            subprocess.run(["ip", "-n", ns, "link", "set", name, "down"], check=True)


def test_udp_on_active_standby_fails_over_to_the_backup(env: Env) -> None:
    api, lab, echoes, _ = env
    addresses = [echoes.start(name) for name in ("v1", "v2")]
    flavor = api.flavor("standby-udp", {"loadbalancer_topology": "ACTIVE_STANDBY"})
    pool = {"protocol": "UDP", "lb_algorithm": "ROUND_ROBIN",
            "healthmonitor": {"type": "UDP-CONNECT", "delay": 3, "timeout": 1, "max_retries": 1},
            "members": [{"address": a, "protocol_port": PORT, "subnet_id": "private-subnet"} for a in addresses]}
    status, created = api.post("/v2/lbaas/loadbalancers", {"loadbalancer": {
        "name": "udp-ha", "vip_subnet_id": "public-subnet", "flavor_id": flavor,
        "listeners": [{"protocol": "UDP", "protocol_port": PORT, "default_pool": pool}]}})
    assert status == 201, created
    lb = api.wait_active(f"/v2/lbaas/loadbalancers/{created['loadbalancer']['id']}", "loadbalancer", timeout=90)
    assert lb["provisioning_status"] == "ACTIVE", lb
    vip = lb["vip_address"]
    roles = env.amphorae(lb["id"])
    assert set(roles) == {"MASTER", "BACKUP"}, roles
    wait_for(lambda: "v1" in send(lab, vip, 4) or None, timeout=30)
    # The MASTER serves (its kernel dispatches every new flow), both members answer, the BACKUP idles.
    before = {role: new_flows(ns, lb["id"]) for role, ns in roles.items()}
    answers = Counter(send(lab, vip, 10))
    assert set(answers) == {"v1", "v2"}, answers
    assert new_flows(roles["MASTER"], lb["id"]) - before["MASTER"] >= 10
    assert new_flows(roles["BACKUP"], lb["id"]) == before["BACKUP"]
    backup_before = new_flows(roles["BACKUP"], lb["id"])
    holder = subprocess.Popen(["ip", "netns", "exec", lab.client_ns, sys.executable, "-c", HOLD, vip, str(PORT)],
                              stdout=subprocess.PIPE, text=True)
    try:
        early = answered_once(holder)
        killed = time.time()
        kill_like_a_dead_vm(roles["MASTER"])
        # The BACKUP's kernel takes the flow (a new flow there) and new ones once keepalived gives it the VIP.
        wait_for(lambda: new_flows(roles["BACKUP"], lb["id"]) > backup_before or None, timeout=20, interval=0.1)
        taken_over = time.time() - killed
        assert set(send(lab, vip, 4)) <= {"v1", "v2"}
        # The controller rebuilds the dead amphora; the survivor is the MASTER now and keeps the VIP (the
        # replacement joins as BACKUP, nopreempt): the open flow sees one switchover, not two.
        wait_for(lambda: roles["MASTER"] not in env.amphorae(lb["id"]).values()
                 and len(env.amphorae(lb["id"])) == 2 or None, timeout=120, interval=1.0)
        api.wait_active(f"/v2/lbaas/loadbalancers/{lb['id']}", "loadbalancer", timeout=60)
        now = env.amphorae(lb["id"])
        assert now["MASTER"] == roles["BACKUP"], now
        wait_for(lambda: set(send(lab, vip, 6)) == {"v1", "v2"} or None, timeout=30, interval=0.5)
        assert new_flows(now["BACKUP"], lb["id"]) == 0, "the replacement took the VIP from the survivor"
        time.sleep(1.0)
        holder.terminate()
        lines = early + [line.split() for line in holder.communicate(timeout=10)[0].splitlines()]
    finally:
        if holder.poll() is None:
            holder.kill()
    outages = _outages([(float(t), answer != "-") for t, answer in lines if float(t) > killed - 0.5])
    print(f"UDP on ACTIVE_STANDBY: BACKUP dispatching {taken_over:.2f}s after the MASTER died; "
          f"the open flow's outages (s): {[round(o, 2) for o in outages]}")
    assert lines[-1][1] in ("v1", "v2") and len(outages) == 1 and outages[0] < 10, (outages, lines[-20:])
    assert api.delete(f"/v2/lbaas/loadbalancers/{lb['id']}?cascade=true")[0] == 204
    wait_for(lambda: api.get(f"/v2/lbaas/loadbalancers/{lb['id']}")[0] == 404 or None, timeout=30)
    echoes.close()


def answered_once(prober: subprocess.Popen[str], timeout: float = 20.0) -> list[list[str]]:
    """The prober's lines up to its first answer: the outage is measured from an answer before the
    kill, so the kill waits for one (a prober slow to start on a busy machine had none)."""
    assert prober.stdout is not None
    lines: list[list[str]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = prober.stdout.readline().split()
        if not line:
            break
        lines.append(line)
        if line[1] != "-":
            return lines
    raise AssertionError(f"the prober got no answer before the fault: {lines[-5:]}")


def _outages(samples: list[tuple[float, bool]]) -> list[float]:
    """The lengths of the runs of unanswered datagrams, from the last answer before to the first after."""
    gaps: list[float] = []
    last_ok: float | None = None
    failing = False
    for t, ok in samples:
        if ok:
            if failing and last_ok is not None:
                gaps.append(t - last_ok)
            last_ok, failing = t, False
        else:
            failing = True
    return gaps
