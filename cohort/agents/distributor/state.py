"""What the distributor agent remembers across restarts: VIPs, members, marks, health and VRRP peers.

One JSON file (``state.json`` in the agent's state directory), replaced atomically (write,
fsync, rename) before the kernel is changed, so a restarted agent re-applies exactly what
its predecessor meant. Marks (which double as routing table ids) are allocated here,
monotonically from ``MIN_TABLE``: a number freed by an unregistered amphora is not handed
out again soon, so a flow still pinned to it cannot land on a newcomer.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cohort.agents.common.files import atomic_write
from cohort.distributor.nft import MIN_TABLE
from cohort.distributor.probes import ProbeSettings
from cohort.distributor.vrrp import DEFAULT_ADVERT_INT, DEFAULT_VRID

SCHEMA = 1
MAX_ID = 2**31 - 1


@dataclass
class MemberState:
    amphora_id: str
    mac_address: str
    frontend_ip: str
    position: int
    weight: int
    state: str  # ACTIVE | DRAINING
    mark: int
    healthy: bool = True
    drain_since: float | None = None  # wall clock: survives restarts
    drained: bool = False  # DRAINING and its route withdrawn (no pinned flows left, or timed out)


@dataclass
class VipState:
    lb_id: str
    vip_address: str
    mac_address: str
    address: str
    subnet_cidr: str
    gateway: str | None
    affinity: str
    health_port: int
    reply_table: int
    table_size: int
    interface: str = ""
    flow_timeout: int = 300
    drain_timeout: int = 300
    probe: ProbeSettings = field(default_factory=ProbeSettings)
    members: dict[str, MemberState] = field(default_factory=dict)

    @property
    def prefixlen(self) -> int:
        return int(self.subnet_cidr.split("/")[1])


@dataclass
class VrrpSettings:
    """The pair's VRRP on one front-end port: the other member's address there (None: alone)."""

    peer: str | None = None
    vrid: int = DEFAULT_VRID
    advert_int: float = DEFAULT_ADVERT_INT


@dataclass
class AgentState:
    next_id: int = MIN_TABLE
    vips: dict[str, VipState] = field(default_factory=dict)
    # By the port's MAC address: the controller's latest word for every VIP on that port.
    vrrp: dict[str, VrrpSettings] = field(default_factory=dict)

    def used_ids(self) -> set[int]:
        used = set()
        for v in self.vips.values():
            used.add(v.reply_table)
            used.update(m.mark for m in v.members.values())
        return used

    def allocate_id(self) -> int:
        used = self.used_ids()
        candidate = self.next_id
        for _ in range(len(used) + 1):
            if candidate > MAX_ID:
                candidate = MIN_TABLE
            if candidate not in used:
                self.next_id = candidate + 1
                return candidate
            candidate += 1
        raise RuntimeError("no free mark")  # unreachable: more candidates than used ids were tried

    def to_json(self) -> dict[str, Any]:
        return {"schema": SCHEMA, **asdict(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AgentState:
        if data.get("schema") != SCHEMA:
            raise ValueError(f"unsupported state schema {data.get('schema')!r}")
        vips = {}
        for lb_id, v in data.get("vips", {}).items():
            members = {aid: MemberState(**m) for aid, m in v.pop("members", {}).items()}
            probe = ProbeSettings(**v.pop("probe", {}))
            vips[lb_id] = VipState(**v, probe=probe, members=members)
        vrrp = {mac: VrrpSettings(**settings) for mac, settings in data.get("vrrp", {}).items()}
        return cls(next_id=int(data.get("next_id", MIN_TABLE)), vips=vips, vrrp=vrrp)


class StateStore:
    def __init__(self, directory: Path) -> None:
        self.path = directory / "state.json"

    def load(self) -> AgentState:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return AgentState()
        return AgentState.from_json(json.loads(text))

    def save(self, state: AgentState) -> None:
        atomic_write(self.path, json.dumps(state.to_json(), indent=1, sort_keys=True), durable=True)
