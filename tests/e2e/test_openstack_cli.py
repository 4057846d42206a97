"""The unmodified ``openstack loadbalancer`` CLI against Cohort (noop drivers), through Octavia's cookbook.

Every command is a real subprocess with ``--os-auth-type none --os-endpoint``: name look-ups
(subnets, projects) go to the same server. Two streams run side by side to keep the test short:
the tenant cookbook (load balancer, listener, pool, monitor, member, status, stats, cascade
delete) and a second one (list filters, L7 policy and rule, amphorae, failover, then quotas,
providers, flavors, availability zones). Between two
changes of one load balancer the test waits for ACTIVE over plain HTTP, which costs far less
than another CLI start.
"""

from __future__ import annotations

import json
import subprocess
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.support import wait_for

pytestmark = pytest.mark.slow

FLAVOR_DATA = '{"loadbalancer_topology": "ACTIVE_ACTIVE", "amp_cluster_size": 3}'


class Cli:
    def __init__(self, binary: str, base: str, env: dict[str, str]) -> None:
        self.prefix = [binary, "--os-auth-type", "none", "--os-endpoint", base, "loadbalancer"]
        self.base = base
        self.env = env
        self.http = httpx.Client(base_url=base, timeout=10)

    def run(self, *args: str) -> str:
        done = subprocess.run([*self.prefix, *args], env=self.env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"openstack loadbalancer {' '.join(args)}\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "-f", "json"))

    def fails(self, *args: str) -> str:
        done = subprocess.run([*self.prefix, *args], env=self.env, capture_output=True, text=True, timeout=60)
        assert done.returncode != 0, f"expected openstack loadbalancer {' '.join(args)} to fail\n{done.stdout}"
        return done.stdout + done.stderr

    def settle(self, lb_id: str) -> dict[str, Any]:
        """Wait (over HTTP, cheaply) until the load balancer accepts the next change."""
        def active() -> dict[str, Any] | None:
            body = self.http.get(f"/v2/lbaas/loadbalancers/{lb_id}").json()["loadbalancer"]
            return dict(body) if body["provisioning_status"] == "ACTIVE" else None

        return dict(wait_for(active, timeout=15))


@pytest.fixture
def cli(openstack_bin: str, cohort_base: str, client_env: dict[str, str]) -> Cli:
    return Cli(openstack_bin, cohort_base, client_env)


def tenant_cookbook(cli: Cli) -> None:
    # Load balancer: create (--wait polls until ACTIVE), set, unset, show.
    lb = cli.json("create", "--name", "web-lb", "--vip-subnet-id", "public-subnet", "--description", "first",
                  "--tag", "blue", "--tag", "green", "--wait")
    lb_id = lb["id"]
    assert lb["provisioning_status"] == "ACTIVE" and lb["vip_address"].startswith("203.0.113.")
    assert lb["operating_status"] == "OFFLINE" and lb["provider"] == "amphora"
    assert sorted(lb["tags"]) == ["blue", "green"]
    assert lb["vip_subnet_id"] != "public-subnet"  # the CLI resolved the name on the network endpoint
    cli.run("set", "--name", "web", "--description", "second", "--tag", "red", "--disable", lb_id)
    cli.settle(lb_id)
    cli.run("unset", "--description", "--tag", "blue", "web")
    cli.settle(lb_id)
    shown = cli.json("show", "web")
    assert (shown["name"], shown["description"], shown["admin_state_up"]) == ("web", "", False)
    assert sorted(shown["tags"]) == ["green", "red"]

    # Listener.
    listener = cli.json("listener", "create", "--name", "http", "--protocol", "HTTP", "--protocol-port", "80",
                        "--connection-limit", "100", "--description", "front", "--tag", "edge", "web")
    assert listener["provisioning_status"] == "PENDING_CREATE" and listener["connection_limit"] == 100
    cli.settle(lb_id)
    cli.run("listener", "set", "--name", "http80", "--connection-limit", "200", "--timeout-client-data", "1000",
            "--tag", "more", "--insert-headers", "X-Forwarded-For=true", "http")
    cli.settle(lb_id)
    cli.run("listener", "unset", "--connection-limit", "--description", "--tag", "edge", "http80")
    cli.settle(lb_id)
    shown = cli.json("listener", "show", "http80")
    assert shown["connection_limit"] == -1 and shown["description"] == ""
    assert shown["timeout_client_data"] == 1000 and shown["tags"] == ["more"]
    assert shown["insert_headers"] == {"X-Forwarded-For": "true"}
    assert shown["loadbalancers"] == [{"id": lb_id}]
    rows = cli.json("listener", "list", "--loadbalancer", "web", "--enable")
    assert [(row["name"], row["protocol_port"]) for row in rows] == [("http80", 80)]

    # Pool.
    pool = cli.json("pool", "create", "--name", "app", "--listener", "http80", "--protocol", "HTTP",
                    "--lb-algorithm", "ROUND_ROBIN", "--session-persistence", "type=APP_COOKIE,cookie_name=sid",
                    "--tag", "p")
    assert pool["session_persistence"]["cookie_name"] == "sid"
    cli.settle(lb_id)
    cli.run("pool", "set", "--name", "app2", "--description", "backend", "--lb-algorithm", "LEAST_CONNECTIONS",
            "app")
    cli.settle(lb_id)
    cli.run("pool", "unset", "--session-persistence", "--description", "app2")
    cli.settle(lb_id)
    shown = cli.json("pool", "show", "app2")
    assert (shown["lb_algorithm"], shown["description"], shown["session_persistence"]) == (
        "LEAST_CONNECTIONS", "", None)
    assert shown["listeners"] == [{"id": listener["id"]}]
    assert [row["id"] for row in cli.json("pool", "list", "--loadbalancer", lb_id)] == [pool["id"]]

    # Health monitor.
    monitor = cli.json("healthmonitor", "create", "--name", "hm", "--delay", "5", "--timeout", "3",
                       "--max-retries", "3", "--type", "HTTP", "--url-path", "/health", "app2")
    assert monitor["url_path"] == "/health" and monitor["pools"] == [{"id": pool["id"]}]
    cli.settle(lb_id)
    cli.run("healthmonitor", "set", "--delay", "10", "--expected-codes", "200-204", "--name", "hm2", "hm")
    cli.settle(lb_id)
    cli.run("healthmonitor", "unset", "--url-path", "hm2")
    cli.settle(lb_id)
    shown = cli.json("healthmonitor", "show", "hm2")
    # Unsetting a monitor attribute restores Octavia's default, not null.
    assert (shown["delay"], shown["expected_codes"], shown["url_path"]) == (10, "200-204", "/")
    assert [row["id"] for row in cli.json("healthmonitor", "list")] == [monitor["id"]]

    # Members (the subnet is looked up by name on the network endpoint).
    member = cli.json("member", "create", "--name", "m1", "--address", "192.0.2.10", "--protocol-port", "80",
                      "--weight", "5", "--subnet-id", "private-subnet", "--tag", "m", "app2")
    assert member["weight"] == 5 and member["subnet_id"] not in (None, "private-subnet")
    assert member["operating_status"] == "OFFLINE"  # a monitor watches it; nothing has reported yet
    cli.settle(lb_id)
    cli.run("member", "set", "--name", "m1b", "--weight", "10", "--enable-backup", "--monitor-port", "8080",
            "--disable", "app2", "m1")
    cli.settle(lb_id)
    cli.run("member", "unset", "--weight", "--monitor-port", "app2", "m1b")
    cli.settle(lb_id)
    shown = cli.json("member", "show", "app2", "m1b")
    assert (shown["weight"], shown["backup"], shown["monitor_port"], shown["admin_state_up"]) == (1, True, None, False)
    assert [row["id"] for row in cli.json("member", "list", "--tags", "m", "app2")] == [member["id"]]

    # Status tree and statistics (nothing reports with noop drivers: zeros and OFFLINE).
    tree = json.loads(cli.run("status", "show", "web"))["loadbalancer"]
    assert tree["id"] == lb_id and tree["listeners"][0]["id"] == listener["id"]
    tree_pool = tree["listeners"][0]["pools"][0]
    assert tree_pool["health_monitor"]["id"] == monitor["id"]
    assert [m["id"] for m in tree_pool["members"]] == [member["id"]]
    zeros = {"active_connections": 0, "bytes_in": 0, "bytes_out": 0, "request_errors": 0, "total_connections": 0}
    assert cli.json("stats", "show", "web") == zeros
    assert cli.json("listener", "stats", "show", "http80") == zeros

    # Cascade delete: the whole tree goes, then the load balancer itself.
    cli.run("delete", "--cascade", "web")
    wait_for(lambda: cli.http.get(f"/v2/lbaas/loadbalancers/{lb_id}").status_code == 404, timeout=15)
    for path in (f"listeners/{listener['id']}", f"pools/{pool['id']}", f"healthmonitors/{monitor['id']}"):
        assert cli.http.get(f"/v2/lbaas/{path}").status_code == 404


def operator_cookbook(cli: Cli) -> None:
    """List filters, amphorae and failover on a load balancer made over HTTP, then the catalogue."""
    made = cli.http.post("/v2/lbaas/loadbalancers", json={"loadbalancer": {
        "name": "side", "vip_subnet_id": "public-subnet", "tags": ["red", "green"]}})
    assert made.status_code == 201, made.text
    lb_id = made.json()["loadbalancer"]["id"]
    cli.settle(lb_id)
    listed = cli.json("list", "--name", "side", "--tags", "red", "--vip-subnet-id", "public-subnet", "--enable",
                      "--provisioning-status", "ACTIVE")
    assert [row["id"] for row in listed] == [lb_id]

    # L7 policy and rule, on a listener made over HTTP.
    made = cli.http.post("/v2/lbaas/listeners", json={"listener": {
        "loadbalancer_id": lb_id, "protocol": "HTTP", "protocol_port": 8080, "name": "side-http"}})
    assert made.status_code == 201, made.text
    cli.settle(lb_id)
    policy = cli.json("l7policy", "create", "--name", "api", "--action", "REDIRECT_TO_URL",
                      "--redirect-url", "http://example.com/api", "--position", "1", "side-http")
    assert policy["redirect_http_code"] == 302 and policy["position"] == 1
    cli.settle(lb_id)
    rule = cli.json("l7rule", "create", "--compare-type", "STARTS_WITH", "--type", "PATH", "--value", "/api", "api")
    assert rule["value"] == "/api"
    cli.settle(lb_id)
    assert [row["id"] for row in cli.json("l7policy", "list", "--listener", "side-http")] == [policy["id"]]
    assert cli.json("l7policy", "show", "api")["rules"] == [{"id": rule["id"]}]
    assert [row["id"] for row in cli.json("l7rule", "list", "api")] == [rule["id"]]
    assert cli.json("l7rule", "show", "api", rule["id"])["compare_type"] == "STARTS_WITH"

    # Amphorae and failover.
    amphorae = cli.json("amphora", "list", "--loadbalancer", lb_id)
    assert len(amphorae) == 1 and amphorae[0]["status"] == "ALLOCATED"
    amphora = cli.json("amphora", "show", amphorae[0]["id"])
    assert amphora["loadbalancer_id"] == lb_id and amphora["role"] == "STANDALONE"
    cli.run("failover", "side")
    cli.settle(lb_id)
    wait_for(lambda: [a["id"] for a in cli.http.get("/v2/octavia/amphorae", params={
        "loadbalancer_id": lb_id, "status": "ALLOCATED"}).json()["amphorae"]] not in ([], [amphora["id"]]))
    assert cli.http.delete(f"/v2/lbaas/loadbalancers/{lb_id}?cascade=true").status_code == 204
    catalog_cookbook(cli)


def catalog_cookbook(cli: Cli) -> None:
    # Quotas for a project that exists only by name (Cohort answers the identity look-up).
    assert cli.json("quota", "show", "team-q")["load_balancer"] == -1
    quota = cli.json("quota", "set", "--loadbalancer", "5", "--listener", "10", "--member", "7", "team-q")
    assert (quota["load_balancer"], quota["listener"], quota["member"]) == (5, 10, 7)
    cli.run("quota", "reset", "team-q")
    assert cli.http.get("/v2/lbaas/quotas/team-q").json()["quota"]["load_balancer"] == -1
    assert set(cli.json("quota", "defaults", "show").values()) == {-1}

    providers = {row["name"] for row in cli.json("provider", "list")}
    assert {"amphora", "octavia"} <= providers
    capabilities = {row["name"] for row in cli.json("provider", "capability", "list", "amphora")}
    assert {"loadbalancer_topology", "amp_cluster_size"} <= capabilities

    profile = cli.json("flavorprofile", "create", "--name", "aa3", "--provider", "amphora",
                       "--flavor-data", FLAVOR_DATA)
    assert json.loads(profile["flavor_data"]) == json.loads(FLAVOR_DATA)
    flavor = cli.json("flavor", "create", "--name", "cluster3", "--flavorprofile", "aa3",
                      "--description", "three active amphorae", "--enable")
    assert flavor["flavor_profile_id"] == profile["id"] and flavor["enabled"] is True
    assert [row["name"] for row in cli.json("flavor", "list")] == ["cluster3"]
    cli.run("flavor", "set", "--name", "cluster-3", "--disable", "cluster3")
    cli.run("flavor", "unset", "--description", "cluster-3")
    shown = cli.json("flavor", "show", "cluster-3")
    assert (shown["enabled"], shown["description"]) == (False, "")
    cli.run("flavor", "delete", "cluster-3")
    cli.run("flavorprofile", "delete", "aa3")
    out = cli.fails("flavorprofile", "create", "--name", "bad", "--provider", "amphora",
                    "--flavor-data", '{"amp_cluster_size": "many"}')
    assert "amp_cluster_size" in out

    zone_profile = cli.json("availabilityzoneprofile", "create", "--name", "zp", "--provider", "amphora",
                            "--availability-zone-data", '{"compute_zone": "az1"}')
    zone = cli.json("availabilityzone", "create", "--name", "az1", "--availabilityzoneprofile", "zp",
                    "--description", "first zone")
    assert zone["availability_zone_profile_id"] == zone_profile["id"]
    assert [row["name"] for row in cli.json("availabilityzone", "list")] == ["az1"]
    assert cli.json("availabilityzone", "show", "az1")["description"] == "first zone"
    assert [row["name"] for row in cli.json("availabilityzoneprofile", "list")] == ["zp"]
    cli.run("availabilityzone", "delete", "az1")
    cli.run("availabilityzoneprofile", "delete", "zp")
    assert cli.http.get(f"/v2/lbaas/availabilityzoneprofiles/{zone_profile['id']}").status_code == 404


def test_openstack_cli_cookbook(cli: Cli) -> None:
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(tenant_cookbook, cli), pool.submit(operator_cookbook, cli)]
        for future in futures:
            future.result()
