"""ACTIVE_ACTIVE over L3: every amphora of the cluster announces the VIP to the routers over BGP.

There is no distributor: the routers spread flows over the amphorae with ECMP. For each pass of
the reconciler the serving amphorae get the cluster's BGP session profile (the speaker and its
peers; the MD5 passwords decrypted only here, for the agents) and are told to announce the VIP,
which their agent does only while their HAProxy serves it. Amphorae leaving by scale-in withdraw
first, so the routers stop sending them new flows, wait ``withdraw_grace`` for the routers to
act on it, then drain (HAProxy's soft stop lets their
open connections finish) before they are deleted.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from cohort import datamodel as d
from cohort.controller import fanout
from cohort.controller.cluster import ClusterManager, peers_of
from cohort.controller.wiring import Drivers
from cohort.db import models as m
from cohort.drivers.errors import DriverError, PermanentDriverError
from cohort.drivers.network.base import VipPort
from cohort.secrets import decrypt_text

log = logging.getLogger(__name__)


def bgp_speaker(session: Session, key_file: Path, speaker_id: str) -> d.BgpSpeaker | None:
    """The speaker with its peers as the agents need them, or None when it does not exist."""
    row = session.get(m.BgpSpeaker, speaker_id)
    if row is None:
        return None
    peers = session.scalars(select(m.BgpPeer).where(m.BgpPeer.bgp_speaker_id == row.id)
                            .order_by(m.BgpPeer.peer_ip)).all()
    return d.BgpSpeaker(row.id, int(row.local_as), tuple(
        d.BgpPeer(peer_ip=p.peer_ip, remote_as=int(p.remote_as),
                  password=decrypt_text(key_file, p.md5_password_ciphertext) if p.md5_password_ciphertext else None,
                  ttl_hops=p.ttl_hops, hold_time=p.hold_time, keepalive_interval=p.keepalive_interval,
                  bfd=(p.bfd_min_rx, p.bfd_min_tx, p.bfd_multiplier) if p.bfd_enabled else None)
        for p in peers))


class Fabric:
    def __init__(self, sessions: sessionmaker[Session], drivers: Drivers, cluster: ClusterManager,
                 key_file: Path, default_speaker_id: str | None, withdraw_grace: float = 1.0) -> None:
        self.sessions = sessions
        self.drivers = drivers
        self.cluster = cluster
        self.key_file = key_file
        self.default_speaker_id = default_speaker_id or None
        self.withdraw_grace = withdraw_grace

    def speaker(self, lb: d.LoadBalancer) -> d.BgpSpeaker:
        speaker_id = lb.topology.bgp_speaker_id or self.default_speaker_id
        if speaker_id is None:
            raise PermanentDriverError(f"L3_BGP load balancer {lb.id} has no BGP speaker")
        with self.sessions() as session:
            speaker = bgp_speaker(session, self.key_file, speaker_id)
        if speaker is None:
            raise PermanentDriverError(f"BGP speaker {speaker_id} of load balancer {lb.id} does not exist")
        if not speaker.peers:
            raise PermanentDriverError(f"BGP speaker {speaker_id} of load balancer {lb.id} has no peers")
        return speaker

    def announce(self, lb: d.LoadBalancer, vip: VipPort, ids: list[str], leaving: list[str]) -> None:
        """Serving amphorae announce the VIP; leaving ones withdraw it and drain."""
        speaker = self.speaker(lb)
        serving, going = self.cluster.snapshots(ids), self.cluster.snapshots(leaving)
        def announce(amphora: d.Amphora) -> None:
            self.drivers.amphora.configure_bgp(amphora, speaker)
            self.drivers.amphora.announce(amphora, vip.address, lb.id, True, _fronts(amphora, serving + going))

        fanout.each(serving, announce, "announce")
        for amphora in going:
            try:
                self.drivers.amphora.announce(amphora, vip.address, lb.id, False, _fronts(amphora, serving + going))
            except DriverError as exc:
                log.info("withdraw on leaving amphora %s: %s", amphora.id, exc)
        if going:
            # The routers must have dropped the route before the leaving HAProxy stops listening,
            # or new connections hashed to it in between would be refused.
            time.sleep(self.withdraw_grace)
        self.cluster.drain(lb.id, leaving)


def _fronts(amphora: d.Amphora, cluster: list[d.Amphora]) -> list[str]:
    """The front-end addresses of ``amphora``'s peers (the second chance)."""
    return [peer.vrrp_ip for peer in peers_of(amphora, cluster) if peer.vrrp_ip]
