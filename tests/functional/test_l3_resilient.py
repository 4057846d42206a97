"""L3 over a fabric with resilient hashing: the lab router programs resilient next-hop groups.

A lab of its own, whose router is resilient from the start (``RouterSettings(resilient=True)``):
scale-out and scale-in keep every open connection, and the VIP routes are resilient groups.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cohort import harness, netns
from cohort.lab import Lab
from tests.functional.test_l3_bgp import PASSWORD, _create, _l3, _scaling_keeps_connections, _speaker, l3_lab
from tests.support import Api, wait_for

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[harness.Instance, Api, Lab]]:
    with l3_lab(tmp_path_factory, "r", resilient=True) as found:
        yield found


def test_scaling_breaks_no_open_connection_with_a_resilient_router(env: tuple[harness.Instance, Api, Lab]) -> None:
    _cohort, api, lab = env
    member = lab.add_member("l3m4", workers=2)
    _scaling_keeps_connections(api, lab, "l3resilient", member, moves_flows=False)
    lab.remove_member("l3m4")


def test_the_resilient_router_installs_resilient_groups(env: tuple[harness.Instance, Api, Lab]) -> None:
    _cohort, api, lab = env
    member = lab.add_member("l3m5")
    speaker_id = _speaker(api, "groups", PASSWORD)
    lb_id = _create(api, "l3groups", api.flavor("l3groups", _l3(speaker_id, size=2)), member)["id"]
    vip = api.wait_active(f"/v2/lbaas/loadbalancers/{lb_id}", "loadbalancer", timeout=120)["vip_address"]
    wait_for(lambda: len(lab.router.routes().get(vip, [])) == 2, timeout=30, interval=0.2)
    groups = netns.run_in(lab.gw_ns, ["ip", "nexthop", "show"]).stdout
    assert "type resilient buckets 64" in groups, groups
    assert lab.exec_client(["curl", "-s", "--max-time", "3", f"http://{vip}/"]).stdout.strip() == "l3m5"
    assert api.delete(f"/v2/lbaas/loadbalancers/{lb_id}?cascade=true")[0] == 204
    wait_for(lambda: api.get(f"/v2/lbaas/loadbalancers/{lb_id}")[0] == 404, timeout=60)
    wait_for(lambda: vip not in lab.router.routes(), timeout=10)
    lab.remove_member("l3m5")
