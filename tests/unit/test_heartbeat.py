"""Signed heartbeats: wire format, rejections, and sender -> receiver over UDP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import pytest

from cohort.agents.amphora.haproxy import HaproxyManager
from cohort.agents.amphora.heartbeat import HeartbeatBody
from cohort.agents.amphora.stats import parse_csv, summarize
from cohort.health.heartbeat import (
    MAC_LEN,
    HeartbeatReceiver,
    HeartbeatRejected,
    HeartbeatSender,
    HeartbeatVerifier,
    sign,
)

KEY = b"k" * 32


def payload(seq: int, ts: float | None = None, sender: str = "amp-1") -> dict[str, Any]:
    return {"id": sender, "seq": seq, "ts": time.time() if ts is None else ts, "ver": 1, "listeners": {}}


def test_sign_is_compact_json_plus_hmac() -> None:
    datagram = sign(payload(1), KEY)
    body, mac = datagram[:-MAC_LEN], datagram[-MAC_LEN:]
    assert len(mac) == 32
    assert b" " not in body
    assert json.loads(body)["id"] == "amp-1"
    assert HeartbeatVerifier(KEY).verify(datagram)["seq"] == 1


def test_forged_or_tampered_mac_is_rejected() -> None:
    verifier = HeartbeatVerifier(KEY)
    with pytest.raises(HeartbeatRejected, match="MAC"):
        verifier.verify(sign(payload(1), b"other key"))
    datagram = bytearray(sign(payload(2), KEY))
    datagram[5] ^= 1
    with pytest.raises(HeartbeatRejected, match="MAC"):
        verifier.verify(bytes(datagram))
    with pytest.raises(HeartbeatRejected):
        verifier.verify(b"short")


def test_replayed_and_old_sequence_numbers_are_rejected_per_sender() -> None:
    verifier = HeartbeatVerifier(KEY)
    first = sign(payload(10), KEY)
    verifier.verify(first)
    with pytest.raises(HeartbeatRejected, match="seq"):
        verifier.verify(first)
    with pytest.raises(HeartbeatRejected, match="seq"):
        verifier.verify(sign(payload(9), KEY))
    verifier.verify(sign(payload(11), KEY))
    verifier.verify(sign(payload(1, sender="amp-2"), KEY))  # another sender counts on its own


def test_timestamps_far_from_now_are_rejected() -> None:
    verifier = HeartbeatVerifier(KEY, max_skew=30)
    with pytest.raises(HeartbeatRejected, match="timestamp"):
        verifier.verify(sign(payload(1, ts=time.time() - 120), KEY))
    with pytest.raises(HeartbeatRejected, match="timestamp"):
        verifier.verify(sign(payload(2, ts=time.time() + 120), KEY))
    verifier.verify(sign(payload(3, ts=time.time() - 5), KEY))


@pytest.mark.parametrize(
    "body",
    [
        b"[1, 2]",
        b"not json",
        json.dumps({"seq": 1, "ts": time.time()}).encode(),
        json.dumps({"id": "a", "seq": "1", "ts": time.time()}).encode(),
        json.dumps({"id": "a", "seq": True, "ts": time.time()}).encode(),
        json.dumps({"id": "a", "seq": 1}).encode(),
    ],
)
def test_malformed_payloads_are_rejected(body: bytes) -> None:
    with pytest.raises(HeartbeatRejected):
        HeartbeatVerifier(KEY).verify(body + hmac.new(KEY, body, hashlib.sha256).digest())


def test_restarted_sender_is_not_taken_for_a_replay() -> None:
    verifier = HeartbeatVerifier(KEY)
    for _ in range(2):  # two sender objects, as before and after an agent restart
        sender = HeartbeatSender("amp-1", ("127.0.0.1", 9), KEY, lambda: {"ver": 1})
        verifier.verify(sender.build())
        verifier.verify(sender.build())
        sender.stop()


def test_sender_reaches_receiver_and_counts_rejections() -> None:
    async def scenario() -> tuple[list[dict[str, Any]], HeartbeatReceiver]:
        got: list[dict[str, Any]] = []

        async def on_heartbeat(p: dict[str, Any]) -> None:
            got.append(p)

        receiver = HeartbeatReceiver(("127.0.0.1", 0), HeartbeatVerifier(KEY), on_heartbeat)
        addr = await receiver.start()
        sender = HeartbeatSender("amp-9", addr, KEY, lambda: {"ver": 1, "listeners": {"l1": {}}}, interval=0.05)
        forger = HeartbeatSender("amp-9", addr, b"wrong", lambda: {}, interval=0.05)
        sender.start()
        forger.send_once()
        try:
            for _ in range(100):
                if len(got) >= 3 and receiver.rejected:
                    break
                await asyncio.sleep(0.02)
        finally:
            sender.stop()
            forger.stop()
            receiver.close()
        return got, receiver

    got, receiver = asyncio.run(scenario())
    assert len(got) >= 3
    assert all(p["id"] == "amp-9" and p["listeners"] == {"l1": {}} for p in got)
    assert [p["seq"] for p in got] == sorted({p["seq"] for p in got})
    assert receiver.accepted == len(got)
    assert receiver.rejected == 1 and receiver.last_rejection == "bad MAC"


SHOW_STAT = """# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status
lst-1,FRONTEND,,,2,5,100,42,1000,2000,0,0,3,,,,,OPEN
pool-1,mem-a,0,0,1,2,,20,500,900,,0,,0,0,0,0,UP
pool-1,mem-b,0,0,0,0,,0,0,0,,0,,0,0,0,0,DOWN 1/2
pool-1,mem-c,0,0,0,0,,0,0,0,,0,,0,0,0,0,MAINT
pool-1,mem-d,0,0,0,0,,0,0,0,,0,,0,0,0,0,no check
pool-1,BACKEND,0,0,1,2,10,20,500,900,0,0,,0,0,0,0,UP
lst-2,FRONTEND,,,0,0,100,0,0,0,0,0,0,,,,,STOP
"""


def test_show_stat_maps_to_heartbeat_sections() -> None:
    listeners, pools = summarize(parse_csv(SHOW_STAT))
    assert listeners["lst-1"] == {
        "status": "OPEN",
        "stats": {
            "bytes_in": 1000,
            "bytes_out": 2000,
            "active_connections": 2,
            "total_connections": 42,
            "request_errors": 3,
        },
    }
    assert listeners["lst-2"]["status"] == "DOWN"
    assert pools == {
        "pool-1": {
            "status": "UP",
            "members": {"mem-a": "UP", "mem-b": "DOWN", "mem-c": "MAINT", "mem-d": "no check"},
        }
    }


def test_heartbeat_counters_stay_monotonic_across_reloads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    manager = HaproxyManager(tmp_path)
    try:
        rows = parse_csv(SHOW_STAT)
        monkeypatch.setattr(manager, "lb_ids", lambda: ["lb-1"])
        monkeypatch.setattr(manager, "show_stat", lambda lb_id: rows)
        body = HeartbeatBody(manager)
        first = body()
        assert first["ver"] == 1 and first["listeners"]["lst-1"]["stats"]["total_connections"] == 42
        # A reload: the new workers count from zero again.
        rows = parse_csv(SHOW_STAT.replace("2,5,100,42,1000,2000", "1,1,100,5,100,200"))
        after = body()["listeners"]["lst-1"]["stats"]
        assert after["total_connections"] == 47 and after["bytes_out"] == 2200
        assert after["active_connections"] == 1  # a gauge, not accumulated
    finally:
        if manager.dir.is_symlink():  # the short alias a long tmp_path gets for socket names
            manager.dir.unlink()
