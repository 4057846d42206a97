"""SCTP packets on the wire (RFC 9260): the common header, the chunks Cohort speaks, and CRC32c.

Pure encoding and decoding, no I/O: the lab's userspace SCTP endpoint (``cohort.lab.sctp_peer``)
and the amphora agent's SCTP health probe build and read packets with it over raw sockets, since
these machines' kernels have no SCTP stack. ``decode`` checks every field it reads (lengths,
padding, checksum, the values RFC 9260 forbids) and raises ``ValueError`` on a bad packet; it
never returns a half-read one. Chunks it does not know are kept as ``Unknown`` so that a caller
can apply the RFC's rule for them (the two high bits of the type).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

HEADER = struct.Struct("!HHII")  # source port, destination port, verification tag, checksum
CHUNK_HEADER = struct.Struct("!BBH")  # type, flags, length
MAX_PACKET = 65535

DATA, INIT, INIT_ACK, SACK, HEARTBEAT, HEARTBEAT_ACK, ABORT, SHUTDOWN, SHUTDOWN_ACK = range(9)
ERROR, COOKIE_ECHO, COOKIE_ACK = 9, 10, 11
SHUTDOWN_COMPLETE = 14

# INIT / INIT ACK parameters (RFC 9260 §3.3.2, §3.3.3) and the HEARTBEAT info parameter.
PARAM_HEARTBEAT_INFO = 1
PARAM_IPV4 = 5
PARAM_IPV6 = 6
PARAM_STATE_COOKIE = 7
PARAM_UNRECOGNIZED = 8
PARAM_COOKIE_PRESERVATIVE = 9
PARAM_SUPPORTED_ADDRESS_TYPES = 12

FLAG_T = 0x01  # ABORT, SHUTDOWN COMPLETE: the verification tag is the sender's own (reflected)
FLAG_END = 0x01  # DATA
FLAG_BEGIN = 0x02
FLAG_UNORDERED = 0x04
FLAG_IMMEDIATE = 0x08


def _crc32c_table() -> tuple[int, ...]:
    poly = 0x82F63B78  # Castagnoli, reflected
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ poly if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_TABLE = _crc32c_table()


def crc32c(data: bytes | bytearray | memoryview) -> int:
    """CRC32c (RFC 3720 §B.4, RFC 9260 Appendix A) of ``data``."""
    crc = 0xFFFFFFFF
    table = _TABLE
    for byte in bytes(data):
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _pad(length: int) -> int:
    return (4 - length % 4) % 4


def _tlv(kind: int, flags_or_type: int | None, value: bytes) -> bytes:
    """A chunk (``flags_or_type`` is its flags) or, with None, a parameter: header, value and padding."""
    length = 4 + len(value)
    if length > MAX_PACKET:
        raise ValueError(f"SCTP chunk or parameter of {length} bytes is too long")
    head = CHUNK_HEADER.pack(kind, flags_or_type, length) if flags_or_type is not None else struct.pack(
        "!HH", kind, length)
    return head + value + b"\0" * _pad(length)


@dataclass(frozen=True)
class Param:
    type: int
    value: bytes


def encode_params(params: tuple[Param, ...]) -> bytes:
    return b"".join(_tlv(p.type, None, p.value) for p in params)


def decode_params(data: bytes, what: str) -> tuple[Param, ...]:
    params: list[Param] = []
    pos = 0
    while pos < len(data):
        if len(data) - pos < 4:
            raise ValueError(f"{what}: truncated parameter header")
        kind, length = struct.unpack_from("!HH", data, pos)
        if length < 4 or pos + length > len(data):
            raise ValueError(f"{what}: parameter {kind} has a bad length {length}")
        params.append(Param(kind, data[pos + 4:pos + length]))
        # The last parameter's padding is not counted in its chunk's length (RFC 9260 §3.2).
        pos += length + _pad(length)
    return tuple(params)


@dataclass(frozen=True)
class Data:
    tsn: int
    stream: int
    ssn: int
    ppid: int
    payload: bytes
    flags: int = FLAG_BEGIN | FLAG_END

    def value(self) -> bytes:
        return struct.pack("!IHHI", self.tsn, self.stream, self.ssn, self.ppid) + self.payload


@dataclass(frozen=True)
class Init:
    """INIT (and, as ``InitAck``, INIT ACK): the sender's tag, window, streams and first TSN."""
    init_tag: int
    a_rwnd: int
    out_streams: int
    in_streams: int
    initial_tsn: int
    params: tuple[Param, ...] = ()

    def value(self) -> bytes:
        return struct.pack("!IIHHI", self.init_tag, self.a_rwnd, self.out_streams, self.in_streams,
                           self.initial_tsn) + encode_params(self.params)

    def param(self, kind: int) -> bytes | None:
        return next((p.value for p in self.params if p.type == kind), None)


