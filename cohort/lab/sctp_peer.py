"""The lab's SCTP endpoint in userspace: an echo member that says who it is, and a client.

These machines' kernels have no SCTP stack, yet SCTP load balancers must be shown serving real
associations. So both ends speak SCTP themselves over raw sockets (``cohort.sctp_raw``,
``cohort.sctp_wire``): the 4-way handshake with a state cookie signed by HMAC-SHA256 (the server
keeps nothing until a valid COOKIE ECHO), DATA on one stream, SACK, HEARTBEAT, ABORT and
SHUTDOWN. The server answers each DATA message with ``NAME: message``, so a test sees which member
answered, as the HTTP member server's ``X-Member`` shows. The client opens an association, sends
a message, reads the answer and shuts down (or aborts), each step retransmitted until a deadline;
or it holds its associations open until told to close them (long-lived ones, as Diameter peers keep).

``python -m cohort.lab.sctp_peer serve --name NAME --bind ADDR:PORT`` runs a member;
``python -m cohort.lab.sctp_peer send ADDR:PORT --count N`` prints the answers as a JSON list
(an error's class name in place of an answer that did not come); with ``--close hold`` it prints
them, keeps the associations open until its standard input closes, shuts them down and prints how
each ended. ``--first-port`` fixes the source port of the first association (the next ones follow),
for clients that run side by side.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import random
import select
import signal
import struct
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from cohort import sctp_wire as w
from cohort import validation
from cohort.sctp_raw import RawSctp, family_of

RWND = 65536
COOKIE_LIFETIME = 60.0
MAX_ASSOCIATIONS = 4096
RTO = 0.3
_COOKIE = struct.Struct("!IIIIdH")  # local tag, peer tag, local TSN, peer TSN, expiry, peer port


def _tag() -> int:
    return random.SystemRandom().randrange(1, 1 << 32)


@dataclass
class Association:
    local_tag: int
    peer_tag: int
    next_tsn: int  # ours
    peer_cum_tsn: int  # the last of the peer's TSNs received in order
    ssn: int = 0
    answers: dict[int, w.Data] = field(default_factory=dict)  # the peer's TSN -> our answer, until SACKed


class EchoServer:
    """The server's SCTP state machine, without I/O: ``handle`` maps a packet to the packets to send."""

    def __init__(self, name: str, port: int, secret: bytes | None = None) -> None:
        self.name = name
        self.port = port
        self._secret = secret or os.urandom(32)
        self.associations: dict[tuple[str, int], Association] = {}
        self.received = 0

    # -- cookies -----------------------------------------------------------------------------
    def _cookie(self, peer: str, peer_port: int, local_tag: int, peer_tag: int, local_tsn: int, peer_tsn: int,
                now: float) -> bytes:
        body = _COOKIE.pack(local_tag, peer_tag, local_tsn, peer_tsn, now + COOKIE_LIFETIME, peer_port)
        body += validation.ip_address(peer).packed
        return body + hmac.new(self._secret, body, hashlib.sha256).digest()

    def _open(self, peer: str, peer_port: int, cookie: bytes, now: float) -> Association | None:
        body, mac = cookie[:-32], cookie[-32:]
        if len(cookie) <= _COOKIE.size + 32 or not hmac.compare_digest(
                mac, hmac.new(self._secret, body, hashlib.sha256).digest()):
            return None
        local_tag, peer_tag, local_tsn, peer_tsn, expiry, port = _COOKIE.unpack_from(body)
        if expiry < now or port != peer_port or body[_COOKIE.size:] != validation.ip_address(peer).packed:
            return None
        return Association(local_tag, peer_tag, local_tsn, (peer_tsn - 1) & 0xFFFFFFFF)

    # -- packets -----------------------------------------------------------------------------
    def handle(self, peer: str, packet: w.Packet, now: float | None = None) -> list[w.Packet]:
        if packet.dst_port != self.port:
            return []
        now = time.monotonic() if now is None else now
        key = (peer, packet.src_port)
        first = packet.chunks[0]
        if type(first) is w.Init:
            local_tag, local_tsn = _tag(), _tag()
            cookie = self._cookie(peer, packet.src_port, local_tag, first.init_tag, local_tsn, first.initial_tsn, now)
            ack = w.InitAck(local_tag, RWND, 1, 1, local_tsn, (w.Param(w.PARAM_STATE_COOKIE, cookie),))
            return [w.Packet(self.port, packet.src_port, first.init_tag, (ack,))]
        assoc = self.associations.get(key)
        out: list[w.Chunk] = []
        if isinstance(first, w.CookieEcho):
            opened = self._open(peer, packet.src_port, first.cookie, now)
            if opened is None or packet.vtag != opened.local_tag:
                return []
            if assoc is None or (assoc.local_tag, assoc.peer_tag) != (opened.local_tag, opened.peer_tag):
                assoc = self._admit(key, opened)
            out.append(w.CookieAck())
        if assoc is None:
            return self._out_of_the_blue(packet)
        reflected = isinstance(first, (w.Abort, w.ShutdownComplete)) and first.reflected
        if packet.vtag != (assoc.peer_tag if reflected else assoc.local_tag):
            return []  # RFC 9260 §8.5: not this association's
        self._chunks(key, assoc, packet.chunks, out)
        return [w.Packet(self.port, packet.src_port, assoc.peer_tag, tuple(out))] if out else []

    def _admit(self, key: tuple[str, int], assoc: Association) -> Association:
        self.associations.pop(key, None)
        while len(self.associations) >= MAX_ASSOCIATIONS:
            self.associations.pop(next(iter(self.associations)))
        self.associations[key] = assoc
        return assoc

    def _chunks(self, key: tuple[str, int], assoc: Association, chunks: tuple[w.Chunk, ...],
                out: list[w.Chunk]) -> None:
        """Act on each chunk, adding answers to ``out`` (none when the association ends)."""
        got_data = False
        dups: list[int] = []
        for chunk in chunks:
            if isinstance(chunk, w.Data):
                got_data = True
                self._data(assoc, chunk, out, dups)
            elif isinstance(chunk, w.Sack):
                for tsn in [t for t in assoc.answers if _before_or_equal(assoc.answers[t].tsn, chunk.cum_tsn)]:
                    del assoc.answers[tsn]
            elif isinstance(chunk, w.HeartbeatAck):
                pass
            elif isinstance(chunk, w.Heartbeat):
                out.append(w.HeartbeatAck(chunk.info))
            elif isinstance(chunk, (w.Abort, w.ShutdownComplete)):
                self.associations.pop(key, None)
                out.clear()
                return
            elif isinstance(chunk, w.Shutdown):
                out.append(w.ShutdownAck())
            elif isinstance(chunk, w.Unknown) and chunk.type >> 6 in (0, 1):
                break  # RFC 9260 §3.2: stop processing this packet
        if got_data:
            out.insert(0, w.Sack(assoc.peer_cum_tsn, RWND, dups=tuple(dups)))

    def _data(self, assoc: Association, chunk: w.Data, out: list[w.Chunk], dups: list[int]) -> None:
        if chunk.tsn == (assoc.peer_cum_tsn + 1) & 0xFFFFFFFF:
            assoc.peer_cum_tsn = chunk.tsn
            self.received += 1
            answer = w.Data(assoc.next_tsn, 0, assoc.ssn, chunk.ppid, self.name.encode() + b": " + chunk.payload)
            assoc.next_tsn = (assoc.next_tsn + 1) & 0xFFFFFFFF
            assoc.ssn = (assoc.ssn + 1) & 0xFFFF
            assoc.answers[chunk.tsn] = answer
            out.append(answer)
        elif chunk.tsn in assoc.answers:
            dups.append(chunk.tsn)
            out.append(assoc.answers[chunk.tsn])  # our answer was lost: the peer sent its message again
        elif _before_or_equal(chunk.tsn, assoc.peer_cum_tsn):
            dups.append(chunk.tsn)
        # A TSN past a gap is dropped: its sender retransmits after our SACK.

    def _out_of_the_blue(self, packet: w.Packet) -> list[w.Packet]:
        """RFC 9260 §8.4, for a packet of no association we know."""
        first = packet.chunks[0]
        if any(isinstance(c, (w.Abort, w.ShutdownComplete, w.CookieAck)) for c in packet.chunks):
            return []
        reply: w.Chunk = w.ShutdownComplete(reflected=True) if isinstance(first, w.ShutdownAck) else w.Abort(True)
        return [w.Packet(self.port, packet.src_port, packet.vtag, (reply,))]


