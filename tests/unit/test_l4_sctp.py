"""SCTP through the L4 path: the controller's spec, the agent's nftables program and the SCTP monitor's probe."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from cohort import sctp_wire as w
from cohort.agents.amphora import l4_health, l4_nft, sctp_probe
from cohort.agents.amphora.l4_spec import Member, Monitor, parse
from cohort.datamodel import HealthMonitor, Listener, LoadBalancer, SessionPersistence
from cohort.datamodel import Member as DMember
from cohort.datamodel import Pool as DPool
from cohort.drivers.amphora.l4_config import render_l4


def _lb(algorithm: str = "ROUND_ROBIN", **pool_kw: Any) -> LoadBalancer:
    members = (DMember(id="m1", address="192.0.2.10", protocol_port=3868, weight=2),
               DMember(id="m2", address="192.0.2.11", protocol_port=3868, weight=1),
               DMember(id="m3", address="192.0.2.12", protocol_port=3868, backup=True))
    pool = DPool(id="p1", protocol="SCTP", lb_algorithm=algorithm, members=members, **pool_kw)
    return LoadBalancer(id="lb-1", project_id="p", vip_address="203.0.113.5", vip_subnet_id="s",
                        listeners=(Listener(id="li-1", protocol="SCTP", protocol_port=3868, default_pool_id="p1",
                                            allowed_cidrs=("198.51.100.0/24",)),
                                   Listener(id="li-2", protocol="UDP", protocol_port=3868)),
                        pools=(pool,))


def _render(lb: LoadBalancer, healthy: dict[str, bool] | None = None) -> str:
    spec = parse(render_l4(lb))
    slots = {li.id: n for n, li in enumerate(spec.listeners, 1)}
    members = {"li-1": {"m1": 1, "m2": 2, "m3": 3}}
    return l4_nft.render("lb-1", spec, slots, members, {"li-1": healthy or {}}).script


def test_an_sctp_listener_is_rendered_with_sctp_matches() -> None:
    monitor = HealthMonitor(id="h", type="SCTP", delay=2, timeout=1, max_retries=2)
    spec = render_l4(_lb(session_persistence=SessionPersistence(type="SOURCE_IP", persistence_timeout=30),
                         healthmonitor=monitor))
    assert spec is not None
    sctp = spec["listeners"][0]
    assert sctp["protocol"] == "SCTP" and sctp["pool"]["monitor"]["type"] == "SCTP"
    assert sctp["pool"]["persistence"] == {"timeout": 30, "granularity": 32}
    script = _render(_lb(session_persistence=SessionPersistence(type="SOURCE_IP", persistence_timeout=30)))
    assert "ip daddr 203.0.113.5 sctp dport 3868 jump l1" in script
    assert "ip daddr 203.0.113.5 udp dport 3868 jump l2" in script  # the UDP listener on the same port
    assert "meta l4proto sctp dnat ip to ct mark map @d1_sctp_ip" in script
    assert "typeof ct mark : ip daddr . sctp dport;" in script
    assert "0x10001 : 192.0.2.10 . 3868" in script
    assert "sctp dport 3868 ip saddr != { 198.51.100.0/24 } drop" in script
    assert "update @p1_30_32_ip" in script
    # The backup takes no flows while a primary is left; weights 2:1 give three slots.
    assert "numgen inc mod 3 map { 0 : 0x10001, 1 : 0x10002, 2 : 0x10001 }" in script


def test_sctp_source_ip_port_hashes_the_sctp_source_port_and_backups_take_over() -> None:
    script = _render(_lb("SOURCE_IP_PORT"))
    assert "jhash ip saddr . sctp sport mod 3" in script
    down = _render(_lb("SOURCE_IP"), {"m1": False, "m2": False})
    assert "jhash ip saddr mod 1" in down and "0 : 0x10003" in down


def test_sctp_monitor_dispatches_to_the_raw_socket_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, int, float]] = []
    monkeypatch.setattr(sctp_probe, "probe", lambda a, p, t: calls.append((a, p, t)) or True)
    member = Member(id="m", address="192.0.2.10", port=3868, monitor_address="192.0.2.20", monitor_port=9)
    assert l4_health.probe(Monitor(type="SCTP", delay=1, timeout=2, max_retries=1, max_retries_down=1), member)
    assert calls == [("192.0.2.20", 9, 2.0)]


class FakeRaw:
    """Stands for the raw socket: answers the probe's INIT as ``reply`` says."""

    sent: list[tuple[w.Packet, str]] = []
    reply = "init-ack"

    def __init__(self, family: socket.AddressFamily, local: str | None = None) -> None:
        FakeRaw.sent = []

    def __enter__(self) -> FakeRaw:
        return self

    def __exit__(self, *_: object) -> None:
        pass

    def send(self, packet: w.Packet, destination: str) -> None:
        FakeRaw.sent.append((w.decode(packet.encode()), destination))

    def receive(self, deadline: float) -> tuple[str, w.Packet] | None:
        init, member = FakeRaw.sent[0]
        chunk = init.chunks[0]
        assert isinstance(chunk, w.Init) and init.vtag == 0
        noise = ("192.0.2.99", w.Packet(init.dst_port, init.src_port, chunk.init_tag, (w.Abort(),)))
        if len(FakeRaw.sent) == 1 and FakeRaw.reply != "silence":
            FakeRaw.sent.append(FakeRaw.sent[0])  # once: the next call answers
            return noise  # another host's packet is not the member's answer
        if FakeRaw.reply == "init-ack":
            ack = w.InitAck(77, 1500, 1, 1, 5, (w.Param(w.PARAM_STATE_COOKIE, b"c"),))
            return member, w.Packet(init.dst_port, init.src_port, chunk.init_tag, (ack,))
        if FakeRaw.reply == "abort":
            return member, w.Packet(init.dst_port, init.src_port, chunk.init_tag, (w.Abort(),))
        return None


@pytest.mark.parametrize(("reply", "ok"), [("init-ack", True), ("abort", False), ("silence", False)])
def test_sctp_probe_passes_on_init_ack_and_aborts_it(monkeypatch: pytest.MonkeyPatch, reply: str, ok: bool) -> None:
    monkeypatch.setattr(sctp_probe, "RawSctp", FakeRaw)
    FakeRaw.reply = reply
    assert sctp_probe.probe("192.0.2.10", 3868, 0.2) is ok
    if ok:
        abort, member = FakeRaw.sent[-1]
        assert member == "192.0.2.10" and abort.vtag == 77 and abort.chunks == (w.Abort(),)


def test_sctp_probe_checks_its_target() -> None:
    for address, port in (("192.0.2.10; reboot", 1), ("192.0.2.10", 0), ("192.0.2.10", 70000)):
        with pytest.raises(ValueError):
            sctp_probe.probe(address, port, 1.0)
