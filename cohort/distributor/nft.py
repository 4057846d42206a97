"""Render the distributor's kernel configuration: one nftables table and the policy routing.

Per VIP (object names carry :func:`object_key` of its load balancer id):

* ``prerouting`` (priority raw) jumps through the verdict map ``vips`` keyed by
  ``ip daddr . iifname``, so a VIP is served only on its own load balancer's interface;
* chain ``vip_K`` counts, ``notrack``s (the distributor sees one direction only, so
  conntrack would call the client's ACKs invalid), forgets the pin of a new connection
  (a SYN on a reused source port), looks up the flow-pinning map ``flows_K``, else hashes
  the flow into the Maglev bucket map ``buckets_K`` (``jhash ip saddr`` for SOURCE_IP
  affinity, ``ip saddr . tcp sport`` for SOURCE_IP_PORT) and pins the result with ``update``;
* UDP flows and SCTP associations are pinned the same way in maps of their own: by ``ip saddr .
  udp sport`` (``uflows_K``, with a conntrack-like timeout, UDP having no end) and ``ip saddr .
  sctp sport`` (``sflows_K``, an INIT forgets the pin as a SYN does) for SOURCE_IP_PORT
  affinity, by ``ip saddr`` alone (``aflows_K``) for SOURCE_IP, so that a client's UDP and SCTP
  stay on one amphora. A UDP or SCTP pin counts only while its amphora still has a route: once
  it is drained or replaced, the flow is hashed again rather than sent nowhere (a UDP client
  may keep talking for ever);
* ``forward`` (policy drop) lets through only a VIP's own marked packets, in and out of its
  interface: nothing is routed between load balancers, tenants or amphorae;
* ``input`` drops what arrives on a VIP interface for any address that is not its own.

The mark names the amphora: ``ip rule pref 100 fwmark M lookup M`` with ``VIP via <amphora>
dev <iface>`` in table M forwards the packet unchanged to the amphora's MAC (a permanent
neighbour entry), and replies go from the amphora straight to the gateway.

Updates are one ``nft -f`` transaction. Flow maps are created with ``add`` and never flushed,
so open connections keep their amphora across table changes and agent restarts; a bucket map
is flushed and refilled in the same transaction, which packets see atomically.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from cohort import validation

TABLE = "cohort_dist"
FAMILY = "ip"
FWMARK_PREF = 100  # fwmark -> per-amphora table
REPLY_PREF = 200  # from VIP -> the load balancer's gateway (the distributor's own RSTs)
LOCAL_PREF = 1000  # the local table, moved behind the rules above
AFFINITIES = ("SOURCE_IP", "SOURCE_IP_PORT")
OBJECT_PREFIXES = ("vip_", "flows_", "uflows_", "sflows_", "aflows_", "buckets_", "bytes_", "syn_", "l4new_")
UDP_FLOW_TIMEOUT = 120  # conntrack's nf_conntrack_udp_timeout_stream: a UDP flow idle longer is over
MAX_TIMEOUT = 86400
MAX_FLOW_SIZE = 1 << 24
# The pin maps of UDP and SCTP (TCP's is ``flows_``): name prefix -> the key they are typed by.
L4_PIN_MAPS = {"uflows_": "ip saddr . udp sport", "sflows_": "ip saddr . sctp sport", "aflows_": "ip saddr"}
MIN_TABLE = 1000  # marks and routing tables the agent allocates start here; lower ids are the system's
BUCKET_TYPEOF = "numgen inc mod 65521"  # typeof only names the key type; fixed so `add map` stays idempotent


T = TypeVar("T")


def object_key(lb_id: str) -> str:
    """The short, nft-safe name suffix of a load balancer's objects."""
    return hashlib.sha256(lb_id.encode()).hexdigest()[:12]


def hash_seed(lb_id: str) -> int:
    """The jhash seed of a VIP: fixed per load balancer, so any agent hashes flows alike."""
    return int.from_bytes(hashlib.sha256(b"seed\0" + lb_id.encode()).digest()[:4], "big")


