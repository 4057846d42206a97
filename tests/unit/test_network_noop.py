"""The noop network driver (and the noop compute it is used with): lab semantics without root."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from cohort.drivers.compute.noop import NoopComputeDriver, read_state
from cohort.drivers.errors import DriverError, PermanentDriverError
from cohort.drivers.network.noop import NoopNetworkDriver
from cohort.netplan import address_mac
from cohort.netplan import plan_subnets as lab_subnets


def test_subnets_match_the_default_lab() -> None:
    net = NoopNetworkDriver()
    assert net.list_subnets() == lab_subnets("cohort")
    public = net.get_subnet("public-subnet")
    assert public is not None
    assert (public.cidr, public.gateway_ip, public.ip_version) == ("203.0.113.0/24", "203.0.113.1", 4)
    assert net.get_subnet(public.id) == public
    private = net.get_subnet("private-subnet")
    assert private is not None and (private.cidr, private.gateway_ip) == ("192.0.2.0/24", None)
    assert public.id != private.id and public.network_id != private.network_id
    assert net.get_subnet("nope") is None
    # Ids are stable across instances and processes (uuid5), and differ per lab prefix.
    assert NoopNetworkDriver().get_subnet("public-subnet") == public
    assert uuid.UUID(public.id).version == 5
    assert NoopNetworkDriver("cohort-other").get_subnet("public-subnet") != public


def test_vip_allocation() -> None:
    net = NoopNetworkDriver()
    vip = net.allocate_vip("lb1", "public-subnet", None)
    assert vip.address == "203.0.113.100"
    assert net.allocate_vip("lb1", "public-subnet", None) == vip
    assert net.allocate_vip("lb2", "public-subnet", None).address == "203.0.113.101"
    assert net.allocate_vip("lb3", "public-subnet", "203.0.113.7").address == "203.0.113.7"
    assert net.allocate_vip("lb4", "private-subnet", None).address == "192.0.2.100"
    for bad in ("203.0.113.7", "203.0.113.1", "203.0.113.0", "203.0.113.255", "192.0.2.5", "x"):
        with pytest.raises(PermanentDriverError):
            net.allocate_vip("lb5", "public-subnet", bad)
    with pytest.raises(PermanentDriverError):
        net.allocate_vip("lb1", "public-subnet", "203.0.113.200")
    with pytest.raises(PermanentDriverError):
        net.allocate_vip("lb6", "missing", None)
    net.deallocate_vip("lb1")
    net.deallocate_vip("lb1")
    assert net.allocate_vip("lb7", "public-subnet", None).address == "203.0.113.100"


def test_plug_and_unplug_ports() -> None:
    net = NoopNetworkDriver()
    a = net.plug_port("cohort-a-00000001", "public-subnet", "p1")
    assert (a.address, a.gateway, a.subnet_cidr) == ("203.0.113.2", "203.0.113.1", "203.0.113.0/24")
    assert a.mac_address == address_mac("public", a.address) == "02:01:cb:00:71:02"
    assert net.plug_port("cohort-a-00000001", "public-subnet", "p1") == a
    b = net.plug_port("cohort-a-00000002", "public-subnet", "p2")
    assert b.address == "203.0.113.3" and b.port_id != a.port_id
    be = net.plug_port("cohort-a-00000001", "private-subnet", "p1")
    assert be.address == "192.0.2.10" and be.gateway is None
    with pytest.raises(PermanentDriverError):
        net.plug_port("cohort-a-00000001", "public-subnet", "p9")
    assert {p.port_id for p in net.ports_of("cohort-a-00000001")} == {a.port_id, be.port_id}
    net.unplug_all("cohort-a-00000001")
    net.unplug_all("cohort-a-00000001")
    assert net.ports_of("cohort-a-00000001") == []
    assert net.plug_port("cohort-a-00000003", "public-subnet", "p1").address == "203.0.113.2"


def test_front_end_port_range_is_exhausted_after_98() -> None:
    net = NoopNetworkDriver()
    addresses = {net.plug_port(f"cohort-a-{n:08x}", "public-subnet", "p").address for n in range(98)}
    assert len(addresses) == 98 and "203.0.113.100" not in addresses
    with pytest.raises(DriverError):
        net.plug_port("cohort-a-ffffffff", "public-subnet", "p")


def test_noop_compute() -> None:
    compute = NoopComputeDriver()
    iid = "1a2b3c4d-0000-4000-8000-000000000000"
    inst = compute.build(iid, "amphora", {"cpu": 0.5})
    assert (inst.compute_id, inst.lb_network_ip, inst.status) == ("cohort-a-1a2b3c4d", "198.18.0.10", "ACTIVE")
    assert compute.build(iid, "amphora", {}) == inst
    dist = compute.build(str(uuid.uuid4()), "distributor", {})
    assert dist.compute_id.startswith("cohort-d-") and dist.lb_network_ip == "198.18.0.11"
    compute.crash(inst.compute_id)
    assert compute.status(inst.compute_id) == "ERROR"
    compute.delete(inst.compute_id)
    compute.delete(inst.compute_id)
    assert compute.status(inst.compute_id) == "DELETED"
    with pytest.raises(PermanentDriverError):
        compute.build(str(uuid.uuid4()), "vm", {})
    with pytest.raises(PermanentDriverError):
        compute.build(str(uuid.uuid4()), "amphora", {"memory_mb": "much"})


def test_noop_compute_shared_through_a_state_file(tmp_path: Path) -> None:
    """Two drivers (as in two controller processes) on one state file see one set of instances."""
    state = tmp_path / "noop-compute.json"
    one, other = NoopComputeDriver(state_file=state), NoopComputeDriver(state_file=state)
    iid = "1a2b3c4d-0000-4000-8000-000000000000"
    inst = one.build(iid, "amphora", {})
    assert other.status(inst.compute_id) == "ACTIVE"
    assert other.build(iid, "amphora", {}) == inst  # idempotent across processes too
    assert other.build(str(uuid.uuid4()), "amphora", {}).lb_network_ip != inst.lb_network_ip
    other.crash(inst.compute_id)
    assert one.status(inst.compute_id) == "ERROR"
    one.delete(inst.compute_id)
    assert other.status(inst.compute_id) == "DELETED" and len(read_state(state)) == 1


def test_noop_delay() -> None:
    compute = NoopComputeDriver(delay=0.2)
    started = time.monotonic()
    inst = compute.build(str(uuid.uuid4()), "amphora", {})
    assert time.monotonic() - started >= 0.2
    assert compute.status(inst.compute_id) == "ACTIVE"
