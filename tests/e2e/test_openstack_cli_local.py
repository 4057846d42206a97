"""The unmodified ``openstack loadbalancer`` CLI driving real amphorae (local drivers) on a private lab.

Every command is a real subprocess with ``--os-auth-type none --os-endpoint``; subnet names
resolve through the same server. The members are the lab's HTTP servers on the back-end
network and every request comes from the lab's client namespace, so what the CLI shows
(status, statistics, amphorae) is what the data plane did. The lab and every amphora are
torn down, also on failure.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from cohort import netns
from cohort.lab import PUBLIC_CIDR, Lab
from tests.support import local_cohort, wait_for

pytestmark = [pytest.mark.root, pytest.mark.slow]


class Cli:
    def __init__(self, binary: str, base: str, env: dict[str, str]) -> None:
        self.prefix = [binary, "--os-auth-type", "none", "--os-endpoint", base, "loadbalancer"]
        self.env = env

    def run(self, *args: str, timeout: float = 120.0) -> str:
        done = subprocess.run([*self.prefix, *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        assert done.returncode == 0, f"openstack loadbalancer {' '.join(args)}\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "-f", "json"))


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory, openstack_bin: str,
          client_env: dict[str, str]) -> Iterator[tuple[Cli, Lab]]:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    with local_cohort(tmp_path_factory.mktemp("cohort"), heartbeat_stale_after=3.0) as (_cohort, base, lab):
        yield Cli(openstack_bin, base, client_env), lab


def test_cli_builds_a_load_balancer_that_serves_real_traffic(local: tuple[Cli, Lab]) -> None:
    cli, lab = local
    addresses = {name: lab.add_member(name) for name in ("w1", "w2")}

    def get(path: str = "/") -> str:
        done = lab.exec_client(["curl", "-s", "--max-time", "2", f"http://{vip}{path}"], timeout=10)
        return done.stdout.strip()

    lb = cli.json("create", "--name", "web", "--vip-subnet-id", "public-subnet", "--wait")
    lb_id, vip = lb["id"], lb["vip_address"]
    try:
        assert lb["provisioning_status"] == "ACTIVE", lb
        assert vip.startswith(PUBLIC_CIDR.rsplit(".", 1)[0] + "."), vip
        listener = cli.json("listener", "create", "--name", "http", "--protocol", "HTTP", "--protocol-port", "80",
                            "--wait", "web")
        assert listener["provisioning_status"] == "ACTIVE", listener
        pool = cli.json("pool", "create", "--name", "pool", "--listener", "http", "--protocol", "HTTP",
                        "--lb-algorithm", "ROUND_ROBIN", "--wait")
        monitor = cli.json("healthmonitor", "create", "--name", "hm", "--delay", "2", "--timeout", "1",
                           "--max-retries", "2", "--type", "HTTP", "--url-path", "/healthz", "--wait", "pool")
        assert monitor["type"] == "HTTP" and pool["id"] in str(monitor["pools"]), monitor
        for name, address in addresses.items():
            member = cli.json("member", "create", "--name", name, "--address", address, "--protocol-port", "80",
                              "--subnet-id", "private-subnet", "--wait", "pool")
            assert member["provisioning_status"] == "ACTIVE", member

        # Real traffic from the client namespace reaches both members.
        assert wait_for(lambda: get() in addresses, timeout=20)
        answers = Counter(get() for _ in range(12))
        assert set(answers) == set(addresses), answers

        # Health checks bring every member ONLINE in the status tree.
        def online() -> dict[str, str] | None:
            tree = json.loads(cli.run("status", "show", "web"))["loadbalancer"]
            members = tree["listeners"][0]["pools"][0]["members"]
            statuses = {mb["name"]: mb["operating_status"] for mb in members}
            return statuses if tree["operating_status"] == "ONLINE" and set(statuses.values()) == {"ONLINE"} \
                else None

        assert set(wait_for(online, timeout=30, interval=0.5)) == set(addresses)

        # Statistics come from the amphora's heartbeats: at least the requests made above.
        def counted() -> dict[str, Any] | None:
            stats = cli.json("stats", "show", "web")
            return stats if stats["total_connections"] >= 13 and stats["request_errors"] == 0 else None

        stats = wait_for(counted, timeout=20, interval=0.5)
        assert stats["bytes_in"] > 0 and stats["bytes_out"] > 0, stats
        listener_stats = cli.json("listener", "stats", "show", "http")
        assert listener_stats["total_connections"] >= 13, listener_stats

        amphorae = cli.json("amphora", "list", "--loadbalancer", lb_id)
        assert len(amphorae) == 1, amphorae
        amphora = cli.json("amphora", "show", amphorae[0]["id"])
        assert (amphora["role"], amphora["status"]) == ("STANDALONE", "ALLOCATED"), amphora
        assert amphora["loadbalancer_id"] == lb_id and amphora["lb_network_ip"], amphora
        assert amphora["compute_id"], amphora  # a UUID, as Nova's are
        compute_id = lab.instance_ns(amphora["id"], "amphora")
        assert netns.netns_exists(compute_id), amphora
    except BaseException:
        subprocess.run([*cli.prefix, "delete", "--cascade", "--wait", lb_id], env=cli.env, capture_output=True,
                       timeout=120)
        raise
    finally:
        for name in addresses:
            lab.remove_member(name)

    cli.run("delete", "--cascade", "--wait", "web")
    assert cli.json("list") == []
    assert wait_for(lambda: not netns.netns_exists(compute_id), timeout=30)
