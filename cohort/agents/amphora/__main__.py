"""Entry point: ``python -m cohort.agents.amphora`` runs the agent in the current network namespace."""

from __future__ import annotations

import resource
import sys

from cohort.agents.amphora.api import AmphoraApi
from cohort.agents.amphora.haproxy import HaproxyManager
from cohort.agents.amphora.heartbeat import HeartbeatBody
from cohort.agents.amphora.keepalived import KeepalivedManager
from cohort.agents.common import cli

NOFILE = 100_000


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


def main(argv: list[str] | None = None) -> int:
    args = cli.parse_args("amphora", __doc__, argv)
    hb_key = cli.prepare(args)
    raise_nofile()
    haproxy = HaproxyManager(args.state_dir)
    keepalived = KeepalivedManager(args.state_dir)
    api = AmphoraApi(args.amphora_id, args.state_dir, haproxy, keepalived)
    # HAProxy and keepalived deliberately keep running when the agent stops: the next agent adopts them.
    return cli.serve("amphora", args.amphora_id, args, hb_key, api.router(), HeartbeatBody(haproxy))


if __name__ == "__main__":
    sys.exit(main())
