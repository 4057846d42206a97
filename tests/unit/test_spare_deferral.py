"""Spares wait for a quiet moment to be built, but not for ever."""

from __future__ import annotations

from cohort.controller.spares import MAX_DEFERRAL, Deferral


def test_a_wanted_spare_waits_while_something_is_brought_in_but_at_most_max_deferral() -> None:
    now = [100.0]
    deferral = Deferral(clock=lambda: now[0])
    assert deferral.allows(wanted=True, busy=False)
    assert not deferral.allows(wanted=False, busy=False)
    assert not deferral.allows(wanted=True, busy=True)
    now[0] += MAX_DEFERRAL - 1
    assert not deferral.allows(wanted=True, busy=True)
    now[0] += 1
    assert deferral.allows(wanted=True, busy=True)  # creates never stop: built beside them
    assert not deferral.allows(wanted=True, busy=True)  # and the next one waits again


def test_the_wait_starts_again_after_a_quiet_moment_or_while_nothing_is_wanted() -> None:
    now = [0.0]
    deferral = Deferral(clock=lambda: now[0])
    assert not deferral.allows(wanted=True, busy=True)
    now[0] += MAX_DEFERRAL - 1
    assert not deferral.allows(wanted=False, busy=True)  # the pool filled meanwhile
    now[0] += 5
    assert not deferral.allows(wanted=True, busy=True)  # a new wait, not the old one
