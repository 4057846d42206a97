"""The agents' shared command line and main loop: arguments, logging, the HTTPS server, heartbeats, signals.

Both ``python -m cohort.agents.amphora`` and ``python -m cohort.agents.distributor`` take
the same options but for their id (``--amphora-id``, ``--distributor-id``), serve their
router over mutual TLS, send signed heartbeats and stop on SIGTERM or SIGINT without
touching what they set up: whatever runs in the namespace outlives the agent.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from cohort.agents.common.http import AgentHttpServer, Router
from cohort.health.heartbeat import HeartbeatSender
from cohort.pki import CertPaths, server_ssl_context


def host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected IP:PORT, got {value!r}")
    return host.strip("[]"), int(port)


def parse_args(kind: str, description: str | None, argv: list[str] | None = None) -> argparse.Namespace:
    """The options of ``python -m cohort.agents.<kind>``; the id lands in ``<kind>_id``."""
    p = argparse.ArgumentParser(prog=f"python -m cohort.agents.{kind}", description=description)
    p.add_argument(f"--{kind}-id", required=True)
    p.add_argument("--bind", type=host_port, required=True, help="IP:PORT of the HTTPS API")
    p.add_argument("--cert", type=Path, required=True)
    p.add_argument("--key", type=Path, required=True)
    p.add_argument("--ca", type=Path, required=True)
    p.add_argument("--state-dir", type=Path, required=True)
    p.add_argument("--heartbeat-to", type=host_port, required=True, help="IP:PORT of the health manager")
    p.add_argument("--heartbeat-key-file", type=Path, required=True)
    p.add_argument("--heartbeat-interval", type=float, default=1.0)
    p.add_argument("--jail-uid", type=int, default=None,
                   help="uid (and gid) of the jail tenant-shaped daemons run in; default derived from the id")
    p.add_argument("--log-level", default="INFO")
    return p.parse_args(argv)


def prepare(args: argparse.Namespace) -> bytes:
    """Set up logging at ``--log-level``, create the (private) state directory; returns the heartbeat key."""
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    args.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    key: bytes = args.heartbeat_key_file.read_bytes().strip()
    return key


def serve(
    kind: str,
    agent_id: str,
    args: argparse.Namespace,
    hb_key: bytes,
    router: Router,
    heartbeat_body: Callable[[], dict[str, Any]],
    *,
    start: Sequence[Callable[[], None]] = (),
    stop: Sequence[Callable[[], None]] = (),
) -> int:
    """Serve ``router`` on ``--bind`` and send heartbeats until a signal; ``start``/``stop`` run around them."""
    log = logging.getLogger(f"cohort.agents.{kind}")
    context = server_ssl_context(CertPaths(cert=args.cert, key=args.key, ca=args.ca))
    server = AgentHttpServer(args.bind, router, context)
    sender = HeartbeatSender(agent_id, args.heartbeat_to, hb_key, heartbeat_body, args.heartbeat_interval)

    def shutdown(signum: int, frame: FrameType | None) -> None:
        # Only the agent stops: daemons it started and kernel state it programmed stay for the next one.
        log.info("signal %d: stopping the agent", signum)
        for fn in stop:
            fn()
        sender.stop()
        server.server_close()
        sys.exit(0)

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    for fn in start:
        fn()
    sender.start()
    log.info("%s agent %s listening on %s:%d", kind, agent_id, *args.bind)
    server.serve_forever()
    return 0
