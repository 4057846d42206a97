"""The lab's SCTP echo member as a state machine: handshake with a signed cookie, echo, SACK, HEARTBEAT, close."""

from __future__ import annotations

import pytest

from cohort import sctp_wire as w
from cohort.lab.sctp_peer import COOKIE_LIFETIME, EchoServer

PEER = "198.51.100.10"
PORT = 3868
CLIENT_PORT = 50000
TAG = 0x1234
TSN = 1000


def _through_wire(packets: list[w.Packet]) -> list[w.Packet]:
    return [w.decode(p.encode()) for p in packets]


def _open(server: EchoServer, now: float | None = None) -> w.InitAck:
    [reply] = _through_wire(server.handle(PEER, w.Packet(CLIENT_PORT, PORT, 0, (w.Init(TAG, 65536, 1, 1, TSN),)),
                                          now))
    assert reply.vtag == TAG and reply.dst_port == CLIENT_PORT and reply.src_port == PORT
    [ack] = reply.chunks
    assert isinstance(ack, w.InitAck)
    assert server.associations == {}  # stateless until the cookie comes back
    [done] = server.handle(PEER, w.Packet(CLIENT_PORT, PORT, ack.init_tag, (w.CookieEcho(ack.cookie),)), now)
    assert done.chunks == (w.CookieAck(),) and done.vtag == TAG
    return ack


def _send(server: EchoServer, ack: w.InitAck, *chunks: w.Chunk, vtag: int | None = None) -> list[w.Chunk]:
    replies = server.handle(PEER, w.Packet(CLIENT_PORT, PORT, ack.init_tag if vtag is None else vtag, chunks))
    return [c for p in _through_wire(replies) for c in p.chunks]


def test_handshake_echo_and_graceful_shutdown() -> None:
    server = EchoServer("m1", PORT)
    ack = _open(server)
    sack, answer = _send(server, ack, w.Data(TSN, 0, 0, 7, b"hello"))
    assert sack == w.Sack(TSN, 65536)
    assert isinstance(answer, w.Data) and answer.payload == b"m1: hello" and answer.tsn == ack.initial_tsn
    assert answer.ppid == 7
    sack2, answer2 = _send(server, ack, w.Sack(answer.tsn, 65536), w.Data(TSN + 1, 0, 1, 0, b"again"))
    assert isinstance(answer2, w.Data) and answer2.tsn == ack.initial_tsn + 1 and isinstance(sack2, w.Sack)
    assert _send(server, ack, w.Shutdown(answer2.tsn)) == [w.ShutdownAck()]
    assert _send(server, ack, w.ShutdownComplete()) == []
    assert server.associations == {}


def test_a_lost_answer_is_sent_again_when_the_message_is() -> None:
    server = EchoServer("m2", PORT)
    ack = _open(server)
    _, answer = _send(server, ack, w.Data(TSN, 0, 0, 0, b"x"))
    sack, again = _send(server, ack, w.Data(TSN, 0, 0, 0, b"x"))
    assert again == answer and isinstance(sack, w.Sack) and sack.dups == (TSN,)
    assert server.received == 1
    _send(server, ack, w.Sack(answer.tsn if isinstance(answer, w.Data) else 0, 65536))
    assert _send(server, ack, w.Data(TSN, 0, 0, 0, b"x")) == [w.Sack(TSN, 65536, dups=(TSN,))]


def test_heartbeat_abort_and_a_gap() -> None:
    server = EchoServer("m3", PORT)
    ack = _open(server)
    assert _send(server, ack, w.Heartbeat(b"info")) == [w.HeartbeatAck(b"info")]
    assert _send(server, ack, w.Data(TSN + 5, 0, 0, 0, b"later")) == [w.Sack(TSN - 1, 65536)]
    assert _send(server, ack, w.Abort()) == []
    assert server.associations == {}


