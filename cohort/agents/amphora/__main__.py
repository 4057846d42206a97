"""Entry point: ``python -m cohort.agents.amphora`` runs the agent in the current network namespace."""

from __future__ import annotations

import logging
import os
import resource
import sys
import threading
from pathlib import Path

from cohort.agents.amphora.api import AmphoraApi
from cohort.agents.amphora.bgp import BgpManager
from cohort.agents.amphora.haproxy import HaproxyManager
from cohort.agents.amphora.heartbeat import HeartbeatBody
from cohort.agents.amphora.keepalived import KeepalivedManager
from cohort.agents.amphora.l4 import L4Manager
from cohort.agents.amphora.second_chance import SecondChance
from cohort.agents.common import cli
from cohort.agents.common.exitwatch import ExitWatch
from cohort.agents.common.jail import Jail, uid_for
from cohort.agents.common.net import set_sysctl
from cohort.statedir import PRIVATE_UMASK

NOFILE = 100_000
LOG = logging.getLogger(__name__)
# How often dead HAProxy processes are looked for (a cached pid and one /proc read per load balancer).
SUPERVISE_INTERVAL = 0.5


def raise_nofile(target: int = NOFILE) -> None:
    """Lift the open-file limit HAProxy inherits to ``target``: HAProxy derives maxconn from it.

    Not higher: HAProxy sizes per-descriptor tables on it, memory every amphora pays.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= target:
        return
    try:
        keep_hard = hard == resource.RLIM_INFINITY or hard >= target
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard if keep_hard else target))
    except (OSError, ValueError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def amphora_jail(state_dir: Path, amphora_id: str, uid: int | None) -> Jail:
    """The jail HAProxy and keepalived of this amphora run in (under ``<state>/jail``)."""
    uid = uid if uid is not None else uid_for(amphora_id)
    return Jail(state_dir.resolve() / "jail", uid, uid)


def allow_unprivileged_daemons(gid: int) -> None:
    """Let the jailed daemons do, in this amphora's own network namespace only, what needed root:
    bind listeners below 1024 and send ICMP echo (PING health monitors) without raw sockets."""
    set_sysctl("net.ipv4.ip_unprivileged_port_start", "0")
    set_sysctl("net.ipv4.ping_group_range", f"{gid} {gid}")


def main(argv: list[str] | None = None) -> int:
    args = cli.parse_args("amphora", __doc__, argv)
    os.umask(PRIVATE_UMASK)
    hb_key = cli.prepare(args)
    raise_nofile()
    jail = amphora_jail(args.state_dir, args.amphora_id, args.jail_uid)
    allow_unprivileged_daemons(jail.gid)
    haproxy = HaproxyManager(jail)
    keepalived = KeepalivedManager(jail)
    second_chance = SecondChance(args.state_dir / "second_chance.json")
    bgp = BgpManager(jail, args.state_dir / "bgp.json", haproxy.alive, haproxy.master_pid, second_chance)
    bgp.resume()  # the L3 VIPs first: the table is applied once with all of them
    second_chance.resume()
    l4 = L4Manager(args.state_dir)
    l4.resume()
    api = AmphoraApi(args.amphora_id, args.state_dir, haproxy, keepalived, bgp, l4, second_chance)
    done = threading.Event()
    threading.Thread(target=supervise, args=(haproxy, bgp, done), name="haproxy-supervisor", daemon=True).start()
    # HAProxy and keepalived deliberately keep running when the agent stops: the next agent adopts them.
    return cli.serve("amphora", args.amphora_id, args, hb_key, api.router(), HeartbeatBody(haproxy, bgp, l4),
                     stop=[done.set, bgp.close, l4.close])


def supervise(haproxy: HaproxyManager, bgp: BgpManager, done: threading.Event) -> None:
    """Start again a HAProxy that died (a crash, an OOM kill): nothing else would, since the agent
    lives on and heartbeats. An L3 amphora withdrew its VIP at the death and announces it again.
    Woken by a master's exit, else every ``SUPERVISE_INTERVAL`` (a master not yet known, a stop)."""
    watch = ExitWatch()
    try:
        while not done.is_set():
            watch.wait(set(haproxy.known_masters()), SUPERVISE_INTERVAL)
            if done.is_set():
                return
            try:
                if haproxy.supervise(before_restart=lambda _lb_id: bgp.recheck()):
                    bgp.wake()
            except Exception:  # noqa: BLE001 - the supervisor must outlive any one failure
                LOG.exception("haproxy supervisor")
    finally:
        watch.close()


if __name__ == "__main__":
    sys.exit(main())
