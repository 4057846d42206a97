"""The amphora agent for real: namespaces, mutual TLS, VIP plumbing, HAProxy, reloads, heartbeats.

Topology (all names ``cohort-t-<rand>...``, removed afterwards with every process in them)::

    host  ch<rand> 198.18.N.1/30 ---- mgmt0 198.18.N.2  [amphora ns: agent, haproxy]
    client ns  c0 203.0.113.1/24 ---- fe0 (VIP 203.0.113.10, own 203.0.113.2)
    member ns  m0 192.0.2.10/24  ---- be0 (own 192.0.2.2)      member: python http.server :8080

The controller side is the real RestAmphoraDriver and the configuration comes from the renderer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from cohort.datamodel import Amphora, HealthMonitor, Listener, LoadBalancer, Member, Pool
from cohort.drivers.errors import DriverError, PermanentDriverError
from cohort.drivers.network.base import PluggedPort
from cohort.health.heartbeat import HeartbeatReceiver, HeartbeatVerifier
from cohort.health.keys import agent_key
from cohort.pki import CertificateAuthority, CertPaths, client_ssl_context
from tests.support import wait_for

pytestmark = pytest.mark.root

AGENT_PORT = 9443
VIP = "203.0.113.10"
HB_KEY = secrets.token_hex(16).encode()

# Runs in the client namespace: keep-alive HTTP loops, bounded in count and time, JSON summary.
# Like any HTTP/1.1 client it does not reuse a connection the server has closed while idle, and
# retries a request once when a reused connection closes before any response (RFC 9112 9.3.1);
# "retried" counts those, "failed" counts requests that got no good response at all.
CLIENT = r"""
import http.client, json, select, sys, threading, time
host, threads, count, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
deadline = time.monotonic() + seconds
res = {"ok": 0, "failed": 0, "retried": 0, "errors": [], "connections": 0}
lock = threading.Lock()
def add(key, n=1):
    with lock: res[key] += n
def connect():
    add("connections")
    return http.client.HTTPConnection(host, 80, timeout=5)
def once(conn):
    conn.request("GET", "/index.html")
    r = conn.getresponse()
    return r.status == 200 and r.read() == b"hello from the member\n", r.will_close
def loop():
    conn = None
    for _ in range(count):
        if time.monotonic() > deadline:
            break
        if conn is not None and conn.sock is not None and select.select([conn.sock], [], [], 0)[0]:
            conn.close(); conn = None  # the server closed it while idle
        reused = conn is not None
        conn = conn or connect()
        try:
            try:
                ok, close = once(conn)
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                if not reused:
                    raise
                add("retried"); conn.close(); conn = connect()
                ok, close = once(conn)
            add("ok" if ok else "failed")
            if close:
                conn.close(); conn = None
        except Exception as e:
            add("failed")
            with lock: res["errors"].append(repr(e))
            conn.close(); conn = None
        time.sleep(0.005)
