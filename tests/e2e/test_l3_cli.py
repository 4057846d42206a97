"""An L3 ACTIVE_ACTIVE load balancer with the unmodified `openstack` CLI, on real amphorae and router.

The operator defines the BGP session profile through Cohort's admin API (`/v2/octavia/bgp_speakers`
and `bgp_peers`: the `openstack` CLI has no commands for them), then everything else is the CLI:
flavor profile and flavor, load balancer, listener, pool, members. Requests from the lab's
client namespace reach every amphora of the cluster through the router's ECMP route.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from cohort.lab import Lab
from tests.support import Api, local_cohort, wait_for

pytestmark = [pytest.mark.root, pytest.mark.slow]


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory, openstack_bin: str,
          client_env: dict[str, str]) -> Iterator[tuple[Any, Api, Lab, list[str]]]:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    with local_cohort(tmp_path_factory.mktemp("l3cli"), heartbeat_interval=0.5) as (_cohort, base, lab):
        prefix = [openstack_bin, "--os-auth-type", "none", "--os-endpoint", base, "loadbalancer"]
        yield client_env, Api(base), lab, prefix


def test_openstack_cli_builds_an_l3_cluster_that_every_amphora_serves(
        local: tuple[dict[str, str], Api, Lab, list[str]]) -> None:
    env, api, lab, prefix = local

    def cli(*args: str, formatted: bool = True) -> Any:
        command = [*prefix, *args, *(["-f", "json"] if formatted else [])]
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, f"{args}\n{done.stdout}\n{done.stderr}"
        return json.loads(done.stdout) if done.stdout.strip() else None

    status, speaker = api.post("/v2/octavia/bgp_speakers", {"bgp_speaker": {"name": "tor", "local_as": 64700}})
    assert status == 201, speaker
    status, peer = api.post("/v2/octavia/bgp_peers", {"bgp_peer": {
        "bgp_speaker_id": speaker["bgp_speaker"]["id"], "peer_ip": "203.0.113.1", "remote_as": 64512,
        "bfd_enabled": True, "bfd_min_rx": 100, "bfd_min_tx": 100, "bfd_multiplier": 3}})
    assert status == 201, peer
    flavor_data = {"loadbalancer_topology": "ACTIVE_ACTIVE", "amp_cluster_size": 3, "distributor_type": "L3_BGP",
                   "bgp_speaker_id": speaker["bgp_speaker"]["id"]}
    cli("flavorprofile", "create", "--name", "l3", "--provider", "amphora", "--flavor-data", json.dumps(flavor_data))
    cli("flavor", "create", "--name", "l3", "--flavorprofile", "l3", "--enable")
    lb = cli("create", "--name", "l3web", "--vip-subnet-id", "public-subnet", "--flavor", "l3", "--wait")
    assert lb["provisioning_status"] == "ACTIVE", lb
    cli("listener", "create", "--name", "http", "--protocol", "HTTP", "--protocol-port", "80", "--wait", "l3web")
    cli("pool", "create", "--name", "pool", "--listener", "http", "--protocol", "HTTP", "--lb-algorithm",
        "ROUND_ROBIN", "--wait")
    members = {name: lab.add_member(name) for name in ("e3a", "e3b")}
    for name, address in members.items():
        cli("member", "create", "--name", name, "--address", address, "--protocol-port", "80", "--subnet-id",
            "private-subnet", "--wait", "pool")
    vip = lb["vip_address"]
    amphorae = cli("amphora", "list", "--loadbalancer", lb["id"])
    assert len(amphorae) == 3 and {a["role"] for a in amphorae} == {"IN_CLUSTER"}, amphorae
    wait_for(lambda: len(lab.router.routes().get(vip, [])) == 3, timeout=30, interval=0.2)

    def total(amphora_id: str) -> int:
        rows = cli("amphora", "stats", "show", amphora_id)
        return int(rows["total_connections"]) if isinstance(rows, dict) else \
            sum(int(r["total_connections"]) for r in rows)

    answers = {lab.exec_client(["curl", "-s", "--max-time", "2", f"http://{vip}/"]).stdout.strip()
               for _ in range(40)}
    assert answers == set(members), answers
    wait_for(lambda: all(total(a["id"]) > 0 for a in amphorae), timeout=20, interval=1)
    wait_for(lambda: cli("show", "l3web")["operating_status"] == "ONLINE", timeout=30, interval=1)
    cli("delete", "--cascade", "--wait", "l3web", formatted=False)
    wait_for(lambda: vip not in lab.router.routes(), timeout=20)
    for name in members:
        lab.remove_member(name)