def _before_or_equal(a: int, b: int) -> bool:
    """Serial number arithmetic on 32-bit TSNs (RFC 1982)."""
    return (b - a) & 0xFFFFFFFF < 1 << 31


def serve(name: str, address: str, port: int) -> None:
    server = EchoServer(name, port)
    stop = False

    def _stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    with RawSctp(family_of(address), address) as sock:
        print(f"sctp member {name} pid {os.getpid()} listening on {address}:{port}", flush=True)
        while not stop:
            ready, _, _ = select.select([sock], [], [], 0.5)
            while ready:
                got = sock.read_one()
                if got is None:
                    break
                peer, packet = got
                for answer in server.handle(peer, packet):
                    sock.send(answer, peer)


# -- the client ---------------------------------------------------------------------------------

class SctpError(OSError):
    """The association could not be opened, or an answer did not come, before the deadline."""


class Refused(SctpError):
    """The peer answered with ABORT."""


def _await(sock: RawSctp, remote: str, send: w.Packet, accept: type, ports: tuple[int, int], tags: tuple[int, int],
           deadline: float) -> w.Chunk:
    """Send ``send`` (again every RTO) until a packet of the association brings an ``accept`` chunk."""
    local_port, remote_port = ports
    local_tag, peer_tag = tags
    next_send = 0.0
    while True:
        now = time.monotonic()
        if now >= deadline:
            raise SctpError(f"no answer from {remote}:{remote_port}")
        if now >= next_send:
            sock.send(send, remote)
            next_send = now + RTO
        got = sock.receive(min(deadline, next_send))
        if got is None:
            continue
        source, packet = got
        if source != remote or packet.src_port != remote_port or packet.dst_port != local_port:
            continue
        reflected = isinstance(packet.chunks[0], (w.Abort, w.ShutdownComplete)) and packet.chunks[0].reflected
        if packet.vtag != (peer_tag if reflected else local_tag):
            continue
        for chunk in packet.chunks:
            if isinstance(chunk, w.Abort):
                raise Refused(f"{remote}:{remote_port} aborted the association")
            if isinstance(chunk, accept):
                return chunk


