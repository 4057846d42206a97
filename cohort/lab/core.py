"""The lab network itself: its namespaces, switch, gateway, client and member servers.

The lab owns the namespaces named ``{prefix}-...``, the switch bridges, the gateway router,
the client and the member servers, built on the address plan of ``cohort.netplan``; what it
allocated lives in its state file (``cohort.lab.state``), shared by the controller and the
``cohort lab`` commands. Instances (``lab.instances``) and ports and VIPs (``lab.ports``) are
the parts the lab compute and network drivers adapt.

Topology (every box is a namespace; ``sw`` holds one Linux bridge per network)::

    client 198.51.100.10 -- br-cl -- 198.51.100.1 gw 203.0.113.1 -- br-fe -- amphorae, distributors
    members 192.0.2.10+ -- br-be -- amphorae back-end ports
    host 198.18.X.1 (root namespace) -- br-mgmt -- agents 198.18.X.10+

Only the management network touches the root namespace. A lab with a non-default prefix
takes its own management /24 inside 198.18.0.0/15, so two labs coexist.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import os
import re
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cohort import netns
from cohort.datamodel import Subnet
from cohort.lab import sctp_setup
from cohort.lab.addresses import AddressBook
from cohort.lab.errors import LabError, LabNotReady
from cohort.lab.instances import NOFILE, LabInstances
from cohort.lab.ports import LabPorts
from cohort.lab.router import LabRouter
from cohort.lab.state import LabStateFile
from cohort.netplan import (
    BACKEND_RANGE,
    CLIENT_GATEWAY,
    CLIENT_IP,
    DEFAULT_MGMT_CIDR,
    DEFAULT_PREFIX,
    FRONTEND_PORT_RANGE,
    MGMT_RANGE,
    MGMT_SUPERNET,
    PRIVATE_CIDR,
    PUBLIC_CIDR,
    PUBLIC_GATEWAY,
    AddressError,
    PlanNetwork,
    host_ip,
    plan_networks,
    plan_subnets,
)

MEMBER_NAME = re.compile(r"^[a-z0-9][a-z0-9_]{0,23}$")  # no '-': keeps namespace names unambiguous
RESERVED_NAMES = {"client", "gw", "sw"}  # they name the lab's own namespaces in exec()
PREFIX_RE = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
# The first and last host numbers reserve_address hands out on each network by default.
MEMBER_PROTOCOLS = ("HTTP", "SCTP")  # HTTP: member_server; SCTP: sctp_peer's echo member
DEFAULT_RANGES = {"public": FRONTEND_PORT_RANGE, "private": BACKEND_RANGE, "mgmt": MGMT_RANGE, "client": (2, 254)}


def short_hash(text: str, n: int = 10) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:n]


class Lab:
    """One lab network; every public method is idempotent and safe to repeat after a crash."""

    def __init__(self, state_dir: Path, prefix: str = DEFAULT_PREFIX, mgmt_cidr: str | None = None) -> None:
        if not PREFIX_RE.match(prefix) or len(prefix) > 32:
            raise LabError(f"bad lab prefix {prefix!r}")
        self.state_dir = Path(state_dir)
        self.prefix = prefix
        self._state = LabStateFile(self.state_dir, prefix)
        self.state_path = self._state.path
        self.mgmt_cidr = self._resolve_mgmt(mgmt_cidr)
        self.instances = LabInstances(self)
        self.ports = LabPorts(self)
        self.router = LabRouter(self)

    def _resolve_mgmt(self, wanted: str | None) -> str:
        recorded = self._state.read().get("mgmt_cidr")
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

    def networks(self) -> list[PlanNetwork]:
        return plan_networks(self.prefix, self.mgmt_cidr)

    def network(self, key: str) -> PlanNetwork:
        return next(n for n in self.networks() if n.key == key)

    def subnets(self) -> list[Subnet]:
        return plan_subnets(self.prefix)

    def subnet(self, name_or_id: str) -> Subnet | None:
        return next((s for s in self.subnets() if name_or_id in (s.id, s.name)), None)

    def network_of_subnet(self, subnet_id: str) -> PlanNetwork:
        subnet = self.subnet(subnet_id)
        if subnet is None:
            raise AddressError(f"no subnet {subnet_id}")
        return next(n for n in self.networks() if n.subnet_name == subnet.name)

    # --- state ----------------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[dict[str, Any]]:
        """The lab state under its lock (see ``cohort.lab.state``); the address book's section is
        written only through :class:`cohort.lab.addresses.AddressBook`."""
        with self._state.transaction() as state:
            yield state

    def snapshot(self) -> dict[str, Any]:
        return self._state.snapshot()

    def peek(self) -> dict[str, Any]:
        """The saved state without the lock: one whole version (the file is replaced atomically),
        possibly just older than a change in progress. For frequent reads that tolerate that."""
        return self._state.read()

    def reserve_address(self, network: str, owner: str, address: str | None = None,
                        first: int | None = None, last: int | None = None) -> str:
        """Reserve an address of lab network ``network`` (public, private, mgmt, client) for ``owner``."""
        net = self.network(network)
        low, high = DEFAULT_RANGES[network]
        with self.transaction() as st:
            return AddressBook(st).reserve(net.key, net.cidr, owner, first=low if first is None else first,
                                           last=high if last is None else last, address=address)

    def release_address(self, network: str, owner: str) -> None:
        with self.transaction() as st:
            AddressBook(st).release(network, owner)

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
            book = AddressBook(st)
            book.reserve("public", PUBLIC_CIDR, "gateway", first=1, address=PUBLIC_GATEWAY)
            book.reserve("mgmt", mgmt.cidr, "host", first=1, address=self.mgmt_host_ip)
            self._build_switch()
            self._build_client_and_gateway()
            netns.add_veth(self.host_if, None, "h-mgmt", self.sw_ns)
            netns.set_link("h-mgmt", self.sw_ns, master=mgmt.bridge)
            netns.add_addr(self.host_if, None, f"{self.mgmt_host_ip}/24")
            netns.set_link(self.host_if, None)
            for name in list(st["members"]):
                self._ensure_member(st, name)
        self.router.start()

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
        state = state if state is not None else self._state.read()
        fixed = {self.sw_ns, self.client_ns, self.gw_ns}
        recorded = {self.member_ns(m) for m in state.get("members", {})}
        recorded |= {rec["compute_id"] for rec in state.get("instances", {}).values()}
        pattern = re.compile(rf"{re.escape(self.prefix)}-(m-[a-z0-9_]+|[ad]-[0-9a-f]{{8}})")
        return sorted(
            ns for ns in netns.list_netns() if ns in fixed | recorded or pattern.fullmatch(ns)
        )

    def down(self) -> None:
        self.router.stop()
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
                "protocol": rec.get("protocol", "HTTP"),
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
            "router": self.router.status(),
            "namespaces": self.owned_namespaces(st),
        }

    # --- members --------------------------------------------------------------------------

    def add_member(self, name: str, port: int = 80, workers: int = 1, exclusive: bool = False,
                   protocol: str = "HTTP") -> str:
        """Start (or keep) the member ``name`` on the back-end network; returns its address.

        ``protocol``: HTTP (``member_server``) or SCTP (``sctp_peer``'s echo member, one process).
        ``exclusive`` refuses a name already in use instead of keeping that member.
        """
        if not MEMBER_NAME.match(name) or name in RESERVED_NAMES:
            raise LabError(f"bad member name {name!r}: use [a-z0-9_], at most 24 characters")
        if not 0 < port < 65536:
            raise LabError(f"port {port} is out of range (1-65535)")
        if workers < 1:
            raise LabError(f"worker count {workers} must be at least 1")
        if protocol not in MEMBER_PROTOCOLS or (protocol == "SCTP" and workers != 1):
            raise LabError(f"a member serves {' or '.join(MEMBER_PROTOCOLS)} (SCTP with one worker), not {protocol}")
        with self.transaction() as st:
            if not self.is_up():
                raise LabNotReady(f"lab {self.prefix} is not up (run `cohort up` or `cohort lab up`)")
            if exclusive and name in st.get("members", {}):
                raise LabError(f"member name {name!r} is in use ({st['members'][name]['address']})")
            address = AddressBook(st).reserve("private", PRIVATE_CIDR, f"member:{name}",
                                              first=BACKEND_RANGE[0], last=BACKEND_RANGE[1])
            members = st.setdefault("members", {})
            rec = members.setdefault(name, {})
            if (rec.get("port"), rec.get("workers", 1), rec.get("protocol", "HTTP")) != (port, workers, protocol):
                netns.kill_pids([rec["pid"]] if netns.pid_alive(rec.get("pid"), rec.get("starttime")) else [])
                rec.update(pid=None, starttime=None)
            rec.update(address=address, port=port, workers=workers, protocol=protocol)
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
        sctp = rec.get("protocol", "HTTP") == "SCTP"
        if sctp:
            sctp_setup.quiet_icmp(ns)
            cmd = sctp_setup.serve_command(name, rec["address"], rec["port"])
        else:
            cmd = [sys.executable, "-m", "cohort.lab.member_server", "--name", name, "--bind", bind]
            cmd += ["--workers", str(rec.get("workers", 1))]
        log = self.state_dir / "members" / f"{self.prefix}-{name}.log"
        rec["pid"], rec["starttime"] = netns.spawn(ns, cmd, log, nofile=NOFILE, env=_pythonpath_env())
        deadline = time.monotonic() + 10
        while not (sctp_setup.ready(rec["pid"]) if sctp else netns.listening(rec["pid"], ns, rec["port"])):
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
            AddressBook(st).release("private", f"member:{name}")

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

    def sctp_client(self, address: str, port: int, args: Sequence[str] = (),
                    timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """``sctp_peer send ADDR:PORT *args`` in the client namespace (which then drops ICMP refusals of SCTP)."""
        sctp_setup.quiet_icmp(self.client_ns)
        cmd = sctp_setup.send_command(address, port, args)
        return netns.run(netns.in_ns(self.client_ns, cmd), check=False, timeout=timeout)


def _pythonpath_env() -> dict[str, str]:
    """Make ``python -m cohort...`` importable in a child even when cohort is not installed."""
    root = str(Path(__file__).resolve().parents[2])
    current = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": root if not current else f"{root}{os.pathsep}{current}", "PYTHONUNBUFFERED": "1"}
