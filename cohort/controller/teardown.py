"""Remove every compute instance the database knows: `cohort down`, tests and benchmarks use it."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from cohort.controller.wiring import Drivers
from cohort.db import models as m


def destroy_instances(sessions: sessionmaker[Session], drivers: Drivers) -> int:
    """Delete the amphorae and distributors (and their ports); returns how many there were."""
    with sessions() as session:
        computes = [c for c in session.scalars(select(m.Amphora.compute_id)) if c]
        computes += [c for c in session.scalars(select(m.Distributor.compute_id)) if c]
    for compute_id in computes:
        drivers.destroy_instance(compute_id)
    return len(computes)
