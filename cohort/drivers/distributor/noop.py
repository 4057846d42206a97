"""A distributor driver that forwards nothing and records VIPs and memberships (unit tests, ``--drivers noop``).

Its ``status`` has the agent's shape, every member healthy and without flows, so the
controller's status roll-up runs unchanged against it.
"""

from __future__ import annotations

import threading
from typing import Any

from cohort.drivers.distributor.base import ClusterMember, DistributorRef, DistributorVip
from cohort.drivers.errors import DriverError


class NoopDistributorDriver:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.vips: dict[tuple[str, str], DistributorVip] = {}
        self.members: dict[tuple[str, str], list[ClusterMember]] = {}
        self.unreachable: set[str] = set()  # distributor ids whose agent does not answer (tests)
        self._lock = threading.Lock()

    def _record(self, verb: str, distributor: DistributorRef) -> None:
        self.calls.append((verb, distributor.id))

    def wait_ready(self, distributor: DistributorRef, timeout: float) -> dict[str, Any]:
        with self._lock:
            self._record("wait_ready", distributor)
        return {"distributor_id": distributor.id, "api_version": "1.0", "distributor_type": "noop"}

    def answers(self, distributor: DistributorRef, timeout: float) -> bool:
        with self._lock:
            self._record("answers", distributor)
        return distributor.id not in self.unreachable

    def add_vip(self, distributor: DistributorRef, vip: DistributorVip) -> None:
        with self._lock:
            self._record("add_vip", distributor)
            self.vips[(distributor.id, vip.lb_id)] = vip
            self.members.setdefault((distributor.id, vip.lb_id), [])

    def remove_vip(self, distributor: DistributorRef, lb_id: str) -> None:
        with self._lock:
            self._record("remove_vip", distributor)
            self.vips.pop((distributor.id, lb_id), None)
            self.members.pop((distributor.id, lb_id), None)

    def set_amphorae(self, distributor: DistributorRef, lb_id: str, members: list[ClusterMember]) -> None:
        with self._lock:
            self._record("set_amphorae", distributor)
            if (distributor.id, lb_id) not in self.vips:
                # As the agent's 404: the VIP must be plugged first; the reconciler retries.
                raise DriverError(f"distributor {distributor.id}: no VIP for load balancer {lb_id}")
            self.members[(distributor.id, lb_id)] = list(members)

    def registered(self, distributor_id: str, lb_id: str) -> list[ClusterMember]:
        with self._lock:
            return list(self.members.get((distributor_id, lb_id), []))

    def status(self, distributor: DistributorRef, timeout: float | None = None,
               count_flows: bool = True) -> dict[str, Any]:
        with self._lock:
            self._record("status", distributor)
            vips = {}
            for (dist_id, lb_id), vip in self.vips.items():
                if dist_id != distributor.id:
                    continue
                members = self.members.get((dist_id, lb_id), [])
                vips[lb_id] = {
                    "vip_address": vip.vip_address,
                    "affinity": vip.affinity,
                    "members": {
                        m.amphora_id: {"healthy": True, "state": m.state, "drained": False, "flows": 0}
                        for m in members
                    },
                    "stats": {"packets_in": 0, "bytes_in": 0, "connections": 0, "flows": 0},
                }
            # No keepalived here: no member holds the VIPs, as an agent without VIPs reports it.
            return {"id": distributor.id, "vips": vips, "vrrp": {"role": None, "interfaces": {}}}
