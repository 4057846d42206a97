"""The nftables program of one load balancer's UDP and SCTP listeners: the amphora's kernel data path.

No packet passes through Python. For each listener, a ``prerouting`` nat chain catches new flows
to VIP:port and picks one member (``numgen inc`` over weighted slots for ROUND_ROBIN, ``jhash``
of the source address, or address and port, for SOURCE_IP and SOURCE_IP_PORT, with a seed fixed
by the listener id so every amphora of a cluster picks alike; LEAST_CONNECTIONS from a named
table of slots the agent keeps leaning to the least loaded members, see ``l4_least``), records
it in the flow's conntrack mark (listener number << 16 | member number) and DNATs to it;
conntrack keeps every later packet of the flow (a UDP "session", an SCTP association) on that
member. SOURCE_IP persistence is a
dynamic map of the masked source address to the mark, with the persistence timeout, consulted
first while its member is in the healthy set. ``postrouting`` masquerades our flows so replies
come back through the amphora; named counters in ``forward`` count bytes and packets per listener
and member in each direction and a counter per new flow. A listener's ``allowed_cidrs`` are a
``filter`` chain before NAT that drops every packet to VIP:port from any other source.

Applying keeps state: objects are added (``add`` leaves an existing counter or map untouched),
chains flushed and refilled, the member maps flushed and refilled, and objects no longer
rendered deleted, all in one ``nft -f`` transaction. So a health change or a new member neither
resets counters nor forgets persistence, and open flows stay where conntrack has them.

Every value rendered comes from a parsed ``l4_spec.Spec`` (literal addresses, bounded integers)
and from names built here; nothing else reaches the script.
"""

from __future__ import annotations

import ipaddress
import math
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from cohort import validation
from cohort.agents.amphora import l4_least
from cohort.agents.amphora.l4_spec import Listener, Member, Pool, Spec

TABLE_PREFIX = "cohort_l4_"
GUARD_TABLE = "cohort_l4_guard"
LISTENER_SHIFT = 16
MEMBER_MASK = 0xFFFF
LEAST_KEY_SPACE = 65536


def table_name(lb_id: str) -> str:
    return TABLE_PREFIX + lb_id.replace("-", "_")


def mark(listener_slot: int, member_slot: int) -> int:
    if not (0 < listener_slot <= MEMBER_MASK and 0 < member_slot <= MEMBER_MASK):
        raise ValueError("slot out of range")
    return listener_slot << LISTENER_SHIFT | member_slot


@dataclass(frozen=True)
class Rendered:
    script: str
    objects: frozenset[tuple[str, str]]  # (kind, name) this program owns: chain, map, counter


def dispatch_members(pool: Pool, healthy: Mapping[str, bool]) -> list[Member]:
    """The members new flows go to: healthy enabled ones with weight; the backups only when none is left."""
    usable = [m for m in pool.members if m.enabled and m.weight > 0 and healthy.get(m.id, True)]
    primary = [m for m in usable if not m.backup]
    return primary or [m for m in usable if m.backup]


