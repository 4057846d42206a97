"""Ports and VIP reservations of the lab: veth ports hot-plugged into instances, and tenant isolation.

A port is a veth pair. One end (``fe0`` on public-subnet, ``be0`` on private-subnet) appears
in the instance's namespace with a stable MAC derived from its address (see
:func:`cohort.netplan.address_mac`), up but without addresses, as a hot-plugged NIC would be:
the agent finds it by MAC and configures it. The other end (``p`` + 10 hex of the port id)
joins the subnet's bridge in the lab's switch namespace. Addresses come from the address plan:
instance ports from .2-.99 on public-subnet (.10 up on private-subnet), VIPs from .100 up
unless a free one is asked for.

Tenant isolation is done in the switch namespace's kernel with one nftables ``bridge`` table,
``cohort_isolation``, rebuilt atomically from the recorded ports on every plug and unplug: a
frame bridged from one tenant port to another is dropped unless both ports belong to the same
project. Ports of project ``SHARED_PROJECT`` (the empty string: distributors and other
infrastructure), the gateway and members are not tenant ports, so every project reaches them
and they reach every project.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cohort import netns
from cohort.datamodel import Subnet
from cohort.lab.addresses import AddressBook
from cohort.lab.errors import LabError, LabNotReady
from cohort.netplan import PORT_RANGES, VIP_FIRST, AddressError, address_mac, stable_id

if TYPE_CHECKING:
    from cohort.lab.core import Lab

SHARED_PROJECT = ""
NFT_TABLE = "cohort_isolation"
INNER_NAMES = {"public-subnet": "fe0", "private-subnet": "be0"}


@dataclass(frozen=True)
class LabVip:
    port_id: str
    address: str
    subnet: Subnet


@dataclass(frozen=True)
class LabPort:
    port_id: str
    mac_address: str
    address: str
    subnet: Subnet


def isolation_ruleset(ports: dict[str, dict[str, Any]]) -> str:
    """The nftables script that drops bridging between ports of different projects."""
    by_project: dict[str, list[str]] = defaultdict(list)
    for rec in ports.values():
        if rec["project_id"] != SHARED_PROJECT:
            by_project[rec["project_id"]].append(rec["outer"])
    tenant = sorted(f'"{p}"' for group in by_project.values() for p in group)
    pairs = sorted(f'"{a}" . "{b}"' for group in by_project.values() for a in group for b in group if a != b)

    def elements(items: list[str]) -> str:
        return f" elements = {{ {', '.join(items)} }};" if items else ""

    return "\n".join(
        [
            f"add table bridge {NFT_TABLE}",
            f"delete table bridge {NFT_TABLE}",
            f"table bridge {NFT_TABLE} {{",
            f"  set tenant_ports {{ type ifname;{elements(tenant)} }}",
            f"  set same_project {{ type ifname . ifname;{elements(pairs)} }}",
            "  chain forward {",
            "    type filter hook forward priority 0; policy accept;",
            "    iifname @tenant_ports oifname @tenant_ports iifname . oifname != @same_project drop",
            "  }",
            "}",
            "",
        ]
    )


class LabPorts:
    def __init__(self, lab: Lab) -> None:
        self.lab = lab

    def _subnet(self, subnet_id: str) -> Subnet:
        subnet = self.lab.subnet(subnet_id)
        if subnet is None:
            raise LabError(f"subnet {subnet_id} not found")
        return subnet

    def reserve_vip(self, lb_id: str, subnet_id: str, address: str | None) -> LabVip:
        subnet = self._subnet(subnet_id)
        net = self.lab.network_of_subnet(subnet.id)
        with self.lab.transaction() as st:
            vips = st.setdefault("vips", {})
            rec = vips.get(lb_id)
            if rec is not None and (rec["subnet_id"] != subnet.id or address not in (None, rec["address"])):
                raise LabError(f"load balancer {lb_id} already has VIP {rec['address']}")
            try:
                vip = AddressBook(st).reserve(net.key, net.cidr, f"vip:{lb_id}", first=VIP_FIRST, address=address)
            except AddressError as exc:
                raise LabError(f"VIP address: {exc}") from exc
            port_id = stable_id(self.lab.prefix, "vip", lb_id)
            vips[lb_id] = {"address": vip, "subnet_id": subnet.id, "port_id": port_id}
            return LabVip(port_id, vip, subnet)

    def release_vip(self, lb_id: str) -> None:
        with self.lab.transaction() as st:
            rec = st.get("vips", {}).pop(lb_id, None)
            if rec is not None:
                AddressBook(st).release(self.lab.network_of_subnet(rec["subnet_id"]).key, f"vip:{lb_id}")

    def plug(self, compute_id: str, subnet_id: str, project_id: str) -> LabPort:
        subnet = self._subnet(subnet_id)
        lab = self.lab
        if not lab.is_instance_ns(compute_id):
            raise LabError(f"{compute_id} is not an instance of lab {lab.prefix}")
        net = lab.network_of_subnet(subnet.id)
        port_id = stable_id(lab.prefix, "port", f"{compute_id}/{subnet.id}")
        with lab.transaction() as st:
            if not netns.netns_exists(compute_id):
                raise LabNotReady(f"instance {compute_id} does not exist (yet)")
            ports = st.setdefault("ports", {})
            rec = ports.get(port_id)
            if rec is not None and rec["project_id"] != project_id:
                raise LabError(f"port {port_id} belongs to project {rec['project_id']!r}")
            if rec is None:
                first, last = PORT_RANGES[subnet.name]
                try:
                    address = AddressBook(st).reserve(net.key, net.cidr, f"port:{port_id}", first=first, last=last)
                except AddressError as exc:
                    raise LabNotReady(str(exc)) from exc
                rec = {
                    "compute_id": compute_id,
                    "subnet_id": subnet.id,
                    "project_id": project_id,
                    "address": address,
                    "mac": address_mac(net.key, address),
                    "inner": INNER_NAMES.get(subnet.name, "eth1"),
                    "outer": f"p{port_id.replace('-', '')[:10]}",
                }
                ports[port_id] = rec
            elif rec.get("plugged") and netns.link_exists(rec["inner"], compute_id):
                # Plugged before (every controller pass plugs a distributor's VIP port again): the
                # veth pair lives and dies as one, so its inner end says it is all still there.
                return self._port(port_id, rec)
            # Isolation first, so the port never forwards a frame before its project is known.
            netns.nft_apply(lab.sw_ns, isolation_ruleset(ports))
            netns.add_veth(rec["inner"], compute_id, rec["outer"], lab.sw_ns, mac=rec["mac"])
            netns.set_link(rec["outer"], lab.sw_ns, master=net.bridge)
            netns.set_link(rec["inner"], compute_id)
            rec["plugged"] = True
            return self._port(port_id, rec)

    def _port(self, port_id: str, rec: dict[str, Any]) -> LabPort:
        return LabPort(port_id, rec["mac"], rec["address"], self._subnet(rec["subnet_id"]))

    def unplug_all(self, compute_id: str) -> None:
        with self.lab.transaction() as st:
            ports = st.get("ports", {})
            mine = [pid for pid, rec in ports.items() if rec["compute_id"] == compute_id]
            book = AddressBook(st)
            for port_id in mine:
                rec = ports.pop(port_id)
                netns.del_link(rec["outer"], self.lab.sw_ns)
                book.release(self.lab.network_of_subnet(rec["subnet_id"]).key, f"port:{port_id}")
            if mine and netns.netns_exists(self.lab.sw_ns):
                netns.nft_apply(self.lab.sw_ns, isolation_ruleset(ports))

    def switch_ports(self, compute_id: str) -> dict[str, str]:
        """The instance's links (``fe0``, ``be0``) -> the switch-side ends of their veth pairs."""
        ports = self.lab.snapshot().get("ports", {})
        return {rec["inner"]: rec["outer"] for rec in ports.values() if rec["compute_id"] == compute_id}

    def ports_of(self, compute_id: str) -> list[LabPort]:
        ports = self.lab.snapshot().get("ports", {})
        return [self._port(pid, rec) for pid, rec in ports.items() if rec["compute_id"] == compute_id]
