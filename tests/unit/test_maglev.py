"""Maglev tables: even and weighted spread, minimal disruption, determinism across processes."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections import Counter

import pytest

from cohort.distributor.maglev import SIZE_LADDER, build_table, is_prime, table_size

IDS = [f"{i:08x}-5d1c-4c0e-9a55-amphora{i:05d}" for i in range(1, 13)]


def owners(keys: list[str], size: int, weights: list[int] | None = None) -> list[str]:
    members = list(zip(keys, weights or [1] * len(keys), strict=True))
    return [keys[i] for i in build_table(members, size)]


def moved(a: list[str], b: list[str]) -> float:
    return sum(x != y for x, y in zip(a, b, strict=True)) / len(a)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7, 8, 12])
def test_each_member_gets_its_share_of_slots(n: int) -> None:
    size = table_size(n)
    counts = Counter(owners(IDS[:n], size))
    assert set(counts) == set(IDS[:n])
    for key in IDS[:n]:
        assert abs(counts[key] / size - 1 / n) <= 0.02, (key, counts[key], size)


def test_weights_are_honoured() -> None:
    size = table_size(3)
    counts = Counter(owners(IDS[:3], size, [1, 2, 3]))
    for key, weight in zip(IDS[:3], [1, 2, 3], strict=True):
        assert abs(counts[key] / size - weight / 6) <= 0.02, counts


def test_weight_zero_takes_no_slot_and_nobody_means_an_empty_table() -> None:
    assert IDS[1] not in owners(IDS[:3], 1021, [1, 0, 1])
    assert build_table([(IDS[0], 0)], 1021) == []
    assert build_table([], 1021) == []


@pytest.mark.parametrize("n", [2, 3, 4, 5, 6, 7])
def test_adding_one_member_moves_about_its_share(n: int) -> None:
    size = table_size(n + 1)
    before, after = owners(IDS[:n], size), owners(IDS[: n + 1], size)
    share = 1 / (n + 1)
    assert moved(before, after) <= share + 0.04
    # Nearly everything that moved went to the newcomer: little churn between the old members.
    churn = sum(b != a and a != IDS[n] for b, a in zip(before, after, strict=True)) / size
    assert churn <= 0.03


def test_three_to_four_and_back() -> None:
    size = table_size(4)
    three, four = owners(IDS[:3], size), owners(IDS[:4], size)
    assert moved(three, four) <= 0.30
    assert moved(four, three) <= 0.30


@pytest.mark.parametrize("n", [3, 4, 5, 8])
def test_removing_one_member_moves_little_else(n: int) -> None:
    size = table_size(n)
    full = owners(IDS[:n], size)
    for gone in range(n):
        rest = [k for i, k in enumerate(IDS[:n]) if i != gone]
        after = owners(rest, size)
        assert moved(full, after) <= 1 / n + 0.04
        kept = [(b, a) for b, a in zip(full, after, strict=True) if b != IDS[gone]]
        assert sum(b != a for b, a in kept) / len(kept) <= 0.04


def test_list_order_does_not_change_the_table() -> None:
    size = table_size(5)
    assert owners(IDS[:5], size) == [IDS[:5][::-1][i] for i in build_table([(k, 1) for k in IDS[:5][::-1]], size)]


def _digest(keys: list[str], size: int) -> str:
    return hashlib.sha256(",".join(owners(keys, size)).encode()).hexdigest()


def test_same_table_in_other_processes_whatever_their_hash_seed() -> None:
    code = (
        "from cohort.distributor.maglev import build_table; import hashlib, sys; keys = sys.argv[1:];"
        "table = ','.join(keys[i] for i in build_table([(k, 1) for k in keys], 1021));"
        "print(hashlib.sha256(table.encode()).hexdigest())"
    )
    ours = _digest(IDS[:4], 1021)
    for seed in ("0", "1", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", code, *IDS[:4]], capture_output=True, text=True, env=env, check=True
        ).stdout.strip()
        assert out == ours


def test_table_is_stable_across_versions() -> None:
    # A replacement distributor must rebuild the table its predecessor had: changing the hashing
    # moves every client, so this pin may only change deliberately.
    table = build_table([("amphora-a", 1), ("amphora-b", 1), ("amphora-c", 2)], 1021)
    assert table[:24] == [2, 2, 2, 0, 2, 2, 2, 2, 0, 2, 2, 2, 2, 2, 2, 0, 0, 1, 1, 1, 0, 1, 1, 1]


def test_table_sizes() -> None:
    assert all(is_prime(p) for p in SIZE_LADDER)
    assert table_size(1) == table_size(7) == 1021
    assert table_size(8) == 4093
    for n in (1, 3, 9, 40, 200, 511, 600, 1000):
        size = table_size(n)
        assert is_prime(size) and size >= 128 * n


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="prime"):
        build_table([("a", 1)], 1000)
    with pytest.raises(ValueError, match="unique"):
        build_table([("a", 1), ("a", 1)], 1021)
    with pytest.raises(ValueError, match="weight"):
        build_table([("a", 257)], 1021)
