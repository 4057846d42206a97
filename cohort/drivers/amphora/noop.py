"""An amphora driver that configures nothing and records every call (unit tests, ``--drivers noop``)."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

from cohort.datamodel import Amphora, LoadBalancer
from cohort.drivers.network.base import PluggedPort


class NoopAmphoraDriver:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.configs: dict[tuple[str, str], LoadBalancer] = {}
        self._lock = threading.Lock()

    def _record(self, verb: str, amphora: Amphora) -> None:
        with self._lock:
            self.calls.append((verb, amphora.id))

    def wait_ready(self, amphora: Amphora, timeout: float) -> dict[str, Any]:
        self._record("wait_ready", amphora)
        return {"hostname": amphora.id, "api_version": "1.0", "haproxy_version": "noop"}

    def post_vip_plug(self, amphora: Amphora, port: PluggedPort, vip: str, vip_mode: str) -> None:
        self._record("post_vip_plug", amphora)

    def post_network_plug(self, amphora: Amphora, port: PluggedPort) -> None:
        self._record("post_network_plug", amphora)

    def update(self, amphora: Amphora, lb: LoadBalancer, peers: Sequence[Amphora],
               certificates: Mapping[str, bytes]) -> None:
        self._record("update", amphora)
        with self._lock:
            self.configs[(amphora.id, lb.id)] = lb

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
