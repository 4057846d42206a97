"""The second chance: packets of flows an amphora does not own go to the cluster peer that does.

Some open flows of an ACTIVE_ACTIVE cluster reach an amphora that never saw them:

- L3: a router with plain (hash-threshold) ECMP moves some open flows to another next hop
  whenever the number of next hops changes (an amphora joins, leaves or drains);
- L2: a distributor that takes the VIPs over (VRRP) has no flow pins, so it sends each flow where
  its Maglev table says; a flow pinned by the old MASTER before a scale event may now be given to
  another amphora.

The amphora that receives such a packet must not answer it with a reset. So, in each amphora of
an ACTIVE_ACTIVE cluster:

- a BPF program on the VIP's port (tc ingress, ``second_chance.bpf.c``, built by ``make install``)
  looks up the socket each TCP packet would reach here and marks (:data:`UNOWNED_MARK`) one that no
  connection of this amphora owns: it finds only the listener (and is no valid SYN-cookie ACK),
  nothing, or a TIME-WAIT socket. A TIME-WAIT socket may belong to an earlier connection with the
  same four-tuple (clients reuse ports within its minute): it would take the packet of the live
  connection the router has just moved here, and the owner would never see it;
- such a packet for a VIP, arriving from *upstream*, is copied (``dup``) to every other amphora of
  the cluster and dropped here; only the owner has the connection, so only the owner accepts its
  copy and answers (straight to the router, as it answers every packet);
- a copy (it comes from a peer amphora) that is not owned here either is dropped, never copied
  again, so nothing loops.

This used conntrack before (``nf_conntrack_tcp_loose = 0``, ``ct state invalid``), which cost 6-7%
of a new connection's CPU in a small amphora; a socket lookup costs a hash lookup per packet. No
TCP packet is tracked in a cluster amphora (``notrack``). UDP and SCTP are left tracked: their
listeners' DNAT needs conntrack on both sides. nftables' own ``socket`` expression is not enough:
it cannot tell a TIME-WAIT socket from a handshake in progress
(``tests/functional/test_second_chance_time_wait.py`` sets that trap).

*Upstream* is told by the source MAC, in two ways:

- L3 (:attr:`Cluster.routers`): the MACs of the routers, the amphora's BGP peers, which it
  resolves itself. Copies are made of their packets only.
- L2 (:attr:`Cluster.peer_macs`): anything but the MACs of the peer amphorae, which the
  controller sends with their addresses. In an L2 cluster a VIP packet comes either from a
  distributor or from a peer, so "not a peer" *is* "a distributor". It is chosen over the
  distributors' own MACs because those change behind the cluster's back: a failed distributor is
  replaced by a new instance with new ports, hence new MACs, and it may take the VIPs over before
  every amphora of every load balancer would have been told them; until then its packets would
  not be copied and those flows would hang. The peers' MACs change only with the cluster's
  membership, and the controller tells every amphora on each membership change (create, scale,
  replacement) before the distributors' table changes. The cost: any host on the front-end
  network can have an invalid VIP packet copied to the cluster's other amphorae (at most one copy
  per peer, which they drop), as a router can in L3. A copy from a peer not yet known (a
  newcomer, for the moment before this amphora is told) is copied once more to known peers only,
  and those know the copier: it goes no further.

New flows (SYN) are served where they land; nothing is copied in steady state. The ruleset is
one table per IP family, ``cohort_second_chance``, replaced atomically; the VIPs of both kinds are
in it, and :class:`SecondChance` is its one owner in the agent, and the BPF program's.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cohort import validation
from cohort.agents.common.files import atomic_write
from cohort.agents.common.nftables import nft as run_nft
from cohort.agents.common.proc import CommandFailed, run

LOG = logging.getLogger(__name__)
TABLE = "cohort_second_chance"
INTERFACE = re.compile(r"^[A-Za-z0-9_.-]{1,15}\Z")
MAX_PEERS = 64
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")  # as haproxy.check_id, newline refused
_MAC = "0123456789abcdef:"
UNOWNED_MARK = 0x40000000  # what the BPF program marks; as its UNOWNED_MARK
BPF_OBJECT = Path(__file__).with_name("second_chance.bpf.o")
# The filter's place on the port's ingress hook: replaced in place, removed by it.
TC_FILTER = ("pref", "49", "handle", "0xc0", "bpf")
_UNOWNED = f"meta mark {UNOWNED_MARK:#x}"


def _mac(value: str) -> str:
    mac = value.lower() if isinstance(value, str) else ""
    if len(mac) != 17 or set(mac) - set(_MAC) or mac.count(":") != 5 \
            or any(len(part) != 2 for part in mac.split(":")):
        raise ValueError(f"{value!r} is not a MAC address")
    return mac


@dataclass(frozen=True)
class Cluster:
    """One VIP of this amphora as the second chance sees it.

    ``peers``: the front-end addresses of the cluster's other amphorae; ``interface``: the
    front-end interface copies leave by. Upstream is either ``routers`` (L3: copies are made of
    packets from these MACs) or, when ``peer_macs`` is set, anything else than ``peer_macs`` (L2:
    the peers' MACs, one per peer).
    """

    peers: tuple[str, ...]
    interface: str
    routers: tuple[str, ...] = ()
    peer_macs: tuple[str, ...] | None = None


def _copy_rule(family: str, vip: str, cluster: Cluster, others: list[str]) -> str | None:
    """The rule copying ``vip``'s unowned packets from upstream to ``others``, or None (no copy)."""
    if not INTERFACE.match(cluster.interface):
        raise ValueError(f"interface {cluster.interface!r} is invalid")
    if cluster.peer_macs is not None:
        peers = sorted({_mac(m) for m in cluster.peer_macs})
        if cluster.routers:
            raise ValueError(f"VIP {vip}: upstream is either the routers or not the peers, not both")
        if len(peers) < len(set(cluster.peers)):
            # "Not a peer" with a peer missing would copy that peer's copies again: never guess.
            raise ValueError(f"VIP {vip}: every peer needs its MAC address")
        source = f"ether saddr != {{ {', '.join(peers)} }}"
    else:
        routers = sorted({_mac(m) for m in cluster.routers})
        if not routers:
            return None
        source = f"ether saddr {{ {', '.join(routers)} }}"
    if not others:
        return None
    copies = " ".join(f'dup to {peer} device "{cluster.interface}"' for peer in others)
    # The counter shows how many packets took the detour (``nft list table ip cohort_second_chance``).
    return f"    {family} daddr {vip} {_UNOWNED} {source} counter {copies} drop"


def render(vips: Mapping[str, Cluster]) -> str:
    """The tables for ``vips`` (VIP -> its cluster), one per IP family; ValueError on a bad value."""
    rules: dict[str, list[str]] = {"ip": [], "ip6": []}
    for vip, cluster in sorted(vips.items()):
        address = validation.ip_address(vip, "VIP")
        family = "ip" if address.version == 4 else "ip6"
        others = sorted({validation.canonical_ip(p, "peer address") for p in cluster.peers} - {address.compressed})
        others = [peer for peer in others if validation.ip_address(peer).version == address.version]
        copy = _copy_rule(family, address.compressed, cluster, others)
        if copy is not None:
            rules[family].append(copy)
        rules[family].append(f"    {family} daddr {address.compressed} {_UNOWNED} drop")
    lines: list[str] = []
    for family, family_rules in rules.items():
        lines += [f"add table {family} {TABLE}", f"delete table {family} {TABLE}"]
        if family_rules:
            lines += [f"table {family} {TABLE} {{",
                      # Before conntrack (-200): no TCP packet is tracked.
                      "  chain prerouting {", "    type filter hook prerouting priority raw; policy accept;",
                      "    meta l4proto tcp notrack", *family_rules, "  }",
                      "  chain output {", "    type filter hook output priority raw; policy accept;",
                      "    meta l4proto tcp notrack", "  }", "}"]
    return "\n".join(lines) + "\n"


def interfaces(vips: Mapping[str, Cluster]) -> set[str]:
    """The ports the BPF program must watch: each VIP's."""
    return {cluster.interface for cluster in vips.values()}


def switched_record(vip: str, lb_id: str, interface: str, peers: Sequence[Any]) -> tuple[str, dict[str, Any]]:
    """An L2 VIP's record as the agent keeps it, from what the controller sent; ValueError on bad input.

    ``peers``: ``[{"address": front-end address, "mac_address": its MAC}, ...]``, the other amphorae.
    """
    address = validation.canonical_ip(vip, "VIP")
    if not isinstance(lb_id, str) or not _ID.match(lb_id):
        raise ValueError(f"invalid load balancer id {lb_id!r}")
    if not isinstance(interface, str) or not INTERFACE.match(interface):
        raise ValueError(f"interface {interface!r} is invalid")
    if not isinstance(peers, (list, tuple)) or len(peers) > MAX_PEERS:
        raise ValueError(f"peers must be a list of at most {MAX_PEERS}")
    pairs: dict[str, str] = {}
    for peer in peers:
        if not isinstance(peer, dict) or set(peer) != {"address", "mac_address"}:
            raise ValueError('each peer must be {"address": address, "mac_address": MAC}')
        pairs[validation.canonical_ip(peer["address"], "peer address")] = _mac(peer["mac_address"])
    pairs.pop(address, None)
    return address, {"lb_id": lb_id, "interface": interface,
                     "peers": [{"address": a, "mac_address": pairs[a]} for a in sorted(pairs)]}


def switched_cluster(record: Mapping[str, Any]) -> Cluster:
    peers = record.get("peers") or []
    return Cluster(peers=tuple(p["address"] for p in peers), interface=str(record.get("interface", "")),
                   peer_macs=tuple(p["mac_address"] for p in peers))


def load(text: str, watched: set[str], unwatched: set[str]) -> None:
    """Watch ``watched`` ports with the BPF program, load a rendered ruleset, then stop watching
    ``unwatched``; all in this network namespace. The program goes first: the rules act on its mark."""
    for port in sorted(watched):
        if not INTERFACE.match(port):
            raise ValueError(f"interface {port!r} is invalid")
        run(["tc", "qdisc", "replace", "dev", port, "clsact"])
        run(["tc", "filter", "replace", "dev", port, "ingress", *TC_FILTER, "direct-action",
             "object-file", str(BPF_OBJECT), "section", "tc"])
    run_nft("-f", "-", stdin=text)
    for port in sorted(unwatched - watched):
        if INTERFACE.match(port):
            try:
                run(["tc", "filter", "del", "dev", port, "ingress", *TC_FILTER])
            except CommandFailed as exc:  # the port is gone with its filter
                LOG.info("no second chance filter to remove on %s: %s", port, exc)


class SecondChance:
    """The one owner of the table in the agent: the routed VIPs (L3, from the BGP manager, which
    knows the routers) and the switched ones (L2, told by the controller, kept in ``record`` so a
    restarted agent renders the same table)."""

    def __init__(self, record: Path | None = None,
                 apply: Callable[[str, set[str], set[str]], None] = load) -> None:
        self._record = record
        self._apply_text = apply
        self._lock = threading.Lock()
        self._routed: dict[str, Cluster] = {}
        self._switched: dict[str, dict[str, Any]] = self._load()
        self._applied: str | None = None
        self._watched: set[str] = set()

    def _load(self) -> dict[str, dict[str, Any]]:
        if self._record is None:
            return {}
        try:
            data = json.loads(self._record.read_text())
        except (OSError, ValueError):
            return {}
        switched = {}
        for vip, rec in (data.items() if isinstance(data, dict) else []):
            try:
                address, checked = switched_record(vip, rec["lb_id"], rec["interface"], rec["peers"])
            except (ValueError, KeyError, TypeError):
                LOG.warning("ignoring the bad second chance record of %r", vip)
                continue
            switched[address] = checked
        return switched

    def _save(self) -> None:
        if self._record is not None:
            atomic_write(self._record, json.dumps(self._switched, sort_keys=True))

    def _apply(self, routed: Mapping[str, Cluster], switched: dict[str, dict[str, Any]]) -> None:
        """Make ``routed`` and ``switched`` the state and apply its table; ValueError (nothing kept) on a
        bad value. A failed ``nft`` raises but keeps the state, so the next call applies it again."""
        clusters = {**{vip: switched_cluster(rec) for vip, rec in switched.items()}, **routed}
        text, watched = render(clusters), interfaces(clusters)
        if switched != self._switched:
            self._switched = switched
            self._save()
        self._routed = dict(routed)
        if text == self._applied and watched == self._watched:
            return
        self._apply_text(text, watched, self._watched)
        self._applied, self._watched = text, watched

    def resume(self) -> None:
        """Apply what a previous agent was told (the routed VIPs come from the BGP manager)."""
        with self._lock:
            if self._switched and self._applied is None:
                self._apply(self._routed, self._switched)

    def set_routed(self, clusters: Mapping[str, Cluster]) -> None:
        """The L3 VIPs, all of them; applied at once."""
        with self._lock:
            self._apply(clusters, self._switched)

    def set_switched(self, vip: str, lb_id: str, interface: str, peers: Sequence[Any]) -> bool:
        """An L2 VIP and its peers (``switched_record``); applied at once; returns whether it changed."""
        address, record = switched_record(vip, lb_id, interface, peers)
        with self._lock:
            if self._switched.get(address) == record and self._applied is not None:
                return False
            self._apply(self._routed, {**self._switched, address: record})
            return True

    def remove_switched(self, vip: str) -> None:
        address = validation.canonical_ip(vip, "VIP")
        with self._lock:
            if address in self._switched:
                self._apply(self._routed, {v: rec for v, rec in self._switched.items() if v != address})

    def remove_lb(self, lb_id: str) -> None:
        with self._lock:
            kept = {vip: rec for vip, rec in self._switched.items() if rec.get("lb_id") != lb_id}
            if kept != self._switched:
                self._apply(self._routed, kept)

    def status(self) -> dict[str, Any]:
        """The L2 VIPs and their peers, and whether the table is applied."""
        with self._lock:
            return {"applied": self._applied is not None, "vips": json.loads(json.dumps(self._switched))}