@dataclass(frozen=True)
class InitAck(Init):
    @property
    def cookie(self) -> bytes:
        cookie = self.param(PARAM_STATE_COOKIE)
        assert cookie is not None  # decode refuses an INIT ACK without one
        return cookie


@dataclass(frozen=True)
class Sack:
    cum_tsn: int
    a_rwnd: int
    gaps: tuple[tuple[int, int], ...] = ()
    dups: tuple[int, ...] = ()

    def value(self) -> bytes:
        out = struct.pack("!IIHH", self.cum_tsn, self.a_rwnd, len(self.gaps), len(self.dups))
        out += b"".join(struct.pack("!HH", start, end) for start, end in self.gaps)
        return out + b"".join(struct.pack("!I", d) for d in self.dups)


@dataclass(frozen=True)
class Heartbeat:
    info: bytes

    def value(self) -> bytes:
        return _tlv(PARAM_HEARTBEAT_INFO, None, self.info)


@dataclass(frozen=True)
class HeartbeatAck(Heartbeat):
    pass


@dataclass(frozen=True)
class Abort:
    reflected: bool = False  # the T bit
    causes: bytes = b""

    def value(self) -> bytes:
        return self.causes


@dataclass(frozen=True)
class Shutdown:
    cum_tsn: int

    def value(self) -> bytes:
        return struct.pack("!I", self.cum_tsn)


@dataclass(frozen=True)
class ShutdownAck:
    def value(self) -> bytes:
        return b""


@dataclass(frozen=True)
class ShutdownComplete:
    reflected: bool = False

    def value(self) -> bytes:
        return b""


@dataclass(frozen=True)
class CookieEcho:
    cookie: bytes

    def value(self) -> bytes:
        return self.cookie


@dataclass(frozen=True)
class CookieAck:
    def value(self) -> bytes:
        return b""


@dataclass(frozen=True)
class Unknown:
    """A chunk this module does not interpret (ERROR, ECN, ...): type, flags and raw value."""
    type: int
    flags: int
    data: bytes

    def value(self) -> bytes:
        return self.data


Chunk = (Data | Init | InitAck | Sack | Heartbeat | HeartbeatAck | Abort | Shutdown | ShutdownAck
         | ShutdownComplete | CookieEcho | CookieAck | Unknown)


def _type_and_flags(chunk: Chunk) -> tuple[int, int]:
    # InitAck before Init and HeartbeatAck before Heartbeat: they are subclasses.
    if isinstance(chunk, Data):
        return DATA, chunk.flags
    if isinstance(chunk, InitAck):
        return INIT_ACK, 0
    if isinstance(chunk, Init):
        return INIT, 0
    if isinstance(chunk, Sack):
        return SACK, 0
    if isinstance(chunk, HeartbeatAck):
        return HEARTBEAT_ACK, 0
    if isinstance(chunk, Heartbeat):
        return HEARTBEAT, 0
    if isinstance(chunk, Abort):
        return ABORT, FLAG_T if chunk.reflected else 0
    if isinstance(chunk, Shutdown):
        return SHUTDOWN, 0
    if isinstance(chunk, ShutdownAck):
        return SHUTDOWN_ACK, 0
    if isinstance(chunk, ShutdownComplete):
        return SHUTDOWN_COMPLETE, FLAG_T if chunk.reflected else 0
    if isinstance(chunk, CookieEcho):
        return COOKIE_ECHO, 0
    if isinstance(chunk, CookieAck):
        return COOKIE_ACK, 0
    return chunk.type, chunk.flags


