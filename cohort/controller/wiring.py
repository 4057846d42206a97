"""Choose and build the driver set (``noop`` or ``local``) from the settings."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from cohort.config import Settings
from cohort.drivers.amphora.base import AmphoraDriver
from cohort.drivers.compute.base import ComputeDriver
from cohort.drivers.distributor.base import DistributorDriver
from cohort.drivers.network.base import NetworkDriver
from cohort.health.keys import agent_key, master_key, write_key_file


@dataclass
class Drivers:
    compute: ComputeDriver
    network: NetworkDriver
    amphora: AmphoraDriver
    distributor: DistributorDriver
    cert_expiration: Callable[[str], datetime | None] = field(default=lambda _amphora_id: None)
    # Where agents send heartbeats ("host:port"); empty when nothing is built (noop drivers).
    heartbeat_target: str = ""


def heartbeat_key(settings: Settings) -> bytes:
    """The master heartbeat key: from the settings, else generated once into the state dir.

    It never leaves the controller: agents get keys derived from it (``write_agent_key``).
    """
    if settings.heartbeat_key:
        return settings.heartbeat_key.encode()
    return master_key(key_file(settings))


def key_file(settings: Settings) -> Path:
    return settings.state_dir / "heartbeat.key"


def agent_key_file(settings: Settings, kind: str, agent_id: str) -> Path:
    return settings.state_dir / "heartbeat" / f"{kind}-{agent_id}.key"


def write_agent_key(settings: Settings, kind: str, agent_id: str) -> Path:
    """Write the key ``kind`` agent ``agent_id`` signs its heartbeats with to a 0600 file of its own."""
    return write_key_file(agent_key_file(settings, kind, agent_id),
                          agent_key(heartbeat_key(settings), kind, agent_id))


def make_drivers(settings: Settings) -> Drivers:
    if settings.drivers == "noop":
        from cohort.drivers.amphora.noop import NoopAmphoraDriver
        from cohort.drivers.compute.noop import NoopComputeDriver
        from cohort.drivers.distributor.noop import NoopDistributorDriver
        from cohort.drivers.network.noop import NoopNetworkDriver

        return Drivers(NoopComputeDriver(prefix=settings.lab_prefix), NoopNetworkDriver(prefix=settings.lab_prefix),
                       NoopAmphoraDriver(), NoopDistributorDriver())
    return _local_drivers(settings)


def _local_drivers(settings: Settings) -> Drivers:
    from cohort.drivers.amphora.rest import RestAmphoraDriver
    from cohort.drivers.compute.local import LocalComputeDriver
    from cohort.drivers.distributor.rest import RestDistributorDriver
    from cohort.drivers.network.local import LocalNetworkDriver
    from cohort.lab import Lab
    from cohort.pki import CertificateAuthority, not_after

    ca = CertificateAuthority(settings.state_dir / "pki")
    heartbeat_key(settings)
    lab = Lab(settings.state_dir / "lab", prefix=settings.lab_prefix)
    target = heartbeat_target(settings, lab.mgmt_host_ip)

    def agent_command(instance_id: str, kind: str, mgmt_ip: str) -> list[str]:
        paths = ca.issue_server(f"{kind}-{instance_id}", [mgmt_ip])
        module = "cohort.agents.amphora" if kind == "amphora" else "cohort.agents.distributor"
        return [
            sys.executable, "-m", module, f"--{kind}-id", instance_id,
            "--bind", f"{mgmt_ip}:{settings.agent_port}",
            "--cert", str(paths.cert), "--key", str(paths.key), "--ca", str(paths.ca),
            "--state-dir", str(settings.state_dir / "i" / instance_id[:8]),
            "--heartbeat-to", target, "--heartbeat-key-file", str(write_agent_key(settings, kind, instance_id)),
            "--heartbeat-interval", str(settings.heartbeat_interval),
        ]

    def cert_expiration(amphora_id: str) -> datetime | None:
        path = ca.server_paths(f"amphora-{amphora_id}").cert
        return not_after(path).replace(tzinfo=None) if path.exists() else None

    controller_cert = ca.issue_client("controller")
    return Drivers(
        compute=LocalComputeDriver(lab, agent_command),
        network=LocalNetworkDriver(lab),
        amphora=RestAmphoraDriver(controller_cert, port=settings.agent_port),
        distributor=RestDistributorDriver(controller_cert, port=settings.agent_port),
        cert_expiration=cert_expiration,
        heartbeat_target=target,
    )


def heartbeat_target(settings: Settings, mgmt_host_ip: str) -> str:
    """The configured heartbeat address, or the lab's host-side management address."""
    return settings.heartbeat_bind or f"{mgmt_host_ip}:5555"
