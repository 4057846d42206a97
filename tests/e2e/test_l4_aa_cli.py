"""UDP on an ACTIVE_ACTIVE load balancer with the unmodified `openstack` CLI, on real amphorae.

Everything is the CLI, as a tenant and an operator run it: flavor profile and flavor for an L2
cluster of three, load balancer, UDP listener, pool, UDP-CONNECT health monitor and members (UDP
echo servers in the lab). Datagrams from the lab's client namespace reach both members, and every
amphora's statistics (`openstack loadbalancer amphora stats show`) count the flows it carried.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from cohort.lab import Lab
from tests.functional.test_local_l4 import PORT, Echoes, send
from tests.support import local_cohort, wait_for

pytestmark = [pytest.mark.root, pytest.mark.slow]


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory, openstack_bin: str,
          client_env: dict[str, str]) -> Iterator[tuple[dict[str, str], Lab, list[str]]]:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    with local_cohort(tmp_path_factory.mktemp("l4aacli"), heartbeat_interval=0.5) as (_cohort, base, lab):
        yield client_env, lab, [openstack_bin, "--os-auth-type", "none", "--os-endpoint", base, "loadbalancer"]


def test_openstack_cli_builds_a_udp_cluster_that_every_amphora_serves(
        local: tuple[dict[str, str], Lab, list[str]]) -> None:
    env, lab, prefix = local

    def cli(*args: str, formatted: bool = True) -> Any:
        command = [*prefix, *args, *(["-f", "json"] if formatted else [])]
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, f"{args}\n{done.stdout}\n{done.stderr}"
        return json.loads(done.stdout) if done.stdout.strip() else None

    echoes = Echoes(lab)
    try:
        flavor_data = {"loadbalancer_topology": "ACTIVE_ACTIVE", "amp_cluster_size": 3,
                       "distributor_affinity": "SOURCE_IP_PORT"}
        cli("flavorprofile", "create", "--name", "aaudp", "--provider", "amphora", "--flavor-data",
            json.dumps(flavor_data))
        cli("flavor", "create", "--name", "aaudp", "--flavorprofile", "aaudp", "--enable")
        lb = cli("create", "--name", "dns", "--vip-subnet-id", "public-subnet", "--flavor", "aaudp", "--wait")
        assert lb["provisioning_status"] == "ACTIVE", lb
        cli("listener", "create", "--name", "dns", "--protocol", "UDP", "--protocol-port", str(PORT), "--wait", "dns")
        cli("pool", "create", "--name", "resolvers", "--listener", "dns", "--protocol", "UDP", "--lb-algorithm",
            "ROUND_ROBIN", "--wait")
        cli("healthmonitor", "create", "--type", "UDP-CONNECT", "--delay", "3", "--timeout", "1", "--max-retries",
            "1", "--wait", "resolvers")
        members = {name: echoes.start(name) for name in ("r1", "r2")}
        for name, address in members.items():
            cli("member", "create", "--name", name, "--address", address, "--protocol-port", str(PORT),
                "--subnet-id", "private-subnet", "--wait", "resolvers")
        vip = lb["vip_address"]
        amphorae = cli("amphora", "list", "--loadbalancer", lb["id"])
        assert len(amphorae) == 3 and {a["role"] for a in amphorae} == {"IN_CLUSTER"}, amphorae

        def total(amphora_id: str) -> int:
            rows = cli("amphora", "stats", "show", amphora_id)
            return int(rows["total_connections"]) if isinstance(rows, dict) else \
                sum(int(r["total_connections"]) for r in rows)

        wait_for(lambda: set(send(lab, vip, 4)) <= set(members) or None, timeout=60, interval=0.5)
        answers = send(lab, vip, 60)
        assert set(answers) == set(members), answers
        wait_for(lambda: all(total(a["id"]) > 0 for a in amphorae), timeout=30, interval=1)
        print(f"UDP flows per amphora: {[total(a['id']) for a in amphorae]}")
        wait_for(lambda: cli("show", "dns")["operating_status"] == "ONLINE", timeout=30, interval=1)
        cli("delete", "--cascade", "--wait", "dns", formatted=False)
    finally:
        echoes.close()
        for name in ("r1", "r2"):
            lab.remove_member(name)
