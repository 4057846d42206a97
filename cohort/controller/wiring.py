"""Build each seam's driver, chosen by name in the settings, and the agents' command line.

Drivers are picked per seam (``compute_driver = "lab"`` ...; ``drivers`` is a shorthand), so
another implementation of one seam (Nova, Neutron) can be added without touching the others
or the lab. Only the chosen modules are imported: with noop drivers neither the lab nor the
namespace code is loaded, and no CA or key is made.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from cohort.config import Settings
from cohort.drivers.amphora.base import AmphoraDriver
from cohort.drivers.compute.base import ComputeDriver
from cohort.drivers.distributor.base import DistributorDriver
from cohort.drivers.network.base import NetworkDriver
from cohort.health.keys import agent_key, master_key, write_key_file
from cohort.layout import Layout
from cohort.pki import CertificateAuthority, not_after

if TYPE_CHECKING:
    from cohort.lab import Lab


@dataclass
class Drivers:
    compute: ComputeDriver
    network: NetworkDriver
    amphora: AmphoraDriver
    distributor: DistributorDriver
    cert_expiration: Callable[[str], datetime | None] = field(default=lambda _amphora_id: None)
    # Where agents send heartbeats ("host:port"); empty when nothing is built (noop drivers).
    heartbeat_target: str = ""

    def destroy_instance(self, compute_id: str) -> None:
        """Delete an amphora's or distributor's instance, then its ports.

        In that order so its processes stop while their links are still up: a BGP speaker says
        goodbye (a Cease withdraws its routes at once, where a vanished link leaves them to BFD, or
        to the hold timer if BFD was not up yet) and keepalived hands its VIPs over (priority 0).
        """
        self.compute.delete(compute_id)
        self.network.unplug_all(compute_id)


def heartbeat_key(settings: Settings) -> bytes:
    """The master heartbeat key: from the settings, else generated once into the state dir.

    It never leaves the controller: agents get keys derived from it (``write_agent_key``).
    """
    if settings.heartbeat_key:
        return settings.heartbeat_key.encode()
    return master_key(key_file(settings))


def key_file(settings: Settings) -> Path:
    return Layout.of(settings).heartbeat_key


def agent_key_file(settings: Settings, kind: str, agent_id: str) -> Path:
    return Layout.of(settings).agent_heartbeat_key(kind, agent_id)


def write_agent_key(settings: Settings, kind: str, agent_id: str) -> Path:
    """Write the key ``kind`` agent ``agent_id`` signs its heartbeats with to a 0600 file of its own."""
    return write_key_file(agent_key_file(settings, kind, agent_id),
                          agent_key(heartbeat_key(settings), kind, agent_id))


def lab_of(settings: Settings) -> Lab:
    """The lab the ``lab`` drivers build on (imported only when one of them is chosen)."""
    from cohort.lab import Lab

    return Lab(Layout.of(settings).lab_dir, prefix=settings.lab_prefix)


def make_network(settings: Settings) -> NetworkDriver:
    """The network driver alone: what the API needs to look subnets up (no CA, no keys)."""
    if settings.seam_drivers()["network"] == "lab":
        from cohort.drivers.network.lab import LabNetworkDriver

        return LabNetworkDriver(lab_of(settings))
    from cohort.drivers.network.noop import NoopNetworkDriver

    return NoopNetworkDriver(prefix=settings.lab_prefix)


def make_drivers(settings: Settings) -> Drivers:
    """Each seam's driver, by the name the settings give it (``Settings.seam_drivers``)."""
    names = settings.seam_drivers()
    layout = Layout.of(settings)
    network = make_network(settings)
    uses_lab = names["compute"] == "lab" or names["network"] == "lab"
    lab = lab_of(settings) if uses_lab else None
    target = heartbeat_target(settings, lab.mgmt_host_ip if lab is not None else "")
    remote = "rest" in (names["amphora"], names["distributor"]) or names["compute"] == "lab"
    ca = CertificateAuthority(layout.pki_dir) if remote else None
    cert_expiration: Callable[[str], datetime | None] = lambda _amphora_id: None  # noqa: E731

    compute: ComputeDriver
    if names["compute"] == "lab":
        from cohort.drivers.compute.lab import LabComputeDriver

        assert lab is not None and ca is not None
        heartbeat_key(settings)
        authority = ca

        def agent_command(instance_id: str, kind: str, mgmt_ip: str, jail_uid: int) -> list[str]:
            paths = authority.issue_server(f"{kind}-{instance_id}", [mgmt_ip])
            module = "cohort.agents.amphora" if kind == "amphora" else "cohort.agents.distributor"
            return [
                sys.executable, "-m", module, f"--{kind}-id", instance_id,
                "--bind", f"{mgmt_ip}:{settings.agent_port}",
                "--cert", str(paths.cert), "--key", str(paths.key), "--ca", str(paths.ca),
                "--state-dir", str(layout.agent_state_dir(instance_id)),
                "--heartbeat-to", target, "--heartbeat-key-file", str(write_agent_key(settings, kind, instance_id)),
                "--heartbeat-interval", str(settings.heartbeat_interval),
                "--jail-uid", str(jail_uid),
            ]

        def expiration(amphora_id: str) -> datetime | None:
            path = authority.server_paths(f"amphora-{amphora_id}").cert
            return not_after(path).replace(tzinfo=None) if path.exists() else None

        compute = LabComputeDriver(lab, agent_command, layout)
        cert_expiration = expiration
    else:
        from cohort.drivers.compute.noop import NoopComputeDriver

        compute = NoopComputeDriver(prefix=settings.lab_prefix, delay=settings.noop_delay,
                                    state_file=layout.noop_compute if settings.noop_shared_state else None)

    controller_cert = ca.issue_client("controller") if ca is not None else None
    amphora: AmphoraDriver
    if names["amphora"] == "rest":
        from cohort.drivers.amphora.rest import RestAmphoraDriver

        assert controller_cert is not None
        amphora = RestAmphoraDriver(controller_cert, port=settings.agent_port)
    else:
        from cohort.drivers.amphora.noop import NoopAmphoraDriver

        amphora = NoopAmphoraDriver(delay=settings.noop_delay)
    distributor: DistributorDriver
    if names["distributor"] == "rest":
        from cohort.drivers.distributor.rest import RestDistributorDriver

        assert controller_cert is not None
        distributor = RestDistributorDriver(controller_cert, port=settings.agent_port)
    else:
        from cohort.drivers.distributor.noop import NoopDistributorDriver

        distributor = NoopDistributorDriver()
    return Drivers(compute, network, amphora, distributor, cert_expiration=cert_expiration,
                   heartbeat_target=target if names["compute"] != "noop" else "")


def heartbeat_target(settings: Settings, mgmt_host_ip: str) -> str:
    """The configured heartbeat address, or the lab's host-side management address."""
    if settings.heartbeat_bind:
        return settings.heartbeat_bind
    return f"{mgmt_host_ip}:5555" if mgmt_host_ip else ""
