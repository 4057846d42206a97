"""The local compute and network drivers on a real lab: instances, ports, VIPs and tenant isolation."""

from __future__ import annotations

import os
import resource
import signal
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cohort import netns
from cohort.drivers.compute.lab import LabComputeDriver
from cohort.drivers.errors import DriverError, PermanentDriverError
from cohort.drivers.network.base import PluggedPort
from cohort.drivers.network.lab import LabNetworkDriver
from cohort.lab import Lab
from cohort.layout import Layout

pytestmark = pytest.mark.root
AGENT_PORT = 9443


def agent_command(instance_id: str, kind: str, mgmt_ip: str, jail_uid: int) -> list[str]:
    # A child in the background proves delete() kills what the agent forked.
    serve = f"exec {sys.executable} -m http.server --bind {mgmt_ip} --directory /nonexistent-dir {AGENT_PORT}"
    return ["sh", "-c", f"sleep 300 & {serve}"]


@pytest.fixture
def compute(lab: Lab) -> Iterator[LabComputeDriver]:
    driver = LabComputeDriver(lab, agent_command, Layout(lab.state_dir.parent))
    yield driver
    for rec in list(lab.snapshot().get("instances", {}).values()):
        driver.delete(rec["compute_id"])


@pytest.fixture
def network(lab: Lab) -> Iterator[LabNetworkDriver]:
    driver = LabNetworkDriver(lab)
    yield driver
    st = lab.snapshot()
    for lb_id in st.get("vips", {}):
        driver.deallocate_vip(lb_id)
    for compute_id in {rec["compute_id"] for rec in st.get("ports", {}).values()}:
        driver.unplug_all(compute_id)


def wait_for(predicate: object, timeout: float = 5.0) -> bool:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return bool(predicate())


def agent_answers(ip: str) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://{ip}:{AGENT_PORT}/", timeout=1) as resp:
            return bool(resp.status == 200)
    except urllib.error.HTTPError as exc:
        return exc.code == 404  # it serves a directory that does not exist: it answered
    except OSError:
        return False


def ping(ns: str, address: str, wait: str = "1") -> bool:
    return netns.run_in(ns, ["ping", "-c1", "-W", wait, address], check=False).returncode == 0


def configure(compute_id: str, port: PluggedPort, ifname: str) -> None:
    """What the amphora agent would do: find the port by MAC and give it its address."""
    assert netns.link_mac(ifname, compute_id) == port.mac_address
    prefixlen = port.subnet_cidr.split("/")[1]
    netns.add_addr(ifname, compute_id, f"{port.address}/{prefixlen}")
    if port.gateway and ifname == "fe0":
        netns.add_route(compute_id, "default", port.gateway)