@dataclass(frozen=True)
class Packet:
    src_port: int
    dst_port: int
    vtag: int
    chunks: tuple[Chunk, ...] = field(default_factory=tuple)

    def encode(self) -> bytes:
        """The packet with its CRC32c, ready for a raw socket (the IP header is the kernel's)."""
        for name, port in (("source", self.src_port), ("destination", self.dst_port)):
            if not 0 <= port <= 0xFFFF:
                raise ValueError(f"SCTP {name} port {port} is out of range")
        if not 0 <= self.vtag <= 0xFFFFFFFF:
            raise ValueError(f"SCTP verification tag {self.vtag} is out of range")
        body = b"".join(_tlv(*_type_and_flags(c), c.value()) for c in self.chunks)
        raw = bytearray(HEADER.pack(self.src_port, self.dst_port, self.vtag, 0) + body)
        if len(raw) > MAX_PACKET:
            raise ValueError(f"SCTP packet of {len(raw)} bytes is too long")
        # The CRC goes on the wire least significant byte first (RFC 9260 Appendix A, as Linux does).
        struct.pack_into("<I", raw, 8, crc32c(raw))
        return bytes(raw)


def _u32(value: bytes, offset: int = 0) -> int:
    return int(struct.unpack_from("!I", value, offset)[0])


def _decode_init(value: bytes, ack: bool) -> Init:
    what = "INIT ACK" if ack else "INIT"
    if len(value) < 16:
        raise ValueError(f"{what} chunk is {len(value) + 4} bytes, at least 20 are needed")
    tag, rwnd, out_streams, in_streams, tsn = struct.unpack_from("!IIHHI", value)
    # RFC 9260 §3.3.2: a zero tag or zero stream count makes the INIT invalid.
    if tag == 0:
        raise ValueError(f"{what} has a zero initiate tag")
    if out_streams == 0 or in_streams == 0:
        raise ValueError(f"{what} offers zero streams")
    params = decode_params(value[16:], what)
    if ack:
        chunk = InitAck(tag, rwnd, out_streams, in_streams, tsn, params)
        if not chunk.param(PARAM_STATE_COOKIE):
            raise ValueError("INIT ACK carries no state cookie")
        return chunk
    return Init(tag, rwnd, out_streams, in_streams, tsn, params)


def _decode_heartbeat(value: bytes, ack: bool) -> Heartbeat:
    params = decode_params(value, "HEARTBEAT")
    if len(params) != 1 or params[0].type != PARAM_HEARTBEAT_INFO:
        raise ValueError("HEARTBEAT must carry exactly one heartbeat info parameter")
    return HeartbeatAck(params[0].value) if ack else Heartbeat(params[0].value)


def _decode_sack(value: bytes) -> Sack:
    if len(value) < 12:
        raise ValueError("SACK chunk is too short")
    cum, rwnd, ngaps, ndups = struct.unpack_from("!IIHH", value)
    if len(value) != 12 + 4 * ngaps + 4 * ndups:
        raise ValueError(f"SACK length does not match its {ngaps} gap blocks and {ndups} duplicate TSNs")
    gaps = tuple(struct.unpack_from("!HH", value, 12 + 4 * i) for i in range(ngaps))
    if any(start == 0 or end < start for start, end in gaps):
        raise ValueError("SACK has a bad gap block")
    dups = tuple(_u32(value, 12 + 4 * ngaps + 4 * i) for i in range(ndups))
    return Sack(cum, rwnd, gaps, dups)


