"""The health manager: turns verified heartbeats into amphora health, statistics and operating status.

It also keeps each agent's last accepted heartbeat sequence on the health row it writes
anyway, and hands them back to the verifier when the controller starts.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from cohort.controller import reachability
from cohort.controller import status as st
from cohort.db import models as m
from cohort.db.session import transaction
from cohort.health.heartbeat import SenderKey
from cohort.health.keys import AMPHORA, DISTRIBUTOR
from cohort.health.report import COUNTERS, AmphoraReport, parse_amphora_report

log = logging.getLogger(__name__)

MAX_SEQ = 2**63 - 1
VRRP_ROLES = ("MASTER", "BACKUP", "FAULT")


def _seq(payload: dict[str, Any]) -> int | None:
    seq = payload.get("seq")
    if isinstance(seq, int) and not isinstance(seq, bool) and 0 <= seq <= MAX_SEQ:
        return seq
    return None


def _newest(stored: int | None, seq: int | None) -> int | None:
    # Heartbeats are handled in worker threads, so an older one may land after a newer one.
    if seq is None:
        return stored
    return seq if stored is None else max(stored, seq)


class HealthManager:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions
        self.processed = 0

    def last_sequences(self) -> dict[SenderKey, int]:
        """The persisted last heartbeat sequence of every agent, for the verifier at start."""
        with self.sessions() as session:
            amphorae = session.execute(select(m.AmphoraHealth.amphora_id, m.AmphoraHealth.last_seq)
                                       .where(m.AmphoraHealth.last_seq.is_not(None))).all()
            distributors = session.execute(
                select(m.DistributorHealth.distributor_id, m.DistributorHealth.last_seq)
                .where(m.DistributorHealth.last_seq.is_not(None))).all()
        found = {(AMPHORA, agent_id): seq for agent_id, seq in amphorae if seq is not None}
        found.update({(DISTRIBUTOR, agent_id): seq for agent_id, seq in distributors if seq is not None})
        return found

    def on_heartbeat(self, payload: dict[str, Any], received_at: float | None = None) -> None:
        """Record one verified heartbeat; ``received_at`` (when the datagram arrived) is the liveness
        time, so a heartbeat that waited in a queue does not make its sender look late."""
        seen = time.time() if received_at is None else received_at
        if payload.get("distributor") is True:
            role = payload.get("role")
            self._distributor(str(payload.get("id", "")), _seq(payload), role if role in VRRP_ROLES else None, seen,
                              reachability.parse_report(payload.get("vips")), payload.get("partial") is True)
            return
        amphora_id = str(payload.get("id", ""))
        report = parse_amphora_report(payload)
        if report is None:
            log.warning("heartbeat of amphora %s has a malformed body; only its liveness counts", amphora_id)
        with transaction(self.sessions) as session:
            amphora = session.get(m.Amphora, amphora_id)
            if amphora is None or amphora.status == "DELETED" or amphora.load_balancer_id is None:
                return
            health = session.get(m.AmphoraHealth, amphora_id)
            if health is None:
                session.add(m.AmphoraHealth(amphora_id=amphora_id, last_update=seen, busy=False,
                                            last_seq=_seq(payload)))
            else:
                health.last_update = max(health.last_update, seen)
                health.last_seq = _newest(health.last_seq, _seq(payload))
            lb = session.get(m.LoadBalancer, amphora.load_balancer_id)
            if lb is None or report is None:
                return
            if report.bgp is not None:
                row = session.get(m.AmphoraHealth, amphora_id)
                if row is not None:
                    row.bgp = json.dumps(report.bgp.as_json(), sort_keys=True)
            self._record(session, lb, amphora_id, report)
        self.processed += 1

    def _distributor(self, distributor_id: str, seq: int | None, role: str | None, seen: float,
                     report: reachability.Report | None = None, partial: bool = False) -> None:
        with transaction(self.sessions) as session:
            row = session.get(m.Distributor, distributor_id)
            if row is None:
                return
            # A DELETED member's heartbeat is recorded too: that is how the failover watcher learns
            # that a replaced distributor is alive and must be destroyed again.
            if row.status != "DELETED":
                row.role = role
            health = session.get(m.DistributorHealth, distributor_id)
            newest = health is None or seen >= health.last_update
            if health is None:
                health = m.DistributorHealth(distributor_id=distributor_id, last_update=seen, busy=False,
                                             last_seq=seq)
                session.add(health)
            else:
                health.last_update = max(health.last_update, seen)
                health.last_seq = _newest(health.last_seq, seq)
            # An older heartbeat handled late must not overwrite newer probe verdicts; a body without
            # readable verdicts leaves none (stale ones would still count as this distributor's word).
            if newest:
                probes = None if report is None else reachability.dump(reachability.record(
                    reachability.load(health.probes), report, seen, partial))
                if probes != health.probes:
                    health.probes = probes
        self.processed += 1

    def _record(self, session: Session, lb: m.LoadBalancer, amphora_id: str, report: AmphoraReport) -> None:
        listeners = {row.id: row for row in lb.listeners}
        for listener_id, listener_report in report.listeners.items():
            if listener_id not in listeners:
                continue
            row = session.get(m.ListenerStatistics, (listener_id, amphora_id))
            if row is None:
                row = m.ListenerStatistics(listener_id=listener_id, amphora_id=amphora_id,
                                           **dict.fromkeys(COUNTERS, 0))
                session.add(row)
            for name, value in listener_report.stats.items():
                setattr(row, name, value)
        pools = {row.id: row for row in lb.pools}
        for pool_id, pool_report in report.pools.items():
            pool = pools.get(pool_id)
            if pool is None:
                continue
            members = {row.id: row for row in pool.members}
            for member_id, member_status in pool_report.members.items():
                member = members.get(member_id)
                if member is not None and member.admin_state_up:
                    member.operating_status = st.MEMBER_STATUS.get(member_status, "ERROR")
            monitor = pool.health_monitor
            if monitor is not None and monitor.provisioning_status != "PENDING_DELETE":
                monitor.operating_status = "ONLINE" if monitor.admin_state_up else "OFFLINE"
            if pool.admin_state_up:
                pool.operating_status = st.pool_from_members(
                    st.POOL_STATUS.get(str(pool_report.status), "ERROR"),
                    [mb.operating_status for mb in pool.members if mb.admin_state_up],
                )
        for listener_id, listener in listeners.items():
            if not listener.admin_state_up:
                listener.operating_status = "OFFLINE"
                continue
            reported = report.listeners.get(listener_id)
            own = st.LISTENER_STATUS.get(str(reported.status), "OFFLINE") if reported is not None else "OFFLINE"
            pool_ids = {listener.default_pool_id, *(p.redirect_pool_id for p in listener.l7policies)}
            listener.operating_status = st.worst(own, [pools[p].operating_status for p in pool_ids if p in pools])
        if lb.admin_state_up:
            own = self._lb_own_status(session, lb)
            lb.operating_status = st.worst(own, [row.operating_status for row in lb.listeners])

    def _lb_own_status(self, session: Session, lb: m.LoadBalancer) -> str:
        cluster = session.scalar(select(m.AmphoraCluster).where(m.AmphoraCluster.load_balancer_id == lb.id))
        if cluster is None:
            return "ONLINE"
        serving = session.scalars(select(m.Amphora).where(
            m.Amphora.load_balancer_id == lb.id, m.Amphora.role == "IN_CLUSTER",
            m.Amphora.status == "ALLOCATED")).all()
        reason = None
        if cluster.cluster_type == "L3_BGP":
            # An amphora serves only once the fabric can reach it: its route is announced.
            announcing, reasons = [], []
            for amphora in serving:
                problem = st.bgp_problem(session.get(m.AmphoraHealth, amphora.id), lb.vip_address)
                if problem is None:
                    announcing.append(amphora)
                else:
                    reasons.append(f"amphora {amphora.id[:8]}: {problem}")
            serving, reason = announcing, ("; ".join(reasons)[:255] or None)
        cluster.operating_status = st.cluster_status(len(serving), cluster.desired_size, cluster.min_size)
        cluster.status_reason = reason if cluster.operating_status != "ONLINE" else None
        return cluster.operating_status
