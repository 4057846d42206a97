"""The L2 Distributor for real: agent, driver, nftables data path, probes, restarts, isolation.

Built on a lab (``lab`` fixture) with the local compute and network drivers::

    client 198.51.100.10 -- gw 203.0.113.1 -- br-fe -- distributor fe0 (LB A: VIP A), fe1 (LB B: VIP B)
                                                  \\-- amphorae a1..a4 (tenant A), b1, b2 (tenant B)

Amphorae hold their VIP on ``lo`` (the amphora agent's ``loopback`` mode), answer HTTP on :80
with their name (keep-alive) and accept TCP on the health port 8008. Traffic comes from the
lab's client namespace through the gateway; replies go from the amphorae straight back.
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import signal
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from cohort import netns
from cohort.distributor import nft
from cohort.drivers.compute.lab import LabComputeDriver
from cohort.drivers.distributor.base import ClusterMember, DistributorRef, DistributorVip
from cohort.drivers.distributor.rest import RestDistributorDriver
from cohort.drivers.errors import DriverError, PermanentDriverError
from cohort.drivers.network.base import PluggedPort
from cohort.drivers.network.lab import LabNetworkDriver
from cohort.health.heartbeat import HeartbeatReceiver, HeartbeatVerifier
from cohort.health.keys import agent_key
from cohort.lab import Lab, address_mac, short_hash
from cohort.lab.ports import SHARED_PROJECT
from cohort.layout import Layout
from cohort.pki import CertificateAuthority, CertPaths, client_ssl_context

pytestmark = pytest.mark.root

AGENT_PORT = 9443
HB_KEY = uuid.uuid4().hex.encode()

AMPHORA = r"""
import http.server, socketserver, sys, threading
name = sys.argv[1].encode() + b"\n"
class Http(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", str(len(name))); self.end_headers()
        self.wfile.write(name)
    def log_message(self, *a): pass
class Health(socketserver.BaseRequestHandler):
    def handle(self): pass
class Server(socketserver.ThreadingTCPServer):
    daemon_threads = allow_reuse_address = True
    request_queue_size = 1024
threading.Thread(target=Server(("0.0.0.0", 8008), Health).serve_forever, daemon=True).start()
Server(("0.0.0.0", 80), Http).serve_forever()
"""

# Runs in the client namespace; every mode is bounded in count and time and prints JSON.
CLIENT = r"""
import http.client, json, sys, time
mode, a = sys.argv[1], json.loads(sys.argv[2])
def get(c):
    c.request("GET", "/"); r = c.getresponse(); body = r.read().decode().strip()
    if r.status != 200: raise RuntimeError(f"status {r.status}")
    return body
def once(host, src=None, timeout=2.0):
    c = http.client.HTTPConnection(host, 80, timeout=timeout, source_address=(src, 0) if src else None)
    try: return get(c)
    finally: c.close()
deadline = time.monotonic() + a["seconds"]
if mode == "spread":
    counts, errors, srcs = {}, [], a.get("sources") or [""]
    for i in range(a["count"]):
        if time.monotonic() > deadline: break
        src = srcs[i % len(srcs)]
        try: name = once(a["host"], src or None)
        except Exception as e: errors.append(repr(e)); continue
        counts.setdefault(src, {}); counts[src][name] = counts[src].get(name, 0) + 1
    print(json.dumps({"counts": counts, "errors": errors}))
elif mode == "newconns":
    records = []
    while time.monotonic() < deadline and len(records) < 5000:
        t = time.time()
        try: records.append([t, once(a["host"], timeout=1.0)])
        except Exception as e: records.append([t, "error " + repr(e)])
        time.sleep(a["pause"])
    print(json.dumps(records))
elif mode == "hold":
    conns = []
    for _ in range(a["conns"]):
        c = http.client.HTTPConnection(a["host"], 80, timeout=2)
        conns.append({"c": c, "first": get(c), "ok": 1, "fail": 0, "error": None, "failed_at": None})
    print("READY", flush=True)
    while time.monotonic() < deadline:
        started = time.monotonic()
        for s in conns:
            if s["fail"]: continue
            try:
                name = get(s["c"])
                if name != s["first"]: raise RuntimeError(f"moved from {s['first']} to {name}")
                s["ok"] += 1
            except Exception as e:
                s["fail"], s["error"], s["failed_at"] = 1, repr(e), time.time()
        time.sleep(max(0.0, a["period"] - (time.monotonic() - started)))
    print(json.dumps([{k: v for k, v in s.items() if k != "c"} for s in conns]))
elif mode == "latency":
    samples = []
    for _ in range(a["count"]):
        if time.monotonic() > deadline: break
        t = time.perf_counter(); once(a["host"]); samples.append(time.perf_counter() - t)
    print(json.dumps(samples))
"""


class Receiver:
    """Heartbeats from the agent, on the lab's management address of the host."""

    def __init__(self, host: str) -> None:
        self.payloads: list[dict[str, Any]] = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.receiver = HeartbeatReceiver((host, 0), HeartbeatVerifier(HB_KEY), self.payloads.append)
        self.address = asyncio.run_coroutine_threadsafe(self.receiver.start(), self.loop).result(5)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.receiver.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@dataclass
class Amp:
    name: str
    id: str
    ns: str
    port: PluggedPort


@dataclass
class Env:
    lab: Lab
    compute: LabComputeDriver
    network: LabNetworkDriver
    driver: RestDistributorDriver
    ref: DistributorRef
    dist_ns: str
    agent_cmd: list[str]
    controller: CertPaths
    receiver: Receiver
    vip_a: DistributorVip
    vip_b: DistributorVip
    amps: dict[str, Amp] = field(default_factory=dict)
    agent_pid: int | None = None

    def members(self, names: list[str], draining: tuple[str, ...] = ()) -> list[ClusterMember]:
        return [
            ClusterMember(
                amphora_id=self.amps[n].id, mac_address=self.amps[n].port.mac_address,
                frontend_ip=self.amps[n].port.address, position=i,
                state="DRAINING" if n in draining else "ACTIVE",
            )  # fmt: skip
            for i, n in enumerate(names)
        ]

    def name_of(self, amphora_id: str) -> str:
        return next(a.name for a in self.amps.values() if a.id == amphora_id)

    def status(self, lb_id: str) -> dict[str, Any]:
        body: dict[str, Any] = self.driver.status(self.ref)["vips"][lb_id]
        return body

    def client(self, mode: str, **args: Any) -> subprocess.Popen[str]:
        cmd = netns.in_ns(self.lab.client_ns, [sys.executable, "-c", CLIENT, mode, json.dumps(args)])
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def run_client(self, mode: str, **args: Any) -> Any:
        proc = self.client(mode, **args)
        out, err = proc.communicate(timeout=float(args["seconds"]) + 30)
        assert proc.returncode == 0, err
        return json.loads(out)

    def start_agent(self) -> None:
        log = Layout(self.lab.state_dir.parent).instance_log(self.ref.id)
        cgroup = self.lab.instance_cgroup(self.dist_ns)
        self.agent_pid, _ = netns.spawn(self.dist_ns, self.agent_cmd, log, cgroup=cgroup)


def wait_ready(proc: subprocess.Popen[str], timeout: float = 20.0) -> None:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline() if ready else ""
    assert line.strip() == "READY", f"client not ready: {line!r} {proc.stderr.read() if proc.stderr else ''}"


def finish(proc: subprocess.Popen[str], timeout: float = 40.0) -> Any:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return json.loads(out)


def in_ns(ns: str, *cmd: str, check: bool = True) -> str:
    return netns.run_in(ns, list(cmd), check=check).stdout


def configure_amphora(amp: Amp, vip: str) -> None:
    """What the amphora agent does for ACTIVE_ACTIVE: address the port, route, VIP on lo without ARP."""
    p = amp.port
    code = (
        "from cohort.agents.amphora.interfaces import PortSpec, plug_vip;"
        f"plug_vip(PortSpec({p.mac_address!r}, {p.address!r}, {p.subnet_cidr!r}, {p.gateway!r}), {vip!r}, 'loopback')"
    )
    in_ns(amp.ns, sys.executable, "-c", code)


def add_manual_port(lab: Lab, ns: str, ifname: str) -> PluggedPort:
    """A second distributor interface on the front-end bridge (the local network driver plugs one per subnet)."""
    subnet = lab.subnet("public-subnet")
    assert subnet is not None
    address = lab.reserve_address("public", f"test:{ns}/{ifname}")
    mac, outer = address_mac("public", address), f"q{short_hash(ns + ifname)}"
    netns.add_veth(ifname, ns, outer, lab.sw_ns, mac=mac)
    netns.set_link(outer, lab.sw_ns, master=lab.network("public").bridge)
    netns.set_link(ifname, ns)
    return PluggedPort("manual", mac, address, subnet.id, subnet.cidr, subnet.gateway_ip)


@pytest.fixture(scope="module")
def env(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("dist")
    ca = CertificateAuthority(tmp / "pki")
    receiver = Receiver(lab.mgmt_host_ip)
    names: dict[str, str] = {}
    commands: dict[str, list[str]] = {}

    def agent_command(instance_id: str, kind: str, mgmt_ip: str, jail_uid: int) -> list[str]:
        if kind == "amphora":
            return [sys.executable, "-c", AMPHORA, names[instance_id]]
        paths = ca.issue_server(f"distributor-{instance_id}", [mgmt_ip])
        hb_key_file = tmp / f"hb-{instance_id}.key"  # each agent its own key; the receiver holds the master
        hb_key_file.write_bytes(agent_key(HB_KEY, "distributor", instance_id))
        commands[instance_id] = [
            sys.executable, "-m", "cohort.agents.distributor", "--distributor-id", instance_id,
            "--bind", f"{mgmt_ip}:{AGENT_PORT}", "--cert", str(paths.cert), "--key", str(paths.key),
            "--ca", str(paths.ca), "--state-dir", str(tmp / "agent-state"),
            "--heartbeat-to", "{}:{}".format(*receiver.address), "--heartbeat-key-file", str(hb_key_file),
            "--heartbeat-interval", "0.5",
        ]  # fmt: skip
        return commands[instance_id]

    compute = LabComputeDriver(lab, agent_command, Layout(lab.state_dir.parent))
    network = LabNetworkDriver(lab)
    controller = ca.issue_client("controller")
    driver = RestDistributorDriver(controller, port=AGENT_PORT, timeout=20)
    built: list[str] = []
    e: Env | None = None
    try:
        subnet = lab.subnet("public-subnet")
        assert subnet is not None
        dist_id = uuid.uuid4().hex
        dist = compute.build(dist_id, "distributor", {})
        built.append(dist.compute_id)
        port_a = network.plug_port(dist.compute_id, subnet.id, SHARED_PROJECT)
        port_b = add_manual_port(lab, dist.compute_id, "fe1")
        vip_a = network.allocate_vip(f"lb-a-{dist_id[:6]}", subnet.id, None)
        vip_b = network.allocate_vip(f"lb-b-{dist_id[:6]}", subnet.id, None)
        e = Env(
            lab=lab, compute=compute, network=network, driver=driver,
            ref=DistributorRef(dist_id, dist.lb_network_ip or ""), dist_ns=dist.compute_id,
            agent_cmd=commands[dist_id], controller=controller, receiver=receiver,
            vip_a=DistributorVip(f"lb-a-{dist_id[:6]}", vip_a.address, port_a, affinity="SOURCE_IP_PORT"),
            vip_b=DistributorVip(f"lb-b-{dist_id[:6]}", vip_b.address, port_b),
            agent_pid=compute.agent_pid(dist.compute_id),
        )  # fmt: skip
        for name, tenant, vip in [("a1", "a", vip_a), ("a2", "a", vip_a), ("a3", "a", vip_a),
                                  ("a4", "a", vip_a), ("b1", "b", vip_b), ("b2", "b", vip_b)]:  # fmt: skip
            amp_id = uuid.uuid4().hex
            names[amp_id] = name
            inst = compute.build(amp_id, "amphora", {})
            built.append(inst.compute_id)
            port = network.plug_port(inst.compute_id, subnet.id, f"tenant-{tenant}")
            amp = Amp(name, amp_id, inst.compute_id, port)
            configure_amphora(amp, vip.address)
            e.amps[name] = amp
        for amp in e.amps.values():
            pid = compute.agent_pid(amp.ns)
            deadline = time.monotonic() + 10
            while not (pid and netns.listening(pid, amp.ns, 80) and netns.listening(pid, amp.ns, 8008)):
                assert time.monotonic() < deadline, f"amphora {amp.name} does not listen"
                time.sleep(0.05)
        driver.wait_ready(e.ref, timeout=20)
        driver.add_vip(e.ref, e.vip_a)
        driver.add_vip(e.ref, e.vip_b)
        driver.set_amphorae(e.ref, e.vip_b.lb_id, e.members(["b1", "b2"]))
        yield e
    finally:
        driver.close()
        receiver.close()
        log = Layout(lab.state_dir.parent).instance_log(e.ref.id if e else "-")
        if log.exists():
            sys.stderr.write(f"--- distributor agent log (tail)\n{log.read_text()[-4000:]}\n")
        for compute_id in reversed(built):
            network.unplug_all(compute_id)
            compute.delete(compute_id)
        for lb in ("a", "b"):
            network.deallocate_vip(f"lb-{lb}-{e.ref.id[:6]}" if e else "")


def wait_until(predicate: Any, timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def all_healthy(env: Env, lb_id: str, names: list[str]) -> bool:
    members = env.status(lb_id)["members"]
    return all(members[env.amps[n].id]["healthy"] for n in names)


def use(env: Env, names: list[str], affinity: str = "SOURCE_IP_PORT", draining: tuple[str, ...] = ()) -> None:
    if env.status(env.vip_a.lb_id)["affinity"] != affinity:
        env.driver.add_vip(env.ref, DistributorVip(env.vip_a.lb_id, env.vip_a.vip_address, env.vip_a.port, affinity))
    env.driver.set_amphorae(env.ref, env.vip_a.lb_id, env.members(names, draining))
    wait_until(lambda: all_healthy(env, env.vip_a.lb_id, names), what="healthy amphorae")


# --- the rendered ruleset is valid nftables ---------------------------------------------------


def test_rendered_rulesets_load_in_the_kernel(lab: Lab) -> None:
    ns = f"{lab.prefix}-d-{uuid.uuid4().hex[:8]}"
    plans = [
        nft.VipPlan(f"lb-{i}", f"203.0.113.{200 + i}", f"fe{i}", "203.0.113.2", "203.0.113.1", 1000 + 10 * i,
                    affinity, tuple(nft.Forward(1001 + 10 * i + j, f"203.0.113.{10 + j}", "02:00:00:00:00:01")
                                    for j in range(3)),
                    tuple(1001 + 10 * i + (s % 3) for s in range(1021)))
        for i, affinity in enumerate(nft.AFFINITIES)
    ]  # fmt: skip
    try:
        netns.add_netns(ns)

        def nft_f(script: str, *flags: str) -> None:
            proc = netns.run(netns.in_ns(ns, ["nft", *flags, "-f", "-"]), input=script, check=False)
            assert proc.returncode == 0, proc.stderr[:2000]

        nft_f(nft.render_nft(plans), "-c")
        nft_f(nft.render_nft(plans[:1], stale_keys=[plans[1].key, "0123456789ab"]), "-c")
        nft_f(nft.render_nft(plans))
        nft_f(nft.render_nft(plans))  # idempotent
        nft_f(nft.render_buckets(plans[0]), "-c")
        nft_f(nft.render_nft(plans[:1], stale_keys=[plans[1].key]))
        listing = in_ns(ns, "nft", "-t", "list", "table", "ip", nft.TABLE)
        assert f"vip_{plans[0].key}" in listing and f"vip_{plans[1].key}" not in listing
    finally:
        netns.del_netns(ns)


# --- agent API, driver and heartbeats ---------------------------------------------------------


def test_agent_answers_the_driver_and_sends_heartbeats(env: Env) -> None:
    info = env.driver.wait_ready(env.ref, timeout=5)
    assert info["distributor_id"] == env.ref.id and info["distributor_type"] == "L2"
    assert {env.vip_a.lb_id, env.vip_b.lb_id} <= set(info["vips"])
    use(env, ["a1", "a2", "a3"])
    status = env.status(env.vip_a.lb_id)
    assert status["vip_address"] == env.vip_a.vip_address and status["interface"] == "fe0"
    assert {env.name_of(i) for i in status["members"]} == {"a1", "a2", "a3"}
    assert sum(m["buckets"] for m in status["members"].values()) == status["table_size"] == 1021
    assert env.status(env.vip_b.lb_id)["interface"] == "fe1"

    def good(p: dict[str, Any]) -> bool:
        vip = p.get("vips", {}).get(env.vip_a.lb_id, {})
        return p.get("id") == env.ref.id and p.get("distributor") is True and len(vip.get("members", {})) == 3

    wait_until(lambda: any(good(p) for p in list(env.receiver.payloads)), what="a heartbeat")
    beat = next(p for p in reversed(env.receiver.payloads) if good(p))
    member = next(iter(beat["vips"][env.vip_a.lb_id]["members"].values()))
    assert member["healthy"] is True and isinstance(member["flows"], int)
    assert {"packets_in", "bytes_in", "connections", "flows"} <= set(beat["vips"][env.vip_a.lb_id]["stats"])


def test_bad_calls_are_permanent_and_unknown_vips_retryable(env: Env) -> None:
    bad = DistributorVip(env.vip_a.lb_id, "2001:db8::1", env.vip_a.port)
    with pytest.raises(PermanentDriverError, match="IPv4"):
        env.driver.add_vip(env.ref, bad)
    with pytest.raises(PermanentDriverError, match="affinity"):
        env.driver.add_vip(env.ref, DistributorVip(env.vip_a.lb_id, env.vip_a.vip_address, env.vip_a.port, "RR"))
    with pytest.raises(DriverError) as unknown:
        env.driver.set_amphorae(env.ref, "no-such-lb", env.members(["a1"]))
    assert not isinstance(unknown.value, PermanentDriverError) and "404" in str(unknown.value)
    outside = [ClusterMember("x", "02:00:00:00:00:01", "192.0.2.9", 0)]
    with pytest.raises(PermanentDriverError, match="not in"):
        env.driver.set_amphorae(env.ref, env.vip_a.lb_id, outside)
    url = f"https://{env.ref.lb_network_ip}:{AGENT_PORT}/1.0/info"
    with httpx.Client(verify=client_ssl_context(env.controller), timeout=5) as ok:
        assert ok.get(url).status_code == 200
    bare = ssl.create_default_context(cafile=str(env.controller.ca))  # trusts the agent, shows no certificate
    bare.check_hostname = False
    with httpx.Client(verify=bare, timeout=5) as c, pytest.raises(httpx.TransportError):
        c.get(url)


# --- spreading and affinity -------------------------------------------------------------------


def test_source_ip_port_spreads_1000_connections_evenly(env: Env) -> None:
    use(env, ["a1", "a2", "a3"], "SOURCE_IP_PORT")
    result = env.run_client("spread", host=env.vip_a.vip_address, count=1000, seconds=60)
    assert not result["errors"], result["errors"][:5]
    counts = Counter(result["counts"][""])
    print(f"\nSOURCE_IP_PORT, 1000 connections: {dict(sorted(counts.items()))}")
    assert set(counts) == {"a1", "a2", "a3"}
    for name, n in counts.items():
        assert abs(n / 1000 - 1 / 3) <= 0.15 / 3, (name, n)


def test_source_ip_affinity_keeps_each_client_address_on_one_amphora(env: Env) -> None:
    sources = [f"198.51.100.{n}" for n in range(20, 40)]
    for src in sources:
        in_ns(env.lab.client_ns, "ip", "addr", "replace", f"{src}/24", "dev", "eth0")
    use(env, ["a1", "a2", "a3"], "SOURCE_IP")
    result = env.run_client("spread", host=env.vip_a.vip_address, count=200, sources=sources, seconds=60)
    assert not result["errors"], result["errors"][:5]
    per_source = {src: set(names) for src, names in result["counts"].items()}
    assert set(per_source) == set(sources)
    assert all(len(names) == 1 for names in per_source.values()), per_source
    assert len({next(iter(names)) for names in per_source.values()}) >= 2  # and the addresses do spread


# --- membership changes under load ------------------------------------------------------------


def broken(conns: list[dict[str, Any]], before: float | None = None) -> list[dict[str, Any]]:
    return [c for c in conns if c["fail"] and (before is None or c["failed_at"] < before)]


def test_scaling_out_draining_and_scaling_in_break_no_connection(env: Env) -> None:
    use(env, ["a1", "a2", "a3"], "SOURCE_IP_PORT")
    host = env.vip_a.vip_address
    first = env.client("hold", host=host, conns=40, seconds=9, period=0.1)
    wait_ready(first)
    time.sleep(0.5)
    use(env, ["a1", "a2", "a3", "a4"])  # 3 -> 4
    time.sleep(1.0)
    second = env.client("hold", host=host, conns=40, seconds=6, period=0.1)
    wait_ready(second)
    time.sleep(0.5)
    env.driver.set_amphorae(env.ref, env.vip_a.lb_id, env.members(["a1", "a2", "a3", "a4"], draining=("a4",)))
    time.sleep(0.3)
    fresh = env.run_client("spread", host=host, count=60, seconds=20)
    a4 = env.status(env.vip_a.lb_id)["members"][env.amps["a4"].id]
    assert a4["state"] == "DRAINING" and not a4["drained"] and a4["flows"] > 0 and a4["buckets"] == 0
    # /1.0/health, for observers that ask often, carries the last count instead of listing every pin.
    brief = env.driver.status(env.ref, count_flows=False)["vips"][env.vip_a.lb_id]["members"][env.amps["a4"].id]
    assert (brief["state"], brief["flows"]) == ("DRAINING", a4["flows"])
    time.sleep(1.0)
    removed_at = time.time()
    env.driver.set_amphorae(env.ref, env.vip_a.lb_id, env.members(["a1", "a2", "a3"]))  # 4 -> 3
    one, two = finish(first), finish(second)

    assert "a4" not in fresh["counts"][""] and not fresh["errors"]
    assert {c["first"] for c in one} <= {"a1", "a2", "a3"}
    assert not broken(one), broken(one)[:3]
    stayed = [c for c in two if c["first"] != "a4"]
    on_a4 = [c for c in two if c["first"] == "a4"]
    assert on_a4, "no connection of the second batch landed on the new amphora"
    assert not broken(stayed), broken(stayed)[:3]
    # Draining kept a4's connections alive; only unregistering it ended them.
    assert not broken(on_a4, before=removed_at), broken(on_a4, before=removed_at)[:3]
    print(f"\nscale 3->4->drain->3: {len(one)} + {len(stayed)} connections on staying amphorae, 0 broken; "
          f"{len(on_a4)} on a4 kept through the drain, {len(broken(on_a4))} ended by its removal")


def test_a_drain_ends_when_its_timeout_passes(env: Env) -> None:
    url = f"https://{env.ref.lb_network_ip}:{AGENT_PORT}/1.0/vips/{env.vip_a.lb_id}"
    body = {"vip_address": env.vip_a.vip_address, "affinity": "SOURCE_IP_PORT", "drain_timeout": 1,
            "port": {"mac_address": env.vip_a.port.mac_address, "address": env.vip_a.port.address,
                     "subnet_cidr": env.vip_a.port.subnet_cidr, "gateway": env.vip_a.port.gateway}}  # fmt: skip
    with httpx.Client(verify=client_ssl_context(env.controller), timeout=10) as c:
        assert c.post(url, json=body).status_code == 200
    try:
        use(env, ["a1", "a2", "a3"])
        env.run_client("spread", host=env.vip_a.vip_address, count=30, seconds=20)  # a3 gets pinned flows
        mark = env.status(env.vip_a.lb_id)["members"][env.amps["a3"].id]["mark"]
        assert f"fwmark {hex(mark)}" in in_ns(env.dist_ns, "ip", "rule", "show")
        env.driver.set_amphorae(env.ref, env.vip_a.lb_id, env.members(["a1", "a2", "a3"], draining=("a3",)))
        wait_until(lambda: env.status(env.vip_a.lb_id)["members"][env.amps["a3"].id]["drained"], 4, "the drain")
        assert f"fwmark {hex(mark)}" not in in_ns(env.dist_ns, "ip", "rule", "show")
        use(env, ["a1", "a2", "a3"])
        assert f"fwmark {hex(mark)}" in in_ns(env.dist_ns, "ip", "rule", "show")  # back, with the same mark
    finally:
        env.driver.add_vip(env.ref, env.vip_a)  # the default drain timeout again


def test_killing_and_restarting_the_agent_breaks_no_connection(env: Env) -> None:
    use(env, ["a1", "a2", "a3"], "SOURCE_IP_PORT")
    before = env.status(env.vip_a.lb_id)
    held = env.client("hold", host=env.vip_a.vip_address, conns=40, seconds=6, period=0.1)
    wait_ready(held)
    time.sleep(0.5)
    assert env.agent_pid is not None
    os.kill(env.agent_pid, signal.SIGKILL)
    wait_until(lambda: not netns.pid_alive(env.agent_pid, None), what="the agent to die")
    during = env.run_client("spread", host=env.vip_a.vip_address, count=30, seconds=20)
    env.start_agent()
    env.driver.wait_ready(env.ref, timeout=20)
    after = env.status(env.vip_a.lb_id)
    conns = finish(held)
    assert not during["errors"] and sum(during["counts"][""].values()) == 30  # the kernel serves alone
    assert not broken(conns), broken(conns)[:3]
    marks = {aid: m["mark"] for aid, m in before["members"].items()}
    assert {aid: m["mark"] for aid, m in after["members"].items()} == marks
    assert after["table_size"] == before["table_size"]
    print(f"\nagent killed and restarted under {len(conns)} keep-alive connections: 0 broken")


# --- health probes ----------------------------------------------------------------------------


def test_an_amphora_failing_its_health_port_gets_no_new_flows_within_500ms(env: Env) -> None:
    use(env, ["a1", "a2", "a3"], "SOURCE_IP_PORT")
    a3 = env.amps["a3"]
    rules = "\n".join([
        "add table ip cohort_test",
        "add chain ip cohort_test input { type filter hook input priority -10; policy accept; }",
        "add rule ip cohort_test input tcp dport 8008 drop",
    ])  # fmt: skip
    newconns = env.client("newconns", host=env.vip_a.vip_address, seconds=2.5, pause=0.004)
    try:
        time.sleep(0.8)
        netns.run(netns.in_ns(a3.ns, ["nft", "-f", "-"]), input=rules)
        blocked_at = time.time()
        records = finish(newconns)
        assert not env.status(env.vip_a.lb_id)["members"][a3.id]["healthy"]
    finally:
        netns.run_in(a3.ns, ["nft", "delete", "table", "ip", "cohort_test"], check=False)
    errors = [r for r in records if r[1].startswith("error")]
    assert not errors, errors[:3]
    on_a3_before = [t for t, name in records if name == "a3" and t < blocked_at]
    on_a3_after = [t for t, name in records if name == "a3" and t >= blocked_at]
    after = [t for t, _ in records if t >= blocked_at]
    assert on_a3_before and len(after) > 100
    detection = (max(on_a3_after) - blocked_at) if on_a3_after else 0.0
    print(f"\nhealth port blocked: last new flow to the amphora {detection * 1000:.0f} ms later "
          f"({len(on_a3_after)} new flows meanwhile, {len(after)} new connections after the block)")
    assert detection < 0.5
    wait_until(lambda: all_healthy(env, env.vip_a.lb_id, ["a3"]), what="a3 to be healthy again")
    back = env.run_client("spread", host=env.vip_a.vip_address, count=90, seconds=20)
    assert back["counts"][""].get("a3", 0) > 0


# --- tenant isolation -------------------------------------------------------------------------


def seen_in(ns: str) -> int:
    out = in_ns(ns, "nft", "-j", "list", "counter", "ip", "cohort_test", "seen")
    return int(json.loads(out)["nftables"][1]["counter"]["packets"])


def test_tenants_cannot_reach_each_other_through_the_distributor(env: Env) -> None:
    use(env, ["a1", "a2", "a3"], "SOURCE_IP_PORT")
    a1, b1, b2 = env.amps["a1"], env.amps["b1"], env.amps["b2"]
    wait_until(lambda: all_healthy(env, env.vip_b.lb_id, ["b1", "b2"]), what="tenant B amphorae")
    names_b = env.run_client("spread", host=env.vip_b.vip_address, count=20, seconds=20)["counts"][""]
    names_a = env.run_client("spread", host=env.vip_a.vip_address, count=20, seconds=20)["counts"][""]
    # VIP B keeps the default SOURCE_IP affinity: the one client sticks to one of B's amphorae.
    assert len(names_b) == 1 and set(names_b) <= {"b1", "b2"} and set(names_a) <= {"a1", "a2", "a3"}
    watch = "\n".join([
        "add table ip cohort_test",
        "add counter ip cohort_test seen",
        "add chain ip cohort_test pre { type filter hook prerouting priority -300; policy accept; }",
        f"add rule ip cohort_test pre ip saddr {a1.port.address} counter name seen",
    ])  # fmt: skip
    dist_a, dist_b = env.vip_a.port.address, env.vip_b.port.address
    try:
        for amp in (b1, b2):
            netns.run(netns.in_ns(amp.ns, ["nft", "-f", "-"]), input=watch)
        # Control: a1 reaching VIP B the public way (through the gateway) is seen by tenant B.
        in_ns(a1.ns, "timeout", "3", sys.executable, "-c",
              f"import socket; socket.create_connection(('{env.vip_b.vip_address}', 80), timeout=1)", check=False)
        assert seen_in(b1.ns) + seen_in(b2.ns) > 0
        for amp in (b1, b2):
            in_ns(amp.ns, "nft", "reset", "counter", "ip", "cohort_test", "seen")
        # Attacks: b1/b2 and VIP B through either distributor interface, as routed next hop.
        attacks = [(b1.port.address, dist_a), (b2.port.address, dist_a), (env.vip_b.vip_address, dist_a),
                   (b1.port.address, dist_b), (b2.port.address, dist_b)]  # fmt: skip
        for target, hop in attacks:
            in_ns(a1.ns, "ip", "route", "replace", f"{target}/32", "via", hop)
            in_ns(a1.ns, "ping", "-c", "2", "-i", "0.2", "-W", "1", target, check=False)
            in_ns(a1.ns, "timeout", "3", sys.executable, "-c",
                  f"import socket; socket.create_connection(('{target}', 80), timeout=1)", check=False)
            in_ns(a1.ns, "ip", "route", "del", f"{target}/32")
        seen = seen_in(b1.ns) + seen_in(b2.ns)
        assert seen == 0, f"{seen} packets of tenant A reached tenant B through the distributor"
    finally:
        for amp in (b1, b2):
            netns.run_in(amp.ns, ["nft", "delete", "table", "ip", "cohort_test"], check=False)


# --- the latency the distributor adds ---------------------------------------------------------


def test_latency_added_by_the_distributor(env: Env) -> None:
    use(env, ["a1", "a2", "a3"], "SOURCE_IP_PORT")

    def percentiles(host: str) -> tuple[float, float]:
        samples = sorted(env.run_client("latency", host=host, count=400, seconds=30))
        assert len(samples) == 400
        return samples[len(samples) // 2] * 1e3, samples[int(len(samples) * 0.99)] * 1e3

    direct = percentiles(env.amps["a1"].port.address)
    via = percentiles(env.vip_a.vip_address)
    print(f"\nnew connection + GET, 400 each: direct to an amphora p50 {direct[0]:.3f} ms p99 {direct[1]:.3f} ms; "
          f"through the distributor p50 {via[0]:.3f} ms p99 {via[1]:.3f} ms "
          f"(+{via[0] - direct[0]:.3f} ms at p50)")


# --- removing a VIP ---------------------------------------------------------------------------


def test_removing_a_vip_clears_it_from_the_kernel_and_adding_it_back_works(env: Env) -> None:
    key = nft.object_key(env.vip_b.lb_id)
    marks = [m["mark"] for m in env.status(env.vip_b.lb_id)["members"].values()]
    env.driver.remove_vip(env.ref, env.vip_b.lb_id)
    env.driver.remove_vip(env.ref, env.vip_b.lb_id)  # idempotent
    listing = in_ns(env.dist_ns, "nft", "-t", "list", "table", "ip", nft.TABLE)
    assert key not in listing and nft.object_key(env.vip_a.lb_id) in listing
    rules = in_ns(env.dist_ns, "ip", "rule", "show")
    assert not any(f"fwmark {hex(m)}" in rules for m in marks)
    assert env.vip_b.vip_address not in in_ns(env.dist_ns, "ip", "-4", "addr", "show", "dev", "fe1")
    env.driver.add_vip(env.ref, env.vip_b)
    env.driver.set_amphorae(env.ref, env.vip_b.lb_id, env.members(["b1", "b2"]))
    wait_until(lambda: all_healthy(env, env.vip_b.lb_id, ["b1", "b2"]), what="tenant B amphorae")
    names = env.run_client("spread", host=env.vip_b.vip_address, count=20, seconds=20)["counts"][""]
    assert len(names) == 1 and set(names) <= {"b1", "b2"} and sum(names.values()) == 20
