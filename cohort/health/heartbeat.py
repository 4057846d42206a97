"""Signed heartbeats: the wire format, its verification, and the UDP sender and receiver.

A datagram is compact JSON followed by a 32-byte HMAC-SHA256 of that JSON, keyed with
the sending agent's own key (see ``cohort.health.keys``). The payload carries ``id``
(amphora or distributor id), ``seq`` (strictly increasing per sender), ``ts`` (sender's
Unix time), ``distributor: true`` from a distributor, and a body merged at top level;
for an amphora, modelled on Octavia's heartbeat v2::

    {"id": ..., "seq": ..., "ts": ..., "ver": 1,
     "listeners": {listener_id: {"status": "OPEN"|"FULL"|"DOWN",
                                 "stats": {"bytes_in", "bytes_out", "active_connections",
                                           "total_connections", "request_errors"}}},
     "pools": {pool_id: {"status": "UP"|"DOWN",
                         "members": {member_id: "UP"|"DOWN"|"MAINT"|"DRAIN"|"no check"}}}}

Listener counters are HAProxy's totals since its last reload, not deltas.
Senders derive ``seq`` from ``time.time_ns()`` so that a restarted agent keeps
counting upwards and is not taken for a replay; the verifier holds them to it, so a
sequence number far from the clock cannot push an agent's counter out of its own reach.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import inspect
import json
import logging
import math
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, NoReturn

from cohort.health.keys import AMPHORA, DISTRIBUTOR, agent_key

LOG = logging.getLogger(__name__)
MAC_LEN = 32
MAX_DATAGRAM = 65000
# Heartbeats keep going with the last body for this many intervals while a new one is being built.
MAX_BODY_AGE = 10
MAX_ID_LEN = 255
HeartbeatCallback = Callable[[dict[str, Any]], Awaitable[None] | None]
# (kind, id): one sequence counter per agent.
SenderKey = tuple[str, str]


class HeartbeatRejected(Exception):
    """A datagram that is not an authentic, fresh heartbeat."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _mac(data: bytes, key: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


def sign(payload: dict[str, Any], key: bytes) -> bytes:
    """Serialize ``payload`` compactly and append its HMAC-SHA256."""
    data = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
    return data + _mac(data, key)


def _no_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a number")


def _decode(data: bytes) -> dict[str, Any]:
    try:
        # NaN and Infinity are refused anywhere in the payload, so no consumer meets them.
        payload = json.loads(data, parse_constant=_no_constant)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise HeartbeatRejected(f"malformed JSON: {type(e).__name__}") from e
    if not isinstance(payload, dict):
        raise HeartbeatRejected("payload is not an object")
    return payload


def sender_kind(payload: Mapping[str, Any]) -> str:
    """``distributor`` or ``amphora``: whose key the payload must be signed with."""
    flag = payload.get("distributor", False)
    if not isinstance(flag, bool):
        raise HeartbeatRejected("malformed distributor flag")
    return DISTRIBUTOR if flag else AMPHORA


class HeartbeatVerifier:
    """Checks the sender's own MAC, shape, freshness and per-sender sequence order.

    ``ts`` must be within ``max_skew`` seconds of now, and ``seq`` (nanoseconds) within
    ``max_skew`` of both. ``last_seq`` primes the sequence counters, e.g. with what the
    health manager persisted before a restart.
    """

    def __init__(
        self,
        master_key: bytes,
        max_skew: float = 30.0,
        max_senders: int = 100_000,
        last_seq: Mapping[SenderKey, int] | None = None,
    ) -> None:
        if not master_key:
            raise ValueError("heartbeat key must not be empty")
        self._master = master_key
        self._max_skew = max_skew
        self._max_skew_ns = int(max_skew * 1e9)
        self._max_senders = max_senders
        self._last_seq: OrderedDict[SenderKey, int] = OrderedDict(last_seq or {})
        self._lock = threading.Lock()

    def verify(self, datagram: bytes, now: float | None = None) -> dict[str, Any]:
        if len(datagram) <= MAC_LEN:
            raise HeartbeatRejected("too short")
        data, mac = datagram[:-MAC_LEN], datagram[-MAC_LEN:]
        # The claimed sender picks the key, so the JSON is read before the MAC is checked.
        payload = _decode(data)
        sender = payload.get("id")
        if not isinstance(sender, str) or not sender or len(sender) > MAX_ID_LEN:
            raise HeartbeatRejected("missing id")
        kind = sender_kind(payload)
        if not hmac.compare_digest(mac, _mac(data, agent_key(self._master, kind, sender))):
            raise HeartbeatRejected("bad MAC")
        seq, ts = payload.get("seq"), payload.get("ts")
        if not isinstance(seq, int) or isinstance(seq, bool):
            raise HeartbeatRejected("missing seq")
        if not isinstance(ts, int | float) or isinstance(ts, bool):
            raise HeartbeatRejected("missing ts")
        try:
            ts_ns = int(float(ts) * 1e9)
        except (OverflowError, ValueError) as e:  # a huge int, or a float that is not finite
            raise HeartbeatRejected("malformed ts") from e
        now = time.time() if now is None else now
        if not math.isfinite(ts) or abs(now - ts) > self._max_skew:
            raise HeartbeatRejected(f"timestamp {ts:.3f} is {now - ts:.1f}s off")
        now_ns = int(now * 1e9)
        if abs(seq - now_ns) > self._max_skew_ns or abs(seq - ts_ns) > self._max_skew_ns:
            raise HeartbeatRejected("seq is not the sender's clock in nanoseconds")
        key = (kind, sender)
        with self._lock:
            last = self._last_seq.get(key)
            if last is not None and seq <= last:
                raise HeartbeatRejected(f"replayed or old seq {seq} (last {last})")
            self._last_seq[key] = seq
            self._last_seq.move_to_end(key)
            # Forgetting the longest-silent senders is safe: their old datagrams are stale by ts.
            while len(self._last_seq) > self._max_senders:
                self._last_seq.popitem(last=False)
        return payload


