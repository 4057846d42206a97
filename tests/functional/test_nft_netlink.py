"""Counters and object names read over netlink match what ``nft`` lists, in a real namespace,
with a flow map of 20,000 elements, which the netlink reading never fetches."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator

import pytest

from cohort import netns
from cohort.distributor import nft
from cohort.harness import private_prefix
from tests.functional.conftest import IS_ROOT

pytestmark = pytest.mark.root

FLOWS = 20_000
KEY = "0123456789ab"
RULESET = f"""
table ip {nft.TABLE} {{
    counter bytes_{KEY} {{ packets 12 bytes 3400 }}
    counter syn_{KEY} {{ packets 5 bytes 300 }}
    counter l4new_{KEY} {{ packets 2 bytes 0 }}
    map flows_{KEY} {{ typeof ip saddr . tcp sport : meta mark; size 65536; flags timeout; }}
    chain vip_{KEY} {{
        counter name "bytes_{KEY}"
        tcp dport {{ 80, 443 }} counter name "syn_{KEY}"
    }}
}}
table inet cohort_l4_lb {{
    counter l1_new {{ packets 7 bytes 70 }}
}}
"""
READ = """
import json, sys
from cohort.agents.common import nft_netlink
from cohort.agents.distributor.dataplane import DataPlane
found = {
    "counters": {n: [c.packets, c.bytes] for n, c in nft_netlink.counters("ip", sys.argv[1]).items()},
    "inet": {n: [c.packets, c.bytes] for n, c in nft_netlink.counters("inet", "cohort_l4_lb").items()},
    "names": sorted(nft_netlink.names("ip", sys.argv[1])),
    "keys": sorted(DataPlane().nft_keys()),
    "vip": {k: [v.packets, v.bytes, v.connections] for k, v in DataPlane().counters(flows_of=()).items()},
    "missing": [nft_netlink.counters("ip", "nosuch"), sorted(nft_netlink.names("ip", "nosuch"))],
}
print(json.dumps(found))
"""


@pytest.fixture
def namespace() -> Iterator[str]:
    if not IS_ROOT:
        pytest.skip("needs root (network namespaces)")
    ns = f"{private_prefix('t')}-nl"
    netns.add_netns(ns)
    try:
        yield ns
    finally:
        netns.del_netns(ns)


def nft_in(ns: str, *args: str, script: str | None = None) -> str:
    proc = netns.run(netns.in_ns(ns, ["nft", *args]), input=script, check=False)
    assert proc.returncode == 0, proc.stderr[:2000]
    return str(proc.stdout)


def test_counters_and_names_over_netlink_match_nft_and_skip_the_flow_maps_elements(namespace: str) -> None:
    nft_in(namespace, "-f", "-", script=RULESET)
    elements = ", ".join(f"10.{i // 65536}.{i // 256 % 256}.{i % 256} . {1024 + i % 60000} : {1001 + i % 3}"
                         for i in range(FLOWS))
    nft_in(namespace, "-f", "-", script=f"add element ip {nft.TABLE} flows_{KEY} {{ {elements} }}\n")
    proc = netns.run(netns.in_ns(namespace, [sys.executable, "-c", READ, nft.TABLE]), check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = json.loads(proc.stdout)

    listed = json.loads(nft_in(namespace, "-j", "list", "counters", "table", "ip", nft.TABLE))
    assert found["counters"] == {c["counter"]["name"]: [c["counter"]["packets"], c["counter"]["bytes"]]
                                 for c in listed["nftables"] if "counter" in c}
    assert found["counters"][f"syn_{KEY}"] == [5, 300]
    assert found["inet"] == {"l1_new": [7, 70]}
    # Named things only: the rule's anonymous { 80, 443 } set is nft's, not ours.
    assert found["names"] == sorted([f"bytes_{KEY}", f"syn_{KEY}", f"l4new_{KEY}", f"flows_{KEY}", f"vip_{KEY}"])
    assert found["keys"] == [KEY]
    assert found["vip"] == {KEY: [12, 3400, 7]}  # connections: SYNs and new L4 flows
    assert found["missing"] == [{}, []]
    assert len(json.loads(nft_in(namespace, "-j", "list", "map", "ip", nft.TABLE, f"flows_{KEY}"))
               ["nftables"][1]["map"]["elem"]) == FLOWS