@dataclass(frozen=True)
class Forward:
    """One amphora as the kernel sees it: its mark (also its routing table) and where it is."""

    mark: int
    address: str
    mac: str


@dataclass(frozen=True)
class VipPlan:
    lb_id: str
    vip: str
    ifname: str
    own_address: str  # the distributor's address on ifname
    gateway: str | None
    reply_table: int
    affinity: str
    forwards: tuple[Forward, ...]  # every amphora keeping a route: ACTIVE and still-draining ones
    buckets: tuple[int, ...]  # the mark of each slot of the Maglev table; () when nobody takes new flows
    flow_timeout: int = 300  # TCP and SCTP pins
    flow_size: int = 262144
    udp_timeout: int = UDP_FLOW_TIMEOUT

    @property
    def key(self) -> str:
        return object_key(self.lb_id)


def _check_addresses(plan: VipPlan) -> None:
    """Every address a plan writes into a ruleset or an ``ip -batch`` line is a bare literal."""
    validation.ip_address(plan.vip, f"load balancer {plan.lb_id} VIP")
    validation.ip_address(plan.own_address, f"load balancer {plan.lb_id} distributor address")
    if plan.gateway:
        validation.ip_address(plan.gateway, f"load balancer {plan.lb_id} gateway")
    for forward in plan.forwards:
        validation.ip_address(forward.address, f"load balancer {plan.lb_id} amphora address")


def _check_numbers(plan: VipPlan) -> None:
    """Every number a plan writes into the ruleset, and its interface name."""
    validation.interface_name(plan.ifname)
    validation.bounded(plan.flow_timeout, 1, MAX_TIMEOUT, "flow timeout")
    validation.bounded(plan.udp_timeout, 1, MAX_TIMEOUT, "UDP flow timeout")
    validation.bounded(plan.flow_size, 1, MAX_FLOW_SIZE, "flow map size")
    for mark in (*plan.buckets, *(f.mark for f in plan.forwards)):
        validation.bounded(mark, 1, 2**32 - 1, "mark")


def _q(name: str) -> str:
    return f'"{name}"'


def _ensure_vip_objects(key: str, flow_timeout: int, flow_size: int) -> list[str]:
    t = f"{FAMILY} {TABLE}"
    return [
        f"add map {t} flows_{key} {{ typeof ip saddr . tcp sport : meta mark; flags dynamic,timeout; "
        f"timeout {flow_timeout}s; size {flow_size}; }}",
        *(f"add map {t} {prefix}{key} {{ typeof {typeof} : meta mark; flags dynamic,timeout; "
          f"timeout {flow_timeout}s; size {flow_size}; }}" for prefix, typeof in L4_PIN_MAPS.items()),
        f"add map {t} buckets_{key} {{ typeof {BUCKET_TYPEOF} : meta mark; }}",
        f"add counter {t} bytes_{key}",
        f"add counter {t} syn_{key}",
        f"add counter {t} l4new_{key}",
        f"add chain {t} vip_{key}",
    ]


