"""The SCTP health check of UDP/SCTP pools' members, as Octavia's amphora runs it: INIT, INIT ACK, ABORT.

A member passes when it answers an INIT with an INIT ACK within the timeout (the check then
ABORTs the half-open association, so the member keeps nothing); an ABORT or silence fails it.
The agent speaks SCTP itself over a raw socket (``cohort.sctp_raw``): the amphora's kernel may
have no SCTP stack, and the agent is root in the amphora's own namespace. Only the member's
address and port, both checked here again, come from the tenant.
"""

from __future__ import annotations

import random
import time

from cohort import sctp_wire as w
from cohort import validation
from cohort.sctp_raw import RawSctp, family_of

RESEND = 1.0  # an INIT lost on the way is sent again within the timeout
RWND = 65536


def probe(address: str, port: int, timeout: float) -> bool:
    member = validation.ip_address(address, "member address").compressed
    if not 0 < port < 65536 or timeout <= 0:
        raise ValueError(f"bad SCTP probe target {address}:{port} (timeout {timeout})")
    rng = random.SystemRandom()
    local_port, tag = rng.randrange(49152, 65536), rng.randrange(1, 1 << 32)
    init = w.Packet(local_port, port, 0, (w.Init(tag, RWND, 1, 1, rng.randrange(1 << 32)),))
    deadline = time.monotonic() + timeout
    try:
        with RawSctp(family_of(member)) as sock:
            next_send = 0.0
            while (now := time.monotonic()) < deadline:
                if now >= next_send:
                    sock.send(init, member)
                    next_send = now + RESEND
                got = sock.receive(min(deadline, next_send))
                if got is None:
                    continue
                source, packet = got
                if (source, packet.src_port, packet.dst_port, packet.vtag) != (member, port, local_port, tag):
                    continue
                first = packet.chunks[0]
                if isinstance(first, w.InitAck):
                    sock.send(w.Packet(local_port, port, first.init_tag, (w.Abort(),)), member)
                    return True
                if isinstance(first, w.Abort):
                    return False
    except OSError:
        return False  # no route to the member, say: a failed check, as a refused one
    return False
