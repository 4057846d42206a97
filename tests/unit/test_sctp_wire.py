"""SCTP wire format: CRC32c against RFC 3720's vectors, every chunk both ways, and bad packets refused."""

from __future__ import annotations

import contextlib
import random
import struct

import pytest

from cohort import sctp_wire as w

ISCSI_READ = bytes.fromhex("01c00000000000000000000000000000" "14000000000004000000001400000018"
                           "28000000000000000200000000000000")


@pytest.mark.parametrize(("data", "crc"), [
    (b"\x00" * 32, 0x8A9136AA),
    (b"\xff" * 32, 0x62A8AB43),
    (bytes(range(32)), 0x46DD794E),
    (bytes(reversed(range(32))), 0x113FDB5C),
    (ISCSI_READ, 0xD9963A56),
    (b"123456789", 0xE3069283),
    (b"", 0),
])
def test_crc32c_rfc3720_vectors(data: bytes, crc: int) -> None:
    assert w.crc32c(data) == crc


def test_the_checksum_goes_on_the_wire_least_significant_byte_first() -> None:
    raw = w.Packet(5000, 3868, 0, (w.Init(0x11223344, 65536, 1, 1, 7),)).encode()
    assert raw[8:12] == struct.pack("<I", w.crc32c(raw[:8] + b"\0" * 4 + raw[12:]))


CHUNKS: list[w.Chunk] = [
    w.Data(tsn=9, stream=0, ssn=3, ppid=51, payload=b"hello"),
    w.Data(tsn=0xFFFFFFFF, stream=2, ssn=0, ppid=0, payload=b"x" * 7, flags=w.FLAG_UNORDERED | w.FLAG_BEGIN),
    w.InitAck(0xDEADBEEF, 4096, 1, 1, 1234, (w.Param(w.PARAM_STATE_COOKIE, b"cookie!"),
                                            w.Param(w.PARAM_IPV4, bytes([192, 0, 2, 10])))),
    w.Sack(cum_tsn=41, a_rwnd=10000, gaps=((2, 3), (5, 5)), dups=(40,)),
    w.Sack(cum_tsn=41, a_rwnd=10000),
    w.Heartbeat(b"\x01\x02\x03"),
    w.HeartbeatAck(b"\x01\x02\x03"),
    w.Abort(),
    w.Abort(reflected=True, causes=b"\x00\x0c\x00\x04"),
    w.Shutdown(77),
    w.ShutdownAck(),
    w.CookieEcho(b"a cookie of odd length"),
    w.CookieAck(),
    w.Unknown(0xC1, 0x00, b"\x00\x01\x02\x03"),
]


@pytest.mark.parametrize("chunk", CHUNKS, ids=lambda c: type(c).__name__)
def test_every_chunk_round_trips(chunk: w.Chunk) -> None:
    packet = w.Packet(40000, 3868, 0xABCDEF01, (chunk,))
    raw = packet.encode()
    assert len(raw) % 4 == 0
    assert w.decode(raw) == packet


def test_init_and_shutdown_complete_round_trip_alone() -> None:
    init = w.Packet(40000, 3868, 0, (w.Init(5, 65536, 10, 65535, 99, (w.Param(w.PARAM_SUPPORTED_ADDRESS_TYPES,
                                                                          b"\x00\x05"),)),))
    assert w.decode(init.encode()) == init
    done = w.Packet(40000, 3868, 7, (w.ShutdownComplete(reflected=True),))
    assert w.decode(done.encode()) == done


def test_bundled_chunks_round_trip() -> None:
    packet = w.Packet(1, 2, 3, (w.CookieEcho(b"c"), w.Data(1, 0, 0, 0, b"d"), w.Sack(0, 1)))
    assert w.decode(packet.encode()).chunks == packet.chunks


def test_init_ack_exposes_its_cookie() -> None:
    chunk = w.decode(w.Packet(1, 2, 3, (CHUNKS[2],)).encode()).chunks[0]
    assert isinstance(chunk, w.InitAck) and chunk.cookie == b"cookie!"


def _raw(vtag: int, *chunks: bytes, fix: bool = True) -> bytes:
    data = bytearray(w.HEADER.pack(1000, 2000, vtag, 0) + b"".join(chunks))
    if fix:
        struct.pack_into("<I", data, 8, w.crc32c(data))
    return bytes(data)


def _chunk(kind: int, value: bytes, flags: int = 0, length: int | None = None) -> bytes:
    size = 4 + len(value) if length is None else length
    return struct.pack("!BBH", kind, flags, size) + value + b"\0" * ((4 - len(value) % 4) % 4)