def vip_rules(plan: VipPlan) -> list[str]:
    """The rules of the VIP's chain (without the ``add rule`` prefix)."""
    k, size = plan.key, len(plan.buckets)
    seed = f"seed 0x{hash_seed(plan.lb_id):08x}"
    flow = "ip saddr . tcp sport"
    by_port = plan.affinity == "SOURCE_IP_PORT"
    # The key a UDP or SCTP pin is stored under, and the map that holds it.
    pins = ([("udp", "uflows", "ip saddr . udp sport"), ("sctp", "sflows", "ip saddr . sctp sport")] if by_port
            else [("udp", "aflows", "ip saddr"), ("sctp", "aflows", "ip saddr")])
    timeouts = {"udp": plan.udp_timeout, "sctp": plan.flow_timeout}
    rules = [
        f"counter name {_q('bytes_' + k)} notrack",
        # A SYN opens a new connection: a pin left by an earlier one on this source port is stale.
        f"tcp flags & (syn | ack) == syn counter name {_q('syn_' + k)} delete @flows_{k} {{ {flow} : meta mark }}",
    ]
    if by_port:
        # So does an INIT for an association. Not with SOURCE_IP: that pin holds the client's other flows too.
        rules.append(f"sctp chunk init exists delete @sflows_{k} {{ ip saddr . sctp sport : meta mark }}")
    rules.append(f"meta mark set {flow} map @flows_{k}")
    if by_port:
        rules += [f"meta mark set {key} map @{name}_{k}" for _, name, key in pins]
    else:
        rules.append(f"meta l4proto {{ udp, sctp }} meta mark set ip saddr map @aflows_{k}")
    routed = _set(str(f.mark) for f in plan.forwards) if plan.forwards else ""
    # A UDP or SCTP pin to an amphora that has no route any more (drained, replaced) is hashed again.
    rules.append("meta l4proto { udp, sctp } meta mark != 0 "
                 + (f"meta mark != {routed} " if routed else "") + "meta mark set 0")
    if size:
        rules.append(f"meta mark 0 meta l4proto {{ udp, sctp }} counter name {_q('l4new_' + k)}")
        if by_port:
            rules += [f"meta mark 0 meta mark set jhash {key} mod {size} {seed} map @buckets_{k}"
                      for key in (flow, "ip saddr . udp sport", "ip saddr . sctp sport")]
        # SOURCE_IP affinity, and whatever has no port (other protocols, non-first fragments).
        rules.append(f"meta mark 0 meta mark set jhash ip saddr mod {size} {seed} map @buckets_{k}")
    for proto, name, key in pins:
        # The timeout sits in the rule: a map's settings cannot change once made, and aflows holds both.
        rules.append(f"meta l4proto {proto} meta mark != 0 update @{name}_{k} "
                     f"{{ {key} timeout {timeouts[proto]}s : meta mark }}")
    rules.append(f"meta mark != 0 update @flows_{k} {{ {flow} timeout {plan.flow_timeout}s : meta mark }}")
    return rules


def bucket_elements(plan: VipPlan) -> list[str]:
    """The statements that replace the VIP's bucket map (flush + refill: atomic within the script)."""
    t, k = f"{FAMILY} {TABLE}", plan.key
    lines = [f"flush map {t} buckets_{k}"]
    if plan.buckets:
        elements = ", ".join(f"{slot} : {mark}" for slot, mark in enumerate(plan.buckets))
        lines.append(f"add element {t} buckets_{k} {{ {elements} }}")
    return lines


def _remove_vip_objects(key: str) -> list[str]:
    # `add` first makes each delete valid even when an earlier run left only some objects.
    t = f"{FAMILY} {TABLE}"
    lines = _ensure_vip_objects(key, 300, 262144)
    return lines + [
        f"flush chain {t} vip_{key}",
        f"delete chain {t} vip_{key}",
        f"delete map {t} flows_{key}",
        *(f"delete map {t} {prefix}{key}" for prefix in L4_PIN_MAPS),
        f"delete map {t} buckets_{key}",
        f"delete counter {t} bytes_{key}",
        f"delete counter {t} syn_{key}",
        f"delete counter {t} l4new_{key}",
    ]


def _iface_addresses(plans: Sequence[VipPlan]) -> dict[str, list[str]]:
    own: dict[str, list[str]] = {}
    for p in plans:
        addrs = own.setdefault(p.ifname, [])
        for a in (p.own_address, p.vip):
            if a not in addrs:
                addrs.append(a)
    return own


def _set(items: Iterable[str]) -> str:
    return "{ " + ", ".join(items) + " }"


