"""``ExitWatch`` as the HAProxy supervisor uses it: woken by an exit, not at its next poll."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator

import pytest

from cohort.agents.common.exitwatch import ExitWatch


@pytest.fixture
def sleepers() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs = [subprocess.Popen(["sleep", "30"]) for _ in range(2)]
    yield procs
    for proc in procs:
        proc.kill()
        proc.wait(5)


def test_the_wait_ends_when_a_watched_process_exits(sleepers: list[subprocess.Popen[bytes]]) -> None:
    watch = ExitWatch()
    try:
        first, second = sleepers
        pids = {first.pid, second.pid}
        started = time.monotonic()
        assert watch.wait(pids, 0.2) == set()  # both live: the whole timeout
        assert time.monotonic() - started >= 0.19
        first.kill()  # a zombie until reaped: exited all the same
        started = time.monotonic()
        assert watch.wait(pids, 10.0) == {first.pid}
        assert time.monotonic() - started < 5.0
        # Still asked about (its owner has not looked yet): not reported again, no busy loop.
        started = time.monotonic()
        assert watch.wait(pids, 0.2) == set()
        assert time.monotonic() - started >= 0.19
        first.wait(5)
        second.kill()
        second.wait(5)  # reaped before the watch was asked: gone, reported without waiting
        assert watch.wait({second.pid}, 10.0) == {second.pid}
    finally:
        watch.close()


def test_nothing_to_watch_waits_the_timeout() -> None:
    watch = ExitWatch()
    started = time.monotonic()
    assert watch.wait(set(), 0.1) == set()
    assert time.monotonic() - started >= 0.09
