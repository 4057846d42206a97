"""An amphora driver that configures nothing and records every call (unit tests, ``--drivers noop``).

``delay`` makes waiting for an agent and pushing a configuration take that long, as they do on a
real amphora, so a test can kill a controller in the middle of them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from cohort.datamodel import Amphora, BgpSpeaker, LoadBalancer
from cohort.drivers.network.base import PluggedPort


class NoopAmphoraDriver:
    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.calls: list[tuple[str, str]] = []
        self.configs: dict[tuple[str, str], LoadBalancer] = {}
        self.speakers: dict[str, BgpSpeaker] = {}
        self.announced: dict[str, set[str]] = {}
        self.cluster_peers: dict[tuple[str, str], list[str]] = {}  # (amphora, VIP) -> its peers' ids
        self.unreachable: set[str] = set()  # amphora ids whose agent does not answer (tests)
        self._lock = threading.Lock()

    def _record(self, verb: str, amphora: Amphora) -> None:
        with self._lock:
            self.calls.append((verb, amphora.id))

    def wait_ready(self, amphora: Amphora, timeout: float) -> dict[str, Any]:
        self._record("wait_ready", amphora)
        time.sleep(self.delay)
        return {"hostname": amphora.id, "api_version": "1.0", "haproxy_version": "noop"}

    def answers(self, amphora: Amphora, timeout: float) -> bool:
        self._record("answers", amphora)
        return amphora.id not in self.unreachable

    def post_vip_plug(self, amphora: Amphora, port: PluggedPort, vip: str, vip_mode: str) -> None:
        self._record("post_vip_plug", amphora)

    def post_network_plug(self, amphora: Amphora, port: PluggedPort) -> None:
        self._record("post_network_plug", amphora)

    def update(self, amphora: Amphora, lb: LoadBalancer, peers: Sequence[Amphora],
               certificates: Mapping[str, bytes]) -> None:
        self._record("update", amphora)
        time.sleep(self.delay)
        with self._lock:
            self.configs[(amphora.id, lb.id)] = lb

    def configure_bgp(self, amphora: Amphora, speaker: BgpSpeaker) -> None:
        self._record("configure_bgp", amphora)
        with self._lock:
            self.speakers[amphora.id] = speaker

    def announce(self, amphora: Amphora, vip: str, lb_id: str, announce: bool, peers: Sequence[str] = ()) -> None:
        self._record("announce" if announce else "withdraw", amphora)
        with self._lock:
            self.announced.setdefault(amphora.id, set())
            (self.announced[amphora.id].add if announce else self.announced[amphora.id].discard)(vip)

    def set_cluster_peers(self, amphora: Amphora, vip: str, lb_id: str, peers: Sequence[Amphora]) -> None:
        self._record("set_cluster_peers", amphora)
        with self._lock:
            self.cluster_peers[(amphora.id, vip)] = sorted(p.id for p in peers)

    def bgp_status(self, amphora: Amphora) -> dict[str, Any]:
        # Nothing speaks BGP here: no session is ever reported as established.
        with self._lock:
            speaker = self.speakers.get(amphora.id)
        sessions = {} if speaker is None else {p.peer_ip: "Idle" for p in speaker.peers}
        return {"sessions": sessions, "announced": []}

    def drain(self, amphora: Amphora, lb_id: str) -> None:
        self._record("drain", amphora)

    def drained(self, amphora: Amphora, lb_id: str) -> bool:
        return True

    def remove_lb(self, amphora: Amphora, lb_id: str) -> None:
        self._record("remove_lb", amphora)
        with self._lock:
            self.configs.pop((amphora.id, lb_id), None)

    def get_config(self, amphora: Amphora, lb_id: str) -> str:
        with self._lock:
            lb = self.configs.get((amphora.id, lb_id))
        return repr(lb) if lb else ""