def test_cookies_are_checked() -> None:
    server = EchoServer("m4", PORT)
    [reply] = server.handle(PEER, w.Packet(CLIENT_PORT, PORT, 0, (w.Init(TAG, 65536, 1, 1, TSN),)), 0.0)
    ack = reply.chunks[0]
    assert isinstance(ack, w.InitAck)
    forged = bytearray(ack.cookie)
    forged[0] ^= 1
    for cookie, vtag, peer, now in ((bytes(forged), ack.init_tag, PEER, 0.0),
                                    (ack.cookie, ack.init_tag + 1, PEER, 0.0),
                                    (ack.cookie, ack.init_tag, "198.51.100.11", 0.0),
                                    (ack.cookie, ack.init_tag, PEER, COOKIE_LIFETIME + 1),
                                    (b"short", ack.init_tag, PEER, 0.0)):
        assert server.handle(peer, w.Packet(CLIENT_PORT, PORT, vtag, (w.CookieEcho(cookie),)), now) == []
    assert server.associations == {}
    other = EchoServer("m5", PORT)  # another secret
    assert other.handle(PEER, w.Packet(CLIENT_PORT, PORT, ack.init_tag, (w.CookieEcho(ack.cookie),)), 0.0) == []


def test_a_repeated_cookie_echo_is_acknowledged_again_and_keeps_the_association() -> None:
    server = EchoServer("m6", PORT)
    ack = _open(server)
    _send(server, ack, w.Data(TSN, 0, 0, 0, b"x"))
    assert _send(server, ack, w.CookieEcho(ack.cookie)) == [w.CookieAck()]
    assoc = server.associations[(PEER, CLIENT_PORT)]
    assert assoc.peer_cum_tsn == TSN


@pytest.mark.parametrize(("chunk", "answer"), [
    (w.Data(1, 0, 0, 0, b"x"), w.Abort(reflected=True)),
    (w.ShutdownAck(), w.ShutdownComplete(reflected=True)),
    (w.Abort(), None),
    (w.ShutdownComplete(), None),
])
def test_out_of_the_blue(chunk: w.Chunk, answer: w.Chunk | None) -> None:
    server = EchoServer("m7", PORT)
    replies = server.handle(PEER, w.Packet(CLIENT_PORT, PORT, 99, (chunk,)))
    assert [c for p in replies for c in p.chunks] == ([answer] if answer else [])
    assert all(p.vtag == 99 for p in replies)


def test_wrong_tags_and_ports_are_ignored() -> None:
    server = EchoServer("m8", PORT)
    ack = _open(server)
    assert _send(server, ack, w.Data(TSN, 0, 0, 0, b"x"), vtag=ack.init_tag + 1) == []
    assert _send(server, ack, w.Abort(reflected=True), vtag=ack.init_tag) == []  # T bit: must carry the peer's tag
    assert server.associations
    assert server.handle(PEER, w.Packet(CLIENT_PORT, PORT + 1, 0, (w.Init(TAG, 1, 1, 1, 1),))) == []
    assert _send(server, ack, w.Abort(reflected=True), vtag=TAG) == []
    assert server.associations == {}


class Loopback:
    """Stands for the client's raw socket: delivers to an in-process EchoServer, dropping what ``lose`` says."""

    server = EchoServer("m9", PORT)
    lose: set[str] = set()  # chunk classes whose first packet is lost
    sent: list[w.Packet] = []

    def __init__(self, family: object, local: str | None = None) -> None:
        self.inbox: list[w.Packet] = []

    def __enter__(self) -> Loopback:
        return self

    def __exit__(self, *_: object) -> None:
        pass

    def send(self, packet: w.Packet, destination: str) -> None:
        packet = w.decode(packet.encode())
        Loopback.sent.append(packet)
        kind = type(packet.chunks[-1]).__name__
        if kind in Loopback.lose:
            Loopback.lose.discard(kind)
            return
        self.inbox += [w.decode(p.encode()) for p in Loopback.server.handle(PEER, packet)]

    def receive(self, deadline: float) -> tuple[str, w.Packet] | None:
        return (PEER, self.inbox.pop(0)) if self.inbox else None

    def read_one(self) -> tuple[str, w.Packet] | None:
        return self.receive(0.0)


@pytest.mark.parametrize("close", ["shutdown", "abort"])
@pytest.mark.parametrize("lost", [set(), {"Init"}, {"CookieEcho"}, {"Data"}, {"Shutdown"}])
def test_the_client_talks_to_the_server_and_retransmits(monkeypatch: pytest.MonkeyPatch, close: str,
                                                         lost: set[str]) -> None:
    from cohort.lab import sctp_peer
    monkeypatch.setattr(sctp_peer, "RawSctp", Loopback)
    monkeypatch.setattr(sctp_peer, "RTO", 0.01)
    Loopback.lose, Loopback.sent = set(lost), []
    assert sctp_peer.request(PEER, PORT, b"hi", timeout=2.0, close=close) == b"m9: hi"
    assert Loopback.server.associations == {}
    kinds = [type(c).__name__ for p in Loopback.sent for c in p.chunks]
    ending = ["Sack", "Abort"] if close == "abort" else ["Shutdown", "ShutdownComplete"]
    assert kinds[-len(ending):] == ending and kinds[0] == "Init" and "Sack" in kinds