@dataclass
class _Opened:
    """One association the client opened and answered on: what it takes to close it."""

    remote: str
    ports: tuple[int, int]  # local, remote
    tags: tuple[int, int]  # local, peer
    answer_tsn: int  # the peer's last TSN, acknowledged

    def packet(self, *chunks: w.Chunk) -> w.Packet:
        return w.Packet(self.ports[0], self.ports[1], self.tags[1], chunks)


EPHEMERAL = range(49152, 65536)


class LocalPorts:
    """The client's source ports: one after another from ``first`` (a random one by default), never one twice.

    A kernel never gives a port in use to a second socket; this client has no kernel stack to ask,
    and the amphora's conntrack keeps a closed association's entry 10 s: an INIT from a port drawn
    again would continue that entry (not counted as new, sent to its old member). Clients that run
    side by side are given first ports apart.
    """

    def __init__(self, first: int | None = None) -> None:
        if first is not None and first not in EPHEMERAL:
            raise ValueError(f"first port {first} is not in {EPHEMERAL.start}-{EPHEMERAL.stop - 1}")
        self._next = first if first is not None else random.SystemRandom().choice(EPHEMERAL)

    def take(self) -> int:
        port = self._next
        self._next = port + 1 if port + 1 < EPHEMERAL.stop else EPHEMERAL.start
        return port


def _associate(sock: RawSctp, remote: str, port: int, message: bytes, deadline: float,
               local_port: int) -> tuple[_Opened, bytes]:
    """Open an association from ``local_port`` to ``remote``:``port``, send ``message``, acknowledge the answer."""
    ports = (local_port, port)
    local_tag, local_tsn = _tag(), _tag()
    init = w.Packet(local_port, port, 0, (w.Init(local_tag, RWND, 1, 1, local_tsn),))
    ack = _await(sock, remote, init, w.InitAck, ports, (local_tag, 0), deadline)
    assert isinstance(ack, w.InitAck)
    opened = _Opened(remote, ports, (local_tag, ack.init_tag), ack.initial_tsn)
    _await(sock, remote, opened.packet(w.CookieEcho(ack.cookie)), w.CookieAck, ports, opened.tags, deadline)
    answer = _await(sock, remote, opened.packet(w.Data(local_tsn, 0, 0, 0, message)), w.Data, ports, opened.tags,
                    deadline)
    assert isinstance(answer, w.Data)
    if answer.tsn != ack.initial_tsn:
        raise SctpError(f"{remote}:{port} answered with TSN {answer.tsn}, not {ack.initial_tsn}")
    sock.send(opened.packet(w.Sack(answer.tsn, RWND)), remote)
    return opened, answer.payload


def _close(sock: RawSctp, opened: _Opened, close: str, deadline: float) -> None:
    """End ``opened`` with an ABORT, or with SHUTDOWN, SHUTDOWN ACK and SHUTDOWN COMPLETE."""
    if close == "abort":
        sock.send(opened.packet(w.Abort()), opened.remote)
        return
    _await(sock, opened.remote, opened.packet(w.Shutdown(opened.answer_tsn)), w.ShutdownAck, opened.ports,
           opened.tags, deadline)
    sock.send(opened.packet(w.ShutdownComplete()), opened.remote)