def test_build_status_crash_delete(lab: Lab, compute: LabComputeDriver) -> None:
    instance_id = str(uuid.uuid4())
    inst = compute.build(instance_id, "amphora", {"cpu": 0.25, "memory_mb": 256})
    assert inst.compute_id == lab.instance_ns(instance_id, "amphora") == f"{lab.prefix}-a-{instance_id[:8]}"
    assert inst.status == "ACTIVE"
    assert inst.lb_network_ip.startswith(lab.mgmt_cidr.rsplit(".", 1)[0] + ".")
    pid = compute.agent_pid(inst.compute_id)
    assert pid is not None
    assert compute.build(instance_id, "amphora", {"cpu": 0.25, "memory_mb": 256}) == inst  # idempotent
    assert compute.agent_pid(inst.compute_id) == pid

    # The controller (host) reaches the agent on the management network.
    assert wait_for(lambda: agent_answers(inst.lb_network_ip))
    assert netns.run(["ping", "-c1", "-W1", inst.lb_network_ip], check=False).returncode == 0

    cgroup = lab.instance_cgroup(inst.compute_id)
    cpu_dir, mem_dir = netns.cgroup_dirs(cgroup)
    quota = int((cpu_dir / "cpu.cfs_quota_us").read_text())
    period = int((cpu_dir / "cpu.cfs_period_us").read_text())
    assert quota / period == 0.25 and period == netns.cfs_period_us(0.25)  # a short period: short stops
    assert int((mem_dir / "memory.limit_in_bytes").read_text()) == 256 * 1024 * 1024
    in_cgroup = netns.cgroup_pids(cgroup)
    assert pid in in_cgroup and len(in_cgroup) >= 2  # the agent and its child
    limits = Path(f"/proc/{pid}/limits").read_text()
    soft_nofile = int(next(line for line in limits.splitlines() if "open files" in line).split()[3])
    # 100000, or as far as the hard limit goes where CAP_SYS_RESOURCE is missing (containers).
    assert soft_nofile >= min(100_000, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
    child_pids = in_cgroup - {pid}

    os.kill(pid, signal.SIGKILL)
    assert wait_for(lambda: compute.status(inst.compute_id) == "ERROR")
    assert compute.build(instance_id, "amphora", {}).status == "ERROR"  # not silently replaced

    compute.delete(inst.compute_id)
    assert compute.status(inst.compute_id) == "DELETED"
    assert not netns.netns_exists(inst.compute_id)
    assert not cpu_dir.exists() and not mem_dir.exists()
    assert all(netns.proc_starttime(p) is None for p in child_pids)
    assert inst.lb_network_ip not in lab.snapshot()["addresses"]["mgmt"]
    compute.delete(inst.compute_id)  # idempotent
    compute.delete("not-a-lab-namespace")  # never touches what the lab did not make


def test_instances_reach_the_host_but_not_each_other_on_management(compute: LabComputeDriver) -> None:
    a = compute.build(str(uuid.uuid4()), "amphora", {})
    d = compute.build(str(uuid.uuid4()), "distributor", {})
    assert "-d-" in d.compute_id and a.lb_network_ip != d.lb_network_ip
    for inst in (a, d):
        assert netns.run(["ping", "-c1", "-W1", inst.lb_network_ip], check=False).returncode == 0
    assert not ping(a.compute_id, d.lb_network_ip, "0.3")


def test_bad_builds_are_permanent_errors(compute: LabComputeDriver) -> None:
    with pytest.raises(PermanentDriverError):
        compute.build(str(uuid.uuid4()), "amphora", {"cpu": "lots"})
    with pytest.raises(PermanentDriverError):
        compute.build(str(uuid.uuid4()), "amphora", {"cpu": 0})
    with pytest.raises(PermanentDriverError):
        compute.build(str(uuid.uuid4()), "vm", {})
    with pytest.raises(PermanentDriverError):
        compute.build("amphora-1", "amphora", {})


def test_vip_allocation(lab: Lab, network: LabNetworkDriver) -> None:
    public = network.get_subnet("public-subnet")
    assert public is not None and network.get_subnet(public.id) == public
    assert {s.name for s in network.list_subnets()} == {"public-subnet", "private-subnet"}
    first = network.allocate_vip("lb1", public.id, None)
    assert first.address == "203.0.113.100" and first.network_id == public.network_id
    assert network.allocate_vip("lb1", public.id, None) == first
    assert network.allocate_vip("lb2", "public-subnet", None).address == "203.0.113.101"
    assert network.allocate_vip("lb3", public.id, "203.0.113.150").address == "203.0.113.150"
    for taken_or_bad in ("203.0.113.150", "203.0.113.1", "198.51.100.7", "203.0.113.255", "nonsense"):
        with pytest.raises(PermanentDriverError):
            network.allocate_vip("lb4", public.id, taken_or_bad)
    with pytest.raises(PermanentDriverError):
        network.allocate_vip("lb1", public.id, "203.0.113.160")  # lb1 already has one
    with pytest.raises(PermanentDriverError):
        network.allocate_vip("lb5", "no-such-subnet", None)
    # Another process (a new driver on the same state) sees the same reservations.
    assert LabNetworkDriver(Lab(lab.state_dir, lab.prefix)).allocate_vip("lb1", public.id, None) == first
    network.deallocate_vip("lb1")
    network.deallocate_vip("lb1")
    assert network.allocate_vip("lb6", public.id, None).address == "203.0.113.100"


def test_plug_unplug(lab: Lab, compute: LabComputeDriver, network: LabNetworkDriver,
                    monkeypatch: pytest.MonkeyPatch) -> None:
    inst = compute.build(str(uuid.uuid4()), "amphora", {})
    port = network.plug_port(inst.compute_id, "public-subnet", "p1")
    # Plugged again (each controller pass does it for a distributor): nothing is redone...
    rulesets: list[str] = []
    real_nft_apply = netns.nft_apply
    monkeypatch.setattr(netns, "nft_apply", lambda ns, ruleset: (rulesets.append(ruleset), real_nft_apply(ns, ruleset)))
    assert network.plug_port(inst.compute_id, "public-subnet", "p1") == port
    assert rulesets == []
    # ...unless the link is gone: then it is made again.
    netns.del_link("fe0", inst.compute_id)
    assert network.plug_port(inst.compute_id, "public-subnet", "p1") == port
    assert len(rulesets) == 1 and netns.link_mac("fe0", inst.compute_id) == port.mac_address
    assert port.gateway == "203.0.113.1" and port.subnet_cidr == "203.0.113.0/24"
    assert 2 <= int(port.address.rsplit(".", 1)[1]) <= 99
    assert netns.link_mac("fe0", inst.compute_id) == port.mac_address
    assert not [a for a in netns.addresses(inst.compute_id) if a[0] == "fe0" and "." in a[1]]
    back = network.plug_port(inst.compute_id, "private-subnet", "p1")
    assert back.gateway is None and netns.link_exists("be0", inst.compute_id)
    assert sorted(network.ports_of(inst.compute_id), key=lambda p: p.address) == sorted(
        [port, back], key=lambda p: p.address
    )
    switch = lab.ports.switch_ports(inst.compute_id)  # the benchmark threads these ports
    assert sorted(switch) == ["be0", "fe0"] and all(netns.link_exists(p, lab.sw_ns) for p in switch.values())
    with pytest.raises(PermanentDriverError):
        network.plug_port(inst.compute_id, "public-subnet", "p2")  # a port does not change project
    with pytest.raises(PermanentDriverError):
        network.plug_port("some-vm", "public-subnet", "p1")
    with pytest.raises(DriverError):
        network.plug_port(f"{lab.prefix}-a-0badc0de", "public-subnet", "p1")

    network.unplug_all(inst.compute_id)
    network.unplug_all(inst.compute_id)
    assert not netns.link_exists("fe0", inst.compute_id) and not netns.link_exists("be0", inst.compute_id)
    assert network.ports_of(inst.compute_id) == []
    assert port.address not in lab.snapshot()["addresses"]["public"]


def test_tenant_isolation(lab: Lab, compute: LabComputeDriver, network: LabNetworkDriver) -> None:
    member = lab.add_member("iso")
    try:
        names = {"a1": "p1", "a2": "p1", "b1": "p2", "dist": ""}
        kinds = {n: "distributor" if n == "dist" else "amphora" for n in names}
        insts = {n: compute.build(str(uuid.uuid4()), kinds[n], {}) for n in names}
        fe = {}
        for n, project in names.items():
            fe[n] = network.plug_port(insts[n].compute_id, "public-subnet", project)
            configure(insts[n].compute_id, fe[n], "fe0")
        ns = {n: i.compute_id for n, i in insts.items()}

        assert ping(ns["a1"], fe["a2"].address)  # same project: VRRP / cluster peers
        assert not ping(ns["a1"], fe["b1"].address, "0.3")
        assert not ping(ns["b1"], fe["a2"].address, "0.3")
        for n in names:
            assert ping(ns[n], "203.0.113.1"), n  # everyone reaches the gateway
        assert ping(ns["a1"], fe["dist"].address) and ping(ns["b1"], fe["dist"].address)
        assert lab.exec_client(["ping", "-c1", "-W1", fe["b1"].address]).returncode == 0

        # The same holds on the back-end, and members serve every project.
        be = {}
        for n in ("a1", "b1"):
            be[n] = network.plug_port(ns[n], "private-subnet", names[n])
            configure(ns[n], be[n], "be0")
            out = netns.run_in(ns[n], ["curl", "-s", "-m", "3", f"http://{member}/"], check=False).stdout
            assert out == "iso\n"
        assert not ping(ns["a1"], be["b1"].address, "0.3")

        # Unplugging a project's port lifts nothing for the others.
        network.unplug_all(ns["a2"])
        assert not ping(ns["a1"], fe["b1"].address, "0.3")
    finally:
        lab.remove_member("iso")
