"""How the lab runs its SCTP members and client (``sctp_peer``): commands, readiness, ICMP silence.

Kept apart from ``sctp_peer`` itself, which runs as ``python -m cohort.lab.sctp_peer`` and so
must not be imported by the ``cohort.lab`` package it lives in.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from cohort import netns
from cohort.sctp_raw import IPPROTO_SCTP

QUIET_TABLE = "cohort_sctp_lab"
# A kernel without SCTP answers SCTP to a local address no raw socket takes with ICMP "protocol
# unreachable" (IPv6: parameter problem, unrecognized next header), which would tear associations
# down on the path; the namespace of an SCTP member or client drops those instead.
QUIET_SCRIPT = f"""add table inet {QUIET_TABLE}
add chain inet {QUIET_TABLE} output {{ type filter hook output priority filter; policy accept; }}
flush chain inet {QUIET_TABLE} output
add rule inet {QUIET_TABLE} output icmp type destination-unreachable icmp code prot-unreachable drop
add rule inet {QUIET_TABLE} output icmpv6 type parameter-problem icmpv6 code 1 drop
"""


def quiet_icmp(ns: str) -> None:
    """Load the rules that keep namespace ``ns`` from refusing SCTP with ICMP (idempotent)."""
    netns.run(netns.in_ns(ns, ["nft", "-f", "-"]), input=QUIET_SCRIPT)


def _target(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def serve_command(name: str, address: str, port: int) -> list[str]:
    return [sys.executable, "-m", "cohort.lab.sctp_peer", "serve", "--name", name, "--bind", _target(address, port)]


def send_command(address: str, port: int, args: Sequence[str] = ()) -> list[str]:
    return [sys.executable, "-m", "cohort.lab.sctp_peer", "send", _target(address, port), *args]


def ready(pid: int) -> bool:
    """True when ``pid`` holds a raw SCTP socket (the server is receiving)."""
    try:
        lines = Path(f"/proc/{pid}/net/raw").read_text().splitlines()[1:]
        lines += Path(f"/proc/{pid}/net/raw6").read_text().splitlines()[1:]
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    inodes = set()
    for fd in fds:
        with contextlib.suppress(OSError):  # closed meanwhile
            inodes.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
    for line in lines:
        cols = line.split()
        if int(cols[1].rsplit(":", 1)[1], 16) == IPPROTO_SCTP and f"socket:[{cols[9]}]" in inodes:
            return True
    return False