def render_nft(
    plans: Sequence[VipPlan],
    *,
    stale_keys: Iterable[str] = (),
    buckets_for: Iterable[str] | None = None,
) -> str:
    """The whole ruleset as one ``nft -f`` transaction.

    Bucket maps are rewritten for the load balancers in ``buckets_for`` (all when None);
    objects of ``stale_keys`` (load balancers that are gone) are removed.
    """
    t = f"{FAMILY} {TABLE}"
    refill = None if buckets_for is None else set(buckets_for)
    lines = [
        f"add table {t}",
        f"add map {t} vips {{ typeof ip daddr . iifname : verdict; }}",
        f"add chain {t} prerouting {{ type filter hook prerouting priority raw; policy accept; }}",
        f"add chain {t} forward {{ type filter hook forward priority filter; policy drop; }}",
        f"add chain {t} input {{ type filter hook input priority filter; policy accept; }}",
    ]
    for p in plans:
        _check_addresses(p)
        _check_numbers(p)
        if p.affinity not in AFFINITIES:
            raise ValueError(f"unknown affinity {p.affinity!r}")
        lines += _ensure_vip_objects(p.key, p.flow_timeout, p.flow_size)
        lines.append(f"flush chain {t} vip_{p.key}")
        lines += [f"add rule {t} vip_{p.key} {rule}" for rule in vip_rules(p)]
        if refill is None or p.lb_id in refill:
            lines += bucket_elements(p)
    lines += [f"flush chain {t} prerouting", f"add rule {t} prerouting ip daddr . iifname vmap @vips"]
    lines.append(f"flush map {t} vips")
    if plans:
        entries = ", ".join(f"{p.vip} . {_q(p.ifname)} : jump vip_{p.key}" for p in plans)
        lines.append(f"add element {t} vips {{ {entries} }}")
    lines.append(f"flush chain {t} forward")
    for p in plans:
        if p.forwards:
            marks = _set(str(f.mark) for f in p.forwards)
            lines.append(
                f"add rule {t} forward iifname {_q(p.ifname)} oifname {_q(p.ifname)} "
                f"ip daddr {p.vip} meta mark {marks} accept"
            )
    lines.append(f"flush chain {t} input")
    own = _iface_addresses(plans)
    for ifname, addrs in own.items():
        lines.append(f"add rule {t} input iifname {_q(ifname)} ip daddr {_set(addrs)} accept")
    if own:
        lines.append(f"add rule {t} input iifname {_set(_q(i) for i in own)} drop")
    for key in sorted(set(stale_keys) - {p.key for p in plans}):
        lines += _remove_vip_objects(key)
    return "\n".join(lines) + "\n"


def render_buckets(plan: VipPlan) -> str:
    """Only the VIP's bucket map (a health change): one small transaction."""
    _check_numbers(plan)
    return "\n".join(bucket_elements(plan)) + "\n"


def object_keys(names: Iterable[str]) -> set[str]:
    """The load balancer keys present among nft object names (chains, maps, counters)."""
    keys = set()
    for name in names:
        for prefix in OBJECT_PREFIXES:
            if name.startswith(prefix) and len(name) == len(prefix) + 12:
                keys.add(name[len(prefix) :])
    return keys


# --- policy routing ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    pref: int
    selector: str  # "fwmark 1001" | "from 203.0.113.100"
    table: int


@dataclass(frozen=True)
class Route:
    table: int
    dst: str  # "203.0.113.100/32" | "default"
    spec: str  # "via 203.0.113.11 dev fe0"


@dataclass(frozen=True)
class Neighbour:
    ifname: str
    address: str
    mac: str


@dataclass(frozen=True)
class Routing:
    rules: frozenset[Rule]
    routes: frozenset[Route]
    neighbours: frozenset[Neighbour]


