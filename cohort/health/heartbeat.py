"""Signed heartbeats: the wire format, its verification, and the UDP sender and receiver.

A datagram is compact JSON followed by a 32-byte HMAC-SHA256 of that JSON. The
payload carries ``id`` (amphora or distributor id), ``seq`` (strictly increasing
per sender), ``ts`` (sender's Unix time) and a body merged at top level; for an
amphora, modelled on Octavia's heartbeat v2::

    {"id": ..., "seq": ..., "ts": ..., "ver": 1,
     "listeners": {listener_id: {"status": "OPEN"|"FULL"|"DOWN",
                                 "stats": {"bytes_in", "bytes_out", "active_connections",
                                           "total_connections", "request_errors"}}},
     "pools": {pool_id: {"status": "UP"|"DOWN",
                         "members": {member_id: "UP"|"DOWN"|"MAINT"|"DRAIN"|"no check"}}}}

Listener counters are HAProxy's totals since its last reload, not deltas.
Senders derive ``seq`` from ``time.time_ns()`` so that a restarted agent keeps
counting upwards and is not taken for a replay.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import inspect
import json
import logging
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

LOG = logging.getLogger(__name__)
MAC_LEN = 32
MAX_DATAGRAM = 65000
HeartbeatCallback = Callable[[dict[str, Any]], Awaitable[None] | None]


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


class HeartbeatVerifier:
    """Checks MAC, shape, freshness (``max_skew`` seconds) and per-sender sequence order."""

    def __init__(self, key: bytes, max_skew: float = 30.0, max_senders: int = 100_000) -> None:
        if not key:
            raise ValueError("heartbeat key must not be empty")
        self._key = key
        self._max_skew = max_skew
        self._max_senders = max_senders
        self._last_seq: OrderedDict[str, int] = OrderedDict()
        self._lock = threading.Lock()

    def verify(self, datagram: bytes, now: float | None = None) -> dict[str, Any]:
        if len(datagram) <= MAC_LEN:
            raise HeartbeatRejected("too short")
        data, mac = datagram[:-MAC_LEN], datagram[-MAC_LEN:]
        if not hmac.compare_digest(mac, _mac(data, self._key)):
            raise HeartbeatRejected("bad MAC")
        try:
            payload = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise HeartbeatRejected(f"malformed JSON: {e}") from e
        if not isinstance(payload, dict):
            raise HeartbeatRejected("payload is not an object")
        sender, seq, ts = payload.get("id"), payload.get("seq"), payload.get("ts")
        if not isinstance(sender, str) or not sender:
            raise HeartbeatRejected("missing id")
        if not isinstance(seq, int) or isinstance(seq, bool):
            raise HeartbeatRejected("missing seq")
        if not isinstance(ts, int | float) or isinstance(ts, bool):
            raise HeartbeatRejected("missing ts")
        now = time.time() if now is None else now
        if abs(now - ts) > self._max_skew:
            raise HeartbeatRejected(f"timestamp {ts:.3f} is {now - ts:.1f}s off")
        with self._lock:
            last = self._last_seq.get(sender)
            if last is not None and seq <= last:
                raise HeartbeatRejected(f"replayed or old seq {seq} (last {last})")
            self._last_seq[sender] = seq
            self._last_seq.move_to_end(sender)
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
        transport, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=self.bind)
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
        self._sock = socket.socket(_family(target[0]), socket.SOCK_DGRAM)

    def next_seq(self) -> int:
        self._last_seq = max(time.time_ns(), self._last_seq + 1)
        return self._last_seq

    def build(self) -> bytes:
        payload = dict(self._body())
        payload.update(id=self.sender_id, seq=self.next_seq(), ts=time.time())
        return sign(payload, self._key)

    def send_once(self) -> None:
        try:
            datagram = self.build()
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

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            self.send_once()
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._sock.close()
