"""Notice dead amphorae and distributors and have them replaced (Octavia's health-manager failover, N+1).

An amphora is dead when its compute instance reports ERROR (a process crashed), when it has
heartbeated before and then stayed silent longer than ``heartbeat_stale_after`` (and its agent no
longer answers over management, or the silence has lasted ``ANSWERING_SILENCE_FACTOR`` times
that), when an L3 amphora has had no BGP session for ``bgp_sessions_down_after`` with routers
other amphorae still reach, or when every live distributor has found an L2 amphora's front end
unreachable for ``frontend_unreachable_after`` (``cohort.controller.reachability``: its link is
down while its agent still heartbeats over management). A distributor's silence is judged the same way
(``dead_distributors``). Its load balancer is taken with the same lock the API uses, so a
failover never races a tenant change; a load balancer that is busy is simply looked at again on
the next scan.

Every controller runs this watcher. Each failure is acted on once: the load balancer lock and the
amphora's move from ALLOCATED to PENDING_DELETE are both compare-and-sets in one transaction (a
scan that read the amphora before another controller replaced it changes nothing), and a failed
distributor is claimed the same way (``DistributorPair.fail``).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from cohort import datamodel as d
from cohort.config import Settings
from cohort.controller import desired, fanout, reachability
from cohort.controller.distributors import DistributorPair
from cohort.controller.periodic import Periodic
from cohort.controller.wiring import Drivers
from cohort.db import models as m
from cohort.db.locks import LoadBalancerBusy, lock_load_balancer
from cohort.drivers.distributor.base import DistributorRef

log = logging.getLogger(__name__)

# How many times ``distributor_stale_after`` both members of a pair may be silent before both are
# failed over (one silent beside a heartbeating peer is failed over after ``distributor_stale_after``).
PAIR_SILENCE_FACTOR = 3.0
# A silent agent that still answers over management is failed over only once its silence has lasted
# this many times its timeout: until then its heartbeats' path is slow, not the agent dead. In the
# chaos benchmark both members of the distributor pair were replaced, one after the other, while their
# agents answered every request (their heartbeats were recorded more than 3 s apart on the busy
# machine); the pair was split for 10 s.
ANSWERING_SILENCE_FACTOR = 3.0
# Seconds an agent has to answer that check (GET /1.0/info locks nothing in it).
ANSWER_TIMEOUT = 1.0


def _ask_after(stale_after: float) -> float:
    """How long an agent is silent before it is asked whether it answers: the answer is then in by
    the time the silence is failure, so an agent that is gone costs no ``ANSWER_TIMEOUT`` on top."""
    return max(0.0, stale_after - ANSWER_TIMEOUT)


class FailoverWatcher(Periodic):
    what = "failover scan"

    def __init__(self, settings: Settings, sessions: sessionmaker[Session], drivers: Drivers,
                 on_change: Callable[[], None], interval: float = 0.5) -> None:
        super().__init__(interval)
        self.settings = settings
        self.sessions = sessions
        self.drivers = drivers
        self.on_change = on_change
        self.failovers = 0
        self.pair = DistributorPair(sessions, drivers)
        # L3 amphorae whose BGP sessions were up once, and since when they have all been down.
        self._bgp_was_up: set[str] = set()
        self._bgp_down_since: dict[str, float] = {}
        self._answering_logged: dict[str, int] = {}  # silent agents that answer: the second last logged

    def tick(self) -> None:
        self.scan()

    def dead(self, session: Session) -> list[tuple[m.Amphora, str]]:
        now = time.time()
        found = []
        rows = session.scalars(select(m.Amphora).where(m.Amphora.status == "ALLOCATED")).all()
        unreachable = self.unreachable(session, now)
        routers_up = self.routers_up(session, now)
        stale_after = self.settings.heartbeat_stale_after
        healths = {amphora.id: session.get(m.AmphoraHealth, amphora.id) for amphora in rows}
        silent = {ident: now - health.last_update for ident, health in healths.items()
                  if health is not None and not health.busy and now - health.last_update > _ask_after(stale_after)}
        failed = {amphora.id for amphora in rows
                  if amphora.compute_id and self.drivers.compute.status(amphora.compute_id) in ("ERROR", "DELETED")}
        # Asked all at once: many amphorae silent together (a host's) must not take a second each.
        # Never those whose instance failed: their verdict, and everyone's, would wait for the timeout.
        answering = self._answering([amphora for amphora in rows if amphora.id not in failed
                                     and silent.get(amphora.id, math.inf) <= stale_after * ANSWERING_SILENCE_FACTOR])
        asked = time.time() - now
        for amphora in rows:
            if amphora.id in failed:
                found.append((amphora, "its compute instance failed"))
                continue
            health = healths[amphora.id]
            silence = silent.get(amphora.id, 0.0) + asked
            if amphora.id in silent and silence > stale_after:
                if amphora.id not in answering:
                    found.append((amphora, f"no heartbeat for {silence:.1f}s"))
                    continue
                self._note_answering("amphora", amphora.id, silence)
            # Its data path is lost while it heartbeats, as when the distributors cannot reach an L2 one.
            down = self._bgp_down_for(amphora.id, health, now, routers_up)
            if down is not None and down > self.settings.bgp_sessions_down_after:
                found.append((amphora, f"its BGP sessions have been down for {down:.1f}s"))
                continue
            down = unreachable.get(amphora.id)
            if down is not None and down > self.settings.frontend_unreachable_after and _in_service(session, amphora):
                found.append((amphora, f"front-end unreachable from the distributors for {down:.1f}s"))
        return found

    def unreachable(self, session: Session, now: float) -> dict[str, float]:
        """Seconds each L2 amphora has been unreachable in the probes of every live distributor: one that is
        replaced, silent or whose keepalived is down (FAULT) is no witness."""
        views = []
        for row in session.scalars(select(m.Distributor).where(m.Distributor.status == "ACTIVE")):
            health = session.get(m.DistributorHealth, row.id)
            if health is None or not health.probes or row.role == "FAULT":
                continue
            if now - health.last_update > self.settings.distributor_stale_after:
                continue
            views.append(reachability.load(health.probes))
        return reachability.unreachable_for(views, now)

    def routers_up(self, session: Session, now: float) -> set[str]:
        """The BGP peers (routers) some heartbeating L3 amphora has an established session with."""
        up: set[str] = set()
        for health in session.scalars(select(m.AmphoraHealth).where(m.AmphoraHealth.bgp.is_not(None))):
            if now - health.last_update <= self.settings.heartbeat_stale_after:
                up |= {peer for peer, state in _sessions(health).items() if state == "Established"}
        return up

    def _bgp_down_for(self, amphora_id: str, health: m.AmphoraHealth | None, now: float,
                      routers_up: set[str]) -> float | None:
        """How long an L3 amphora that had a session has had none with a router that other amphorae
        still reach (its links are down, say, while its agent still heartbeats over management): it
        cannot serve, so it is replaced like a dead one. Not blamed: one that never had a session (a
        wrong password: a replacement would not fare better), and one whose routers nobody reaches (a
        router restarting for maintenance must not get every amphora of every cluster replaced)."""
        if health is None or not health.bgp:
            return None
        sessions = _sessions(health)
        if any(state == "Established" for state in sessions.values()):
            self._bgp_was_up.add(amphora_id)
            self._bgp_down_since.pop(amphora_id, None)
            return None
        if amphora_id not in self._bgp_was_up or not routers_up & set(sessions):
            self._bgp_down_since.pop(amphora_id, None)
            return None
        # Down since the last of its sessions went down, as its speaker said in that heartbeat (the
        # speaker's status is up to two seconds old when it is sent); else since this scan saw it.
        said = _down_for(health)
        if not said or not set(said) >= set(sessions):
            return now - self._bgp_down_since.setdefault(amphora_id, now)
        went_down = min(now, health.last_update - min(said.values()))
        # A later moment than the one recorded means the sessions were up in between, though no
        # heartbeat showed it (BIRD's "since" moves only when a protocol goes up or down, not while
        # it retries): a blip that followed a blip is not one long outage. Counted as one, four
        # 0.5 s blips in a row got a healthy amphora replaced "down for 10.3s".
        since = max(self._bgp_down_since.get(amphora_id, went_down), went_down)
        self._bgp_down_since[amphora_id] = since
        return now - since

    def dead_distributors(self, session: Session) -> list[tuple[str, str]]:
        """Distributors whose instance failed, or that heartbeated and then went silent: silence is failure.

        Silence is believed at once only while the other member of the pair heartbeats: when neither
        does, the path of their heartbeats to the controllers is more likely broken than both members
        (in the chaos benchmark a survivor's heartbeats once came 3.2 s apart just as its peer died,
        and destroying it took every VIP of its kind down). Both are failed over once the silence has
        lasted ``PAIR_SILENCE_FACTOR`` times ``distributor_stale_after``."""
        now = time.time()
        stale_after = self.settings.distributor_stale_after
        rows = list(session.scalars(select(m.Distributor).where(m.Distributor.status == "ACTIVE")))
        failed = {row.id for row in rows
                  if row.compute_id and self.drivers.compute.status(row.compute_id) in ("ERROR", "DELETED")}
        silent_for: dict[str, float] = {}
        for row in rows:
            health = session.get(m.DistributorHealth, row.id)
            if health is not None and not health.busy:
                silent_for[row.id] = now - health.last_update
        found = [(row.id, "its compute instance failed") for row in rows if row.id in failed]
        for row in rows:
            silence = silent_for.get(row.id, 0.0)
            if row.id in failed or silence <= _ask_after(stale_after):
                continue
            peers = [peer.id for peer in rows if peer.distributor_type == row.distributor_type and peer.id != row.id]
            peer_heartbeats = any(p not in failed and silent_for.get(p, math.inf) <= stale_after for p in peers)
            if not peer_heartbeats and silence <= stale_after * PAIR_SILENCE_FACTOR:
                continue
            answers = bool(silence <= stale_after * ANSWERING_SILENCE_FACTOR and row.lb_network_ip and
                           self.drivers.distributor.answers(DistributorRef(row.id, row.lb_network_ip), ANSWER_TIMEOUT))
            silence += time.time() - now  # as long as it is once the question is settled
            if silence <= stale_after:
                continue
            if answers:
                self._note_answering("distributor", row.id, silence)
                continue
            found.append((row.id, f"no heartbeat for {silence:.1f}s"))
        return found

    def _answering(self, amphorae: list[m.Amphora]) -> set[str]:
        """The ids of those ``amphorae`` whose agent answers over management (``ANSWER_TIMEOUT``)."""
        answering: set[str] = set()

        def ask(amphora: d.Amphora) -> None:
            if self.drivers.amphora.answers(amphora, ANSWER_TIMEOUT):
                answering.add(amphora.id)

        fanout.each([desired.amphora(row) for row in amphorae], ask, "answers")
        return answering

    def _note_answering(self, kind: str, ident: str, silence: float) -> None:
        """Log once per second of silence at most: the watcher scans twice a second."""
        if int(silence) != self._answering_logged.get(ident):
            if len(self._answering_logged) > 1000:
                self._answering_logged.clear()
            self._answering_logged[ident] = int(silence)
            log.warning("%s %s: no heartbeat for %.1fs, but its agent answers; not failed over yet", kind, ident,
                        silence)

    def scan(self) -> int:
        return self.scan_amphorae() + self.scan_distributors()

    def scan_distributors(self) -> int:
        """Every load balancer of a failed member's type is reconciled, which brings in its replacement
        (the spare, or a new build) and gives it every VIP and registration; the surviving member kept
        serving. The failed member is destroyed meanwhile, as soon as the passes are started: it must
        not hold a VIP beside its replacement for long, but destroying it first cost the pair a second."""
        started = 0
        with self.sessions() as session:
            failed = [(ident, reason) for ident, reason in self.dead_distributors(session)]
        for distributor_id, reason in failed:
            with self.sessions() as session:
                row = session.get(m.Distributor, distributor_id)
                distributor_type = row.distributor_type if row is not None else ""
            if not self.pair.fail(distributor_id, reason):
                continue  # another controller saw it first
            with self.sessions() as session:
                served = session.scalars(select(m.AmphoraCluster.load_balancer_id).where(
                    m.AmphoraCluster.cluster_type == distributor_type)).all()
            for lb_id in served:
                with self.sessions() as session, session.begin():
                    try:
                        lock_load_balancer(session, lb_id)
                    except LoadBalancerBusy:
                        session.rollback()  # busy: its own pass completes the pair anyway
            log.warning("distributor %s failed (%s); replacing it for %d load balancers", distributor_id, reason,
                        len(served))
            started += 1
        if started:
            self.on_change()
        self.pair.destroy_failed()
        self.pair.put_down_revenants()
        return started

    def scan_amphorae(self) -> int:
        started = 0
        with self.sessions() as session:
            candidates = [(a.id, a.load_balancer_id, reason) for a, reason in self.dead(session)]
        for amphora_id, lb_id, reason in candidates:
            if lb_id is None:
                continue
            with self.sessions() as session, session.begin():
                try:
                    lock_load_balancer(session, lb_id)
                except LoadBalancerBusy:
                    session.rollback()
                    continue
                claimed = session.execute(update(m.Amphora).where(
                    m.Amphora.id == amphora_id, m.Amphora.status == "ALLOCATED",
                ).values(status="PENDING_DELETE", status_reason=reason)).rowcount  # type: ignore[attr-defined]
                if not claimed:
                    session.rollback()  # replaced already (this scan's view was older than that)
                    continue
                lb = session.get(m.LoadBalancer, lb_id)
                if lb is not None:
                    lb.status_reason = f"failover of amphora {amphora_id[:8]}: {reason}"
            log.warning("amphora %s of load balancer %s: %s; replacing it", amphora_id, lb_id, reason)
            started += 1
        if started:
            self.failovers += started
            self.on_change()
        return started


def _in_service(session: Session, amphora: m.Amphora) -> bool:
    """A cluster member the distributors should reach: registered ACTIVE (not draining) on a load
    balancer that is administratively up (a disabled one's amphorae refuse the probes on purpose)."""
    if amphora.role != "IN_CLUSTER" or amphora.load_balancer_id is None:
        return False
    lb = session.get(m.LoadBalancer, amphora.load_balancer_id)
    registration = session.get(m.AmphoraRegistration, (amphora.load_balancer_id, amphora.id))
    return lb is not None and lb.admin_state_up and registration is not None and registration.state == "ACTIVE"


def _down_for(health: m.AmphoraHealth) -> dict[str, float]:
    """How long each of an L3 amphora's sessions had been down when its last heartbeat was sent."""
    try:
        said = json.loads(health.bgp or "{}").get("down_for") or {}
    except (ValueError, AttributeError):
        return {}
    if not isinstance(said, dict):
        return {}
    return {str(peer): float(v) for peer, v in said.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def _sessions(health: m.AmphoraHealth) -> dict[str, str]:
    """An L3 amphora's BGP session state per peer address, from its last heartbeat."""
    try:
        sessions = json.loads(health.bgp or "{}").get("sessions") or {}
    except (ValueError, AttributeError):
        return {}
    return {str(peer): str(state) for peer, state in sessions.items()} if isinstance(sessions, dict) else {}
