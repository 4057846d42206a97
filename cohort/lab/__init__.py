"""The local lab: a small test cloud in network namespaces, beside the product.

``Lab`` (``core``) builds the networks of the address plan (``cohort.netplan``) with a client,
a gateway router and member servers; ``lab.instances`` and ``lab.ports`` are what the lab
compute and network drivers (``cohort.drivers.compute.lab``, ``cohort.drivers.network.lab``)
adapt, ``addresses`` is the one writer of the address book and ``state`` its locked file.
The lab imports nothing from ``cohort.drivers``; the product reaches it only through those two
adapters, the demo and the ``cohort lab`` commands (``cli``).
"""

from cohort.lab.core import DEFAULT_RANGES, MEMBER_NAME, Lab, short_hash
from cohort.lab.errors import LabError, LabNotReady
from cohort.lab.instances import NOFILE, LabInstance
from cohort.lab.ports import LabPort, LabVip
from cohort.netplan import (
    BACKEND_RANGE,
    CLIENT_CIDR,
    CLIENT_GATEWAY,
    CLIENT_IP,
    DEFAULT_MGMT_CIDR,
    DEFAULT_PREFIX,
    FRONTEND_PORT_RANGE,
    MGMT_RANGE,
    PRIVATE_CIDR,
    PUBLIC_CIDR,
    PUBLIC_GATEWAY,
    VIP_FIRST,
    AddressError,
    address_mac,
)

__all__ = [
    "BACKEND_RANGE", "CLIENT_CIDR", "CLIENT_GATEWAY", "CLIENT_IP", "DEFAULT_MGMT_CIDR", "DEFAULT_PREFIX",
    "DEFAULT_RANGES", "FRONTEND_PORT_RANGE", "MEMBER_NAME", "MGMT_RANGE", "NOFILE", "PRIVATE_CIDR",
    "PUBLIC_CIDR", "PUBLIC_GATEWAY", "VIP_FIRST", "AddressError", "Lab", "LabError", "LabInstance",
    "LabNotReady", "LabPort", "LabVip", "address_mac", "short_hash",
]
