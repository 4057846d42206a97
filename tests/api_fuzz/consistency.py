"""What must hold in the database after a fuzz run: SQLite's own checks, no object stuck in
PENDING_*, no child whose parent is gone, and children on the same load balancer as the objects
they point at. Each check returns the problems it found, as sentences, so a failure names them.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from cohort.db import models as m

PENDING = ("PENDING_CREATE", "PENDING_UPDATE", "PENDING_DELETE")
TENANT_MODELS: tuple[type[Any], ...] = (m.LoadBalancer, m.Listener, m.Pool, m.Member, m.HealthMonitor,
                                           m.L7Policy, m.L7Rule)


def sqlite_path(db_url: str) -> Path:
    assert db_url.startswith("sqlite:///"), db_url
    return Path(db_url.removeprefix("sqlite:///"))


def sqlite_problems(db_file: Path) -> list[str]:
    """``PRAGMA integrity_check`` and ``PRAGMA foreign_key_check`` on the database file."""
    connection = sqlite3.connect(f"file:{db_file}?mode=ro", uri=True)
    try:
        integrity = [row[0] for row in connection.execute("PRAGMA integrity_check")]
        foreign = connection.execute("PRAGMA foreign_key_check").fetchall()
    finally:
        connection.close()
    problems = [] if integrity == ["ok"] else [f"integrity_check: {integrity}"]
    problems += [f"foreign_key_check: table {table} row {rowid} -> {parent} (constraint {fk})"
                 for table, rowid, parent, fk in foreign]
    return problems


def pending(sessions: sessionmaker[Session]) -> list[str]:
    with sessions() as session:
        return [f"{model.__tablename__} {row.id} is {row.provisioning_status}"
                for model in TENANT_MODELS
                for row in session.scalars(select(model).where(model.provisioning_status.in_(PENDING)))]


def wait_until_settled(sessions: sessionmaker[Session], timeout: float) -> list[str]:
    """Wait for the reconciler to finish every PENDING_* object; what is still pending after ``timeout``."""
    deadline = time.monotonic() + timeout
    left = pending(sessions)
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = pending(sessions)
    return left


def orphans(sessions: sessionmaker[Session]) -> list[str]:
    """Children whose parent is gone, and references that cross load balancers."""
    problems: list[str] = []
    with sessions() as session:
        lbs = {row.id: row for row in session.scalars(select(m.LoadBalancer))}
        listeners = {row.id: row for row in session.scalars(select(m.Listener))}
        pools = {row.id: row for row in session.scalars(select(m.Pool))}
        policies = {row.id: row for row in session.scalars(select(m.L7Policy))}
        for listener in listeners.values():
            if listener.load_balancer_id not in lbs:
                problems.append(f"listener {listener.id}: load balancer {listener.load_balancer_id} is gone")
            pool = pools.get(listener.default_pool_id or "")
            if listener.default_pool_id and pool is None:
                problems.append(f"listener {listener.id}: default pool {listener.default_pool_id} is gone")
            if pool is not None and pool.load_balancer_id != listener.load_balancer_id:
                problems.append(f"listener {listener.id}: default pool {pool.id} is on another load balancer")
        for pool in pools.values():
            if pool.load_balancer_id not in lbs:
                problems.append(f"pool {pool.id}: load balancer {pool.load_balancer_id} is gone")
        for member in session.scalars(select(m.Member)):
            if member.pool_id not in pools:
                problems.append(f"member {member.id}: pool {member.pool_id} is gone")
        monitored: dict[str, str] = {}
        for monitor in session.scalars(select(m.HealthMonitor)):
            if monitor.pool_id not in pools:
                problems.append(f"health monitor {monitor.id}: pool {monitor.pool_id} is gone")
            if monitor.pool_id in monitored:
                problems.append(f"pool {monitor.pool_id} has two health monitors")
            monitored[monitor.pool_id] = monitor.id
        for policy in policies.values():
            listener = listeners.get(policy.listener_id)
            if listener is None:
                problems.append(f"l7policy {policy.id}: listener {policy.listener_id} is gone")
            redirect = pools.get(policy.redirect_pool_id or "")
            if policy.redirect_pool_id and redirect is None:
                problems.append(f"l7policy {policy.id}: redirect pool {policy.redirect_pool_id} is gone")
            if listener is not None and redirect is not None and redirect.load_balancer_id != listener.load_balancer_id:
                problems.append(f"l7policy {policy.id}: redirect pool {redirect.id} is on another load balancer")
        for rule in session.scalars(select(m.L7Rule)):
            if rule.l7policy_id not in policies:
                problems.append(f"l7rule {rule.id}: policy {rule.l7policy_id} is gone")
        for child in (*listeners.values(), *pools.values()):
            lb = lbs.get(child.load_balancer_id)
            if lb is not None and lb.project_id != child.project_id:
                problems.append(f"{child.__tablename__} {child.id} is in project {child.project_id}, "
                                f"its load balancer in {lb.project_id}")
        for cluster in session.scalars(select(m.AmphoraCluster)):
            if cluster.load_balancer_id not in lbs:
                problems.append(f"cluster {cluster.id}: load balancer {cluster.load_balancer_id} is gone")
    return problems