def weighted_slots(members: list[Member]) -> list[Member]:
    """Smooth weighted round robin over weights divided by their gcd: no member's slots come in bursts."""
    divisor = math.gcd(*(m.weight for m in members)) if members else 1
    weights = [m.weight // divisor for m in members]
    current = [0] * len(members)
    order: list[Member] = []
    for _ in range(sum(weights)):
        for i, w in enumerate(weights):
            current[i] += w
        best = max(range(len(members)), key=lambda i: current[i])
        current[best] -= sum(weights)
        order.append(members[best])
    return order


def _mask(bits: int, version: int) -> str:
    net = ipaddress.ip_network(f"{'0.0.0.0' if version == 4 else '::'}/{bits}")
    return net.netmask.compressed


class _Program:
    def __init__(self, table: str) -> None:
        self.table = table
        self.head: list[str] = [f"add table inet {table}"]
        self.body: list[str] = []
        self.objects: set[tuple[str, str]] = set()

    def counter(self, name: str) -> str:
        if ("counter", name) not in self.objects:
            self.head.append(f"add counter inet {self.table} {name}")
            self.objects.add(("counter", name))
        return name

    def chain(self, name: str, hook: str = "") -> None:
        self.head.append(f"add chain inet {self.table} {name}{' { ' + hook + ' }' if hook else ''}")
        self.head.append(f"flush chain inet {self.table} {name}")
        self.objects.add(("chain", name))

    def map(self, name: str, definition: str, elements: list[str] | None = None) -> None:
        self.head.append(f"add map inet {self.table} {name} {{ {definition} }}")
        self.objects.add(("map", name))
        if elements is not None:
            self.body.append(f"flush map inet {self.table} {name}")
            if elements:
                self.body.append(f"add element inet {self.table} {name} {{ {', '.join(elements)} }}")

    def rule(self, chain: str, text: str) -> None:
        self.body.append(f"add rule inet {self.table} {chain} {text}")


def least_map(listener_slot: int) -> str:
    return f"lc{listener_slot}"


def least_elements(slots: Sequence[Member], marks: Mapping[str, int]) -> list[str]:
    return [f"{i} : {hex(marks[m.id])}" for i, m in enumerate(slots)]


def least_script(lb_id: str, listener_slot: int, slots: Sequence[Member], marks: Mapping[str, int]) -> str:
    """The transaction that refills a LEAST_CONNECTIONS listener's table (flush and fill at once)."""
    table, name = table_name(lb_id), least_map(listener_slot)
    return (f"flush map inet {table} {name}\n"
            f"add element inet {table} {name} {{ {', '.join(least_elements(slots, marks))} }}\n")


def _cidr_rule(prog: _Program, li: Listener) -> None:
    if not li.allowed_cidrs:
        return
    fam = "ip" if li.version == 4 else "ip6"
    # Every packet from elsewhere, before NAT: new flows, and open ones when the list shrinks.
    cidrs = ", ".join(validation.canonical_cidr(c, "allowed CIDR") for c in li.allowed_cidrs)
    prog.rule("filter", f"{fam} daddr {li.vip} {li.protocol.lower()} dport {li.port} {fam} saddr != {{ {cidrs} }} "
                        "drop")


def _pick(prog: _Program, li: Listener, slot: int, pool: Pool, members: list[Member], marks: Mapping[str, int],
          least: Sequence[Member]) -> str:
    """The expression that draws a new flow's member mark."""
    if pool.algorithm == "LEAST_CONNECTIONS":
        # A named table the agent refills as member loads change (l4_least) without touching this rule.
        slots = list(least)
        dispatched = {m.id for m in members}
        if len(slots) != l4_least.size(pool) or any(m.id not in dispatched for m in slots):
            slots = l4_least.table(members, {}, len(members), l4_least.size(pool))
        # The typeof only names the key's type (a 32-bit number); the rule's modulus bounds the keys.
        prog.map(least_map(slot), f"typeof numgen inc mod {LEAST_KEY_SPACE} : ct mark;", least_elements(slots, marks))
        return f"numgen inc mod {len(slots)} map @{least_map(slot)}"
    slots = weighted_slots(members)
    table = ", ".join(f"{i} : {hex(marks[m.id])}" for i, m in enumerate(slots))
    if pool.algorithm == "ROUND_ROBIN":
        return f"numgen inc mod {len(slots)} map {{ {table} }}"
    seed = zlib.crc32(li.id.encode()) or 1
    source = f"{'ip' if li.version == 4 else 'ip6'} saddr"
    key = source if pool.algorithm == "SOURCE_IP" else f"{source} . {li.protocol.lower()} sport"
    return f"jhash {key} mod {len(slots)} seed {hex(seed)} map {{ {table} }}"


def _listener_rules(prog: _Program, li: Listener, slot: int, member_slots: Mapping[str, int],
                    healthy: Mapping[str, bool], least: Mapping[str, Sequence[Member]]) -> list[int]:
    """The listener's chains; returns the marks its members may carry."""
    fam = "ip" if li.version == 4 else "ip6"
    proto = li.protocol.lower()
    name = f"l{slot}"
    prog.chain(name)
    prog.rule("prerouting", f"{fam} daddr {li.vip} {proto} dport {li.port} jump {name}")
    prog.rule(name, f"counter name {prog.counter(name + '_new')}")
    if li.connection_limit > 0:
        prog.rule(name, f"ct count over {li.connection_limit} counter name {prog.counter(name + '_err')} drop")
    pool = li.pool
    members = dispatch_members(pool, healthy) if pool is not None and pool.enabled else []
    marks = {m.id: mark(slot, member_slots[m.id]) for m in (pool.members if pool is not None else ())}
    if not members:
        # Nothing to send the flow to: an ICMP error tells the client at once.
        prog.rule(name, f"counter name {prog.counter(name + '_err')} reject")
        return sorted(marks.values())
    assert pool is not None
    up = ", ".join(hex(marks[m.id]) for m in members)
    source = f"{fam} saddr"
    if pool.persistence is not None:
        key = f"{source} & {_mask(pool.persistence.granularity, li.version)}"
        persist = f"p{slot}_{pool.persistence.timeout}_{pool.persistence.granularity}_{fam}"
        prog.map(persist, f"typeof {fam} saddr : ct mark; flags dynamic,timeout; timeout {pool.persistence.timeout}s;")
        prog.rule(name, f"ct mark set {key} map @{persist}")
        # Each use restarts the persistence timeout, as HAProxy's stick tables count from the last access.
        prog.rule(name, f"ct mark {{ {up} }} update @{persist} {{ {key} : ct mark }} goto {name}_nat")
    prog.rule(name, f"ct mark set {_pick(prog, li, slot, pool, members, marks, least.get(li.id, ()))}")
    if pool.persistence is not None:
        prog.rule(name, f"update @{persist} {{ {key} : ct mark }}")
    prog.rule(name, f"goto {name}_nat")
    targets = f"d{slot}_{proto}_{fam}"
    elements = [f"{hex(marks[m.id])} : {m.address} . {m.port}" for m in pool.members if m.id in marks]
    prog.map(targets, f"typeof ct mark : {fam} daddr . {proto} dport;", elements)
    prog.chain(f"{name}_nat")
    new_counters = ", ".join(f'{hex(marks[m.id])} : "{prog.counter(f"m{slot}_{member_slots[m.id]}_new")}"'
                             for m in pool.members)
    prog.rule(f"{name}_nat", f"counter name ct mark map {{ {new_counters} }}")
    prog.rule(f"{name}_nat", f"meta l4proto {proto} dnat {fam} to ct mark map @{targets}")
    return sorted(marks.values())


def render(lb_id: str, spec: Spec, listener_slots: Mapping[str, int], member_slots: Mapping[str, Mapping[str, int]],
           healthy: Mapping[str, Mapping[str, bool]], existing: Iterable[tuple[str, str]] = (),
           least: Mapping[str, Sequence[Member]] | None = None) -> Rendered:
    """The transaction that makes the kernel's table for ``lb_id`` serve ``spec`` with members' ``healthy`` state.

    ``existing``: the (kind, name) objects the table has now; those not rendered any more are deleted.
    ``least``: each LEAST_CONNECTIONS listener's table (``l4_least.table``), by listener id; one
    without gives its dispatch members equal shares.
    """
    prog = _Program(table_name(lb_id))
    prog.chain("filter", "type filter hook prerouting priority mangle; policy accept;")
    prog.chain("prerouting", "type nat hook prerouting priority dstnat; policy accept;")
    prog.chain("postrouting", "type nat hook postrouting priority srcnat; policy accept;")
    prog.chain("forward", "type filter hook forward priority filter; policy accept;")
    listener_marks: list[int] = []
    member_marks: dict[int, str] = {}
    for li in spec.listeners:
        if not li.enabled:
            continue
        slot = listener_slots[li.id]
        slots = member_slots.get(li.id, {})
        _cidr_rule(prog, li)
        marks = _listener_rules(prog, li, slot, slots, healthy.get(li.id, {}), least or {})
        listener_marks.append(slot << LISTENER_SHIFT)
        name = f"l{slot}"
        for direction, suffix in (("original", "in"), ("reply", "out")):
            prog.rule("forward", f"ct mark & 0xffff0000 == {hex(slot << LISTENER_SHIFT)} ct direction {direction} "
                                 f"counter name {prog.counter(f'{name}_{suffix}')}")
        for member_mark in marks:
            member_marks[member_mark] = f"m{slot}_{member_mark & MEMBER_MASK}"
    for direction, suffix in (("original", "in"), ("reply", "out")):
        if member_marks:
            names = ", ".join(f'{hex(k)} : "{prog.counter(f"{v}_{suffix}")}"' for k, v in sorted(member_marks.items()))
            prog.rule("forward", f"ct direction {direction} counter name ct mark map {{ {names} }}")
    if listener_marks:
        ours = ", ".join(hex(m) for m in listener_marks)
        prog.rule("postrouting", f"ct mark & 0xffff0000 {{ {ours} }} masquerade")
    stale = sorted(set(existing) - prog.objects, key=lambda o: ("chain", "map", "counter").index(o[0]))
    tail: list[str] = []
    for kind, name in stale:
        if kind == "chain":
            tail.insert(0, f"flush chain inet {prog.table} {name}")
        tail.append(f"delete {kind} inet {prog.table} {name}")
    return Rendered("\n".join(prog.head + prog.body + tail) + "\n", frozenset(prog.objects))


def guard_script(enabled: bool) -> str:
    """The forward guard: with forwarding on for L4 listeners, only their flows may cross the amphora."""
    if not enabled:
        return f"add table inet {GUARD_TABLE}\ndelete table inet {GUARD_TABLE}\n"
    return (f"add table inet {GUARD_TABLE}\n"
            f"add chain inet {GUARD_TABLE} forward {{ type filter hook forward priority filter + 10; policy drop; }}\n"
            f"flush chain inet {GUARD_TABLE} forward\n"
            f"add rule inet {GUARD_TABLE} forward ct mark & 0xffff0000 != 0 accept\n")
