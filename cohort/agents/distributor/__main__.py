"""Entry point: ``python -m cohort.agents.distributor`` runs the agent in the current network namespace."""

from __future__ import annotations

import sys
import threading

from cohort.agents.common import cli
from cohort.agents.common.jail import Jail, uid_for
from cohort.agents.common.keepalived import KeepalivedManager
from cohort.agents.distributor.api import DistributorApi
from cohort.agents.distributor.dataplane import DataPlane
from cohort.agents.distributor.service import DistributorService
from cohort.agents.distributor.state import StateStore
from cohort.distributor.probes import Prober


def main(argv: list[str] | None = None) -> int:
    args = cli.parse_args("distributor", __doc__, argv)
    hb_key = cli.prepare(args)
    # keepalived, which holds the pair's VIPs, runs jailed as this distributor's own uid.
    uid = args.jail_uid if args.jail_uid is not None else uid_for(args.distributor_id)
    keepalived = KeepalivedManager(Jail(args.state_dir.resolve() / "jail", uid, uid))
    dataplane = DataPlane()
    service = DistributorService(args.distributor_id, StateStore(args.state_dir), dataplane, keepalived)
    service.start()
    prober = Prober(service.probe_targets, service.on_health)
    service.on_change = prober.wake
    stop = threading.Event()
    housekeeping = threading.Thread(target=service.run_housekeeping, args=(stop,), name="housekeeping", daemon=True)
    # A link that flaps loses its routes: the data plane is brought back to the state at once.
    watcher = threading.Thread(target=dataplane.watch, args=(service.drifted, stop), name="watch", daemon=True)
    converger = threading.Thread(target=service.run_converge, args=(stop,), name="converge", daemon=True)
    # The kernel keeps forwarding on its own: stopping the agent leaves every flow in place.
    return cli.serve(
        "distributor",
        args.distributor_id,
        args,
        hb_key,
        DistributorApi(service).router(),
        service.heartbeat_body,
        start=(prober.start, housekeeping.start, watcher.start, converger.start),
        stop=(stop.set, prober.stop, dataplane.stop_watching),
    )


if __name__ == "__main__":
    sys.exit(main())