ts = [threading.Thread(target=loop) for _ in range(threads)]
[t.start() for t in ts]; [t.join() for t in ts]
print(json.dumps(res))
"""


def sh(*cmd: str, check: bool = True) -> str:
    return subprocess.run(list(cmd), check=check, capture_output=True, text=True, timeout=30).stdout


def ns_exec(ns: str, *cmd: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *cmd]


def free_mgmt_net() -> int:
    used = sh("ip", "-4", "-o", "addr", "show")
    for _ in range(100):
        n = secrets.choice(range(200, 255))
        if f" 198.18.{n}." not in used:
            return n
    raise RuntimeError("no free 198.18.x.0/24 for the test")


class Receiver:
    """A HeartbeatReceiver on its own event loop thread, collecting payloads."""

    def __init__(self, bind: tuple[str, int]) -> None:
        self.payloads: list[dict[str, Any]] = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.receiver = HeartbeatReceiver(bind, HeartbeatVerifier(HB_KEY), self.payloads.append)
        self.address = asyncio.run_coroutine_threadsafe(self.receiver.start(), self.loop).result(5)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.receiver.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()

    def wait_for(self, predicate: Any, timeout: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        start = len(self.payloads)
        while time.monotonic() < deadline:
            for p in self.payloads[start:]:
                if predicate(p):
                    return p
            time.sleep(0.1)
        raise AssertionError(f"no matching heartbeat in {timeout}s; last: {self.payloads[-1:]}")


@dataclass
class Env:
    tag: str
    amp_ns: str
    client_ns: str
    member_ns: str
    mgmt_host: str
    mgmt_amp: str
    state_dir: Path
    server: CertPaths
    controller: CertPaths
    hb_key_file: Path
    receiver: Receiver
    amphora: Amphora
    fe_port: PluggedPort
    be_port: PluggedPort
    lb: LoadBalancer
    agent: subprocess.Popen[bytes] | None = None
    logs: list[Path] = field(default_factory=list)

    def start_agent(self) -> None:
        log = self.state_dir.parent / f"agent{len(self.logs)}.log"
        self.logs.append(log)
        host, port = self.receiver.address
        cmd = ns_exec(
            self.amp_ns, sys.executable, "-m", "cohort.agents.amphora",
            "--amphora-id", self.amphora.id, "--bind", f"{self.mgmt_amp}:{AGENT_PORT}",
            "--cert", str(self.server.cert), "--key", str(self.server.key), "--ca", str(self.server.ca),
            "--state-dir", str(self.state_dir), "--heartbeat-to", f"{host}:{port}",
            "--heartbeat-key-file", str(self.hb_key_file), "--heartbeat-interval", "0.3",
        )  # fmt: skip
        with log.open("ab") as out:
            self.agent = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
            )  # fmt: skip

    def stop_agent(self) -> None:
        if self.agent is not None and self.agent.poll() is None:
            self.agent.send_signal(signal.SIGTERM)
            try:
                self.agent.wait(5)
            except subprocess.TimeoutExpired:
                self.agent.kill()
                self.agent.wait(5)
        self.agent = None

    def client(self, threads: int, count: int, seconds: float) -> subprocess.Popen[str]:
        cmd = ns_exec(self.client_ns, sys.executable, "-c", CLIENT, VIP, str(threads), str(count), str(seconds))
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def traffic(self, threads: int = 1, count: int = 5, seconds: float = 10.0) -> dict[str, Any]:
        out, err = self.client(threads, count, seconds).communicate(timeout=seconds + 20)
        assert out, err
        result: dict[str, Any] = json.loads(out)
        return result

    def url(self, path: str) -> str:
        return f"https://{self.mgmt_amp}:{AGENT_PORT}{path}"


def _build_topology(tag: str, net: int) -> tuple[str, str, str]:
    amp, client, member = f"cohort-t-{tag}", f"cohort-t-{tag}c", f"cohort-t-{tag}m"
    for ns in (amp, client, member):
        sh("ip", "netns", "add", ns)
        sh(*ns_exec(ns, "ip", "link", "set", "lo", "up"))
    host_if = f"ch{tag}"
    sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", "mgmt0", "netns", amp)
    sh("ip", "addr", "add", f"198.18.{net}.1/30", "dev", host_if)
    sh("ip", "link", "set", host_if, "up")
    sh(*ns_exec(amp, "ip", "addr", "add", f"198.18.{net}.2/30", "dev", "mgmt0"))
    sh(*ns_exec(amp, "ip", "link", "set", "mgmt0", "up"))
    # Hot-plugged ports: present in the amphora with a known MAC, unaddressed, like a new NIC.
    for inner, mac, peer_ns, peer, cidr in (
        ("fe0", f"02:cf:{tag[:2]}:{tag[2:4]}:{tag[4:6]}:01", client, "c0", "203.0.113.1/24"),
        ("be0", f"02:cf:{tag[:2]}:{tag[2:4]}:{tag[4:6]}:02", member, "m0", "192.0.2.10/24"),
    ):
        sh(*ns_exec(amp, "ip", "link", "add", inner, "address", mac, "type", "veth", "peer", "name", peer,
                    "netns", peer_ns))  # fmt: skip
        sh(*ns_exec(peer_ns, "ip", "addr", "add", cidr, "dev", peer))
        sh(*ns_exec(peer_ns, "ip", "link", "set", peer, "up"))
    return amp, client, member


def _teardown(namespaces: list[str], host_if: str) -> None:
    for ns in namespaces:
        pids = sh("ip", "netns", "pids", ns, check=False).split()
        for pid in pids:  # only processes this test started live in its namespaces
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        sh("ip", "netns", "del", ns, check=False)
    sh("ip", "link", "del", host_if, check=False)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    tmp = tmp_path_factory.mktemp("amp")
    tag, net = secrets.token_hex(3), free_mgmt_net()
    made: list[str] = []
    receiver: Receiver | None = None
    e: Env | None = None
    try:
        made.extend(_build_topology(tag, net))
        amp_ns, client_ns, member_ns = made
        www = tmp / "www"
        www.mkdir()
        (www / "index.html").write_text("hello from the member\n")
        subprocess.Popen(
            ns_exec(member_ns, sys.executable, "-m", "http.server", "8080", "--bind", "192.0.2.10",
                    "--directory", str(www)),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        ca = CertificateAuthority(tmp / "pki")
        amp_id = f"amp-{tag}"
        receiver = Receiver((f"198.18.{net}.1", 0))
        hb_key_file = tmp / "hb.key"  # the agent's own key; the receiver holds the master
        hb_key_file.write_bytes(agent_key(HB_KEY, "amphora", amp_id))
        amphora = Amphora(id=amp_id, load_balancer_id="lb-" + tag, role="STANDALONE",
                          lb_network_ip=f"198.18.{net}.2", vrrp_ip="203.0.113.2", ha_ip=VIP)  # fmt: skip
        member = Member(id="mem-" + tag, address="192.0.2.10", protocol_port=8080)
        pool = Pool(id="pool-" + tag, protocol="HTTP", lb_algorithm="ROUND_ROBIN", members=(member,))
        listener = Listener(id="lst-" + tag, protocol="HTTP", protocol_port=80, default_pool_id=pool.id)
        lb = LoadBalancer(id="lb-" + tag, project_id="p", vip_address=VIP, vip_subnet_id="fe",
                          listeners=(listener,), pools=(pool,))  # fmt: skip
        e = Env(
            tag=tag, amp_ns=amp_ns, client_ns=client_ns, member_ns=member_ns,
            mgmt_host=f"198.18.{net}.1", mgmt_amp=f"198.18.{net}.2", state_dir=tmp / "state",
            server=ca.issue_server(f"amphora-{amp_id}", [f"198.18.{net}.2"]),
            controller=ca.issue_client("controller"), hb_key_file=hb_key_file, receiver=receiver,
            amphora=amphora,
            fe_port=PluggedPort("fe", f"02:cf:{tag[:2]}:{tag[2:4]}:{tag[4:6]}:01", "203.0.113.2", "fe",
                                "203.0.113.0/24", "203.0.113.1"),
            be_port=PluggedPort("be", f"02:cf:{tag[:2]}:{tag[2:4]}:{tag[4:6]}:02", "192.0.2.2", "be",
                                "192.0.2.0/24", None),
            lb=lb,
        )  # fmt: skip
        e.start_agent()
        yield e
    finally:
        if e is not None:
            e.stop_agent()
            for log in e.logs:
                if log.exists():
                    sys.stderr.write(f"--- {log.name} (tail)\n{log.read_text()[-3000:]}\n")
        if receiver is not None:
            receiver.close()
        _teardown(made, f"ch{tag}")


@pytest.fixture(scope="module")
def driver(env: Env) -> Iterator[Any]:
    from cohort.drivers.amphora.rest import RestAmphoraDriver

    d = RestAmphoraDriver(env.controller, port=AGENT_PORT, timeout=30)
    yield d
    d.close()


@pytest.fixture(scope="module")
def serving(env: Env, driver: Any) -> Env:
    """The load balancer plugged, configured and started through the driver."""
    info = driver.wait_ready(env.amphora, timeout=20)
    assert info["amphora_id"] == env.amphora.id
    driver.post_vip_plug(env.amphora, env.fe_port, VIP, "interface")
    driver.post_network_plug(env.amphora, env.be_port)
    driver.update(env.amphora, env.lb, [env.amphora], {})
    return env


def test_client_without_certificate_is_refused(env: Env, driver: Any) -> None:
    driver.wait_ready(env.amphora, timeout=20)
    bare = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    bare.check_hostname = False
    bare.load_verify_locations(cafile=str(env.controller.ca))
    with httpx.Client(verify=bare, timeout=5) as c, pytest.raises(httpx.TransportError):
        c.get(env.url("/1.0/info"))
    with httpx.Client(verify=client_ssl_context(env.controller), timeout=5) as c:
        info = c.get(env.url("/1.0/info")).json()
    assert info["haproxy_version"].startswith("2.")


def test_unreachable_agent_is_a_retryable_driver_error(env: Env, driver: Any) -> None:
    nobody = replace(env.amphora, lb_network_ip=env.mgmt_host)  # the host side: no agent listens there
    started = time.monotonic()
    with pytest.raises(DriverError) as failure:
        driver.wait_ready(nobody, timeout=1.0)
    assert not isinstance(failure.value, PermanentDriverError)
    assert time.monotonic() - started < 5


def test_traffic_flows_through_the_vip(serving: Env, driver: Any) -> None:
    result = serving.traffic(threads=2, count=10)
    assert result == {"ok": 20, "failed": 0, "retried": 0, "errors": [], "connections": 2}
    assert f"frontend lst-{serving.tag}" in driver.get_config(serving.amphora, serving.lb.id)
    interfaces = sh(*ns_exec(serving.amp_ns, "ip", "-4", "-o", "addr", "show", "dev", "fe0"))
    assert f"{VIP}/32" in interfaces and "203.0.113.2/24" in interfaces
    assert driver.get_config(serving.amphora, "no-such-lb") == ""


def test_invalid_config_is_refused_and_traffic_keeps_flowing(serving: Env, driver: Any) -> None:
    installed = driver.get_config(serving.amphora, serving.lb.id)
    bad = installed + "\nfrontend broken\n    bind 203.0.113.10:81\n    no-such-keyword here\n"
    with httpx.Client(verify=client_ssl_context(serving.controller), timeout=30) as c:
        r = c.put(serving.url(f"/1.0/loadbalancer/{serving.lb.id}/haproxy"), content=bad)
    assert r.status_code == 400
    assert "no-such-keyword" in r.json()["error"]
    assert driver.get_config(serving.amphora, serving.lb.id) == installed
    # A certificate HAProxy cannot use (no key) fails the check too: the driver says it is final.
    tls = replace(serving.lb.listeners[0], id="tls-" + serving.tag, protocol="TERMINATED_HTTPS",
                  protocol_port=443, default_tls_container_ref="ref-no-key")  # fmt: skip
    ca_pem = serving.controller.ca.read_bytes()
    with pytest.raises(PermanentDriverError, match="(?i)private key"):
        driver.update(serving.amphora, replace(serving.lb, listeners=(*serving.lb.listeners, tls)), [],
                      {"ref-no-key": ca_pem})  # fmt: skip
    assert driver.get_config(serving.amphora, serving.lb.id) == installed
    assert serving.traffic(count=5)["ok"] == 5


def test_reload_under_keepalive_load_drops_nothing(serving: Env, driver: Any) -> None:
    client = serving.client(threads=4, count=600, seconds=12)
    time.sleep(0.7)
    with httpx.Client(verify=client_ssl_context(serving.controller), timeout=30) as c:
        for _ in range(2):
            r = c.put(serving.url(f"/1.0/loadbalancer/{serving.lb.id}/reload"))
            assert r.status_code == 200, r.text
            time.sleep(0.5)
    # A real configuration change through the driver reloads as well.
    slower = replace(serving.lb.listeners[0], timeout_client_data=40000)
    driver.update(serving.amphora, replace(serving.lb, listeners=(slower,)), [], {})
    out, err = client.communicate(timeout=40)
    result = json.loads(out)
    assert result["failed"] == 0, result
    assert result["ok"] >= 200
    assert result["connections"] >= 4 + 4 * 2, result  # the reloads did happen under the load
    config = driver.get_config(serving.amphora, serving.lb.id)
    if "idle-close-on-response" in config:
        # Old workers then close a keep-alive connection only after answering on it.
        assert result["retried"] == 0, result
    else:
        # Without it they close idle ones at once; at most one race per connection and reload.
        assert result["retried"] <= 4 * 3, result
    driver.update(serving.amphora, serving.lb, [], {})


def test_heartbeats_carry_growing_listener_stats(serving: Env) -> None:
    lst, pool, mem = f"lst-{serving.tag}", f"pool-{serving.tag}", f"mem-{serving.tag}"
    before = serving.receiver.wait_for(lambda p: lst in p.get("listeners", {}))
    assert before["id"] == serving.amphora.id and before["ver"] == 1
    assert before["listeners"][lst]["status"] == "OPEN"
    assert before["pools"][pool] == {"status": "UP", "members": {mem: "no check"}}
    total = before["listeners"][lst]["stats"]["total_connections"]
    assert serving.traffic(threads=3, count=4)["ok"] == 12
    after = serving.receiver.wait_for(
        lambda p: p["listeners"].get(lst, {}).get("stats", {}).get("total_connections", 0) >= total + 3
    )
    assert after["seq"] > before["seq"]
    assert after["listeners"][lst]["stats"]["bytes_out"] > before["listeners"][lst]["stats"]["bytes_out"]
    assert serving.receiver.receiver.rejected == 0


def test_agent_restart_keeps_haproxy_serving_and_adopts_it(serving: Env, driver: Any) -> None:
    with httpx.Client(verify=client_ssl_context(serving.controller), timeout=30) as c:
        stats_before = c.get(serving.url(f"/1.0/loadbalancer/{serving.lb.id}/stats")).json()
    assert stats_before["running"] is True
    serving.stop_agent()
    assert serving.traffic(count=3)["ok"] == 3
    serving.start_agent()
    driver.wait_ready(serving.amphora, timeout=20)
    with httpx.Client(verify=client_ssl_context(serving.controller), timeout=30) as c:
        details = c.get(serving.url("/1.0/details")).json()
        assert details["loadbalancers"][serving.lb.id]["running"] is True
        assert c.put(serving.url(f"/1.0/loadbalancer/{serving.lb.id}/reload")).status_code == 200
    assert serving.traffic(count=3)["ok"] == 3


def test_a_killed_haproxy_is_started_again(serving: Env, driver: Any) -> None:
    """Nothing else would restart it: the agent lives on and heartbeats, so the amphora is not replaced."""
    def haproxies() -> set[int]:
        found = set()
        for pid in sh("ip", "netns", "pids", serving.amp_ns).split():
            with contextlib.suppress(FileNotFoundError):  # it exited since it was listed
                if Path(f"/proc/{pid}/comm").read_text().strip() == "haproxy":
                    found.add(int(pid))
        return found

    killed = haproxies()
    assert killed
    started = time.monotonic()
    for pid in killed:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    wait_for(lambda: haproxies() and not haproxies() & killed, timeout=10, interval=0.05)
    print(f"HAProxy started again {time.monotonic() - started:.2f}s after it was killed")
    wait_for(lambda: serving.traffic(count=3)["ok"] == 3, timeout=10)


def test_loopback_vip_never_answers_arp(serving: Env, driver: Any) -> None:
    driver.post_vip_plug(serving.amphora, serving.fe_port, "203.0.113.20", "loopback")
    lo = sh(*ns_exec(serving.amp_ns, "ip", "-4", "-o", "addr", "show", "dev", "lo"))
    assert "203.0.113.20/32" in lo
    for key, value in (("arp_ignore", "1"), ("arp_announce", "2"), ("rp_filter", "0")):
        assert sh(*ns_exec(serving.amp_ns, "sysctl", "-n", f"net.ipv4.conf.all.{key}")).strip() == value
    probe = subprocess.run(
        ns_exec(serving.client_ns, "ping", "-c", "1", "-W", "1", "203.0.113.20"), capture_output=True, timeout=10
    )
    assert probe.returncode != 0  # nobody owns it on the wire, by design
    assert serving.traffic(count=2)["ok"] == 2  # the interface VIP still answers ARP


def test_a_plugged_port_announces_its_address(serving: Env, driver: Any) -> None:
    # The member network's neighbour still holds the address for another MAC, as a router holds a
    # replaced amphora's (the lab hands a freed address out again): plugging announces the new owner.
    stale = "02:00:5e:00:53:99"
    sh(*ns_exec(serving.member_ns, "ip", "neigh", "replace", serving.be_port.address, "lladdr", stale,
                "dev", "m0", "nud", "stale"))

    def owner() -> str:
        entries = json.loads(sh(*ns_exec(serving.member_ns, "ip", "-j", "neigh", "show", serving.be_port.address,
                                         "dev", "m0")))
        return str(entries[0].get("lladdr", "")) if entries else ""

    assert owner() == stale
    driver.post_network_plug(serving.amphora, serving.be_port)
    wait_for(lambda: owner() == serving.be_port.mac_address or None, timeout=2)


# Capability bits (linux/capability.h) keepalived keeps for VRRP: setgid, net_admin, net_raw.
KEEPALIVED_CAPS = {6, 12, 13}


def _status_fields(pid: str) -> dict[str, str]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def _opens_inside(pid: str, uid: str, path: str) -> bool:
    """Whether ``path`` can be read by a process with the view (mount namespace, root) and user of ``pid``."""
    probe = subprocess.run(["nsenter", "-t", pid, "--mount", "--root", "--setuid", uid, "--setgid", uid,
                            "/usr/bin/head", "-c", "1", path], capture_output=True, check=False)
    return probe.returncode == 0


def _assert_jailed(env: Env, expected_caps: dict[str, set[int]]) -> None:
    """Every daemon of the amphora runs as a non-root user with only ``expected_caps``, chrooted in the
    amphora's jail, and can open its own files but nothing of the host's."""
    jail_root = os.path.realpath(env.state_dir / "jail")
    seen: dict[str, int] = {}
    for pid in sh("ip", "netns", "pids", env.amp_ns).split():
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
            status = _status_fields(pid)
        except FileNotFoundError:
            continue
        if comm not in expected_caps or status.get("State", "").startswith("Z"):
            continue
        seen[comm] = seen.get(comm, 0) + 1
        uids, gids = status["Uid"].split(), status["Gid"].split()
        assert "0" not in uids and "0" not in gids, f"{comm} {pid} runs as root: {uids} {gids}"
        caps = int(status["CapEff"], 16) | int(status["CapPrm"], 16)
        assert {bit for bit in range(64) if caps >> bit & 1} <= expected_caps[comm], f"{comm} {pid} caps {caps:x}"
        assert status["NoNewPrivs"] == "1"
        assert os.readlink(f"/proc/{pid}/root") == jail_root, f"{comm} {pid} is not chrooted in the jail"
        uid = uids[0]
        assert _opens_inside(pid, uid, f"/haproxy/{env.lb.id}.cfg")  # its own files
        for outside in (str(env.server.key), str(env.hb_key_file), "/etc/shadow", "/proc/1/root/etc/hostname",
                        f"/proc/{os.getpid()}/environ", str(env.state_dir / "jail" / "haproxy" / f"{env.lb.id}.cfg")):
            assert not _opens_inside(pid, uid, outside), f"{comm} {pid} can open {outside}"
    assert set(seen) == set(expected_caps), f"daemons found: {seen}"


def test_haproxy_runs_jailed(serving: Env, driver: Any) -> None:
    _assert_jailed(serving, {"haproxy": set()})


def test_ping_monitor_pings_from_the_jail(serving: Env, driver: Any) -> None:
    """PING checks fork ping as the jail's user (ICMP datagram sockets, no raw-socket capability)."""
    pool = serving.lb.pools[0]
    absent = Member(id="mem-absent-" + serving.tag, address="192.0.2.99", protocol_port=8080)
    monitor = HealthMonitor(id="hm-" + serving.tag, type="PING", delay=1, timeout=1, max_retries=1,
                            max_retries_down=1)
    lb = replace(serving.lb, pools=(replace(pool, members=(*pool.members, absent), healthmonitor=monitor),))
    driver.update(serving.amphora, lb, [], {})
    try:
        def members() -> dict[str, str]:
            with httpx.Client(verify=client_ssl_context(serving.controller), timeout=30) as c:
                body = c.get(serving.url(f"/1.0/loadbalancer/{lb.id}/stats")).json()
            return dict(body["pools"].get(pool.id, {}).get("members", {}))

        deadline = time.monotonic() + 15
        while members() != {pool.members[0].id: "UP", absent.id: "DOWN"}:
            assert time.monotonic() < deadline, members()
            time.sleep(0.3)
    finally:
        driver.update(serving.amphora, serving.lb, [], {})


