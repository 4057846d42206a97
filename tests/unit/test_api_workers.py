"""``cohort up --workers 2``: API processes share the port, see each other's writes, wake the
reconciler, are replaced when they die and stop with their parent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from cohort.wake import WakeListener, WakeSender
from tests.support import free_port, wait_for

LB = "/v2/lbaas/loadbalancers"


def children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and "spawn_main" in (entry / "cmdline").read_text(errors="replace"):
                found.add(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"


def answers(base: str) -> bool:
    try:
        return httpx.get(base + "/v2.0", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def test_wake_datagram_reaches_the_listener(tmp_path: Path) -> None:
    woken = threading.Event()
    listener = WakeListener(tmp_path / "r.sock", woken.set)
    listener.start()
    try:
        WakeSender(tmp_path / "r.sock")()
        assert woken.wait(5)
    finally:
        listener.close()
    assert not (tmp_path / "r.sock").exists()
    WakeSender(tmp_path / "r.sock")()  # nobody listening: no error


def test_worker_processes_serve_one_api(tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "cohort.cli", "up", "--drivers", "noop", "--workers", "2",
                             "--state-dir", str(tmp_path / "state"), "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    workers: set[int] = set()
    try:
        wait_for(lambda: answers(base), timeout=60)
        workers = children(proc.pid)
        assert len(workers) == 2
        status = httpx.post(base + LB, json={"loadbalancer": {"name": "w", "vip_subnet_id": "public-subnet"}})
        assert status.status_code == 201
        lb_id = status.json()["loadbalancer"]["id"]
        wait_for(lambda: httpx.get(f"{base}{LB}/{lb_id}").json()["loadbalancer"]["provisioning_status"] == "ACTIVE",
                 timeout=30)
        # Every read right after a write sees it, whichever process (and its cache) answers.
        for n in range(12):
            put = httpx.put(f"{base}{LB}/{lb_id}", json={"loadbalancer": {"name": f"name-{n}"}})
            assert put.status_code == 200, put.text
            for _ in range(3):
                with httpx.Client(base_url=base) as fresh:  # a new connection: any worker may take it
                    assert fresh.get(f"{LB}/{lb_id}").json()["loadbalancer"]["name"] == f"name-{n}"
                    listed = fresh.get(LB, params={"name": f"name-{n}"}).json()["loadbalancers"]
                    assert [row["id"] for row in listed] == [lb_id]
            wait_for(lambda: httpx.get(f"{base}{LB}/{lb_id}").json()["loadbalancer"]["provisioning_status"]
                     == "ACTIVE", timeout=30)
        victim = sorted(workers)[0]
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: len(children(proc.pid) - {victim}) == 2, timeout=30)
        workers = children(proc.pid)
        assert all(httpx.get(base + "/v2.0").status_code == 200 for _ in range(10))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    deadline = time.monotonic() + 15
    while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(alive(pid) for pid in workers)
