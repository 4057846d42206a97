"""The amphora speaker's settings are checked before BIRD sees them, and render what BIRD parses."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from cohort.agents.amphora.bird_config import parse_speaker, render, vip_protocol
from cohort.lab.errors import LabError
from cohort.lab.router import RouterSettings, bgpd_config

PEER: dict[str, Any] = {"peer_ip": "203.0.113.1", "remote_as": 64512, "password": "s3cret", "ttl_hops": 1,
                        "hold_time": 9, "keepalive_interval": 3, "bfd": {"min_rx": 100, "min_tx": 100, "multiplier": 3}}
SPEAKER: dict[str, Any] = {"local_as": 64600, "router_id": "203.0.113.2", "local_address": "203.0.113.2",
                           "interface": "fe0", "peers": [PEER]}


def test_render_announces_only_what_is_wanted_and_bird_parses_it(tmp_path: Path) -> None:
    text = render(parse_speaker(SPEAKER), {"203.0.113.100": True, "203.0.113.101": False}, "/bgp/bird.log")
    blocks = text.split("protocol ")
    up = next(b for b in blocks if b.startswith(f"static {vip_protocol('203.0.113.100')}"))
    down = next(b for b in blocks if b.startswith(f"static {vip_protocol('203.0.113.101')}"))
    assert "disabled;" not in up and "disabled;" in down
    assert 'password "s3cret";' in text and "ttl security on;" in text and "direct;" in text
    assert "bfd { min rx interval 100 ms; min tx interval 100 ms; multiplier 3; };" in text
    # A new or recovered amphora is in the router's next hops within about a second, not BIRD's 5 s.
    assert "connect delay time 1;" in text and "error wait time 1, 2;" in text
    if shutil.which("bird") is None:
        pytest.skip("BIRD is not installed")
    path = tmp_path / "bird.conf"
    path.write_text(text.replace("/bgp/bird.log", str(tmp_path / "bird.log")))
    done = subprocess.run(["bird", "-p", "-c", str(path)], capture_output=True, text=True, timeout=10, check=False)
    assert done.returncode == 0, done.stderr


def test_a_vip_change_touches_no_session() -> None:
    speaker = parse_speaker(SPEAKER)
    before = render(speaker, {"203.0.113.100": True}, "/bgp/bird.log")
    after = render(speaker, {"203.0.113.100": False, "203.0.113.101": True}, "/bgp/bird.log")

    def bgp(text: str) -> str:
        return text[text.index("protocol bgp"):]

    assert bgp(before) == bgp(after)  # BIRD keeps a protocol whose configuration did not change


@pytest.mark.parametrize("change", [
    {"peer_ip": "203.0.113.1%eth0"}, {"peer_ip": "203.0.113.1\nprotocol x"}, {"remote_as": 0},
    {"remote_as": 2**32}, {"hold_time": 2}, {"keepalive_interval": 4}, {"password": 'a"b'},
    {"password": "a\\b"}, {"password": "a b"}, {"password": "x" * 81}, {"ttl_hops": 0},
    {"bfd": {"min_rx": 1, "min_tx": 100, "multiplier": 3}}, {"bfd": "on"}, {"remote_as": True},
])
def test_bad_peers_are_refused(change: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        parse_speaker({**SPEAKER, "peers": [{**PEER, **change}]})


@pytest.mark.parametrize("change", [
    {"local_as": -1}, {"router_id": "2001:db8::1"}, {"local_address": "x"}, {"interface": "fe0; x"},
    {"peers": []}, {"peers": [PEER, PEER]}, {"peers": "x"},
])
def test_bad_speakers_are_refused(change: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        parse_speaker({**SPEAKER, **change})


def test_lab_router_config() -> None:
    text = bgpd_config(RouterSettings(password="pw", ttl_security=True))
    assert "bgp listen range 203.0.113.0/24 peer-group AMPHORAE" in text
    assert "neighbor AMPHORAE password pw" in text and "ttl-security hops 1" in text
    assert "maximum-paths 64" in text and "neighbor AMPHORAE bfd" in text
    assert " bgp log-neighbor-changes" in text  # why a session dropped, in bgpd.log
    with pytest.raises(LabError):
        RouterSettings(password="has space").check()
    with pytest.raises(LabError):
        RouterSettings(asn=0).check()