def test_config_cannot_reach_host_files(serving: Env, driver: Any) -> None:
    """A configuration the renderer would never write still finds nothing of the host to serve."""
    config = driver.get_config(serving.amphora, serving.lb.id)
    leak = config.replace("frontend ", f"frontend leak\n    mode http\n    bind 127.0.0.1:8081\n"
                                       f"    http-request return status 200 file {serving.server.key}\n\nfrontend ", 1)
    with httpx.Client(verify=client_ssl_context(serving.controller), timeout=30) as c:
        r = c.put(serving.url(f"/1.0/loadbalancer/{serving.lb.id}/haproxy"), content=leak)
    assert r.status_code == 400, r.text
    assert driver.get_config(serving.amphora, serving.lb.id) == config


def test_active_standby_runs_keepalived(serving: Env, driver: Any) -> None:
    with httpx.Client(verify=client_ssl_context(serving.controller), timeout=30) as c:
        r = c.put(serving.url("/1.0/vrrp/config"), content="vrrp_instance x {\n  bogus_keyword 1\n}\n")
        assert r.status_code == 400 and "bogus_keyword" in r.json()["error"]
    master = replace(serving.amphora, role="MASTER", vrrp_id=42, vrrp_priority=100)
    # The peer's address is unused in the client's subnet: adverts stay inside these namespaces.
    backup = replace(serving.amphora, id="amp-peer", role="BACKUP", vrrp_ip="203.0.113.3")
    lb = replace(serving.lb, topology=replace(serving.lb.topology, name="ACTIVE_STANDBY"))
    driver.update(master, lb, [master, backup], {})
    with httpx.Client(verify=client_ssl_context(serving.controller), timeout=30) as c:
        assert c.get(serving.url("/1.0/details")).json()["keepalived_running"] is True
        config = c.get(serving.url("/1.0/vrrp/config")).text
    assert "unicast_peer" in config and "203.0.113.3" in config and "interface fe0" in config
    # keepalived starts by removing the VIP; with the peer silent it becomes MASTER (after three
    # advertisement intervals) and serves it.
    deadline = time.monotonic() + 10
    while f"{VIP}/32" not in sh(*ns_exec(serving.amp_ns, "ip", "-4", "addr", "show", "fe0")):
        assert time.monotonic() < deadline, "keepalived never took the VIP"
        time.sleep(0.1)
    assert serving.traffic(count=2, seconds=15)["ok"] == 2
    _assert_jailed(serving, {"haproxy": set(), "keepalived": KEEPALIVED_CAPS})
    driver.update(serving.amphora, serving.lb, [], {})
    driver.remove_lb(master, "lb-gone")  # stops VRRP with it
    with httpx.Client(verify=client_ssl_context(serving.controller), timeout=30) as c:
        assert c.get(serving.url("/1.0/details")).json()["keepalived_running"] is False
    # A stopping keepalived takes its virtual address away, also the one plugged before it ran.
    driver.post_vip_plug(serving.amphora, serving.fe_port, VIP, "interface")
    assert serving.traffic(count=2)["ok"] == 2


def test_remove_lb_stops_haproxy(serving: Env, driver: Any) -> None:
    driver.remove_lb(serving.amphora, serving.lb.id)
    driver.remove_lb(serving.amphora, serving.lb.id)  # idempotent
    assert driver.get_config(serving.amphora, serving.lb.id) == ""
    with httpx.Client(verify=client_ssl_context(serving.controller), timeout=30) as c:
        assert serving.lb.id not in c.get(serving.url("/1.0/details")).json()["loadbalancers"]
    pids = sh("ip", "netns", "pids", serving.amp_ns).split()
    assert not any(Path(f"/proc/{pid}/comm").read_text().strip() == "haproxy" for pid in pids
                   if Path(f"/proc/{pid}/stat").exists() and " Z " not in Path(f"/proc/{pid}/stat").read_text())
    assert serving.traffic(count=1, seconds=3)["failed"] == 1  # refused: nothing listens on the VIP
