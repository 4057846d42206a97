"""LatestPerSender: a slow recorder sees each sender's newest heartbeat, with its arrival time,
distributors first, and the backlog never exceeds one per sender."""

from __future__ import annotations

import threading
import time
from typing import Any

from cohort.controller.heartbeat_queue import LatestPerSender


def test_a_slow_recorder_gets_the_newest_per_sender_distributors_first() -> None:
    recorded: list[tuple[str, int, float]] = []
    gate = threading.Event()

    def record(payload: dict[str, Any], received_at: float) -> None:
        gate.wait(5)
        recorded.append((str(payload["id"]), int(payload["seq"]), received_at))

    queue = LatestPerSender(record)
    worker = threading.Thread(target=queue.run)
    worker.start()
    try:
        queue.put({"id": "blocker", "seq": 0})  # the recorder is busy with this one
        time.sleep(0.05)
        before = time.time()
        for seq in range(1, 50):
            queue.put({"id": "amp-1", "seq": seq})
            queue.put({"id": "amp-2", "seq": seq})
        queue.put({"id": "dist-1", "seq": 7, "distributor": True})
        gate.set()
        deadline = time.monotonic() + 5
        while len(recorded) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        queue.stop()
        worker.join(5)
    assert [r[:2] for r in recorded] == [("blocker", 0), ("dist-1", 7), ("amp-1", 49), ("amp-2", 49)]
    assert all(received_at >= before for _, _, received_at in recorded[1:])
    assert queue.replaced == 96 and queue.recorded == 4


def test_a_failing_record_does_not_stop_the_others() -> None:
    seen: list[str] = []

    def record(payload: dict[str, Any], received_at: float) -> None:
        if payload["id"] == "bad":
            raise RuntimeError("database is locked")
        seen.append(payload["id"])

    queue = LatestPerSender(record)
    worker = threading.Thread(target=queue.run)
    worker.start()
    queue.put({"id": "bad"})
    queue.put({"id": "good"})
    deadline = time.monotonic() + 5
    while "good" not in seen and time.monotonic() < deadline:
        time.sleep(0.01)
    queue.stop()
    worker.join(5)
    assert seen == ["good"]
