"""SCTP packets over a raw IP socket (protocol 132), for hosts whose kernel has no SCTP stack.

The lab's SCTP endpoint (``cohort.lab.sctp_peer``) and the amphora agent's SCTP health probe
(``cohort.agents.amphora.sctp_probe``) send and receive ``sctp_wire`` packets through it. Such a
socket needs CAP_NET_RAW in its network namespace. It receives a copy of every SCTP packet
addressed to the host (to its bound address when bound), so callers filter by ports and
verification tag; packets that do not decode are skipped here. While one is open the kernel
also stops answering SCTP packets with ICMP "protocol unreachable".
"""

from __future__ import annotations

import select
import socket
import time

from cohort import sctp_wire, validation

IPPROTO_SCTP = 132
RECV_SIZE = 65535


def family_of(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if validation.ip_address(address).version == 6 else socket.AF_INET


class RawSctp:
    """A raw SCTP socket of one address family, optionally bound to one local address."""

    def __init__(self, family: socket.AddressFamily, local: str | None = None) -> None:
        self.family = family
        self.sock = socket.socket(family, socket.SOCK_RAW, IPPROTO_SCTP)
        self.sock.setblocking(False)
        if local is not None:
            address = validation.ip_address(local, "local address").compressed
            self.sock.bind((address, 0))

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawSctp:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, packet: sctp_wire.Packet, destination: str) -> None:
        self.sock.sendto(packet.encode(), (destination, 0))

    def read_one(self) -> tuple[str, sctp_wire.Packet] | None:
        """One waiting packet as (source address, packet); None when none waits or it is not SCTP we read."""
        try:
            raw, peer = self.sock.recvfrom(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return None
        try:
            if self.family == socket.AF_INET:
                source, _, raw = sctp_wire.strip_ipv4(raw)
            else:
                source = str(peer[0]).split("%", 1)[0]
            return source, sctp_wire.decode(raw)
        except ValueError:
            return None  # not ours to read (a bad checksum, a truncated packet): as a kernel would, drop it

    def receive(self, deadline: float) -> tuple[str, sctp_wire.Packet] | None:
        """The next decodable packet before ``deadline`` (time.monotonic), or None."""
        while True:
            got = self.read_one()
            if got is not None:
                return got
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([self.sock], [], [], left)
            if not ready:
                return None
