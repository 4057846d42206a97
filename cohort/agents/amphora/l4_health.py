"""Health monitors of UDP and SCTP pools, run by the agent: UDP-CONNECT, SCTP, TCP and HTTP probes.

Octavia's semantics: a UDP-CONNECT probe sends a datagram to the member on a connected socket and
fails on an ICMP error (port or host unreachable) within the timeout; a reply or silence passes
(UDP services need not answer an arbitrary datagram). SCTP sends INIT and passes on INIT ACK, then
ABORTs (``sctp_probe``, over a raw socket: no kernel SCTP stack needed), TCP opens a connection,
HTTP sends ``http_method url_path`` and expects one of ``expected_codes``. A member
goes down after ``max_retries_down`` consecutive failures and up again after ``max_retries``
consecutive successes; every monitored member is probed every ``delay`` seconds, in parallel, and
a change is handed to ``on_change`` at once, which rewrites the kernel's member map.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from cohort import validation
from cohort.agents.amphora import sctp_probe
from cohort.agents.amphora.l4_spec import Member, Monitor

PROBE_PAYLOAD = b"cohort-health-check\n"


def _family(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if validation.ip_address(address).version == 6 else socket.AF_INET


def probe_udp(address: str, port: int, timeout: float) -> bool:
    with socket.socket(_family(address), socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect((address, port))
            sock.send(PROBE_PAYLOAD)
            sock.recv(2048)
        except TimeoutError:
            return True  # no ICMP error: the port is open
        except OSError:
            return False
    return True


def probe_stream(address: str, port: int, timeout: float, proto: int = 0) -> bool:
    with socket.socket(_family(address), socket.SOCK_STREAM, proto) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect((address, port))
        except OSError:
            return False
    return True


def probe_http(address: str, port: int, timeout: float, monitor: Monitor) -> bool:
    host = f"[{address}]" if ":" in address else address
    conn = http.client.HTTPConnection(host.strip("[]"), port, timeout=timeout)
    try:
        conn.request(monitor.http_method, monitor.url_path, headers={"Host": host})
        return conn.getresponse().status in monitor.expected_codes
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def probe(monitor: Monitor, member: Member) -> bool:
    address, port = member.probe_target
    timeout = float(monitor.timeout)
    if monitor.type == "UDP-CONNECT":
        return probe_udp(address, port, timeout)
    if monitor.type == "SCTP":
        return sctp_probe.probe(address, port, timeout)
    if monitor.type == "TCP":
        return probe_stream(address, port, timeout)
    return probe_http(address, port, timeout, monitor)


class PoolProber:
    """Probes one pool's members on a thread of its own until ``stop``."""

    def __init__(self, monitor: Monitor, members: tuple[Member, ...], on_change: Callable[[], None],
                 probe_fn: Callable[[Monitor, Member], bool] = probe) -> None:
        self.monitor = monitor
        self.members = members
        self._on_change = on_change
        self._probe = probe_fn
        # Members start up, as HAProxy's servers do: a failing one goes down after max_retries_down probes.
        self.up: dict[str, bool] = {m.id: True for m in members}
        self._streak: dict[str, int] = {m.id: 0 for m in members}
        self._pending = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="l4-prober", daemon=True)

    def start(self, previous: dict[str, bool] | None = None) -> None:
        for member_id, state in (previous or {}).items():
            if member_id in self.up:
                self.up[member_id] = state
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _record(self, member_id: str, ok: bool) -> bool:
        """Count the result; True when the member's state flips."""
        if ok == self.up[member_id]:
            self._streak[member_id] = 0
            return False
        self._streak[member_id] += 1
        needed = self.monitor.max_retries if ok else self.monitor.max_retries_down
        if self._streak[member_id] < needed:
            return False
        self.up[member_id] = ok
        self._streak[member_id] = 0
        return True

    def _run(self) -> None:
        targets = [m for m in self.members if m.enabled]
        if not targets:
            return
        with ThreadPoolExecutor(max_workers=min(16, len(targets)), thread_name_prefix="l4-probe") as pool:
            while not self._stop.is_set():
                started = time.monotonic()
                results = list(pool.map(lambda m: (m.id, self._probe(self.monitor, m)), targets))
                if self._stop.is_set():
                    return
                if any([self._record(member_id, ok) for member_id, ok in results]):
                    self._pending = True
                if self._pending:
                    # A failed rewrite (nft busy, say) is tried again next round.
                    with contextlib.suppress(Exception):
                        self._on_change()
                        self._pending = False
                self._stop.wait(max(0.0, self.monitor.delay - (time.monotonic() - started)))