class HeartbeatReceiver(asyncio.DatagramProtocol):
    """Receives heartbeats on a UDP address and hands the authentic ones to ``on_heartbeat``."""

    def __init__(
        self, bind: tuple[str, int], verifier: HeartbeatVerifier, on_heartbeat: HeartbeatCallback
    ) -> None:
        self.bind = bind
        self.verifier = verifier
        self.on_heartbeat = on_heartbeat
        self.accepted = 0
        self.rejected = 0
        self.last_rejection: str | None = None
        self._transport: asyncio.DatagramTransport | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> tuple[str, int]:
        """Bind and start receiving; returns the bound address (useful with port 0)."""
        loop = asyncio.get_running_loop()
        # Several controllers on one host share the port: the kernel hands each agent's heartbeats to
        # one of them (by the sender's address), and to a survivor once that one's socket is gone.
        # Only a process of the same user can join, and a forged heartbeat still fails the HMAC.
        transport, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=self.bind, reuse_port=True)
        self._transport = transport
        sockname = transport.get_extra_info("sockname")
        return str(sockname[0]), int(sockname[1])

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        try:
            payload = self.verifier.verify(data)
        except HeartbeatRejected as e:
            self.rejected += 1
            self.last_rejection = e.reason
            LOG.debug("heartbeat from %s rejected: %s", addr, e.reason)
            return
        self.accepted += 1
        try:
            result = self.on_heartbeat(payload)
        except Exception:
            LOG.exception("heartbeat handler failed")
            return
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(result)
            self._tasks.add(task)
            task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            LOG.error("heartbeat handler failed", exc_info=task.exception())


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


class HeartbeatSender:
    """A daemon thread that sends ``{id, seq, ts, **body()}`` signed every ``interval`` seconds."""

    def __init__(
        self,
        sender_id: str,
        target: tuple[str, int],
        key: bytes,
        body: Callable[[], dict[str, Any]],
        interval: float = 1.0,
    ) -> None:
        self.sender_id = sender_id
        self.target = target
        self._key = key
        self._body = body
        self.interval = interval
        self.sent = 0
        self.errors = 0
        self._last_seq = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._refresher: threading.Thread | None = None
        self._latest: tuple[float, dict[str, Any]] | None = None  # (monotonic time built, body)
        self._fresh = threading.Condition()
        self._sock = socket.socket(_family(target[0]), socket.SOCK_DGRAM)

    def next_seq(self) -> int:
        self._last_seq = max(time.time_ns(), self._last_seq + 1)
        return self._last_seq

    def build(self, body: dict[str, Any] | None = None) -> bytes:
        payload = dict(self._body() if body is None else body)
        payload.update(id=self.sender_id, seq=self.next_seq(), ts=time.time())
        return sign(payload, self._key)

    def send_once(self, body: dict[str, Any] | None = None) -> None:
        try:
            datagram = self.build(body)
            if len(datagram) > MAX_DATAGRAM:
                raise ValueError(f"heartbeat of {len(datagram)} bytes does not fit a datagram")
            self._sock.sendto(datagram, self.target)
            self.sent += 1
        except OSError as e:
            self.errors += 1
            LOG.warning("sending heartbeat to %s failed: %s", self.target, e)
        except Exception:
            # A missing heartbeat is what the health manager watches for; never kill the loop.
            self.errors += 1
            LOG.exception("building the heartbeat failed")

    def _refresh(self) -> None:
        """Build bodies one after another, at most one per interval, in their own thread."""
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                body = self._body()
            except Exception:
                self.errors += 1
                LOG.exception("building the heartbeat failed")
            else:
                with self._fresh:
                    self._latest = (time.monotonic(), body)
                    self._fresh.notify_all()
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def _run(self) -> None:
        # Liveness never waits for the body: a body that takes seconds to build (thousands of flows to
        # count on a loaded machine) would otherwise look like a dead agent. A body older than
        # MAX_BODY_AGE intervals is not sent, so an agent whose reporting hangs still falls silent.
        with self._fresh:
            self._fresh.wait_for(lambda: self._latest is not None or self._stop.is_set(), timeout=30)
        while not self._stop.is_set():
            started = time.monotonic()
            latest = self._latest
            if latest is not None and started - latest[0] <= MAX_BODY_AGE * self.interval:
                self.send_once(latest[1])
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def start(self) -> None:
        self._refresher = threading.Thread(target=self._refresh, name="heartbeat-body", daemon=True)
        self._refresher.start()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self._fresh:
            self._fresh.notify_all()
        for thread in (self._thread, self._refresher):
            if thread is not None:
                thread.join(timeout=5)
        self._sock.close()
