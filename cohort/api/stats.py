"""Statistics as the API reports them: sums of what the amphorae last reported."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cohort.db import models as m

COUNTERS = ("bytes_in", "bytes_out", "active_connections", "total_connections", "request_errors")


def sum_listener_stats(session: Session, listener_ids: list[str], amphora_id: str | None = None) -> dict[str, int]:
    table = m.ListenerStatistics
    query = select(*[func.coalesce(func.sum(getattr(table, name)), 0) for name in COUNTERS])
    if amphora_id is not None:
        query = query.where(table.amphora_id == amphora_id)
    else:
        if not listener_ids:
            return dict.fromkeys(COUNTERS, 0)
        query = query.where(table.listener_id.in_(listener_ids))
    row = session.execute(query).one()
    return {name: int(value) for name, value in zip(COUNTERS, row, strict=True)}


def stats_body(totals: dict[str, int]) -> dict[str, Any]:
    return {"stats": dict(totals)}
