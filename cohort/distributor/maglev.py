"""Maglev consistent hashing (Eisenbud et al., NSDI 2016): the lookup table behind a VIP.

Each member (a stable key such as the amphora id, and a weight) gets a permutation of the
table's slots from two independent hashes of its key: ``offset`` and ``skip``. Members
take turns claiming their next preferred free slot until the table is full, so every
member ends up with a share of slots proportional to its weight (within one turn), and a
change of membership moves only about the changed member's share of slots.

Everything is derived from SHA-256 of the key, never from Python's salted ``hash()``: the
same membership gives the same table in any process on any machine, which is what lets a
restarted agent or a replacement Distributor rebuild exactly the table it replaces.

Table sizes come from a fixed ladder of primes (:func:`table_size`): the size changes only
when the cluster crosses a rung, because a new size reshuffles the whole table.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from math import gcd

# Primes; the smallest that is >= 128 * members is used, so every member owns >= ~128 slots.
SIZE_LADDER = (1021, 4093, 16381, 65521)
SLOTS_PER_MEMBER = 128
MAX_WEIGHT = 256


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    f = 3
    while f * f <= n:
        if n % f == 0:
            return False
        f += 2
    return True


def table_size(members: int) -> int:
    """The table size for ``members`` members: the smallest ladder prime >= 128 * members.

    Past the ladder (more than 511 members) the smallest prime above that bound.
    """
    wanted = max(1, members) * SLOTS_PER_MEMBER
    for prime in SIZE_LADDER:
        if prime >= wanted:
            return prime
    n = wanted | 1
    while not is_prime(n):
        n += 2
    return n


def _digest(label: bytes, key: str) -> int:
    return int.from_bytes(hashlib.sha256(label + b"\0" + key.encode()).digest()[:8], "big")


def permutation(key: str, size: int) -> tuple[int, int]:
    """(offset, skip) of ``key``'s permutation: slot j of its preference list is offset + j*skip mod size."""
    offset = _digest(b"maglev-offset", key) % size
    skip = _digest(b"maglev-skip", key) % (size - 1) + 1
    return offset, skip


def _turn_order(weights: Sequence[int]) -> list[int]:
    """One round of turns: member i appears weights[i] times, interleaved (smooth weighted round robin)."""
    total = sum(weights)
    current = [0] * len(weights)
    order = []
    for _ in range(total):
        for i, w in enumerate(weights):
            current[i] += w
        best = max(range(len(weights)), key=lambda i: (current[i], -i))
        current[best] -= total
        order.append(best)
    return order


def _reduce(weights: list[int]) -> list[int]:
    g = 0
    for w in weights:
        g = gcd(g, w)
    return [w // g for w in weights] if g > 1 else weights


def build_table(members: Sequence[tuple[str, int]], size: int) -> list[int]:
    """The Maglev table: for each of ``size`` slots, the index into ``members`` that owns it.

    ``members`` are (key, weight) pairs; weight 0 takes no slot, and no member (or only
    weight 0) gives an empty table. Turns go by key digest, so the list order only
    breaks ties between identical digests: reordering the list does not change the table.
    ``size`` must be a prime (see :func:`table_size`), or permutations would not cover it.
    """
    if not is_prime(size):
        raise ValueError(f"table size {size} is not a prime")
    keys = [k for k, _ in members]
    if len(set(keys)) != len(keys):
        raise ValueError("member keys must be unique")
    for key, weight in members:
        if not 0 <= weight <= MAX_WEIGHT:
            raise ValueError(f"weight of {key!r} must be in 0..{MAX_WEIGHT}, got {weight}")
    live = [i for i, (_, w) in enumerate(members) if w > 0]
    if not live:
        return []
    live.sort(key=lambda i: (_digest(b"maglev-order", members[i][0]), i))
    perms = [permutation(members[i][0], size) for i in live]
    order = _turn_order(_reduce([members[i][1] for i in live]))
    taken_next = [0] * len(live)
    table = [-1] * size
    filled = 0
    while True:
        for li in order:
            offset, skip = perms[li]
            j = taken_next[li]
            slot = (offset + j * skip) % size
            while table[slot] >= 0:
                j += 1
                slot = (offset + j * skip) % size
            table[slot] = live[li]
            taken_next[li] = j + 1
            filled += 1
            if filled == size:
                return table
