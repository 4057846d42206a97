"""Driver calls to several agents at once: a pass waits for the slowest agent, not for their sum.

A failover's pass reconfigures every survivor (their peer sections name the replacement) and tells
both distributors the new membership; one after the other, under load, that took 3-5 s of the
time a cluster spends short of an amphora. Octavia updates the amphorae of a load balancer in
parallel too (its unordered flows). Every call still runs to its end, so each records what it
applied; the first failure, in the callers' order, is raised once all are done.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")

# Agents of one load balancer: an ACTIVE_ACTIVE cluster has at most a few dozen amphorae.
MAX_PARALLEL = 16


def each(items: Sequence[T], call: Callable[[T], object], name: str = "fanout") -> None:
    """``call(item)`` for every item, at the same time; raises the first item's failure, if any."""
    if len(items) <= 1:
        for item in items:
            call(item)
        return
    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, len(items)), thread_name_prefix=name) as pool:
        futures = [pool.submit(call, item) for item in items]
    for future in futures:
        future.result()
