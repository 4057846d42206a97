"""The lab's CPU caps: a short CFS period, so a capped amphora never stands still for long."""

from __future__ import annotations

import pytest

from cohort.netns import MAX_CFS_PERIOD_US, MIN_CFS_PERIOD_US, cfs_period_us


@pytest.mark.parametrize("cpu", [0.01, 0.02, 0.05, 0.1, 0.25, 1.0, 2.0])
def test_the_quota_is_at_least_the_kernel_minimum_and_the_pause_short(cpu: float) -> None:
    period = cfs_period_us(cpu)
    assert MIN_CFS_PERIOD_US <= period <= MAX_CFS_PERIOD_US
    assert cpu * period >= 1000 or period == MAX_CFS_PERIOD_US
    if cpu >= 0.05:
        # The longest stop of a busy 0.05-CPU group is under BFD's 100 ms transmit interval.
        assert period - cpu * period < 20_000


def test_unlimited_keeps_the_default_period() -> None:
    assert cfs_period_us(None) == MAX_CFS_PERIOD_US
