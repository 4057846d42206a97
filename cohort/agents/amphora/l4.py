"""UDP and SCTP load balancing in the amphora's kernel: the agent's owner of the nftables L4 tables.

One table per load balancer (``l4_nft`` renders it), loaded by the agent itself (root, in the
amphora's own namespace; no tenant process runs, so nothing is jailed), one prober per monitored
pool (``l4_health``), and the figures heartbeats and ``/stats`` report, read from nftables
counters and conntrack in the same shape as HAProxy's (``stats.summarize``).

LEAST_CONNECTIONS listeners get a refill thread (``l4_least``): every ``l4_least.INTERVAL`` it
counts each member's active flows in conntrack and the listener's new flows since the last
round, and rewrites the listener's slot table when its water-filling changed.

Specs are kept under ``<state>/l4/<lb_id>.json`` so a restarted agent probes again; the table
itself lives in the kernel and keeps serving while no agent runs. Listener and member numbers
(the conntrack marks) are allocated once per id and kept in ``slots.json``, so a flow's mark
names the same member across reconfigurations.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from pathlib import Path
from typing import Any

from cohort.agents.amphora import conntrack, l4_least, l4_nft
from cohort.agents.amphora.l4_health import PoolProber
from cohort.agents.amphora.l4_spec import Listener, Member, Spec, parse
from cohort.agents.common import nft_netlink
from cohort.agents.common.files import atomic_write
from cohort.agents.common.net import set_sysctl
from cohort.agents.common.nftables import nft as run_nft
from cohort.agents.common.proc import CommandFailed

LOG = logging.getLogger(__name__)


def _check_lb_id(lb_id: str) -> str:
    # The same shape as the spec's ids; it becomes part of a table name.
    parse({"listeners": [{"id": lb_id, "protocol": "UDP", "vip": "192.0.2.1", "port": 1}]})
    return lb_id


class L4Manager:
    def __init__(self, state_dir: Path) -> None:
        self._dir = state_dir / "l4"
        self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._slots_file = self._dir / "slots.json"
        self._lock = threading.RLock()
        self._specs: dict[str, Spec] = {}
        self._probers: dict[str, dict[str, PoolProber]] = {}  # lb -> listener -> prober
        self._dispatched: dict[str, set[int]] = {}
        self._least: dict[str, dict[str, list[Member]]] = {}  # lb -> listener -> slot table loaded
        self._new_flows: dict[str, int] = {}  # listener -> its new-flow counter at the last refill
        self._expected: dict[str, int] = {}  # listener -> new flows in the last interval
        self._stop = threading.Event()
        self._refiller: threading.Thread | None = None
        try:
            self._slots: dict[str, Any] = json.loads(self._slots_file.read_text())
        except (OSError, ValueError):
            self._slots = {"listeners": {}, "members": {}}

    # -- state -------------------------------------------------------------------------------
    def lb_ids(self) -> list[str]:
        with self._lock:
            return sorted(self._specs)

    def resume(self) -> None:
        """Adopt the specs a previous agent applied: apply them again (state kept) and probe."""
        for path in sorted(self._dir.glob("*.json")):
            if path.name == self._slots_file.name:
                continue
            try:
                self.put(path.stem, json.loads(path.read_text()))
            except (OSError, ValueError, CommandFailed):
                continue

    def get(self, lb_id: str) -> dict[str, Any]:
        with self._lock:
            if lb_id not in self._specs:
                raise LookupError(f"no L4 configuration for load balancer {lb_id}")
            return self._specs[lb_id].to_json()

    def _allocate(self, spec: Spec) -> None:
        listeners: dict[str, int] = self._slots["listeners"]
        members: dict[str, dict[str, int]] = self._slots["members"]
        for li in spec.listeners:
            if li.id not in listeners:
                taken = set(listeners.values())
                listeners[li.id] = next(n for n in range(1, l4_nft.MEMBER_MASK + 1) if n not in taken)
            own = members.setdefault(li.id, {})
            for member in li.pool.members if li.pool is not None else ():
                if member.id not in own:
                    taken = set(own.values())
                    own[member.id] = next(n for n in range(1, l4_nft.MEMBER_MASK + 1) if n not in taken)
        atomic_write(self._slots_file, json.dumps(self._slots))

    def put(self, lb_id: str, body: Any) -> bool:
        """Apply ``body`` (a spec) for ``lb_id``; returns whether it differed from the one applied."""
        _check_lb_id(lb_id)
        spec = parse(body)
        if not spec.listeners:
            changed = lb_id in self._specs
            self.delete(lb_id)
            return changed
        with self._lock:
            changed = self._specs.get(lb_id) != spec
            self._allocate(spec)
            self._specs[lb_id] = spec
            self._restart_probers(lb_id, spec)
            self._apply(lb_id)
            if self._least_listeners(spec) and self._refiller is None:
                self._refiller = threading.Thread(target=self._refill_loop, name="l4-least", daemon=True)
                self._refiller.start()
            atomic_write(self._dir / f"{lb_id}.json", json.dumps(spec.to_json()))
        return changed

    def delete(self, lb_id: str) -> None:
        _check_lb_id(lb_id)
        with self._lock:
            if lb_id not in self._specs and not (self._dir / f"{lb_id}.json").exists():
                return  # nothing of it in the kernel: the common case of a TCP-only load balancer
            for prober in self._probers.pop(lb_id, {}).values():
                prober.stop()
            spec = self._specs.pop(lb_id, None)
            (self._dir / f"{lb_id}.json").unlink(missing_ok=True)
            table = l4_nft.table_name(lb_id)
            run_nft("-f", "-", stdin=f"add table inet {table}\ndelete table inet {table}\n")
            for li in spec.listeners if spec is not None else ():
                conntrack.delete_by_mark(self._slots["listeners"][li.id] << l4_nft.LISTENER_SHIFT, 0xFFFF0000)
            self._dispatched.pop(lb_id, None)
            self._least.pop(lb_id, None)
            for li in spec.listeners if spec is not None else ():
                self._new_flows.pop(li.id, None)
                self._expected.pop(li.id, None)
            if not self._specs:
                set_sysctl("net.ipv4.ip_forward", "0")
                run_nft("-f", "-", stdin=l4_nft.guard_script(False))

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            for probers in self._probers.values():
                for prober in probers.values():
                    prober.stop()

    # -- health ------------------------------------------------------------------------------
    def _restart_probers(self, lb_id: str, spec: Spec) -> None:
        old = self._probers.pop(lb_id, {})
        new: dict[str, PoolProber] = {}
        for li in spec.listeners:
            pool = li.pool
            if pool is None or pool.monitor is None or not pool.monitor.enabled or not pool.enabled:
                continue
            previous = old.get(li.id)
            new[li.id] = PoolProber(pool.monitor, pool.members, lambda: self._health_changed(lb_id))
            new[li.id].start(previous.up if previous is not None and previous.monitor == pool.monitor else None)
        for prober in old.values():
            prober.stop()
        self._probers[lb_id] = new

    def _health_changed(self, lb_id: str) -> None:
        with self._lock:
            if lb_id in self._specs:
                self._apply(lb_id)

    def _healthy(self, lb_id: str) -> dict[str, dict[str, bool]]:
        return {lid: dict(p.up) for lid, p in self._probers.get(lb_id, {}).items()}

    # -- kernel ------------------------------------------------------------------------------
    def _existing(self, table: str) -> list[tuple[str, str]]:
        try:
            listing = json.loads(run_nft("-j", "list", "table", "inet", table))
        except CommandFailed:
            return []
        found = []
        for item in listing.get("nftables", []):
            for kind in ("chain", "map", "counter"):
                if kind in item:
                    found.append((kind, str(item[kind]["name"])))
        return found

    def _apply(self, lb_id: str) -> None:
        spec = self._specs[lb_id]
        healthy = self._healthy(lb_id)
        listener_slots: dict[str, int] = self._slots["listeners"]
        member_slots: dict[str, dict[str, int]] = self._slots["members"]
        least = self._least_tables(lb_id, spec, healthy, conntrack.marks()) if self._least_listeners(spec) else {}
        rendered = l4_nft.render(lb_id, spec, listener_slots, member_slots, healthy,
                                 self._existing(l4_nft.table_name(lb_id)), least)
        run_nft("-f", "-", stdin=l4_nft.guard_script(True))
        set_sysctl("net.ipv4.ip_forward", "1")
        if any(li.version == 6 for li in spec.listeners):
            set_sysctl("net.ipv6.conf.all.forwarding", "1")
        run_nft("-f", "-", stdin=rendered.script)
        self._least[lb_id] = least
        dispatched: set[int] = set()
        for li in spec.listeners:
            if li.enabled and li.pool is not None and li.pool.enabled:
                own = member_slots[li.id]
                dispatched |= {l4_nft.mark(listener_slots[li.id], own[m.id])
                               for m in l4_nft.dispatch_members(li.pool, healthy.get(li.id, {}))}
        # Flows pinned to a member that no longer takes new ones move with their next packet.
        for gone in self._dispatched.get(lb_id, set()) - dispatched:
            conntrack.delete_by_mark(gone)
        self._dispatched[lb_id] = dispatched

    # -- least connections ---------------------------------------------------------------------
    @staticmethod
    def _least_listeners(spec: Spec) -> list[Listener]:
        return [li for li in spec.listeners if li.enabled and li.pool is not None and li.pool.enabled
                and li.pool.algorithm == "LEAST_CONNECTIONS"]

    def _least_tables(self, lb_id: str, spec: Spec, healthy: dict[str, dict[str, bool]],
                      flows: dict[int, int]) -> dict[str, list[Member]]:
        tables: dict[str, list[Member]] = {}
        for li in self._least_listeners(spec):
            assert li.pool is not None
            slot = self._slots["listeners"][li.id]
            own = self._slots["members"][li.id]
            members = l4_nft.dispatch_members(li.pool, healthy.get(li.id, {}))
            active = {m.id: flows.get(l4_nft.mark(slot, own[m.id]), 0) for m in members}
            expected = max(len(members), self._expected.get(li.id, 0))
            tables[li.id] = l4_least.table(members, active, expected, l4_least.size(li.pool))
        return tables

    def _refill(self) -> None:
        """One round: refill every LEAST_CONNECTIONS table whose water-filling changed."""
        with self._lock:
            specs = {lb_id: spec for lb_id, spec in self._specs.items() if self._least_listeners(spec)}
        if not specs:
            return
        flows = conntrack.marks()
        for lb_id, spec in specs.items():
            counters = self._counters(lb_id)
            with self._lock:
                if self._specs.get(lb_id) is not spec:
                    continue  # reconfigured meanwhile: its _apply computed fresh tables
                for li in self._least_listeners(spec):
                    seen = counters.get(f"l{self._slots['listeners'][li.id]}_new", (0, 0))[0]
                    if li.id in self._new_flows:
                        self._expected[li.id] = max(0, seen - self._new_flows[li.id])
                    self._new_flows[li.id] = seen
                healthy = self._healthy(lb_id)
                loaded = self._least.get(lb_id, {})
                for listener_id, table in self._least_tables(lb_id, spec, healthy, flows).items():
                    if [m.id for m in table] == [m.id for m in loaded.get(listener_id, [])]:
                        continue
                    slot = self._slots["listeners"][listener_id]
                    own = self._slots["members"][listener_id]
                    marks = {m.id: l4_nft.mark(slot, own[m.id]) for m in table}
                    run_nft("-f", "-", stdin=l4_nft.least_script(lb_id, slot, table, marks))
                    self._least.setdefault(lb_id, {})[listener_id] = table

    def _refill_loop(self) -> None:
        while not self._stop.wait(l4_least.INTERVAL):
            # A failed round (nft busy, a table just deleted) is simply the next round's work.
            with contextlib.suppress(CommandFailed, OSError, KeyError):
                self._refill()

    def _counters(self, lb_id: str) -> dict[str, tuple[int, int]]:
        try:  # not ``nft list counters``: it reads every map's elements first (see nft_netlink)
            named = nft_netlink.counters("inet", l4_nft.table_name(lb_id))
        except OSError as exc:
            LOG.warning("reading the counters of %s failed: %s", lb_id, exc)
            return {}
        return {name: (c.packets, c.bytes) for name, c in named.items()}

    def stats(self, lb_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """Heartbeat ``listeners`` and ``pools`` for ``lb_id``, as ``stats.summarize`` shapes HAProxy's."""
        with self._lock:
            spec = self._specs.get(lb_id)
            if spec is None:
                return {}, {}
            healthy = self._healthy(lb_id)
            probers = dict(self._probers.get(lb_id, {}))
            listener_slots = dict(self._slots["listeners"])
        counters = self._counters(lb_id)
        flows = conntrack.marks()
        listeners: dict[str, Any] = {}
        pools: dict[str, Any] = {}
        for li in spec.listeners:
            slot = listener_slots[li.id]
            name = f"l{slot}"
            active = sum(n for m, n in flows.items() if m >> l4_nft.LISTENER_SHIFT == slot)
            listeners[li.id] = {
                "status": "OPEN" if li.enabled else "DOWN",
                "stats": {"bytes_in": counters.get(f"{name}_in", (0, 0))[1],
                          "bytes_out": counters.get(f"{name}_out", (0, 0))[1],
                          "active_connections": active,
                          "total_connections": counters.get(f"{name}_new", (0, 0))[0],
                          "request_errors": counters.get(f"{name}_err", (0, 0))[0]},
            }
            pool = li.pool
            if pool is None:
                continue
            members: dict[str, str] = {}
            for member in pool.members:
                if not member.enabled:
                    members[member.id] = "MAINT"
                elif li.id in probers:
                    members[member.id] = "UP" if healthy[li.id].get(member.id, True) else "DOWN"
                else:
                    members[member.id] = "no check"
            usable = bool(li.enabled and pool.enabled and l4_nft.dispatch_members(pool, healthy.get(li.id, {})))
            pools[pool.id] = {"status": "UP" if usable else "DOWN", "members": members}
        return listeners, pools
