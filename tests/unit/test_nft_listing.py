"""A distributor's table listing is reduced in a child process; the agent reads back only the counts."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

from cohort.distributor import nft, nft_listing

K = nft.object_key("lb-a")
LISTING = {"nftables": [
    {"counter": {"family": "ip", "name": f"bytes_{K}", "table": "cohort_dist", "packets": 70, "bytes": 4490}},
    {"counter": {"family": "ip", "name": f"syn_{K}", "table": "cohort_dist", "packets": 10, "bytes": 600}},
    {"map": {"family": "ip", "name": f"flows_{K}", "table": "cohort_dist", "map": "mark", "elem": [
        [{"elem": {"val": {"concat": ["198.51.100.10", port]}, "expires": 298}}, 1001 + port % 2]
        for port in range(40000, 40005)]}},
]}  # fmt: skip


def test_the_child_prints_the_counts_and_the_agent_reads_them_back(monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    asked: list[list[str]] = []

    def fake_nft(cmd: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        asked.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, json.dumps(LISTING), "")

    monkeypatch.setattr(nft_listing.subprocess, "run", fake_nft)
    assert nft_listing.main(["list", "table", "ip", "cohort_dist"]) == 0
    assert asked == [["nft", "-j", "list", "table", "ip", "cohort_dist"]]
    printed = capsys.readouterr().out
    assert "198.51.100.10" not in printed and len(printed) < 200  # counts only, not the pins
    assert nft_listing.decode(printed) == nft.parse_table(LISTING)
    assert nft_listing.decode(printed)[K].flows == {1001: 3, 1002: 2}


def test_a_failing_nft_is_the_childs_failure(monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(nft_listing.subprocess, "run", lambda cmd, **_: subprocess.CompletedProcess(
        cmd, 1, "", "Error: No such file or directory"))
    assert nft_listing.main(["list", "map", "ip", "cohort_dist", "flows_x"]) == 1
    assert "No such file" in capsys.readouterr().err
