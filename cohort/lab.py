"""The local lab network used by `cohort up`, the demo, the tests and the benchmarks.

The lab owns the namespaces named ``{prefix}-...``, the switch bridges, the gateway router,
the client, the member servers and the address plan, and it keeps what it allocated in a
JSON file under ``state_dir`` guarded by an ``fcntl`` lock, so that the controller and the
CLI (separate processes) agree. The local compute and network drivers keep their records
in the same file through :meth:`Lab.transaction`.

Topology (every box is a namespace; ``sw`` holds one Linux bridge per network)::

    client 198.51.100.10 -- br-cl -- 198.51.100.1 gw 203.0.113.1 -- br-fe -- amphorae, distributors
    members 192.0.2.10+ -- br-be -- amphorae back-end ports
    host 198.18.X.1 (root namespace) -- br-mgmt -- agents 198.18.X.10+

Only the management network touches the root namespace. A lab with a non-default prefix
takes its own management /24 inside 198.18.0.0/15, so two labs coexist.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import ipaddress
import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cohort import netns
from cohort.drivers.network.base import Subnet

DEFAULT_PREFIX = "cohort"
DEFAULT_MGMT_CIDR = "198.18.0.0/24"
MGMT_SUPERNET = ipaddress.ip_network("198.18.0.0/15")
CLIENT_CIDR = "198.51.100.0/24"
CLIENT_IP = "198.51.100.10"
CLIENT_GATEWAY = "198.51.100.1"
PUBLIC_CIDR = "203.0.113.0/24"
PUBLIC_GATEWAY = "203.0.113.1"
PRIVATE_CIDR = "192.0.2.0/24"

# The address plan: (first, last) host numbers handed out in each network.
FRONTEND_PORT_RANGE = (2, 99)  # amphora / distributor own addresses on the public subnet
VIP_FIRST = 100  # VIPs are picked from here up
BACKEND_RANGE = (10, 254)  # members and back-end ports; .1-.9 stay free
MGMT_RANGE = (10, 254)  # agents; .1 is the host
PORT_RANGES = {"public-subnet": FRONTEND_PORT_RANGE, "private-subnet": BACKEND_RANGE}

NOFILE = 100_000
MEMBER_NAME = re.compile(r"^[a-z0-9][a-z0-9_]{0,23}$")  # no '-': keeps namespace names unambiguous
RESERVED_NAMES = {"client", "gw", "sw"}  # they name the lab's own namespaces in exec()
PREFIX_RE = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")


class LabError(RuntimeError):
    """The lab cannot do what was asked (not up, bad name, a member that would not start)."""


class AddressError(ValueError):
    """An address is outside its network, already taken, or the range is exhausted."""


@dataclass(frozen=True)
class LabNetwork:
    key: str  # public | private | mgmt | client
    id: str
    name: str
    cidr: str
    bridge: str
    subnet_name: str | None
    gateway: str | None


def stable_id(prefix: str, kind: str, name: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"cohort-lab://{prefix}/{kind}/{name}"))


def lab_networks(prefix: str, mgmt_cidr: str) -> list[LabNetwork]:
    def net(key: str, cidr: str, bridge: str, subnet: str | None, gw: str | None) -> LabNetwork:
        return LabNetwork(key, stable_id(prefix, "network", key), f"{key}-network", cidr, bridge, subnet, gw)

    return [
        net("public", PUBLIC_CIDR, "br-fe", "public-subnet", PUBLIC_GATEWAY),
        net("private", PRIVATE_CIDR, "br-be", "private-subnet", None),
        net("mgmt", mgmt_cidr, "br-mgmt", None, None),
        net("client", CLIENT_CIDR, "br-cl", None, CLIENT_GATEWAY),
    ]


def lab_subnets(prefix: str = DEFAULT_PREFIX) -> list[Subnet]:
    """The tenant-visible subnets; their ids depend only on the prefix (the noop driver shares them)."""
    return [
        Subnet(stable_id(prefix, "subnet", n.subnet_name), n.subnet_name, n.id, n.cidr, n.gateway, 4)
        for n in lab_networks(prefix, DEFAULT_MGMT_CIDR)
        if n.subnet_name
    ]


def host_ip(cidr: str, n: int) -> str:
    return str(ipaddress.ip_network(cidr)[n])


def check_address(cidr: str, address: str) -> str:
    """Normalise ``address``; AddressError unless it is a usable host address of ``cidr``."""
    net = ipaddress.ip_network(cidr)
    try:
        ip = ipaddress.ip_address(address)
    except ValueError as exc:
        raise AddressError(f"{address!r} is not an IP address") from exc
    if ip not in net or ip in (net.network_address, net.broadcast_address):
        raise AddressError(f"{address} is not a host address of {cidr}")
    return str(ip)


def pick_address(cidr: str, taken: set[str], first: int, last: int) -> str:
    net = ipaddress.ip_network(cidr)
    for n in range(first, min(last, net.num_addresses - 2) + 1):
        candidate = str(net[n])
        if candidate not in taken:
            return candidate
    raise AddressError(f"no free address left in {cidr} (.{first}-.{last})")


def allocate_address(
    state: dict[str, Any],
    key: str,
    cidr: str,
    owner: str,
    *,
    first: int,
    last: int = 254,
    address: str | None = None,
) -> str:
    """Reserve an address of network ``key`` for ``owner`` in ``state`` (idempotent per owner)."""
    table: dict[str, str] = state.setdefault("addresses", {}).setdefault(key, {})
    if address is not None:
        address = check_address(cidr, address)
        holder = table.get(address)
        if holder not in (None, owner):
            raise AddressError(f"{address} is already in use")
        table[address] = owner
        return address
    mine = sorted(a for a, o in table.items() if o == owner)
    if mine:
        return mine[0]
    address = pick_address(cidr, set(table), first, last)
    table[address] = owner
    return address


def release_address(state: dict[str, Any], key: str, owner: str) -> None:
    table: dict[str, str] = state.get("addresses", {}).get(key, {})
    for address in [a for a, o in table.items() if o == owner]:
        del table[address]


NETWORK_MAC_TAG = {"public": 0x01, "private": 0x02, "mgmt": 0x03, "client": 0x04}


def address_mac(key: str, address: str) -> str:
    """The MAC of the port holding ``address`` on network ``key``: 02:<tag>:<the IPv4 bytes>.

    Tied to the address, not to the instance, so that a replacement that gets a released
    address back also gets its MAC, and the neighbour caches of the gateway, the members and
    the host stay right: no stale ARP entry delays a failover.
    """
    octets = ipaddress.IPv4Address(address).packed
    return ":".join(f"{b:02x}" for b in (0x02, NETWORK_MAC_TAG[key], *octets))


def short_hash(text: str, n: int = 10) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:n]


class Lab:
    """One lab network; every public method is idempotent and safe to repeat after a crash."""

    def __init__(self, state_dir: Path, prefix: str = DEFAULT_PREFIX, mgmt_cidr: str | None = None) -> None:
        if not PREFIX_RE.match(prefix) or len(prefix) > 32:
            raise LabError(f"bad lab prefix {prefix!r}")
        self.state_dir = Path(state_dir)
        self.prefix = prefix
        self.state_path = self.state_dir / f"lab-{prefix}.json"
        self._lock_path = self.state_dir / f"lab-{prefix}.lock"
        self.mgmt_cidr = self._resolve_mgmt(mgmt_cidr)
        self._tlock = threading.RLock()
        self._depth = 0
        self._state: dict[str, Any] = {}

    def _resolve_mgmt(self, wanted: str | None) -> str:
        recorded = self._read_state().get("mgmt_cidr")
        if wanted is None:
            wanted = recorded or self._derived_mgmt()
        net = ipaddress.ip_network(wanted)
        if net.prefixlen != 24 or not net.subnet_of(MGMT_SUPERNET):  # type: ignore[arg-type]
            raise LabError(f"management network {wanted} must be a /24 inside {MGMT_SUPERNET}")
        return str(net)

    def _derived_mgmt(self) -> str:
        if self.prefix == DEFAULT_PREFIX:
            return DEFAULT_MGMT_CIDR
        index = 1 + zlib.crc32(self.prefix.encode()) % 511
        return str(ipaddress.ip_network((int(MGMT_SUPERNET.network_address) + index * 256, 24)))

    # --- names ----------------------------------------------------------------------------

    @property
    def sw_ns(self) -> str:
        return f"{self.prefix}-sw"

    @property
    def client_ns(self) -> str:
        return f"{self.prefix}-client"

    @property
    def gw_ns(self) -> str:
        return f"{self.prefix}-gw"

    def member_ns(self, name: str) -> str:
        return f"{self.prefix}-m-{name}"

    def instance_ns(self, instance_id: str, kind: str) -> str:
        hexid = instance_id.replace("-", "").lower()[:8]
        return f"{self.prefix}-{'d' if kind == 'distributor' else 'a'}-{hexid}"

    def is_instance_ns(self, name: str) -> bool:
        return re.fullmatch(rf"{re.escape(self.prefix)}-[ad]-[0-9a-f]{{8}}", name) is not None

    @staticmethod
    def instance_cgroup(ns: str) -> str:
        return f"cohort/{ns}"

    @property
    def host_if(self) -> str:
        return "cohort-mgmt" if self.prefix == DEFAULT_PREFIX else f"ch{short_hash(self.prefix, 8)}-mg"

    @property
    def mgmt_host_ip(self) -> str:
        """Where the controller listens for agents' heartbeats."""
        return host_ip(self.mgmt_cidr, 1)

    def networks(self) -> list[LabNetwork]:
        return lab_networks(self.prefix, self.mgmt_cidr)

    def network(self, key: str) -> LabNetwork:
        return next(n for n in self.networks() if n.key == key)

    def subnets(self) -> list[Subnet]:
        return lab_subnets(self.prefix)

    def subnet(self, name_or_id: str) -> Subnet | None:
        return next((s for s in self.subnets() if name_or_id in (s.id, s.name)), None)

    def network_of_subnet(self, subnet_id: str) -> LabNetwork:
        subnet = self.subnet(subnet_id)
        if subnet is None:
            raise AddressError(f"no subnet {subnet_id}")
        return next(n for n in self.networks() if n.subnet_name == subnet.name)

    # --- state ----------------------------------------------------------------------------

    def _read_state(self) -> dict[str, Any]:
        try:
            data = json.loads(self.state_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}
        return data if isinstance(data, dict) else {}

    @contextlib.contextmanager
    def transaction(self) -> Iterator[dict[str, Any]]:
        """The lab state under an exclusive lock (re-entrant within a thread), saved on exit.

        The state is saved even when the body fails: records are written before the kernel
        objects they describe are made, and making those is idempotent, so a retry (or
        ``down()``) finds everything that may exist.
        """
        with self._tlock:
            if self._depth:
                self._depth += 1
                try:
                    yield self._state
                finally:
                    self._depth -= 1
                return
            self.state_dir.mkdir(parents=True, exist_ok=True)
            with open(self._lock_path, "a+") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                self._state = self._read_state()
                before = json.dumps(self._state, sort_keys=True)
                self._depth = 1
                try:
                    yield self._state
                finally:
                    self._depth = 0
                    if json.dumps(self._state, sort_keys=True) != before:
                        tmp = self.state_path.with_suffix(".tmp")
                        tmp.write_text(json.dumps(self._state, sort_keys=True, indent=1))
                        os.replace(tmp, self.state_path)

    def snapshot(self) -> dict[str, Any]:
        with self.transaction() as state:
            return json.loads(json.dumps(state))  # type: ignore[no-any-return]

    # --- lifecycle ------------------------------------------------------------------------

    def is_up(self) -> bool:
        return all(netns.netns_exists(ns) for ns in (self.sw_ns, self.client_ns, self.gw_ns)) and (
            netns.link_exists(self.host_if)
        )

    def up(self) -> None:
        with self.transaction() as st:
            if st.get("mgmt_cidr") not in (None, self.mgmt_cidr) and netns.netns_exists(self.sw_ns):
                raise LabError(f"lab {self.prefix} is up with management network {st['mgmt_cidr']}")
            self._check_mgmt_free()
            st.update(version=1, prefix=self.prefix, mgmt_cidr=self.mgmt_cidr)
            st.setdefault("members", {})
            mgmt = self.network("mgmt")
            allocate_address(st, "public", PUBLIC_CIDR, "gateway", first=1, address=PUBLIC_GATEWAY)
            allocate_address(st, "mgmt", mgmt.cidr, "host", first=1, address=self.mgmt_host_ip)
            self._build_switch()
            self._build_client_and_gateway()
            netns.add_veth(self.host_if, None, "h-mgmt", self.sw_ns)
            netns.set_link("h-mgmt", self.sw_ns, master=mgmt.bridge)
            netns.add_addr(self.host_if, None, f"{self.mgmt_host_ip}/24")
            netns.set_link(self.host_if, None)
            for name in list(st["members"]):
                self._ensure_member(st, name)

    def _check_mgmt_free(self) -> None:
        mgmt = ipaddress.ip_network(self.mgmt_cidr)
        for ifname, cidr in netns.addresses():
            if ifname != self.host_if and ipaddress.ip_interface(cidr).network.overlaps(mgmt):
                raise LabError(f"management network {mgmt} is already used on the host by {ifname}")

    def _build_switch(self) -> None:
        netns.add_netns(self.sw_ns)
        for net in self.networks():
            netns.add_bridge(net.bridge, self.sw_ns)

    def _build_client_and_gateway(self) -> None:
        sw = self.sw_ns
        client, gw = self.client_ns, self.gw_ns
        netns.add_netns(client)
        netns.add_netns(gw)
        links = [  # (inner name, namespace, switch-side name, bridge, address/len)
            ("eth0", client, "c-client", "br-cl", f"{CLIENT_IP}/24"),
            ("cl0", gw, "g-cl", "br-cl", f"{CLIENT_GATEWAY}/24"),
            ("fe0", gw, "g-fe", "br-fe", f"{PUBLIC_GATEWAY}/24"),
        ]
        for inner, ns, outer, bridge, cidr in links:
            netns.add_veth(inner, ns, outer, sw)
            netns.set_link(outer, sw, master=bridge)
            netns.add_addr(inner, ns, cidr)
            netns.set_link(inner, ns)
        netns.add_route(client, "default", CLIENT_GATEWAY)
        netns.sysctl(gw, "net.ipv4.ip_forward", 1)
        # Direct return and ECMP make asymmetric paths normal here; never drop them as spoofed.
        for conf in ("all", "default"):
            netns.sysctl(gw, f"net.ipv4.conf.{conf}.rp_filter", 0)

    def owned_namespaces(self, state: dict[str, Any] | None = None) -> list[str]:
        """Existing namespaces of this lab: infrastructure, recorded ones and any left by a crash."""
        state = state if state is not None else self._read_state()
        fixed = {self.sw_ns, self.client_ns, self.gw_ns}
        recorded = {self.member_ns(m) for m in state.get("members", {})}
        recorded |= {rec["compute_id"] for rec in state.get("instances", {}).values()}
        pattern = re.compile(rf"{re.escape(self.prefix)}-(m-[a-z0-9_]+|[ad]-[0-9a-f]{{8}})")
        return sorted(
            ns for ns in netns.list_netns() if ns in fixed | recorded or pattern.fullmatch(ns)
        )

    def down(self) -> None:
        with self.transaction() as st:
            for rec in st.get("members", {}).values():
                netns.kill_pids([rec["pid"]] if netns.pid_alive(rec.get("pid"), rec.get("starttime")) else [])
            owned = self.owned_namespaces(st)
            instances = {ns for ns in owned if self.is_instance_ns(ns)}
            instances |= {rec["compute_id"] for rec in st.get("instances", {}).values()}
            for ns in instances:
                netns.kill_pids(netns.cgroup_pids(self.instance_cgroup(ns)))
            for ns in owned:
                netns.del_netns(ns)
            for ns in instances:
                netns.cgroup_remove(self.instance_cgroup(ns))
            netns.del_link(self.host_if)
            st.clear()

    def status(self) -> dict[str, Any]:
        st = self.snapshot()
        members = [
            {
                "name": name,
                "address": rec["address"],
                "port": rec["port"],
                "namespace": self.member_ns(name),
                "alive": netns.pid_alive(rec.get("pid"), rec.get("starttime")),
            }
            for name, rec in sorted(st.get("members", {}).items())
        ]
        return {
            "prefix": self.prefix,
            "up": self.is_up(),
            "state_file": str(self.state_path),
            "management": {
                "cidr": self.mgmt_cidr,
                "host_ip": self.mgmt_host_ip,
                "host_interface": self.host_if,
            },
            "networks": [
                {"id": n.id, "name": n.name, "cidr": n.cidr, "bridge": n.bridge} for n in self.networks()
            ],
            "subnets": [dataclasses.asdict(s) for s in self.subnets()],
            "members": members,
            "instances": sorted(rec["compute_id"] for rec in st.get("instances", {}).values()),
            "namespaces": self.owned_namespaces(st),
        }

    # --- members --------------------------------------------------------------------------

    def add_member(self, name: str, port: int = 80, workers: int = 1) -> str:
        """Start (or keep) the HTTP member ``name`` on the back-end network; returns its address."""
        if not MEMBER_NAME.match(name) or name in RESERVED_NAMES:
            raise LabError(f"bad member name {name!r}: use [a-z0-9_], at most 24 characters")
        if not 0 < port < 65536 or workers < 1:
            raise LabError("bad port or worker count")
        with self.transaction() as st:
            if not netns.netns_exists(self.sw_ns):
                raise LabError(f"lab {self.prefix} is not up")
            address = allocate_address(
                st, "private", PRIVATE_CIDR, f"member:{name}", first=BACKEND_RANGE[0], last=BACKEND_RANGE[1]
            )
            members = st.setdefault("members", {})
            rec = members.setdefault(name, {})
            if (rec.get("port"), rec.get("workers", 1)) != (port, workers):
                netns.kill_pids([rec["pid"]] if netns.pid_alive(rec.get("pid"), rec.get("starttime")) else [])
                rec.update(pid=None, starttime=None)
            rec.update(address=address, port=port, workers=workers)
            self._ensure_member(st, name)
            return address

    def _ensure_member(self, st: dict[str, Any], name: str) -> None:
        rec = st["members"][name]
        ns, sw_if = self.member_ns(name), f"m{short_hash(name)}"
        netns.add_netns(ns)
        netns.add_veth("eth0", ns, sw_if, self.sw_ns)
        netns.set_link(sw_if, self.sw_ns, master="br-be")
        netns.add_addr("eth0", ns, f"{rec['address']}/24")
        netns.set_link("eth0", ns)
        if netns.pid_alive(rec.get("pid"), rec.get("starttime")):
            return
        bind = f"{rec['address']}:{rec['port']}"
        cmd = [sys.executable, "-m", "cohort.lab_member", "--name", name, "--bind", bind]
        cmd += ["--workers", str(rec.get("workers", 1))]
        log = self.state_dir / "members" / f"{self.prefix}-{name}.log"
        rec["pid"], rec["starttime"] = netns.spawn(ns, cmd, log, nofile=NOFILE, env=_pythonpath_env())
        deadline = time.monotonic() + 10
        while not netns.listening(rec["pid"], ns, rec["port"]):
            if not netns.pid_alive(rec["pid"], rec["starttime"]) or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                raise LabError(f"member {name} did not start listening on {bind}: {tail}")
            time.sleep(0.02)

    def remove_member(self, name: str) -> None:
        with self.transaction() as st:
            rec = st.get("members", {}).pop(name, None)
            if rec and netns.pid_alive(rec.get("pid"), rec.get("starttime")):
                netns.kill_pids([rec["pid"]])
            if MEMBER_NAME.match(name):
                netns.del_netns(self.member_ns(name))
            release_address(st, "private", f"member:{name}")

    def member_address(self, name: str) -> str | None:
        rec = self.snapshot().get("members", {}).get(name)
        return None if rec is None else str(rec["address"])

    # --- running commands -----------------------------------------------------------------

    def resolve_ns(self, which: str) -> str:
        """``client``, ``gw``, ``sw``, a member name or a full namespace name of this lab."""
        fixed = {"client": self.client_ns, "gw": self.gw_ns, "sw": self.sw_ns}
        if which in fixed:
            return fixed[which]
        if which in self.owned_namespaces():
            return which
        if MEMBER_NAME.match(which) and netns.netns_exists(self.member_ns(which)):
            return self.member_ns(which)
        raise LabError(f"no namespace {which!r} in lab {self.prefix}")

    def exec(self, which: str, cmd: Sequence[str], timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return netns.run_in(self.resolve_ns(which), cmd, check=False, timeout=timeout)

    def exec_client(self, cmd: list[str], timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return self.exec("client", cmd, timeout)


def _pythonpath_env() -> dict[str, str]:
    """Make ``python -m cohort...`` importable in a child even when cohort is not installed."""
    root = str(Path(__file__).resolve().parent.parent)
    current = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": root if not current else f"{root}{os.pathsep}{current}", "PYTHONUNBUFFERED": "1"}
