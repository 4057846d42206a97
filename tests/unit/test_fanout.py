"""Driver calls fan out to the agents at once, and every call runs to its end before a failure is raised."""

from __future__ import annotations

import threading

import pytest

from cohort.controller import fanout


def test_the_calls_run_at_the_same_time() -> None:
    # Each call waits for all of the others: one after the other, the barrier would break.
    barrier = threading.Barrier(3, timeout=5)
    done: list[int] = []
    fanout.each([1, 2, 3], lambda item: (barrier.wait(), done.append(item)))
    assert sorted(done) == [1, 2, 3]


def test_every_call_ends_and_the_first_failure_in_order_is_raised() -> None:
    finished: list[str] = []
    release = threading.Event()

    def call(item: str) -> None:
        if item == "slow":
            release.wait(5)
            finished.append(item)
            raise RuntimeError("slow failed")
        if item == "quick":
            release.set()
            finished.append(item)
            raise ValueError("quick failed")
        finished.append(item)

    with pytest.raises(RuntimeError, match="slow failed"):
        fanout.each(["slow", "quick", "fine"], call)
    assert sorted(finished) == ["fine", "quick", "slow"]


def test_one_item_runs_in_the_callers_thread() -> None:
    seen: list[str] = []
    fanout.each(["only"], lambda _item: seen.append(threading.current_thread().name))
    assert seen == [threading.current_thread().name]
