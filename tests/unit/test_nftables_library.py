"""The agents' nftables calls: through libnftables in-process, with the nft program as the fallback."""

from __future__ import annotations

from typing import Any

import pytest

from cohort.agents.common import nftables
from cohort.agents.common.proc import CommandFailed


class FakeLibrary:
    def __init__(self, code: int = 0, out: str = "", err: str = "") -> None:
        self.calls: list[tuple[int, str]] = []
        self.answer = (code, out, err)

    def run(self, flags: int, text: str) -> tuple[int, str, str]:
        self.calls.append((flags, text))
        return self.answer


@pytest.fixture
def programs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[list[str], str | None]]:
    ran: list[tuple[list[str], str | None]] = []

    def run(cmd: list[str], stdin: str | None = None, **_: Any) -> str:
        ran.append((list(cmd), stdin))
        return "program"

    monkeypatch.setattr(nftables, "run", run)
    return ran


def test_scripts_and_commands_go_to_the_library_with_nfts_flags(
        monkeypatch: pytest.MonkeyPatch, programs: list[tuple[list[str], str | None]]) -> None:
    library = FakeLibrary(out="{}")
    monkeypatch.setattr(nftables, "_load", lambda: library)
    assert nftables.nft("-f", "-", stdin="flush map inet t m\n") == "{}"
    assert nftables.nft("-t", "-j", "list", "table", "inet", "t") == "{}"
    assert nftables.nft("list", "counters", "table", "inet", "t") == "{}"
    assert library.calls == [(0, "flush map inet t m\n"),
                             (nftables._OUTPUT_JSON | nftables._OUTPUT_TERSE, "list table inet t"),
                             (0, "list counters table inet t")]
    assert programs == []


def test_a_refusal_says_what_nft_said(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nftables, "_load", lambda: FakeLibrary(code=1, err="Error: No such file or directory"))
    with pytest.raises(CommandFailed, match="No such file or directory") as caught:
        nftables.nft("-f", "-", stdin="add element inet t nosuch { 1 : 1 }\n")
    assert caught.value.cmd == ["nft", "-f", "-"]


def test_without_the_library_the_program_runs(monkeypatch: pytest.MonkeyPatch,
                                              programs: list[tuple[list[str], str | None]]) -> None:
    monkeypatch.setattr(nftables, "_load", lambda: None)
    assert nftables.nft("-f", "-", stdin="x") == "program"
    library = FakeLibrary()
    monkeypatch.setattr(nftables, "_load", lambda: library)
    assert nftables.nft("--check", "-f", "/etc/x") == "program"  # not a command line the library takes
    assert library.calls == []
    assert programs == [(["nft", "-f", "-"], "x"), (["nft", "--check", "-f", "/etc/x"], None)]