def test_the_client_holds_associations_open_until_told_then_shuts_them_down(monkeypatch: pytest.MonkeyPatch) -> None:
    from cohort.lab import sctp_peer
    monkeypatch.setattr(sctp_peer, "RawSctp", Loopback)
    monkeypatch.setattr(sctp_peer, "RTO", 0.01)
    Loopback.lose, Loopback.sent = {"CookieEcho"}, []
    Loopback.server.associations.clear()
    asked: list[float] = []

    def until(wait: float) -> bool:
        asked.append(wait)
        return len(asked) > 2

    held = sctp_peer.hold(PEER, PORT, b"hi", 3, until, timeout=2.0)
    assert next(held) == ["m9: hi"] * 3
    assert len(Loopback.server.associations) == 3 and not asked  # open on the member, nothing sent to close
    assert not any(isinstance(c, (w.Shutdown, w.Abort)) for p in Loopback.sent for c in p.chunks)
    assert next(held) == ["closed"] * 3 and asked == [0.5] * 3
    assert Loopback.server.associations == {}
    assert [type(c).__name__ for p in Loopback.sent for c in p.chunks].count("ShutdownComplete") == 3
    with pytest.raises(StopIteration):
        next(held)
    held = sctp_peer.hold(PEER, PORT + 1, b"hi", 1, lambda _: True, timeout=0.1)  # nobody on that port
    assert next(held) == ["SctpError"] and next(held) == ["not open"]


def test_the_client_gives_up_at_its_deadline_and_reports_an_abort(monkeypatch: pytest.MonkeyPatch) -> None:
    from cohort.lab import sctp_peer
    monkeypatch.setattr(sctp_peer, "RawSctp", Loopback)
    monkeypatch.setattr(sctp_peer, "RTO", 0.01)
    with pytest.raises(sctp_peer.SctpError, match="no answer"):
        sctp_peer.request(PEER, PORT + 1, b"hi", timeout=0.1)  # the server listens on another port
    real = Loopback.server.handle

    def forgetful(peer: str, packet: w.Packet, now: float | None = None) -> list[w.Packet]:
        replies = real(peer, packet, now)
        Loopback.server.associations.clear()  # a restarted member: the DATA is out of the blue
        return replies

    monkeypatch.setattr(Loopback.server, "handle", forgetful)
    with pytest.raises(sctp_peer.Refused):
        sctp_peer.request(PEER, PORT, b"hi", timeout=0.5)


def test_a_client_never_reuses_a_source_port_and_starts_where_told(monkeypatch: pytest.MonkeyPatch) -> None:
    from cohort.lab import sctp_peer
    monkeypatch.setattr(sctp_peer, "RawSctp", Loopback)
    monkeypatch.setattr(sctp_peer, "RTO", 0.01)
    Loopback.lose, Loopback.sent = set(), []
    Loopback.server.associations.clear()
    ports = sctp_peer.LocalPorts(65534)
    for _ in range(3):
        sctp_peer.request(PEER, PORT, b"hi", timeout=2.0, local_ports=ports)
    held = sctp_peer.hold(PEER, PORT, b"hi", 2, lambda _: True, timeout=2.0, local_ports=ports)
    assert next(held) == ["m9: hi"] * 2 and next(held) == ["closed"] * 2
    inits = [p.src_port for p in Loopback.sent if isinstance(p.chunks[0], w.Init)]
    assert inits == [65534, 65535, 49152, 49153, 49154]  # one after another, wrapping inside the ephemeral range
    drawn = sctp_peer.LocalPorts()
    assert len({drawn.take() for _ in range(16384)}) == 16384  # a whole cycle before any port comes again
    with pytest.raises(ValueError, match="not in 49152-65535"):
        sctp_peer.LocalPorts(1024)


def test_the_send_command_refuses_a_first_port_outside_the_ephemeral_range(capsys: pytest.CaptureFixture[str]) -> None:
    from cohort.lab import sctp_peer
    with pytest.raises(SystemExit):
        sctp_peer.main(["send", "192.0.2.1:3868", "--first-port", "80"])
    assert "--first-port must be in 49152-65535" in capsys.readouterr().err
