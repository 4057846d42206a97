"""Entry point: ``python -m cohort.agents.amphora`` runs the agent in the current network namespace."""

from __future__ import annotations

import argparse
import logging
import resource
import signal
import sys
from pathlib import Path
from types import FrameType

from cohort.agents.amphora.api import AmphoraApi
from cohort.agents.amphora.haproxy import HaproxyManager
from cohort.agents.amphora.heartbeat import HeartbeatBody
from cohort.agents.amphora.keepalived import KeepalivedManager
from cohort.agents.amphora.server import AgentHttpServer
from cohort.health.heartbeat import HeartbeatSender
from cohort.pki import CertPaths, server_ssl_context

LOG = logging.getLogger("cohort.agents.amphora")
NOFILE = 100_000


def host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected IP:PORT, got {value!r}")
    return host.strip("[]"), int(port)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m cohort.agents.amphora", description=__doc__)
    p.add_argument("--amphora-id", required=True)
    p.add_argument("--bind", type=host_port, required=True, help="IP:PORT of the HTTPS API")
    p.add_argument("--cert", type=Path, required=True)
    p.add_argument("--key", type=Path, required=True)
    p.add_argument("--ca", type=Path, required=True)
    p.add_argument("--state-dir", type=Path, required=True)
    p.add_argument("--heartbeat-to", type=host_port, required=True, help="IP:PORT of the health manager")
    p.add_argument("--heartbeat-key-file", type=Path, required=True)
    p.add_argument("--heartbeat-interval", type=float, default=1.0)
    p.add_argument("--log-level", default="INFO")
    return p.parse_args(argv)


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
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    raise_nofile()
    args.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    hb_key = args.heartbeat_key_file.read_bytes().strip()
    haproxy = HaproxyManager(args.state_dir)
    keepalived = KeepalivedManager(args.state_dir)
    api = AmphoraApi(args.amphora_id, args.state_dir, haproxy, keepalived)
    context = server_ssl_context(CertPaths(cert=args.cert, key=args.key, ca=args.ca))
    server = AgentHttpServer(args.bind, api.router(), context)
    body = HeartbeatBody(haproxy)
    sender = HeartbeatSender(args.amphora_id, args.heartbeat_to, hb_key, body, args.heartbeat_interval)

    def shutdown(signum: int, frame: FrameType | None) -> None:
        # HAProxy and keepalived deliberately keep running: the next agent adopts them.
        LOG.info("signal %d: stopping the agent", signum)
        sender.stop()
        server.server_close()
        sys.exit(0)

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    sender.start()
    LOG.info("amphora agent %s listening on %s:%d", args.amphora_id, *args.bind)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
