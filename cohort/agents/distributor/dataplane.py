"""The distributor agent's hands on the kernel of its own namespace: sysctls, interfaces,
policy routing and the nftables table, applied from plans rendered by ``cohort.distributor.nft``.

Every call is idempotent and re-applying an unchanged plan changes nothing a packet can
see (addresses, routes and neighbours are replaced in place, nft changes are one
transaction), which is what makes an agent restart invisible to open connections.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import threading
from collections.abc import Callable, Iterable, Sequence

from cohort import validation
from cohort.agents.common import nft_netlink
from cohort.agents.common.net import find_interface, ip_json, set_sysctl
from cohort.agents.common.nftables import nft as run_nft
from cohort.agents.common.proc import CommandFailed, run
from cohort.distributor import nft

LOG = logging.getLogger(__name__)

NAMESPACE_SYSCTLS = {
    "net.ipv4.ip_forward": "1",
    # The distributor sends VIP packets back out of the interface they came in on: the
    # redirects the kernel would send the gateway for that are wrong here.
    "net.ipv4.conf.all.send_redirects": "0",
    "net.ipv4.conf.default.send_redirects": "0",
    # Clients are not routable from here (no default route): reverse-path checks would drop them.
    "net.ipv4.conf.all.rp_filter": "0",
    "net.ipv4.conf.default.rp_filter": "0",
    # Several load balancer interfaces may share a subnet: each answers ARP for its own addresses only.
    "net.ipv4.conf.all.arp_ignore": "1",
    "net.ipv4.conf.all.arp_announce": "2",
}
# Seconds a joining member waits for its VRRP peer to answer ARP (arping takes whole seconds).
INTRODUCE_TIMEOUT = 1


class DataPlane:
    # Link, route and rule events, one a line: silent on an idle distributor.
    MONITOR = ("ip", "-o", "monitor", "link", "route", "rule")
    RESTART_DELAY = 1.0

    def prepare(self) -> None:
        """Namespace-wide settings, and the local table moved behind the fwmark rules."""
        for name, value in NAMESPACE_SYSCTLS.items():
            set_sysctl(name, value)
        rules = ip_json("rule", "show")
        local = {r.get("priority") for r in rules if r.get("table") == "local"}
        if nft.LOCAL_PREF not in local:
            run(["ip", "rule", "add", "pref", str(nft.LOCAL_PREF), "lookup", "local"])
        if 0 in local:
            run(["ip", "rule", "del", "pref", "0", "lookup", "local"])

    def find_interface(self, mac: str) -> str:
        return find_interface(mac)

    def configure_interface(self, ifname: str, address: str, prefixlen: int) -> None:
        """The port's own address; its VIPs are keepalived's (they are the pair's, not this member's)."""
        for key in ("send_redirects", "rp_filter"):
            set_sysctl(f"net.ipv4.conf.{ifname}.{key}", "0")
        run(["ip", "link", "set", "dev", ifname, "up"])
        run(["ip", "addr", "replace", f"{address}/{prefixlen}", "dev", ifname])

    def addresses(self, ifname: str) -> set[str]:
        found: set[str] = set()
        try:
            links = ip_json("-4", "addr", "show", "dev", ifname)
        except CommandFailed:
            return found  # the interface is gone: it holds nothing
        for link in links:
            found.update(str(a["local"]) for a in link.get("addr_info", []) if "local" in a)
        return found

    def introduce(self, ifname: str, own: str, peer: str, timeout: int = INTRODUCE_TIMEOUT) -> bool:
        """Ask ``peer`` for its MAC from ``own`` on ``ifname`` until it answers or ``timeout`` passes;
        whether it answered. Answering, it learns this member's MAC: its VRRP advertisements reach a
        newcomer at once, even when the address's last owner left it an unresolved neighbour."""
        command = ["arping", "-q", "-f", "-w", str(timeout), "-I", validation.interface_name(ifname),
                   "-s", validation.canonical_ip(own, "own address"), validation.canonical_ip(peer, "VRRP peer")]
        try:
            run(command)
        except CommandFailed:
            return False
        return True

    def release_addresses(self, ifname: str, cidrs: Iterable[str]) -> None:
        for cidr in cidrs:
            try:
                run(["ip", "addr", "del", cidr, "dev", ifname])
            except CommandFailed as e:
                LOG.info("address %s on %s already gone: %s", cidr, ifname, e)

    def existing_routing(self) -> nft.Routing:
        return nft.Routing(
            nft.parse_rules(ip_json("-4", "rule", "show")),
            nft.parse_routes(ip_json("-4", "route", "show", "table", "all")),
            nft.parse_neighbours(ip_json("-4", "neigh", "show", "nud", "permanent")),
        )

    def nft_keys(self) -> set[str]:
        """Load balancer keys of the objects in our table (from their names: no map elements read)."""
        try:
            return nft.object_keys(nft_netlink.names(nft.FAMILY, nft.TABLE))
        except OSError as exc:  # fails like the nft commands around it
            raise CommandFailed(["nftables", "dump", nft.TABLE], exc.errno or 1, str(exc)) from exc

    def apply(
        self,
        plans: Sequence[nft.VipPlan],
        keep_keys: Iterable[str],
        managed_ifaces: Iterable[str],
        buckets_for: Iterable[str] | None,
    ) -> None:
        """Make the kernel match ``plans``; objects of keys outside ``keep_keys`` are removed."""
        stale = self.nft_keys() - set(keep_keys)
        before, after = nft.render_ip_batch(plans, self.existing_routing(), managed_ifaces)
        if before:
            run(["ip", "-batch", "-"], stdin="\n".join(before) + "\n")
        run_nft("-f", "-", stdin=nft.render_nft(plans, stale_keys=stale, buckets_for=buckets_for))
        if after:
            run(["ip", "-batch", "-"], stdin="\n".join(after) + "\n")

    def drift(self, plans: Sequence[nft.VipPlan], keep_keys: Iterable[str], managed_ifaces: Iterable[str]) -> list[str]:
        """How the kernel differs from ``plans`` (empty: as applied): rules, routes, permanent
        neighbours, and load balancers whose nft objects are missing ("nft <key>")."""
        found = nft.routing_drift(plans, self.existing_routing(), managed_ifaces)
        return found + [f"nft {key}" for key in sorted(set(keep_keys) - self.nft_keys())]

    def watch(self, changed: Callable[[], None], stop: threading.Event) -> None:
        """Call ``changed`` on every link, route or rule event of the namespace (a link
        that went down and up again; someone deleting a route), until ``stop`` is set.

        One ``ip monitor`` process (``MONITOR``), restarted after ``RESTART_DELAY`` if it dies.
        """
        while not stop.is_set():
            monitor = subprocess.Popen(self.MONITOR, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            self._monitor = monitor
            changed()  # events may have been missed while no monitor ran
            assert monitor.stdout is not None
            for _line in monitor.stdout:
                changed()
                if stop.is_set():
                    break
            monitor.kill()
            monitor.wait()
            if not stop.is_set():
                LOG.warning("ip monitor exited (%s): starting it again", monitor.returncode)
                stop.wait(self.RESTART_DELAY)

    def stop_watching(self) -> None:
        monitor = getattr(self, "_monitor", None)
        if monitor is not None and monitor.poll() is None:
            monitor.kill()

    def apply_buckets(self, plan: nft.VipPlan) -> None:
        run_nft("-f", "-", stdin=nft.render_buckets(plan))

    def counters(self, flows_of: Iterable[str] | None = None) -> dict[str, nft.VipCounters]:
        """One listing of the whole table when every VIP's flows are wanted, else the named counters
        and only the wanted flow maps: their elements are what makes a listing expensive."""
        if flows_of is None:
            return self._listing(["list", "table", nft.FAMILY, nft.TABLE])
        # Not ``nft list counters``: it reads every flow map's elements first (see nft_netlink).
        try:
            named = nft_netlink.counters(nft.FAMILY, nft.TABLE)
        except OSError as exc:
            LOG.warning("reading the counters failed: %s", exc)
            named = {}
        found = nft.counters_by_key({name: (c.packets, c.bytes) for name, c in named.items()})
        for key in flows_of:
            flows: dict[int, int] = {}
            for prefix in ("flows_", *nft.L4_PIN_MAPS):  # TCP's pins, then UDP's and SCTP's
                pinned = self._listing(["list", "map", nft.FAMILY, nft.TABLE, f"{prefix}{key}"]).get(key)
                for mark, count in (pinned.flows if pinned is not None else {}).items():
                    flows[mark] = flows.get(mark, 0) + count
            found[key] = dataclasses.replace(found.get(key, nft.VipCounters()), flows=flows)
        return found

    @staticmethod
    def _listing(command: list[str]) -> dict[str, nft.VipCounters]:
        try:
            return nft.parse_table(json.loads(run_nft("-j", *command)))
        except CommandFailed:
            return {}
