"""The health manager: turns verified heartbeats into amphora health, statistics and operating status."""

from __future__ import annotations

import logging
import time
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from cohort.controller import status as st
from cohort.db import models as m
from cohort.db.session import transaction

log = logging.getLogger(__name__)

COUNTERS = ("bytes_in", "bytes_out", "active_connections", "total_connections", "request_errors")


class HealthManager:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions
        self.processed = 0

    def on_heartbeat(self, payload: dict[str, Any]) -> None:
        if payload.get("distributor"):
            self._distributor(str(payload.get("id", "")))
            return
        amphora_id = str(payload.get("id", ""))
        with transaction(self.sessions) as session:
            amphora = session.get(m.Amphora, amphora_id)
            if amphora is None or amphora.status == "DELETED" or amphora.load_balancer_id is None:
                return
            health = session.get(m.AmphoraHealth, amphora_id)
            if health is None:
                session.add(m.AmphoraHealth(amphora_id=amphora_id, last_update=time.time(), busy=False))
            else:
                health.last_update = time.time()
            lb = session.get(m.LoadBalancer, amphora.load_balancer_id)
            if lb is None:
                return
            self._record(session, lb, amphora_id, payload)
        self.processed += 1

    def _distributor(self, distributor_id: str) -> None:
        with transaction(self.sessions) as session:
            if session.get(m.Distributor, distributor_id) is None:
                return
            health = session.get(m.DistributorHealth, distributor_id)
            if health is None:
                session.add(m.DistributorHealth(distributor_id=distributor_id, last_update=time.time(), busy=False))
            else:
                health.last_update = time.time()
        self.processed += 1

    def _record(self, session: Session, lb: m.LoadBalancer, amphora_id: str, payload: dict[str, Any]) -> None:
        listeners = {row.id: row for row in lb.listeners}
        reported_listeners: dict[str, Any] = payload.get("listeners") or {}
        for listener_id, report in reported_listeners.items():
            if listener_id not in listeners:
                continue
            stats = report.get("stats") or {}
            row = session.get(m.ListenerStatistics, (listener_id, amphora_id))
            if row is None:
                row = m.ListenerStatistics(listener_id=listener_id, amphora_id=amphora_id)
                session.add(row)
            for name in COUNTERS:
                setattr(row, name, int(stats.get(name, 0) or 0))
        pools = {row.id: row for row in lb.pools}
        reported_pools: dict[str, Any] = payload.get("pools") or {}
        for pool_id, report in reported_pools.items():
            pool = pools.get(pool_id)
            if pool is None:
                continue
            members = {row.id: row for row in pool.members}
            for member_id, member_status in (report.get("members") or {}).items():
                member = members.get(member_id)
                if member is not None and member.admin_state_up:
                    member.operating_status = st.MEMBER_STATUS.get(member_status, "ERROR")
            monitor = pool.health_monitor
            if monitor is not None and monitor.provisioning_status != "PENDING_DELETE":
                monitor.operating_status = "ONLINE" if monitor.admin_state_up else "OFFLINE"
            if pool.admin_state_up:
                pool.operating_status = st.pool_from_members(
                    st.POOL_STATUS.get(str(report.get("status")), "ERROR"),
                    [mb.operating_status for mb in pool.members if mb.admin_state_up],
                )
        for listener_id, listener in listeners.items():
            if not listener.admin_state_up:
                listener.operating_status = "OFFLINE"
                continue
            report = reported_listeners.get(listener_id)
            own = st.LISTENER_STATUS.get(str(report.get("status")), "OFFLINE") if report else "OFFLINE"
            pool_ids = {listener.default_pool_id, *(p.redirect_pool_id for p in listener.l7policies)}
            listener.operating_status = st.worst(own, [pools[p].operating_status for p in pool_ids if p in pools])
        if lb.admin_state_up:
            own = self._lb_own_status(session, lb)
            lb.operating_status = st.worst(own, [row.operating_status for row in lb.listeners])

    def _lb_own_status(self, session: Session, lb: m.LoadBalancer) -> str:
        cluster = session.scalar(select(m.AmphoraCluster).where(m.AmphoraCluster.load_balancer_id == lb.id))
        if cluster is None:
            return "ONLINE"
        healthy = len(session.scalars(select(m.Amphora.id).where(
            m.Amphora.load_balancer_id == lb.id, m.Amphora.role == "IN_CLUSTER",
            m.Amphora.status == "ALLOCATED")).all())
        cluster.operating_status = st.cluster_status(healthy, cluster.desired_size, cluster.min_size)
        return cluster.operating_status
