"""Entry point: ``python -m cohort.agents.distributor`` runs the agent in the current network namespace."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from cohort.agents.amphora.server import AgentHttpServer
from cohort.agents.distributor.api import DistributorApi
from cohort.agents.distributor.dataplane import DataPlane
from cohort.agents.distributor.service import DistributorService
from cohort.agents.distributor.state import StateStore
from cohort.distributor.probes import Prober
from cohort.health.heartbeat import HeartbeatSender
from cohort.pki import CertPaths, server_ssl_context

LOG = logging.getLogger("cohort.agents.distributor")


def host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected IP:PORT, got {value!r}")
    return host.strip("[]"), int(port)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m cohort.agents.distributor", description=__doc__)
    p.add_argument("--distributor-id", required=True)
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    args.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    hb_key = args.heartbeat_key_file.read_bytes().strip()
    service = DistributorService(args.distributor_id, StateStore(args.state_dir), DataPlane())
    service.start()
    prober = Prober(service.probe_targets, service.on_health)
    service.on_change = prober.wake
    context = server_ssl_context(CertPaths(cert=args.cert, key=args.key, ca=args.ca))
    server = AgentHttpServer(args.bind, DistributorApi(service).router(), context)
    sender = HeartbeatSender(
        args.distributor_id, args.heartbeat_to, hb_key, service.heartbeat_body, args.heartbeat_interval
    )
    stop = threading.Event()
    housekeeping = threading.Thread(target=service.run_housekeeping, args=(stop,), name="housekeeping", daemon=True)

    def shutdown(signum: int, frame: FrameType | None) -> None:
        # The kernel keeps forwarding on its own: stopping the agent leaves every flow in place.
        LOG.info("signal %d: stopping the agent", signum)
        stop.set()
        prober.stop()
        sender.stop()
        server.server_close()
        sys.exit(0)

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    prober.start()
    housekeeping.start()
    sender.start()
    LOG.info("distributor agent %s listening on %s:%d", args.distributor_id, *args.bind)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