INIT_VALUE = struct.pack("!IIHHI", 5, 65536, 1, 1, 1)


@pytest.mark.parametrize(("raw", "message"), [
    (b"", "shorter than its common header"),
    (b"\0" * 14, "multiple of 4"),
    (_raw(0), "no chunk"),
    (_raw(1, _chunk(w.COOKIE_ACK, b""), fix=False)[:8] + b"\1\2\3\4" + _raw(1, _chunk(w.COOKIE_ACK, b""))[12:],
     "checksum"),
    (_raw(1, _chunk(w.COOKIE_ACK, b"", length=2)), "bad length"),
    (_raw(1, _chunk(w.COOKIE_ACK, b"", length=64)), "bad length"),
    (_raw(1, b"\x0b\x00"), "multiple of 4"),
    (_raw(1, _chunk(w.DATA, struct.pack("!IHHI", 1, 0, 0, 0))), "no user data"),
    (_raw(0, _chunk(w.INIT, INIT_VALUE[:12])), "at least 20"),
    (_raw(0, _chunk(w.INIT, struct.pack("!IIHHI", 0, 65536, 1, 1, 1))), "zero initiate tag"),
    (_raw(0, _chunk(w.INIT, struct.pack("!IIHHI", 5, 65536, 0, 1, 1))), "zero streams"),
    (_raw(7, _chunk(w.INIT, INIT_VALUE)), "verification tag 0"),
    (_raw(0, _chunk(w.INIT, INIT_VALUE), _chunk(w.COOKIE_ACK, b"")), "bundled"),
    (_raw(0, _chunk(w.INIT, INIT_VALUE + struct.pack("!HH", 5, 64))), "bad length"),
    (_raw(0, _chunk(w.INIT, INIT_VALUE + b"\x00\x05")), "truncated parameter"),
    (_raw(1, _chunk(w.INIT_ACK, INIT_VALUE)), "no state cookie"),
    (_raw(1, _chunk(w.SACK, struct.pack("!IIHH", 1, 1, 2, 0))), "gap blocks"),
    (_raw(1, _chunk(w.SACK, struct.pack("!IIHHHH", 1, 1, 1, 0, 3, 2))), "bad gap block"),
    (_raw(1, _chunk(w.SACK, b"\0" * 8)), "too short"),
    (_raw(1, _chunk(w.HEARTBEAT, b"")), "heartbeat info"),
    (_raw(1, _chunk(w.SHUTDOWN, b"")), "8 bytes"),
    (_raw(1, _chunk(w.SHUTDOWN_ACK, b"\0\0\0\0")), "must be empty"),
    (_raw(1, _chunk(w.COOKIE_ECHO, b"")), "no cookie"),
    (w.HEADER.pack(0, 2000, 1, 0) + _chunk(w.COOKIE_ACK, b""), "port 0"),
])
def test_bad_packets_raise_value_error(raw: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        w.decode(raw)


def test_random_garbage_never_crashes() -> None:
    rng = random.Random(9260)
    good = w.Packet(1, 2, 3, tuple(c for c in CHUNKS if not isinstance(c, w.InitAck))).encode()
    for _ in range(3000):
        mutated = bytearray(good)
        for _ in range(rng.randint(1, 6)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        cut = bytes(mutated[: rng.randrange(len(mutated) + 1)])
        for raw in (bytes(mutated), cut):
            with contextlib.suppress(ValueError):
                w.decode(raw, verify_checksum=False)


def test_encode_refuses_out_of_range_values() -> None:
    with pytest.raises(ValueError, match="port"):
        w.Packet(70000, 1, 0, (w.CookieAck(),)).encode()
    with pytest.raises(ValueError, match="tag"):
        w.Packet(1, 1, -1, (w.CookieAck(),)).encode()
    with pytest.raises(ValueError, match="too long"):
        w.Packet(1, 1, 1, (w.CookieEcho(b"x" * 70000),)).encode()


def test_strip_ipv4() -> None:
    sctp = w.Packet(1, 2, 3, (w.CookieAck(),)).encode()
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(sctp), 0, 0, 64, 132, 0, bytes([192, 0, 2, 1]),
                         bytes([203, 0, 113, 5]))
    assert w.strip_ipv4(header + sctp) == ("192.0.2.1", "203.0.113.5", sctp)
    with pytest.raises(ValueError):
        w.strip_ipv4(b"\x60" + header[1:] + sctp)
    with pytest.raises(ValueError):
        w.strip_ipv4(header[:2] + struct.pack("!H", 4000) + header[4:] + sctp)
