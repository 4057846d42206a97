"""LEAST_CONNECTIONS for UDP and SCTP pools: the member table that steers new flows to the least loaded.

LVS (what Octavia's amphora runs) chooses, for each new flow, the real server with the fewest
connections (``lc``; ``wlc`` divides by the weight). nftables cannot compare counters between
members per packet, so the choice is split in two, and no packet passes through Python:

* the kernel draws each new flow's member from a fixed table of ``size(pool)`` slots,
  ``numgen inc mod S map @lcN``, and conntrack keeps the flow there (as for ROUND_ROBIN);
* every ``INTERVAL`` seconds the agent counts each member's active flows (its conntrack entries,
  by mark, as the statistics do) and refills that table, only when it changed, in one ``nft``
  transaction, by *water-filling*: the new flows expected before the next refill (as many as
  arrived in the last interval, at least one per member) are given to the members with the
  lowest active flows per weight until their levels meet. So a member far below the others
  gets every slot (all new flows go to it, as LVS would send them), members at one level share
  the slots in proportion to their weights, and a busier member gets none.

How it differs from LVS: the counts are at most one interval old (a burst larger than the last
interval's arrivals can overshoot the least-loaded member until the next refill, which then
favours the others); weights count as in ``wlc`` (flows/weight), which is ``lc`` when weights are
equal, Octavia's default; a flow is active while conntrack keeps it (UDP: 30 s after its last
packet, 120 s once replied to several times), where LVS keeps a UDP entry 300 s; an SCTP
association from its INIT until its SHUTDOWN or ABORT (``conntrack.marks`` leaves out the ended
ones conntrack still keeps, as LVS counts only established ones) or 210 s of silence. A member that
fails its monitor leaves the table at once (the table is recomputed on every health change).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from cohort.agents.amphora.l4_spec import Member, Pool

INTERVAL = 1.0
MIN_SLOTS = 64
SLOTS_PER_MEMBER = 4


def size(pool: Pool) -> int:
    """The table's slot count: fixed per pool size, so the rule's modulus never changes under traffic."""
    return max(MIN_SLOTS, SLOTS_PER_MEMBER * len(pool.members))


def shares(members: Sequence[Member], active: Mapping[str, int], expected: int) -> list[float]:
    """How many of the next ``expected`` flows each member takes so that active/weight levels out.

    Members are raised from the lowest level (active flows / weight) up to a common level L,
    each taking ``L * weight - active`` flows, until the expected flows are given out.
    """
    if not members:
        return []
    order = sorted(range(len(members)), key=lambda i: (active.get(members[i].id, 0) / members[i].weight, i))
    flows = float(max(expected, 1))
    total_active = 0.0
    total_weight = 0.0
    level = 0.0
    taken = 0
    for position, i in enumerate(order):
        total_active += active.get(members[i].id, 0)
        total_weight += members[i].weight
        taken = position + 1
        level = (flows + total_active) / total_weight
        if position + 1 < len(order):
            following = order[position + 1]
            if level <= active.get(members[following].id, 0) / members[following].weight:
                break
    result = [0.0] * len(members)
    for i in order[:taken]:
        result[i] = max(0.0, level * members[i].weight - active.get(members[i].id, 0))
    return result


def apportion(amounts: Sequence[float], slots: int) -> list[int]:
    """``slots`` whole slots in proportion to ``amounts`` (largest remainders, ties to the first)."""
    total = sum(amounts)
    if total <= 0:
        raise ValueError("nothing to apportion")
    exact = [a * slots / total for a in amounts]
    counts = [int(e) for e in exact]
    left = slots - sum(counts)
    for i in sorted(range(len(amounts)), key=lambda i: (-(exact[i] - counts[i]), i))[:left]:
        counts[i] += 1
    return counts


def interleave(members: Sequence[Member], counts: Sequence[int]) -> list[Member]:
    """Each member ``counts[i]`` times, spread evenly (smooth weighted round robin), so that any run of
    consecutive slots, which is what a short burst of flows draws, keeps the proportions."""
    total = sum(counts)
    current = [0] * len(members)
    order: list[Member] = []
    for _ in range(total):
        for i, c in enumerate(counts):
            current[i] += c
        best = max(range(len(members)), key=lambda i: current[i])
        current[best] -= total
        order.append(members[best])
    return order


def table(members: Sequence[Member], active: Mapping[str, int], expected: int, slots: int) -> list[Member]:
    """The ``slots`` members new flows are drawn from until the next refill (empty without members)."""
    if not members:
        return []
    return interleave(members, apportion(shares(members, active, expected), slots))
