"""The lab's address book under concurrent processes, and `cohort lab` input errors that need no lab."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

from cohort.lab import Lab

PREFIX = "cohort-tu1"


def _reserve_many(state_dir: str, worker: int, count: int) -> list[str]:
    lab = Lab(Path(state_dir), prefix=PREFIX, mgmt_cidr="198.19.250.0/24")
    return [lab.reserve_address("private", f"member:w{worker}n{n}") for n in range(count)]


def test_concurrent_processes_never_get_one_address_twice(tmp_path: Path) -> None:
    workers, count = 6, 12
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers) as pool:
        results = pool.starmap(_reserve_many, [(str(tmp_path), w, count) for w in range(workers)])
    addresses = [a for result in results for a in result]
    assert len(addresses) == workers * count
    assert len(set(addresses)) == len(addresses), sorted(addresses)
    # Reserving again for an owner is idempotent; releasing frees exactly that owner's address.
    lab = Lab(tmp_path, prefix=PREFIX)
    assert lab.reserve_address("private", "member:w0n0") == results[0][0]
    lab.release_address("private", "member:w0n0")
    assert lab.reserve_address("private", "member:other") == results[0][0]


def _cohort_lab(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COHORT_STATE_DIR": str(tmp_path), "COHORT_LAB_PREFIX": PREFIX}
    return subprocess.run([sys.executable, "-m", "cohort.cli", "lab", *args], capture_output=True, text=True,
                          env=env, timeout=60, check=False)


def test_member_add_errors_are_one_line_and_exit_1(tmp_path: Path) -> None:
    for args, message in ((("member", "add", "web1", "--port", "70000"), "out of range"),
                          (("member", "add", "Bad-Name"), "bad member name"),
                          (("member", "add", "web1"), "is not up")):
        done = _cohort_lab(tmp_path, *args)
        assert done.returncode == 1, (args, done.stdout, done.stderr)
        assert done.stdout == "" and len(done.stderr.strip().splitlines()) == 1, (args, done.stderr)
        assert message in done.stderr, (args, done.stderr)
    # Nothing half made: no member recorded, no address reserved.
    state = Lab(tmp_path / "lab", prefix=PREFIX).snapshot()
    assert not state.get("members") and not state.get("addresses", {}).get("private")