def request(remote: str, port: int, message: bytes, timeout: float = 3.0, close: str = "shutdown",
            local: str | None = None, local_ports: LocalPorts | None = None) -> bytes:
    """Open an association to ``remote``:``port``, send ``message``, return the answer, then close.

    ``close`` is ``shutdown`` (the graceful 3-way) or ``abort``. Raises SctpError (Refused on ABORT).
    A caller opening several passes one ``local_ports``, so that none reuses another's source port.
    """
    if close not in ("shutdown", "abort"):
        raise ValueError("close must be shutdown or abort")
    remote = validation.ip_address(remote, "remote address").compressed
    deadline = time.monotonic() + timeout
    with RawSctp(family_of(remote), local) as sock:
        opened, answer = _associate(sock, remote, port, message, deadline, (local_ports or LocalPorts()).take())
        _close(sock, opened, close, deadline)
    return answer


def hold(remote: str, port: int, message: bytes, count: int, until: Callable[[float], bool],
         timeout: float = 3.0, local_ports: LocalPorts | None = None) -> Iterator[list[str]]:
    """Open ``count`` associations and keep them open: long-lived ones, as a Diameter or SIGTRAN peer keeps.

    Yields the answers (an error's class name in place of one that did not come), then holds every
    association open until ``until(seconds)`` is true (waiting up to that long each call), then shuts
    each down gracefully and yields how each ended (``closed`` or an error's class name). Nothing is
    sent while holding: the amphora's conntrack keeps an established association 210 s after its
    last chunk, longer than a test holds one.
    """
    remote = validation.ip_address(remote, "remote address").compressed
    ports = local_ports or LocalPorts()
    with RawSctp(family_of(remote)) as sock:
        opened: list[_Opened | None] = []
        answers: list[str] = []
        for _ in range(max(0, count)):
            try:
                assoc, answer = _associate(sock, remote, port, message, time.monotonic() + timeout, ports.take())
                opened.append(assoc)
                answers.append(answer.decode(errors="replace"))
            except OSError as exc:
                opened.append(None)
                answers.append(type(exc).__name__)
        yield answers
        while not until(0.5):
            while sock.read_one() is not None:
                pass  # copies of every SCTP packet reach a raw socket: keep its queue short
        ended: list[str] = []
        for held in opened:
            if held is None:
                ended.append("not open")
                continue
            try:
                _close(sock, held, "shutdown", time.monotonic() + timeout)
                ended.append("closed")
            except OSError as exc:
                ended.append(type(exc).__name__)
        yield ended


def _stdin_closed(wait: float) -> bool:
    ready, _, _ = select.select([sys.stdin], [], [], wait)
    return bool(ready) and not sys.stdin.readline()


def _bind(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"want ADDR:PORT, not {value!r}")
    try:
        return validation.ip_address(host.strip("[]")).compressed, int(port)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cohort.lab.sctp_peer", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    srv = sub.add_parser("serve", help="run an SCTP echo member")
    srv.add_argument("--name", required=True)
    srv.add_argument("--bind", required=True, type=_bind, help="ADDR:PORT")
    cli = sub.add_parser("send", help="open associations, send a message on each, print the answers (JSON)")
    cli.add_argument("to", type=_bind, help="ADDR:PORT")
    cli.add_argument("--message", default="ping")
    cli.add_argument("--count", type=int, default=1)
    cli.add_argument("--pause", type=float, default=0.0)
    cli.add_argument("--timeout", type=float, default=3.0)
    cli.add_argument("--first-port", type=int, default=None,
                     help=f"source port of the first association, then the next ones ({EPHEMERAL.start}-"
                          f"{EPHEMERAL.stop - 1}; default: a random one)")
    cli.add_argument("--close", choices=("shutdown", "abort", "hold"), default="shutdown",
                     help="hold: open them all, print the answers, keep them open until stdin closes, then "
                          "shut them down and print how each ended")
    args = parser.parse_args(argv)
    if args.command == "serve":
        serve(args.name, *args.bind)
        return 0
    try:
        local_ports = LocalPorts(args.first_port)
    except ValueError:
        parser.error(f"--first-port must be in {EPHEMERAL.start}-{EPHEMERAL.stop - 1}")
    if args.close == "hold":
        host, port = args.to
        for result in hold(host, port, args.message.encode(), args.count, _stdin_closed, args.timeout, local_ports):
            print(json.dumps(result), flush=True)
        return 0
    answers: list[str] = []
    for i in range(max(0, args.count)):
        if i and args.pause:
            time.sleep(args.pause)
        try:
            host, port = args.to
            answer = request(host, port, args.message.encode(), args.timeout, args.close, local_ports=local_ports)
            answers.append(answer.decode(errors="replace"))
        except OSError as exc:
            answers.append(type(exc).__name__)
    print(json.dumps(answers))
    return 0


if __name__ == "__main__":
    sys.exit(main())