def _decode_chunk(kind: int, flags: int, value: bytes) -> Chunk:
    if kind == DATA:
        if len(value) < 13:
            raise ValueError("DATA chunk carries no user data")  # RFC 9260 §6.2: an empty DATA is an error
        tsn, stream, ssn, ppid = struct.unpack_from("!IHHI", value)
        return Data(tsn, stream, ssn, ppid, value[12:], flags & 0x0F)
    if kind in (INIT, INIT_ACK):
        return _decode_init(value, kind == INIT_ACK)
    if kind == SACK:
        return _decode_sack(value)
    if kind in (HEARTBEAT, HEARTBEAT_ACK):
        return _decode_heartbeat(value, kind == HEARTBEAT_ACK)
    if kind == ABORT:
        return Abort(bool(flags & FLAG_T), value)
    if kind == SHUTDOWN:
        if len(value) != 4:
            raise ValueError("SHUTDOWN chunk must be 8 bytes")
        return Shutdown(_u32(value))
    if kind in (SHUTDOWN_ACK, COOKIE_ACK, SHUTDOWN_COMPLETE):
        if value:
            raise ValueError(f"chunk type {kind} must be empty")
        if kind == SHUTDOWN_ACK:
            return ShutdownAck()
        return CookieAck() if kind == COOKIE_ACK else ShutdownComplete(bool(flags & FLAG_T))
    if kind == COOKIE_ECHO:
        if not value:
            raise ValueError("COOKIE ECHO carries no cookie")
        return CookieEcho(value)
    return Unknown(kind, flags, value)


def decode(raw: bytes | bytearray | memoryview, verify_checksum: bool = True) -> Packet:
    """The SCTP packet in ``raw`` (from its common header on); ValueError when anything is wrong."""
    data = bytes(raw)
    if len(data) < HEADER.size:
        raise ValueError(f"SCTP packet of {len(data)} bytes is shorter than its common header")
    if len(data) % 4:
        raise ValueError("SCTP packet length is not a multiple of 4")
    src, dst, vtag, _ = HEADER.unpack_from(data)
    if src == 0 or dst == 0:
        raise ValueError("SCTP port 0 is invalid")
    if verify_checksum:
        (carried,) = struct.unpack_from("<I", data, 8)
        if crc32c(data[:8] + b"\0\0\0\0" + data[12:]) != carried:
            raise ValueError("SCTP checksum mismatch")
    chunks: list[Chunk] = []
    pos = HEADER.size
    while pos < len(data):
        if len(data) - pos < CHUNK_HEADER.size:
            raise ValueError("truncated SCTP chunk header")
        kind, flags, length = CHUNK_HEADER.unpack_from(data, pos)
        if length < CHUNK_HEADER.size or pos + length > len(data):
            raise ValueError(f"SCTP chunk type {kind} has a bad length {length}")
        chunks.append(_decode_chunk(kind, flags, data[pos + 4:pos + length]))
        pos += length + _pad(length)
    if not chunks:
        raise ValueError("SCTP packet carries no chunk")
    # RFC 9260 §6.10: INIT, INIT ACK and SHUTDOWN COMPLETE travel alone.
    if len(chunks) > 1 and any(isinstance(c, (Init, ShutdownComplete)) for c in chunks):
        raise ValueError("INIT, INIT ACK and SHUTDOWN COMPLETE must not be bundled")
    if type(chunks[0]) is Init and vtag != 0:
        raise ValueError("an INIT must carry verification tag 0")
    return Packet(src, dst, vtag, tuple(chunks))


def strip_ipv4(raw: bytes) -> tuple[str, str, bytes]:
    """(source, destination, payload) of an IPv4 packet as an AF_INET raw socket reads it."""
    if len(raw) < 20 or raw[0] >> 4 != 4:
        raise ValueError("not an IPv4 packet")
    ihl = (raw[0] & 0x0F) * 4
    total = struct.unpack_from("!H", raw, 2)[0]
    if ihl < 20 or total < ihl or total > len(raw):
        raise ValueError("bad IPv4 header length")
    source = ".".join(str(b) for b in raw[12:16])
    destination = ".".join(str(b) for b in raw[16:20])
    return source, destination, raw[ihl:total]
