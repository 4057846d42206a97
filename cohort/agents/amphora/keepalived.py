"""keepalived for ACTIVE_STANDBY amphorae: the agents' shared manager with the amphora's capabilities.

Besides VRRP's ``net_admin`` and ``net_raw`` the amphora's keepalived keeps ``setgid``: it
insists on setting the group of its track script (which watches HAProxy, and runs as the
jail's same unprivileged user).
"""

from __future__ import annotations

from cohort.agents.common.jail import Jail
from cohort.agents.common.keepalived import VRRP_CAPABILITIES
from cohort.agents.common.keepalived import KeepalivedManager as _SharedManager

CAPABILITIES = (*VRRP_CAPABILITIES, "setgid")


class KeepalivedManager(_SharedManager):
    def __init__(self, jail: Jail) -> None:
        super().__init__(jail, CAPABILITIES)
