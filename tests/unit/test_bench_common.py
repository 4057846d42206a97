"""What every benchmark writes beside its figures: the command that reproduces them, options included."""

from __future__ import annotations

import sys

import pytest

from bench.common import command_line


def test_the_command_keeps_its_options_quoted_for_a_shell() -> None:
    line = command_line(".venv/bin/python -m bench.chaos", ["--kind", "standby", "--output", "/tmp/a b.json"])
    assert line == ".venv/bin/python -m bench.chaos --kind standby --output '/tmp/a b.json'"


def test_without_arguments_given_the_process_own_are_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["bench/amphora.py", "--seconds", "5"])
    assert command_line(".venv/bin/python bench/amphora.py", None) == ".venv/bin/python bench/amphora.py --seconds 5"
    assert command_line(".venv/bin/python bench/amphora.py", []) == ".venv/bin/python bench/amphora.py"
