"""The distributor pair's VRRP: keepalived's configuration (validated values only) and the agent's use of it."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from cohort.agents.distributor.api import parse_vip
from cohort.agents.distributor.state import StateStore, VrrpSettings
from cohort.distributor.vrrp import VrrpGroup, advert_int, render_keepalived
from tests.unit.test_distributor_nft import VIP_SPEC, FakeKeepalived, RecordingKernel, service, specs

GROUP = VrrpGroup("fe0", "203.0.113.2", "203.0.113.3", ("203.0.113.101", "203.0.113.100"), vrid=250,
                  advert_int=0.05)


def test_one_instance_per_interface_unicast_to_the_peer_both_backup_nopreempt() -> None:
    text = render_keepalived("dist-1", [GROUP])
    assert "    state BACKUP\n    nopreempt\n" in text
    assert "advert_int 0.05" in text and "version 3" in text and "virtual_router_id 250" in text
    assert "unicast_src_ip 203.0.113.2" in text and "check_unicast_src" in text
    assert "unicast_peer {\n        203.0.113.3\n    }" in text
    # The lowest VIP is advertised (keepalived wants one); the others are left out of the packets.
    assert "virtual_ipaddress {\n        203.0.113.100/32 dev fe0\n    }" in text
    assert "virtual_ipaddress_excluded {\n        203.0.113.101/32 dev fe0\n    }" in text
    assert text.count("vrrp_instance") == 1
    lone = render_keepalived("dist-1", [dataclasses.replace(GROUP, peer=None)])
    assert "state MASTER" in lone and "nopreempt" not in lone and "unicast" not in lone


@pytest.mark.parametrize("change", [
    {"interface": "fe0\n    garp_master_delay 0"},
    {"interface": "a-very-long-interface-name"},
    {"own_address": "203.0.113.2 dev lo"},
    {"own_address": "2001:db8::2"},
    {"peer": "203.0.113.3\n}"},
    {"peer": "203.0.113.2"},  # itself
    {"peer": "203.0.113.100"},  # a VIP
    {"vips": ()},
    {"vips": ("203.0.113.100/24",)},
    {"vips": ("203.0.113.2",)},  # its own address
    {"vrid": 0},
    {"vrid": 256},
    {"vrid": True},
    {"advert_int": 0.005},
    {"advert_int": 0.055},
    {"advert_int": 41},
    {"advert_int": "0.05"},
])
def test_bad_values_are_refused(change: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        render_keepalived("dist-1", [dataclasses.replace(GROUP, **change)])  # type: ignore[arg-type]


def test_router_id_and_groups_are_checked() -> None:
    with pytest.raises(ValueError):
        render_keepalived("dist 1\n}", [GROUP])
    with pytest.raises(ValueError):
        render_keepalived("dist-1", [GROUP, GROUP])
    with pytest.raises(ValueError):
        render_keepalived("dist-1", [])
    assert advert_int(0.1) == 0.1 and advert_int(1) == 1.0


@pytest.mark.skipif(shutil.which("keepalived") is None, reason="keepalived is not installed")
def test_keepalived_parses_what_is_rendered(tmp_path: Path) -> None:
    import subprocess

    # A real interface: keepalived checks that the interfaces named exist.
    link = next(p.name for p in Path("/sys/class/net").iterdir() if p.name != "lo")
    path = tmp_path / "keepalived.conf"
    path.write_text(render_keepalived("dist-1", [dataclasses.replace(GROUP, interface=link)]))
    result = subprocess.run(["keepalived", "-t", "-f", str(path)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def body(**vrrp: object) -> dict[str, object]:
    return {"vip_address": "203.0.113.100", "vrrp": vrrp,
            "port": {"mac_address": "02:01:cb:00:71:02", "address": "203.0.113.2",
                     "subnet_cidr": "203.0.113.0/24", "gateway": "203.0.113.1"}}


def test_the_api_takes_the_pairs_settings_and_refuses_bad_ones() -> None:
    spec = parse_vip("lb-a", body(peer="203.0.113.3", vrid=7, advert_int=0.1))
    assert spec.vrrp == VrrpSettings(peer="203.0.113.3", vrid=7, advert_int=0.1)
    assert parse_vip("lb-a", body(peer=None)).vrrp == VrrpSettings(peer=None)
    for bad in ({"peer": "198.51.100.3"}, {"peer": "203.0.113.2"}, {"peer": "x"}, {"vrid": 300},
                {"advert_int": 0}, {"advert_int": "fast"}):
        with pytest.raises(ValueError):
            parse_vip("lb-a", body(**bad))


def test_keepalived_holds_the_vips_and_the_agent_reports_its_role(tmp_path: Path) -> None:
    kernel, keepalived = RecordingKernel(), FakeKeepalived()
    svc = service(tmp_path, kernel, keepalived=keepalived)
    assert svc.status()["vrrp"]["role"] is None and svc.heartbeat_body()["role"] is None
    svc.plug_vip(dataclasses.replace(VIP_SPEC, vrrp=VrrpSettings(peer="203.0.113.3")))
    # No amphora known yet: the VIP is not held (a MASTER would answer it itself, with resets).
    assert not keepalived.alive and kernel.introduced == []
    svc.set_members("lb-a", specs("x", "y"))
    # Before keepalived first starts, the peer learns this member's MAC: its advertisements reach us.
    assert kernel.introduced == [("fe0", "203.0.113.2", "203.0.113.3")]
    # The agent adds its own address only; the VIP is keepalived's.
    assert kernel.addresses("fe0") == {"203.0.113.2"}
    assert keepalived.alive and keepalived.config is not None
    assert "203.0.113.100/32 dev fe0" in keepalived.config and "203.0.113.3" in keepalived.config
    assert svc.status()["vrrp"]["role"] == "BACKUP"
    kernel.addrs["fe0"].add("203.0.113.100")  # keepalived became MASTER
    assert svc.status()["vrrp"]["role"] == "MASTER" and svc.heartbeat_body()["role"] == "MASTER"
    assert svc.status()["vrrp"] == {"role": "MASTER", "interfaces": {"fe0": "MASTER"}}

    # An unchanged plug reloads nothing; a new peer (a replaced member) reloads, keeping the state.
    reloads = keepalived.reloads
    svc.plug_vip(VIP_SPEC)  # no VRRP settings: the port keeps its peer
    assert keepalived.reloads == reloads
    svc.plug_vip(dataclasses.replace(VIP_SPEC, vrrp=VrrpSettings(peer="203.0.113.4")))
    assert keepalived.reloads == reloads + 1 and "203.0.113.4" in (keepalived.config or "")
    assert len(kernel.introduced) == 1  # a running keepalived keeps its state: no new introduction
    assert StateStore(tmp_path).load().vrrp["02:01:cb:00:71:02"].peer == "203.0.113.4"


def test_a_dead_keepalived_is_restarted_without_the_addresses_it_left(tmp_path: Path) -> None:
    kernel, keepalived = RecordingKernel(), FakeKeepalived()
    svc = service(tmp_path, kernel, keepalived=keepalived)
    svc.plug_vip(dataclasses.replace(VIP_SPEC, vrrp=VrrpSettings(peer="203.0.113.3")))
    svc.set_members("lb-a", specs("x"))
    kernel.addrs["fe0"].add("203.0.113.100")
    keepalived.alive = False  # killed: its address stays behind
    assert svc.status()["vrrp"]["role"] == "FAULT"
    svc.watch_vrrp()
    assert ("fe0", ["203.0.113.100/32"]) in kernel.released and keepalived.alive
    assert svc.status()["vrrp"]["role"] == "BACKUP"


def test_a_refused_value_changes_nothing(tmp_path: Path) -> None:
    kernel, keepalived = RecordingKernel(), FakeKeepalived()
    svc = service(tmp_path, kernel, keepalived=keepalived)
    svc.plug_vip(dataclasses.replace(VIP_SPEC, vrrp=VrrpSettings(peer="203.0.113.3")))
    with pytest.raises(ValueError):
        svc.plug_vip(dataclasses.replace(VIP_SPEC, lb_id="lb-b", vip_address="203.0.113.3"))  # the peer's address
    assert set(svc.state.vips) == {"lb-a"} and set(StateStore(tmp_path).load().vips) == {"lb-a"}


def test_the_last_vip_gone_stops_keepalived_and_a_restart_adopts_it(tmp_path: Path) -> None:
    kernel, keepalived = RecordingKernel(), FakeKeepalived()
    svc = service(tmp_path, kernel, keepalived=keepalived)
    svc.plug_vip(dataclasses.replace(VIP_SPEC, vrrp=VrrpSettings(peer="203.0.113.3")))
    svc.set_members("lb-a", specs("x"))
    reloads = keepalived.reloads
    again = service(tmp_path, kernel, keepalived=keepalived)
    again.start()
    assert keepalived.reloads == reloads and keepalived.alive  # the running one is adopted as it is
    again.unplug_vip("lb-a")
    assert not keepalived.alive and again.state.vrrp == {}


def test_a_vip_is_held_only_while_its_amphorae_are_known(tmp_path: Path) -> None:
    """A joining member gets the VIP plugged before its tables: keepalived must not hold it until then."""
    kernel, keepalived = RecordingKernel(), FakeKeepalived()
    svc = service(tmp_path, kernel, keepalived=keepalived)
    svc.plug_vip(dataclasses.replace(VIP_SPEC, vrrp=VrrpSettings(peer="203.0.113.3")))
    svc.plug_vip(dataclasses.replace(VIP_SPEC, lb_id="lb-b", vip_address="203.0.113.101"))
    assert not keepalived.alive and svc.status()["vrrp"]["role"] is None
    svc.set_members("lb-a", specs("x"))
    assert keepalived.alive and keepalived.config is not None
    assert "203.0.113.100/32" in keepalived.config and "203.0.113.101" not in keepalived.config
    svc.set_members("lb-b", specs("y"))
    assert "203.0.113.101/32" in (keepalived.config or "")
    svc.set_members("lb-a", [])
    assert "203.0.113.100" not in (keepalived.config or "") and keepalived.alive
    # Still validated when not held: keepalived's renderer refuses a VIP that is the peer's address.
    with pytest.raises(ValueError):
        svc.plug_vip(dataclasses.replace(VIP_SPEC, lb_id="lb-c", vip_address="203.0.113.3"))