def desired_routing(plans: Sequence[VipPlan]) -> Routing:
    rules, routes, neigh = set(), set(), set()
    for p in plans:
        _check_addresses(p)
        for f in p.forwards:
            rules.add(Rule(FWMARK_PREF, f"fwmark {f.mark}", f.mark))
            routes.add(Route(f.mark, f"{p.vip}/32", f"via {f.address} dev {p.ifname}"))
            neigh.add(Neighbour(p.ifname, f.address, f.mac))
        if p.gateway:
            rules.add(Rule(REPLY_PREF, f"from {p.vip}", p.reply_table))
            routes.add(Route(p.reply_table, "default", f"via {p.gateway} dev {p.ifname}"))
    return Routing(frozenset(rules), frozenset(routes), frozenset(neigh))


def render_ip_batch(
    plans: Sequence[VipPlan], existing: Routing, managed_ifaces: Iterable[str] = ()
) -> tuple[list[str], list[str]]:
    """``ip -batch`` lines turning ``existing`` (rules at our prefs, routes in our tables,
    permanent neighbours on our interfaces) into what ``plans`` need: (before, after).

    ``before`` (neighbours, routes, then the rules pointing at them) runs before the nft
    transaction that may start using new marks; ``after`` (stale rules, then their tables
    and neighbours) runs once nft no longer hands out the marks they serve.
    """
    want = desired_routing(plans)
    before = [
        f"neigh replace {n.address} lladdr {n.mac} dev {n.ifname} nud permanent" for n in _sorted(want.neighbours)
    ]
    before += [f"route replace {r.dst} {r.spec} table {r.table}" for r in _sorted(want.routes)]
    before += [f"rule add pref {r.pref} {r.selector} lookup {r.table}" for r in _sorted(want.rules - existing.rules)]
    after = [f"rule del pref {r.pref} {r.selector} lookup {r.table}" for r in _sorted(existing.rules - want.rules)]
    wanted_tables = {r.table for r in want.rules}
    stale_tables = {r.table for r in existing.rules - want.rules} | {r.table for r in existing.routes}
    after += [f"route flush table {table}" for table in sorted(stale_tables - wanted_tables)]
    want_dsts = {(r.table, r.dst) for r in want.routes}
    after += [
        f"route del {r.dst} table {r.table}"
        for r in _sorted(existing.routes)
        if r.table in wanted_tables and (r.table, r.dst) not in want_dsts
    ]
    managed = set(managed_ifaces) | {p.ifname for p in plans}
    want_neigh = {(n.ifname, n.address) for n in want.neighbours}
    after += [
        f"neigh del {n.address} dev {n.ifname}"
        for n in _sorted(existing.neighbours)
        if n.ifname in managed and (n.ifname, n.address) not in want_neigh
    ]
    return before, after


def routing_drift(plans: Sequence[VipPlan], existing: Routing, managed_ifaces: Iterable[str] = ()) -> list[str]:
    """What ``existing`` lacks or has too many of against ``plans`` (empty: in sync), in the terms
    ``render_ip_batch`` uses: a link that went down took its routes with it, someone flushed a table."""
    want = desired_routing(plans)
    managed = set(managed_ifaces) | {p.ifname for p in plans}
    neighbours = frozenset(n for n in existing.neighbours if n.ifname in managed)
    drift = []
    for kind, wanted, found in (("rule", want.rules, existing.rules), ("route", want.routes, existing.routes),
                                ("neighbour", want.neighbours, neighbours)):
        drift += [f"missing {kind} {x}" for x in _sorted(wanted - found)]
        drift += [f"stale {kind} {x}" for x in _sorted(found - wanted)]
    return drift


def _sorted(items: Iterable[T]) -> list[T]:
    return sorted(items, key=repr)


