"""Instances of the lab: an amphora or distributor is a network namespace, a cgroup and its agent.

An instance ``X`` of kind amphora (distributor) is the namespace ``{prefix}-a-{8 hex of X}``
(``-d-``), which is also its compute id. It gets a management port ``mgmt0`` on the lab's
management bridge with the next free management address, cgroup v1 groups
``cohort/{namespace}`` under cpu and memory (a fraction of one CPU, MiB), and one agent process
started inside both, with a raised file limit; everything the agent forks inherits the cgroup,
which is how :meth:`LabInstances.delete` finds it. Each instance also gets a uid of its own
(``jail_uid``, unique among the lab's instances, in a range of the lab's own), the user its
agent runs tenant-shaped daemons as (``cohort.agents.common.jail``): the daemons of two
amphorae never share a user, so they cannot signal or trace each other.

Management ports are bridge ports with ``isolated on``: agents reach the host (controller) but
never each other, whatever tenant they serve. Records live in the lab state (``instances``)
so a restarted controller finds its instances and their agents (pid and start time, to
survive pid reuse).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cohort import netns
from cohort.lab.addresses import AddressBook
from cohort.lab.errors import LabError, LabNotReady
from cohort.netplan import MGMT_RANGE, AddressError, address_mac

if TYPE_CHECKING:
    from cohort.lab.core import Lab

KINDS = ("amphora", "distributor")
NOFILE = 100_000
JAIL_UID_BASE = 2_100_000_000
JAIL_UIDS_PER_LAB = 100_000
# Builds the agent's command line from its management address and jail uid.
AgentCommand = Callable[[str, int], list[str]]


@dataclass(frozen=True)
class LabInstance:
    compute_id: str
    mgmt_ip: str
    status: str  # BUILDING | ACTIVE | ERROR | DELETED
    jail_uid: int | None


def jail_uid_base(prefix: str) -> int:
    """The first jail uid of the lab ``prefix``: labs side by side on one host get disjoint ranges."""
    return JAIL_UID_BASE + zlib.crc32(prefix.encode()) % 1000 * JAIL_UIDS_PER_LAB


def allocate_jail_uid(instances: dict[str, Any], base: int) -> int:
    taken = {rec.get("jail_uid") for rec in instances.values()}
    for uid in range(base, base + JAIL_UIDS_PER_LAB):
        if uid not in taken:
            return uid
    raise LabNotReady("no free jail uid left in this lab")


class LabInstances:
    def __init__(self, lab: Lab) -> None:
        self.lab = lab

    def _mgmt_link(self, ns: str) -> str:
        # The switch-side name: kind letter + 8 hex + 'm', unique in the switch namespace.
        kind, hexid = ns.rsplit("-", 2)[-2:]
        return f"{kind}{hexid}m"

    def build(self, instance_id: str, kind: str, cpu: float | None, memory_mb: int | None,
              agent_command: AgentCommand, log: Path) -> LabInstance:
        """Make (or find) the instance and start its agent; idempotent per ``instance_id``."""
        if kind not in KINDS:
            raise LabError(f"unknown instance kind {kind!r}")
        lab = self.lab
        ns = lab.instance_ns(instance_id, kind)
        if not lab.is_instance_ns(ns):
            raise LabError(f"instance id {instance_id!r} must start with 8 hex digits")
        with lab.transaction() as st:
            if not netns.netns_exists(lab.sw_ns):
                raise LabNotReady(f"lab {lab.prefix} is not up")
            instances = st.setdefault("instances", {})
            rec = instances.get(instance_id)
            if rec is not None and rec["compute_id"] != ns:
                raise LabError(f"instance {instance_id} exists as {rec['compute_id']}")
            clash = [i for i, r in instances.items() if r["compute_id"] == ns and i != instance_id]
            if clash:
                raise LabError(f"instance {instance_id} would reuse namespace {ns} of {clash[0]}")
            if rec is not None and rec.get("pid") and netns.netns_exists(ns):
                return self._instance(rec)
            mgmt = lab.network("mgmt")
            try:
                mgmt_ip = AddressBook(st).reserve("mgmt", mgmt.cidr, f"instance:{ns}",
                                                  first=MGMT_RANGE[0], last=MGMT_RANGE[1])
            except AddressError as exc:
                raise LabNotReady(str(exc)) from exc
            if rec is not None and netns.pid_alive(rec.get("pid"), rec.get("starttime")):
                netns.kill_pids([rec["pid"]])  # its namespace vanished under it; start afresh
            uid = allocate_jail_uid(instances, jail_uid_base(lab.prefix))
            rec = {"compute_id": ns, "kind": kind, "mgmt_ip": mgmt_ip, "pid": None, "starttime": None,
                   "jail_uid": uid, "flavor": {"cpu": cpu, "memory_mb": memory_mb}}
            instances[instance_id] = rec
            self._plumb(ns, mgmt_ip)
            cgroup = lab.instance_cgroup(ns)
            netns.cgroup_create(cgroup, cpu=cpu, memory_mb=memory_mb)
            rec["pid"], rec["starttime"] = netns.spawn(ns, agent_command(mgmt_ip, uid), log, cgroup=cgroup,
                                                       nofile=NOFILE)
            return self._instance(rec)

    def _plumb(self, ns: str, mgmt_ip: str) -> None:
        sw, outer = self.lab.sw_ns, self._mgmt_link(ns)
        netns.add_netns(ns)
        netns.add_veth("mgmt0", ns, outer, sw, mac=address_mac("mgmt", mgmt_ip))
        netns.set_link(outer, sw, master=self.lab.network("mgmt").bridge, isolated=True)
        netns.add_addr("mgmt0", ns, f"{mgmt_ip}/24")
        netns.set_link("mgmt0", ns)

    def _status(self, rec: dict[str, Any]) -> str:
        if not netns.netns_exists(rec["compute_id"]):
            return "ERROR"
        if not rec.get("pid"):
            return "BUILDING"
        return "ACTIVE" if netns.pid_alive(rec["pid"], rec.get("starttime")) else "ERROR"

    def _instance(self, rec: dict[str, Any]) -> LabInstance:
        return LabInstance(rec["compute_id"], rec["mgmt_ip"], self._status(rec), rec.get("jail_uid"))

    def _find(self, st: dict[str, Any], compute_id: str) -> tuple[str, dict[str, Any]] | None:
        return next(
            ((i, r) for i, r in st.get("instances", {}).items() if r["compute_id"] == compute_id), None
        )

    def status(self, compute_id: str) -> str:
        # Without the lab's lock: every controller's failover watcher asks this of every instance twice
        # a second, and behind a build or a delete holding the lock the watchers stalled. An instance's
        # id is handed out only once its record is saved, so the state read always has it.
        found = self._find(self.lab.peek(), compute_id)
        if found is None:
            # An unrecorded namespace of ours is debris of a crash: ERROR gets it deleted.
            ours = self.lab.is_instance_ns(compute_id) and netns.netns_exists(compute_id)
            return "ERROR" if ours else "DELETED"
        return self._status(found[1])

    def agent_pid(self, compute_id: str) -> int | None:
        with self.lab.transaction() as st:
            found = self._find(st, compute_id)
            return None if found is None else found[1].get("pid")

    def instance_id(self, compute_id: str) -> str | None:
        with self.lab.transaction() as st:
            found = self._find(st, compute_id)
            return None if found is None else found[0]

    def delete(self, compute_id: str) -> None:
        """Kill the instance's processes and remove its namespace, links, cgroup and address."""
        lab = self.lab
        if not lab.is_instance_ns(compute_id):
            return  # never touch a namespace this lab did not make
        with lab.transaction() as st:
            found = self._find(st, compute_id)
            cgroup = lab.instance_cgroup(compute_id)
            pids = netns.cgroup_pids(cgroup) | netns.netns_pids(compute_id)
            if found is not None and netns.pid_alive(found[1].get("pid"), found[1].get("starttime")):
                pids.add(found[1]["pid"])
            netns.kill_pids(pids)
            netns.del_link(self._mgmt_link(compute_id), lab.sw_ns)
            netns.del_netns(compute_id)
            netns.cgroup_remove(cgroup)
            AddressBook(st).release("mgmt", f"instance:{compute_id}")
            if found is not None:
                del st["instances"][found[0]]
