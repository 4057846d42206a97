"""A load balancer with HTTP and UDP listeners side by side: a change to one protocol never
disturbs the other (issue 13). The UDP echo members also serve HTTP on port 80 (lab members)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter

import pytest

from tests.functional.test_local_l4 import CLIENT, PORT, Env, _delete, _lb, env
from tests.support import wait_for

pytestmark = pytest.mark.root
__all__ = ["env"]  # the fixture, shared with the UDP tests


# One keep-alive HTTP connection, a request every ``pause`` seconds for ``seconds``: how many
# requests were answered, failed, and how many times the connection had to be opened.
KEEPALIVE = r"""
import http.client, json, sys, time
vip, seconds, pause = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
conn, opened, ok, failed, bodies = None, 0, 0, 0, set()
deadline = time.monotonic() + seconds
while time.monotonic() < deadline:
    if conn is None or conn.sock is None:
        conn = http.client.HTTPConnection(vip, 80, timeout=2)
        conn.connect()
        opened += 1
    try:
        conn.request("GET", "/")
        response = conn.getresponse()
        bodies.add(response.read().decode().strip())
        ok += response.status == 200
        if response.getheader("Connection", "").lower() == "close":
            conn.close()
    except OSError:
        failed += 1
        conn.close()
        conn = None
    time.sleep(pause)
print(json.dumps({"ok": ok, "failed": failed, "opened": opened, "bodies": sorted(bodies)}))
"""


def test_a_mixed_load_balancer_changes_one_protocol_without_disturbing_the_other(env: Env) -> None:
    """HTTP and UDP listeners on one load balancer: a change to the UDP pool leaves an open HTTP
    keep-alive connection alone (HAProxy is not even reloaded), and a change to the HTTP listener
    (a HAProxy reload) leaves an open UDP flow on its member."""
    api, lab, echoes, _ = env
    addresses = [echoes.start(name) for name in ("x1", "x2")]  # UDP echo on PORT, HTTP on 80
    lb, vip = _lb(api, addresses, {})
    status, body = api.post("/v2/lbaas/listeners", {"listener": {
        "loadbalancer_id": lb["id"], "protocol": "HTTP", "protocol_port": 80, "default_pool": {
            "protocol": "HTTP", "lb_algorithm": "ROUND_ROBIN",
            "members": [{"address": a, "protocol_port": 80, "subnet_id": "private-subnet"}
                        for a in addresses]}}})
    assert status == 201, body
    http_listener = body["listener"]["id"]
    api.wait_active(f"/v2/lbaas/loadbalancers/{lb['id']}", "loadbalancer", timeout=60)
    wait_for(lambda: lab.exec_client(["curl", "-s", "--max-time", "2", f"http://{vip}/"]).stdout.strip()
             in ("x1", "x2"), timeout=20)
    udp_pool = api.get(f"/v2/lbaas/listeners/{lb['listeners'][0]['id']}")[1]["listener"]["default_pool_id"]

    # A UDP change under an open HTTP keep-alive connection.
    client = subprocess.Popen(["ip", "netns", "exec", lab.client_ns, sys.executable, "-c", KEEPALIVE, vip,
                               "8", "0.05"], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(2)
        members = api.get(f"/v2/lbaas/pools/{udp_pool}/members")[1]["members"]
        assert api.put(f"/v2/lbaas/pools/{udp_pool}/members/{members[0]['id']}",
                       {"member": {"weight": 5}})[0] == 200
        api.wait_active(f"/v2/lbaas/loadbalancers/{lb['id']}", "loadbalancer", timeout=60)
        out, _ = client.communicate(timeout=30)
    finally:
        client.kill()
    http_result = json.loads(out.strip().splitlines()[-1])
    assert http_result["failed"] == 0 and http_result["opened"] == 1 and http_result["ok"] > 50, http_result

    # An HTTP change (HAProxy reloads) under an open UDP flow: same member, every datagram answered.
    udp = subprocess.Popen(["ip", "netns", "exec", lab.client_ns, sys.executable, "-c", CLIENT, vip, str(PORT),
                            "120", "1", "0.05"], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(1.5)
        assert api.put(f"/v2/lbaas/listeners/{http_listener}",
                       {"listener": {"timeout_client_data": 40000}})[0] == 200
        api.wait_active(f"/v2/lbaas/loadbalancers/{lb['id']}", "loadbalancer", timeout=60)
        out, _ = udp.communicate(timeout=40)
    finally:
        udp.kill()
    answers = Counter(json.loads(out.strip().splitlines()[-1]))
    assert len(answers) == 1 and next(iter(answers)) in ("x1", "x2"), answers
    _delete(api, lb)
    echoes.close()
