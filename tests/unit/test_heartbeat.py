"""Signed heartbeats: per-agent keys, wire format, rejections, persistence, and sender -> receiver over UDP."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import multiprocessing
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from cohort.agents.amphora.haproxy import HaproxyManager
from cohort.agents.amphora.heartbeat import HeartbeatBody
from cohort.agents.amphora.stats import parse_csv, summarize
from cohort.agents.common.jail import Jail
from cohort.config import Settings
from cohort.controller.health import HealthManager
from cohort.controller.wiring import agent_key_file, heartbeat_key, write_agent_key
from cohort.db import models as m
from cohort.db.session import make_engine, make_sessionmaker, upgrade
from cohort.health import heartbeat
from cohort.health.heartbeat import (
    MAC_LEN,
    HeartbeatReceiver,
    HeartbeatRejected,
    HeartbeatSender,
    HeartbeatVerifier,
    sign,
)
from cohort.health.keys import agent_key, master_key

MASTER = b"m" * 32
KEY = agent_key(MASTER, "amphora", "amp-1")


def key_of(sender: str, kind: str = "amphora") -> bytes:
    return agent_key(MASTER, kind, sender)


def payload(seq: int | None = None, ts: float | None = None, sender: str = "amp-1") -> dict[str, Any]:
    return {"id": sender, "seq": time.time_ns() if seq is None else seq,
            "ts": time.time() if ts is None else ts, "ver": 1, "listeners": {}}


def signed(body: bytes, key: bytes = KEY) -> bytes:
    return body + hmac.new(key, body, hashlib.sha256).digest()


def test_sign_is_compact_json_plus_hmac() -> None:
    datagram = sign(payload(), KEY)
    body, mac = datagram[:-MAC_LEN], datagram[-MAC_LEN:]
    assert len(mac) == 32
    assert b" " not in body
    assert json.loads(body)["id"] == "amp-1"
    assert HeartbeatVerifier(MASTER).verify(datagram)["id"] == "amp-1"


def test_agent_keys_are_derived_per_kind_and_id() -> None:
    keys = {agent_key(MASTER, kind, agent) for kind in ("amphora", "distributor") for agent in ("a", "b")}
    assert len(keys) == 4
    assert agent_key(MASTER, "amphora", "a") != agent_key(b"other master", "amphora", "a")
    with pytest.raises(ValueError):
        agent_key(MASTER, "controller", "a")


def test_forged_or_tampered_mac_is_rejected() -> None:
    verifier = HeartbeatVerifier(MASTER)
    with pytest.raises(HeartbeatRejected, match="MAC"):
        verifier.verify(sign(payload(), b"other key"))
    with pytest.raises(HeartbeatRejected, match="MAC"):
        verifier.verify(sign(payload(), MASTER))  # the master key itself signs for nobody
    datagram = bytearray(sign(payload(), KEY))
    datagram[-1] ^= 1
    with pytest.raises(HeartbeatRejected, match="MAC"):
        verifier.verify(bytes(datagram))
    with pytest.raises(HeartbeatRejected):
        verifier.verify(b"short")


def test_an_agent_cannot_speak_for_another() -> None:
    verifier = HeartbeatVerifier(MASTER)
    with pytest.raises(HeartbeatRejected, match="MAC"):
        verifier.verify(sign(payload(sender="amp-2"), key_of("amp-1")))
    # Nor for a distributor of the same id, by claiming to be one.
    with pytest.raises(HeartbeatRejected, match="MAC"):
        verifier.verify(sign({**payload(), "distributor": True}, key_of("amp-1")))
    assert verifier.verify(sign(payload(sender="amp-2"), key_of("amp-2")))["id"] == "amp-2"
    distributor = {**payload(sender="d-1"), "distributor": True}
    assert verifier.verify(sign(distributor, key_of("d-1", "distributor")))["id"] == "d-1"
    with pytest.raises(HeartbeatRejected, match="MAC"):  # ...and a distributor's key is not an amphora's
        verifier.verify(sign(payload(sender="d-1"), key_of("d-1", "distributor")))


def test_replayed_and_old_sequence_numbers_are_rejected_per_sender() -> None:
    verifier = HeartbeatVerifier(MASTER)
    now = time.time_ns()
    first = sign(payload(now), KEY)
    verifier.verify(first)
    with pytest.raises(HeartbeatRejected, match="seq"):
        verifier.verify(first)
    with pytest.raises(HeartbeatRejected, match="seq"):
        verifier.verify(sign(payload(now - 1), KEY))
    verifier.verify(sign(payload(now + 1), KEY))
    verifier.verify(sign(payload(now - 5, sender="amp-2"), key_of("amp-2")))  # another sender counts on its own


FUTURE = -1  # stands for "1000 s ahead of the clock", computed when the test runs, not when collected


@pytest.mark.parametrize("seq", [2**62, 2**63 + 5, FUTURE, 1, 0, -(2**62)])
def test_a_sequence_number_off_the_clock_is_rejected_and_locks_nobody_out(seq: int) -> None:
    seq = time.time_ns() + 10**12 if seq == FUTURE else seq
    verifier = HeartbeatVerifier(MASTER, max_skew=30)
    with pytest.raises(HeartbeatRejected, match="seq"):
        verifier.verify(sign(payload(seq), KEY))
    assert verifier.verify(sign(payload(), KEY))["id"] == "amp-1"


def test_a_sequence_number_must_agree_with_the_timestamp() -> None:
    verifier = HeartbeatVerifier(MASTER, max_skew=30)
    with pytest.raises(HeartbeatRejected, match="seq"):
        verifier.verify(sign(payload(time.time_ns() + 25 * 10**9, ts=time.time() - 25), KEY))


def test_timestamps_far_from_now_are_rejected() -> None:
    verifier = HeartbeatVerifier(MASTER, max_skew=30)
    with pytest.raises(HeartbeatRejected, match="timestamp"):
        verifier.verify(sign(payload(ts=time.time() - 120), KEY))
    with pytest.raises(HeartbeatRejected, match="timestamp"):
        verifier.verify(sign(payload(ts=time.time() + 120), KEY))
    verifier.verify(sign(payload(time.time_ns() - 5 * 10**9, ts=time.time() - 5), KEY))


def _fields(**fields: str) -> bytes:
    # Raw JSON text, so that values json.dumps would never write (NaN, 1e999, 400-digit ints) get in.
    return ("{" + ",".join(f'"{k}":{v}' for k, v in fields.items()) + "}").encode()


NOW = f"{time.time():.6f}"
SEQ = str(time.time_ns())


@pytest.mark.parametrize(
    "body",
    [
        b"[1, 2]",
        b"not json",
        b"\xff\xfe{}",
        b"[" * 100_000 + b"]" * 100_000,
        b'{"id": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
        json.dumps({"seq": 1, "ts": time.time()}).encode(),
        _fields(id='"amp-1"', seq='"1"', ts=NOW),
        _fields(id='"amp-1"', seq="true", ts=NOW),
        _fields(id='"amp-1"', seq="1"),
        _fields(id='"amp-1"', seq=SEQ + ".0", ts=NOW),
        _fields(id='"amp-1"', seq="1e30", ts=NOW),
        _fields(id='"amp-1"', seq="NaN", ts=NOW),
        _fields(id='"amp-1"', seq="9" * 400, ts=NOW),
        _fields(id='"amp-1"', seq="-" + "9" * 400, ts=NOW),
        _fields(id='"amp-1"', seq="9" * 5000, ts=NOW),
        _fields(id='"amp-1"', seq=SEQ, ts="NaN"),
        _fields(id='"amp-1"', seq=SEQ, ts="Infinity"),
        _fields(id='"amp-1"', seq=SEQ, ts="-Infinity"),
        _fields(id='"amp-1"', seq=SEQ, ts="1e999"),
        _fields(id='"amp-1"', seq=SEQ, ts="9" * 400),
        _fields(id='"amp-1"', seq=SEQ, ts='"now"'),
        _fields(id='"amp-1"', seq=SEQ, ts="true"),
        _fields(id='"amp-1"', seq=SEQ, ts="null"),
        _fields(id='"amp-1"', seq=SEQ, ts=NOW, distributor='"yes"'),
        _fields(id='"amp-1"', seq=SEQ, ts=NOW, listeners='{"l": NaN}'),
        _fields(id="1", seq=SEQ, ts=NOW),
        _fields(id='""', seq=SEQ, ts=NOW),
        _fields(id='"' + "a" * 1000 + '"', seq=SEQ, ts=NOW),
    ],
)
def test_malformed_payloads_are_rejected_and_nothing_else_is_raised(body: bytes) -> None:
    with pytest.raises(HeartbeatRejected):
        HeartbeatVerifier(MASTER).verify(signed(body))


def test_restarted_sender_is_not_taken_for_a_replay() -> None:
    verifier = HeartbeatVerifier(MASTER)
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

        receiver = HeartbeatReceiver(("127.0.0.1", 0), HeartbeatVerifier(MASTER), on_heartbeat)
        addr = await receiver.start()
        sender = HeartbeatSender("amp-9", addr, key_of("amp-9"), lambda: {"ver": 1, "listeners": {"l1": {}}},
                                 interval=0.05)
        forger = HeartbeatSender("amp-9", addr, key_of("amp-8"), lambda: {}, interval=0.05)
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


def test_controllers_share_the_port_and_a_survivor_gets_the_heartbeats() -> None:
    """Two receivers on one port (two controllers on one host): the kernel gives one sender's
    heartbeats to one of them, and to the other once that one is gone."""
    async def scenario() -> tuple[list[str], list[str]]:
        seen: list[str] = []
        first = HeartbeatReceiver(("127.0.0.1", 0), HeartbeatVerifier(MASTER), lambda p: seen.append("first"))
        addr = await first.start()
        second = HeartbeatReceiver(addr, HeartbeatVerifier(MASTER), lambda p: seen.append("second"))
        await second.start()
        sender = HeartbeatSender("amp-7", addr, key_of("amp-7"), lambda: {"ver": 1}, interval=0.02)
        sender.start()
        try:
            for _ in range(100):
                if len(seen) >= 5:
                    break
                await asyncio.sleep(0.02)
            before = list(seen)
            owner = first if before[-1] == "first" else second
            owner.close()
            seen.clear()
            for _ in range(100):
                if len(seen) >= 5:
                    break
                await asyncio.sleep(0.02)
        finally:
            sender.stop()
            first.close()
            second.close()
        return before, list(seen)

    before, after = asyncio.run(scenario())
    assert len(set(before)) == 1  # one sender, one receiver
    assert after and set(after) == {"first", "second"} - set(before)


def test_a_slow_body_does_not_delay_liveness_but_a_hung_one_falls_silent() -> None:
    """Heartbeats go out every interval with the last body while a new one takes long to build; once
    the newest body is MAX_BODY_AGE intervals old (the reporting hangs), the agent falls silent."""
    release = threading.Event()
    calls = [0]

    def body() -> dict[str, Any]:
        calls[0] += 1
        if calls[0] == 2:
            release.wait(5)  # the second build hangs
        return {"ver": 1}

    receiver = socket_pair_receiver()
    sender = HeartbeatSender("amp-5", receiver.getsockname(), key_of("amp-5"), body, interval=0.02)
    sender.start()
    try:
        time.sleep(heartbeat.MAX_BODY_AGE * 0.02 / 2)
        assert sender.sent >= 3  # kept going with the first body while the second hangs
        time.sleep(heartbeat.MAX_BODY_AGE * 0.02 * 2)
        silent_from = sender.sent
        time.sleep(0.2)
        assert sender.sent == silent_from  # the first body is too old now: nothing is sent
    finally:
        release.set()
        sender.stop()
        receiver.close()


def socket_pair_receiver() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    return sock


# --- keys on disk ---------------------------------------------------------------------------


def _master_in_process(path: str, start: Any, out: Any) -> None:
    start.wait()
    out.put(master_key(Path(path)))


def test_master_key_is_created_once_by_concurrent_processes(tmp_path: Path) -> None:
    path = tmp_path / "state" / "heartbeat.key"
    context = multiprocessing.get_context("fork")
    start, out = context.Event(), context.Queue()
    procs = [context.Process(target=_master_in_process, args=(str(path), start, out)) for _ in range(12)]
    for proc in procs:
        proc.start()
    start.set()
    keys = {out.get(timeout=20) for _ in procs}
    for proc in procs:
        proc.join(10)
    assert len(keys) == 1 and keys == {path.read_bytes().strip()}
    assert path.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == ["heartbeat.key"]  # no temporary left behind


def test_each_agent_gets_a_private_key_file_and_never_the_master(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path, drivers="noop")
    master = heartbeat_key(settings)
    assert heartbeat_key(settings) == master
    path = write_agent_key(settings, "amphora", "amp-1")
    assert path == agent_key_file(settings, "amphora", "amp-1")
    assert path.read_bytes() == agent_key(master, "amphora", "amp-1") != master
    assert path.stat().st_mode & 0o777 == 0o600
    assert write_agent_key(settings, "amphora", "amp-1").read_bytes() == path.read_bytes()  # a rewrite is harmless
    assert write_agent_key(settings, "distributor", "amp-1").read_bytes() != path.read_bytes()
    configured = Settings(state_dir=tmp_path, drivers="noop", heartbeat_key="from-settings")
    assert heartbeat_key(configured) == b"from-settings"
    assert write_agent_key(configured, "amphora", "amp-1").read_bytes() == agent_key(b"from-settings", "amphora",
                                                                                   "amp-1")


# --- the health manager: persisted sequences and malformed bodies --------------------------


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    settings = Settings(state_dir=tmp_path, drivers="noop")
    upgrade(settings.db_url)
    engine = make_engine(settings.db_url)
    yield make_sessionmaker(engine)
    engine.dispose()


def _lb_with_amphora(sessions: sessionmaker[Session]) -> dict[str, str]:
    with sessions() as session, session.begin():
        lb = m.LoadBalancer(project_id="p", vip_subnet_id="s", topology="SINGLE")
        session.add(lb)
        session.flush()
        listener = m.Listener(load_balancer=lb, project_id="p", protocol="HTTP", protocol_port=80)
        pool = m.Pool(load_balancer=lb, project_id="p", protocol="HTTP", lb_algorithm="ROUND_ROBIN")
        session.add_all([listener, pool])
        session.flush()
        listener.default_pool_id = pool.id
        member = m.Member(pool=pool, project_id="p", address="192.0.2.50", protocol_port=80)
        amphora = m.Amphora(load_balancer_id=lb.id, status="ALLOCATED", role="STANDALONE")
        distributor = m.Distributor(status="ACTIVE")
        session.add_all([member, amphora, distributor])
        session.flush()
        return {"lb": lb.id, "listener": listener.id, "pool": pool.id, "member": member.id,
                "amphora": amphora.id, "distributor": distributor.id}


def test_replay_after_a_controller_restart_is_rejected(sessions: sessionmaker[Session]) -> None:
    ids = _lb_with_amphora(sessions)
    amp_key, dist_key = key_of(ids["amphora"]), key_of(ids["distributor"], "distributor")
    amp_captured = sign(payload(sender=ids["amphora"]), amp_key)
    dist_captured = sign({**payload(sender=ids["distributor"]), "distributor": True}, dist_key)
    health = HealthManager(sessions)
    before = HeartbeatVerifier(MASTER, last_seq=health.last_sequences())
    for datagram in (amp_captured, dist_captured):
        health.on_heartbeat(before.verify(datagram))
    assert health.processed == 2

    after = HeartbeatVerifier(MASTER, last_seq=HealthManager(sessions).last_sequences())  # a new controller
    for datagram in (amp_captured, dist_captured):
        with pytest.raises(HeartbeatRejected, match="replayed"):
            after.verify(datagram)
    assert after.verify(sign(payload(sender=ids["amphora"]), amp_key))["id"] == ids["amphora"]

    # A verifier without the persisted state would have taken the replay.
    assert HeartbeatVerifier(MASTER).verify(amp_captured)["id"] == ids["amphora"]


def test_an_older_heartbeat_handled_late_does_not_lower_the_persisted_sequence(
        sessions: sessionmaker[Session]) -> None:
    ids = _lb_with_amphora(sessions)
    health = HealthManager(sessions)
    health.on_heartbeat({"id": ids["amphora"], "seq": 200, "listeners": {}, "pools": {}})
    health.on_heartbeat({"id": ids["amphora"], "seq": 100, "listeners": {}, "pools": {}})
    assert health.last_sequences() == {("amphora", ids["amphora"]): 200}


def _statuses(sessions: sessionmaker[Session], ids: dict[str, str]) -> dict[str, Any]:
    with sessions() as session:
        stats = session.get(m.ListenerStatistics, (ids["listener"], ids["amphora"]))
        member = session.get(m.Member, ids["member"])
        listener = session.get(m.Listener, ids["listener"])
        assert member is not None and listener is not None
        return {"member": member.operating_status, "listener": listener.operating_status,
                "bytes_in": None if stats is None else stats.bytes_in,
                "total": None if stats is None else stats.total_connections}


def test_malformed_bodies_never_raise_in_the_health_manager(sessions: sessionmaker[Session]) -> None:
    ids = _lb_with_amphora(sessions)
    health = HealthManager(sessions)
    listener, pool, member = ids["listener"], ids["pool"], ids["member"]
    good = {"listeners": {listener: {"status": "OPEN", "stats": {"bytes_in": 5, "total_connections": 7}}},
            "pools": {pool: {"status": "UP", "members": {member: "UP"}}}}
    health.on_heartbeat({"id": ids["amphora"], **good})
    assert _statuses(sessions, ids) == {"member": "ONLINE", "listener": "ONLINE", "bytes_in": 5, "total": 7}
    bad_bodies: list[dict[str, Any]] = [
        {"listeners": [1, 2], "pools": good["pools"]},
        {"listeners": good["listeners"], "pools": "x"},
        {"listeners": {listener: [1]}, "pools": {pool: 5}},
        {"listeners": {listener: {"status": ["OPEN"], "stats": [1]}}, "pools": {pool: {"members": [member]}}},
        {"listeners": {listener: {"status": "OPEN", "stats": {"bytes_in": 1e308, "total_connections": "9"}}},
         "pools": {pool: {"status": {"x": 1}, "members": {member: ["UP"]}}}},
        {"listeners": {listener: {"status": "OPEN", "stats": {"bytes_in": 10**30, "total_connections": True}}}},
        {"listeners": {listener: {"status": "OPEN", "stats": {"bytes_in": -(10**30), "total_connections": None}}}},
        {"id": 5},
    ]
    for body in bad_bodies:
        health.on_heartbeat({"id": ids["amphora"], "seq": {"x": 1}, **body})
    stats = _statuses(sessions, ids)
    # Out-of-range counters are clamped to what the column holds, wrong types leave the stored value.
    assert stats["bytes_in"] == 0 and stats["total"] == 7
    health.on_heartbeat({"id": ids["amphora"], **good})
    assert _statuses(sessions, ids) == {"member": "ONLINE", "listener": "ONLINE", "bytes_in": 5, "total": 7}


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
    uid = 2_000_000_123 if os.geteuid() == 0 else os.geteuid()
    manager = HaproxyManager(Jail(tmp_path / "jail", uid, uid))
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
        manager.metrics.stop_all()
