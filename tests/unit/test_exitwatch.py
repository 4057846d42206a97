"""ExitWatch: a watched process's exit ends the wait at once; nothing else does but wake and time."""

from __future__ import annotations

import subprocess
import threading
import time

from cohort.agents.common.exitwatch import ExitWatch


def _sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen(["sleep", "30"])


def test_an_exit_ends_the_wait_at_once_even_before_it_is_reaped() -> None:
    watch, proc = ExitWatch(), _sleeper()
    try:
        threading.Timer(0.2, proc.kill).start()
        started = time.monotonic()
        assert watch.wait({proc.pid}, timeout=10) == {proc.pid}
        assert time.monotonic() - started < 2
        # Not reaped yet (a zombie): it is not reported again, and does not make the next wait spin.
        started = time.monotonic()
        assert watch.wait({proc.pid}, timeout=0.3) == set()
        assert time.monotonic() - started >= 0.25
    finally:
        proc.kill()
        proc.wait()
        watch.close()


def test_the_timeout_and_wake_end_a_quiet_wait() -> None:
    watch, proc = ExitWatch(), _sleeper()
    try:
        started = time.monotonic()
        assert watch.wait({proc.pid}, timeout=0.2) == set()
        assert time.monotonic() - started >= 0.15
        threading.Timer(0.1, watch.wake).start()
        started = time.monotonic()
        assert watch.wait({proc.pid}, timeout=10) == set()
        assert time.monotonic() - started < 2
    finally:
        proc.kill()
        proc.wait()
        watch.close()


def test_a_pid_already_gone_is_reported_without_sleeping() -> None:
    watch, proc = ExitWatch(), _sleeper()
    proc.kill()
    proc.wait()
    try:
        assert watch.wait({proc.pid}, timeout=10) == {proc.pid}
    finally:
        watch.close()
    watch.wake()  # after close: harmless