def parse_rules(rules_json: Sequence[Mapping[str, object]]) -> frozenset[Rule]:
    """Our rules among ``ip -j rule show`` entries (fwmark rules at 100, from-VIP rules at 200)."""
    found = set()
    for r in rules_json:
        pref, table = r.get("priority"), str(r.get("table", ""))
        if not table.isdigit():
            continue
        if pref == FWMARK_PREF and "fwmark" in r:
            found.add(Rule(FWMARK_PREF, f"fwmark {int(str(r['fwmark']), 0)}", int(table)))
        elif pref == REPLY_PREF and r.get("src") not in (None, "all"):
            found.add(Rule(REPLY_PREF, f"from {r['src']}", int(table)))
    return frozenset(found)


def parse_routes(routes_json: Sequence[Mapping[str, object]]) -> frozenset[Route]:
    """Routes in our tables (ids >= MIN_TABLE) among ``ip -j route show table all`` entries."""
    found = set()
    for r in routes_json:
        table = str(r.get("table", ""))
        if not table.isdigit() or int(table) < MIN_TABLE:
            continue
        dst = str(r.get("dst", ""))
        if dst != "default" and "/" not in dst:
            dst += "/32"
        spec = f"via {r['gateway']} dev {r.get('dev')}" if "gateway" in r else f"dev {r.get('dev')}"
        found.add(Route(int(table), dst, spec))
    return frozenset(found)


def parse_neighbours(neigh_json: Sequence[Mapping[str, object]]) -> frozenset[Neighbour]:
    """Permanent neighbour entries among ``ip -j neigh show`` entries."""
    found = set()
    for n in neigh_json:
        state = n.get("state")
        if isinstance(state, list) and "PERMANENT" in state and "lladdr" in n:
            found.add(Neighbour(str(n.get("dev")), str(n.get("dst")), str(n["lladdr"])))
    return frozenset(found)


@dataclass(frozen=True)
class VipCounters:
    packets: int = 0
    bytes: int = 0
    connections: int = 0  # SYNs, and UDP flows and SCTP associations pinned, since the VIP was plugged
    flows: dict[int, int] = field(default_factory=dict)  # pinned flows per mark, every protocol


def parse_table(nft_json: Mapping[str, object]) -> dict[str, VipCounters]:
    """Counters and pinned flows per load balancer key from ``nft -j list table ip cohort_dist``."""
    named: dict[str, tuple[int, int]] = {}
    flows: dict[str, dict[int, int]] = {}
    items = nft_json.get("nftables", [])
    for item in items if isinstance(items, list) else []:
        if "counter" in item:
            c = item["counter"]
            named[str(c.get("name", ""))] = (int(c.get("packets", 0)), int(c.get("bytes", 0)))
        elif "map" in item:
            m = item["map"]
            name = str(m.get("name", ""))
            pin_map = next((p for p in ("flows_", *L4_PIN_MAPS) if name.startswith(p)), None)
            if pin_map is None:
                continue
            per_mark = flows.setdefault(name[len(pin_map) :], {})
            for elem in m.get("elem", []):
                if isinstance(elem, list) and len(elem) == 2 and isinstance(elem[1], int):
                    per_mark[elem[1]] = per_mark.get(elem[1], 0) + 1
    out = counters_by_key(named)
    for key, per_mark in flows.items():
        out[key] = dataclasses.replace(out.get(key, VipCounters()), flows=per_mark)
    return out


def counters_by_key(named: Mapping[str, tuple[int, int]]) -> dict[str, VipCounters]:
    """Each load balancer's counters (no flows) from the table's named counters: name -> (packets, bytes)."""
    raw: dict[str, dict[str, tuple[int, int]]] = {}
    for name, values in named.items():
        for prefix, field_name in (("bytes_", "traffic"), ("syn_", "syn"), ("l4new_", "l4new")):
            if name.startswith(prefix):
                raw.setdefault(name[len(prefix) :], {})[field_name] = values
    out = {}
    for key, parts in raw.items():
        traffic, syn, l4new = (parts.get(f, (0, 0)) for f in ("traffic", "syn", "l4new"))
        out[key] = VipCounters(packets=traffic[0], bytes=traffic[1], connections=syn[0] + l4new[0], flows={})
    return out
