"""The load balancer lock: one change at a time, taken with a compare-and-set on its status.

A change (from the API, or the controller's failover) may start only while the load balancer
is ACTIVE or ERROR; taking it sets the PENDING_* status and bumps the generation in one UPDATE,
so of two concurrent changes exactly one wins. The loser gets ``LoadBalancerBusy``, which the
API answers with Octavia's 409 and the controller takes as "its own pass will do it".
"""

from __future__ import annotations

from sqlalchemy import update
from sqlalchemy.orm import Session

from cohort.db import models as m

MUTABLE_STATES = ("ACTIVE", "ERROR")


class LoadBalancerBusy(Exception):
    """Another change holds the load balancer (or it is being deleted)."""

    def __init__(self, lb_id: str) -> None:
        super().__init__(f"load balancer {lb_id} is busy with another change")
        self.lb_id = lb_id


def lock_load_balancer(session: Session, lb_id: str, new_status: str = "PENDING_UPDATE") -> None:
    """Take the load balancer for one change; LoadBalancerBusy if another change holds it."""
    result = session.execute(
        update(m.LoadBalancer)
        .where(m.LoadBalancer.id == lb_id, m.LoadBalancer.provisioning_status.in_(MUTABLE_STATES))
        .values(provisioning_status=new_status, generation=m.LoadBalancer.generation + 1, attempts=0,
                next_attempt=0.0, status_reason=None)
        .execution_options(synchronize_session="fetch")
    )
    if result.rowcount == 0:  # type: ignore[attr-defined]
        raise LoadBalancerBusy(lb_id)
