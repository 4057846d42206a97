"""`cohort down` leaves nothing behind: load balancers of every topology, then nothing on the host.

Cohort runs on a private lab and builds a SINGLE, an ACTIVE_STANDBY and an ACTIVE_ACTIVE load
balancer; then the service stops without cleaning up (as a crashed or killed ``cohort up``
would) and ``cohort down`` runs as a separate command. Every namespace, process, cgroup, host
veth, jail user's process and file that Cohort made must be gone.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cohort import harness, netns
from cohort.layout import Layout
from tests.support import Api, wait_for

pytestmark = pytest.mark.root

TOPOLOGIES = {"single": None, "standby": {"loadbalancer_topology": "ACTIVE_STANDBY"},
              "active": {"loadbalancer_topology": "ACTIVE_ACTIVE", "amp_cluster_size": 2}}


def _processes_of_uids(uids: set[int]) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        uid_line = next((line for line in status.splitlines() if line.startswith("Uid:")), "")
        if uid_line and int(uid_line.split()[1]) in uids:
            found.append(int(entry.name))
    return found


def test_cohort_down_removes_everything_cohort_made(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    settings = harness.private_settings(state_dir, tag="d", drivers="local")
    layout = Layout.of(settings)
    lab = harness.lab_for(settings, harness.free_mgmt_cidr())
    try:
        lab.up()
        with harness.running(settings) as (_cohort, base):
            api = Api(base)
            ids = []
            for name, data in TOPOLOGIES.items():
                body: dict[str, Any] = {"name": name, "vip_subnet_id": "public-subnet", "listeners": [
                    {"protocol": "HTTP", "protocol_port": 80}]}
                if data is not None:
                    body["flavor_id"] = api.flavor(name, data)
                status, created = api.post("/v2/lbaas/loadbalancers", {"loadbalancer": body})
                assert status == 201, created
                ids.append(created["loadbalancer"]["id"])
            for lb_id in ids:
                lb = api.wait_active(f"/v2/lbaas/loadbalancers/{lb_id}", "loadbalancer", timeout=120)
                assert lb["provisioning_status"] == "ACTIVE", lb
            state = lab.snapshot()
            instances = state["instances"]
            # SINGLE 1 + ACTIVE_STANDBY 2 + ACTIVE_ACTIVE 2 amphorae, and the distributor pair.
            assert len(instances) == 7, instances
            namespaces = set(lab.owned_namespaces())
            agent_pids = [(rec["pid"], rec["starttime"]) for rec in instances.values()]
            jail_uids = {rec["jail_uid"] for rec in instances.values()}
            cgroups = [lab.instance_cgroup(rec["compute_id"]) for rec in instances.values()]
            assert _processes_of_uids(jail_uids), "the amphorae's HAProxy runs as their jail users"
        # The service is gone without cleaning up; the data plane still runs.
        assert all(netns.netns_exists(ns) for ns in namespaces)
        env = {**os.environ, "COHORT_LAB_PREFIX": settings.lab_prefix, "COHORT_DRIVERS": "local"}
        down = subprocess.run([sys.executable, "-m", "cohort.cli", "down", "--state-dir", str(state_dir)],
                              capture_output=True, text=True, env=env, timeout=300, check=False)
        assert down.returncode == 0, down.stdout + down.stderr
        assert not [ns for ns in netns.list_netns() if ns.startswith(settings.lab_prefix + "-")]
        assert not netns.link_exists(lab.host_if)
        assert not [pid for pid, start in agent_pids if netns.pid_alive(pid, start)]
        wait_for(lambda: not _processes_of_uids(jail_uids), timeout=10)
        assert not [group for group in cgroups for path in netns.cgroup_dirs(group) if path.exists()]
        assert not layout.state_dir.exists(), sorted(str(p) for p in layout.state_dir.rglob("*"))
    finally:
        harness.teardown(settings)
