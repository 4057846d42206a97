"""The lab's SCTP members: what it refuses, the commands it runs, the ICMP silence it loads, its readiness check."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from cohort.lab import Lab, LabError, sctp_setup


@pytest.mark.parametrize("kwargs", [{"protocol": "UDP"}, {"protocol": "SCTP", "workers": 2}])
def test_a_member_serves_http_or_sctp_with_one_process(tmp_path: Path, kwargs: dict[str, object]) -> None:
    with pytest.raises(LabError, match="HTTP or SCTP"):
        Lab(tmp_path, "cohort-unit").add_member("x1", 3868, **kwargs)  # type: ignore[arg-type]


def test_commands_bracket_ipv6() -> None:
    assert sctp_setup.serve_command("d1", "192.0.2.10", 3868)[-4:] == ["--name", "d1", "--bind", "192.0.2.10:3868"]
    assert sctp_setup.send_command("2001:db8::5", 3868, ["--count", "2"])[-4:] == [
        "send", "[2001:db8::5]:3868", "--count", "2"]


def test_the_silence_drops_only_the_kernels_refusals_of_sctp() -> None:
    rules = [line for line in sctp_setup.QUIET_SCRIPT.splitlines() if line.startswith("add rule")]
    assert [r.split(" output ", 1)[1] for r in rules] == [
        "icmp type destination-unreachable icmp code prot-unreachable drop",
        "icmpv6 type parameter-problem icmpv6 code 1 drop"]


@pytest.mark.skipif(os.geteuid() != 0, reason="a raw socket needs CAP_NET_RAW")
def test_ready_sees_a_raw_sctp_socket() -> None:
    assert not sctp_setup.ready(os.getpid())
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, 132):
        assert sctp_setup.ready(os.getpid())
    assert not sctp_setup.ready(2 ** 22 + 1)  # no such process
