"""nftables read straight from the kernel over netlink: a table's named counters and the names of
its chains, sets and objects, never the elements of its sets.

Every ``nft`` listing of a table, even ``list counters``, first loads the table's sets with all
their elements (libnftables' cache). On a distributor under load the flow maps hold tens or
hundreds of thousands of pinned flows, and the heartbeat's counter reading and the data plane's
periodic check grew with them: 0.1 s of CPU per reading at 14,000 flows, most of a CPU between
them with a few runs of new-connection load behind the agent. A netlink dump of the counter
objects, or of the chain and set names, costs the same at any number of flows.

Only dumps (``NLM_F_DUMP``) are sent; the socket lives in the caller's network namespace.
"""

from __future__ import annotations

import errno
import itertools
import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_GETCHAIN = 4
NFT_MSG_GETSET = 10
NFT_MSG_GETOBJ = 19
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
NLM_F_DUMP_INTR = 0x10
NLMSG_ERROR = 2
NLMSG_DONE = 3
NFNETLINK_V0 = 0
NFT_OBJECT_COUNTER = 1
FAMILIES = {"inet": 1, "ip": 2, "ip6": 10}

# Attributes (linux/netfilter/nf_tables.h): the table and the name of each kind of thing.
TABLE_ATTR = 1
NAME_ATTR = {NFT_MSG_GETCHAIN: 3, NFT_MSG_GETSET: 2, NFT_MSG_GETOBJ: 2}
NFTA_OBJ_TYPE = 3
NFTA_SET_FLAGS = 3
NFT_SET_ANONYMOUS = 0x1  # the sets nft makes for a rule's literal { a, b } (not ours to name)
NFTA_OBJ_DATA = 4
NFTA_COUNTER_BYTES = 1
NFTA_COUNTER_PACKETS = 2
NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED and NLA_F_NET_BYTEORDER

_HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, sequence, port
_NFGEN = struct.Struct("=BBH")  # nfgenmsg: family, version, resource id
_ATTR = struct.Struct("=HH")
TIMEOUT_S = 2.0
DUMP_ATTEMPTS = 3  # a dump the kernel marks interrupted (the table changed meanwhile) is redone
_sequence = itertools.count(int.from_bytes(os.urandom(2), "big"))


class NetlinkError(OSError):
    """The kernel refused a dump, or answered something that is not one."""


@dataclass(frozen=True)
class Counter:
    packets: int
    bytes: int


def counters(family: str, table: str) -> dict[str, Counter]:
    """The named counters of ``table``: name -> packets and bytes (empty without the table)."""
    found = {}
    counter_type = struct.pack(">I", NFT_OBJECT_COUNTER)
    filters = _attr(TABLE_ATTR, _string(table)) + _attr(NFTA_OBJ_TYPE, counter_type)
    for attrs in _dump(NFT_MSG_GETOBJ, family, filters):
        if _text(attrs.get(TABLE_ATTR)) != table or attrs.get(NFTA_OBJ_TYPE) != counter_type:
            continue
        data = parse_attributes(attrs.get(NFTA_OBJ_DATA, b""))
        found[_text(attrs.get(NAME_ATTR[NFT_MSG_GETOBJ]))] = Counter(
            packets=_u64(data.get(NFTA_COUNTER_PACKETS)), bytes=_u64(data.get(NFTA_COUNTER_BYTES)))
    return found


def names(family: str, table: str) -> set[str]:
    """The names of the chains, named sets (maps among them) and objects of ``table``; empty without it."""
    found = set()
    for message in (NFT_MSG_GETCHAIN, NFT_MSG_GETSET, NFT_MSG_GETOBJ):
        filters = _attr(TABLE_ATTR, _string(table)) if message != NFT_MSG_GETCHAIN else b""
        for attrs in _dump(message, family, filters):
            anonymous = message == NFT_MSG_GETSET and _u32(attrs.get(NFTA_SET_FLAGS)) & NFT_SET_ANONYMOUS
            if _text(attrs.get(TABLE_ATTR)) == table and not anonymous:
                found.add(_text(attrs.get(NAME_ATTR[message])))
    return found


def _dump(message: int, family: str, filters: bytes) -> list[dict[int, bytes]]:
    if family not in FAMILIES:
        raise ValueError(f"unknown nftables family {family!r}")
    for _ in range(DUMP_ATTEMPTS):
        sequence = next(_sequence) & 0xFFFFFFFF
        body = _NFGEN.pack(FAMILIES[family], NFNETLINK_V0, 0) + filters
        request = _HEADER.pack(_HEADER.size + len(body), NFNL_SUBSYS_NFTABLES << 8 | message,
                               NLM_F_REQUEST | NLM_F_DUMP, sequence, 0) + body
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER) as sock:
            sock.settimeout(TIMEOUT_S)
            sock.send(request)
            try:
                replies, interrupted = _receive(sock, sequence)
            except NetlinkError as exc:
                if exc.errno == errno.ENOENT:  # no such table: nothing in it
                    return []
                raise
        if not interrupted:
            return replies
    raise NetlinkError(f"nftables dump {message} kept being interrupted by changes")


def _receive(sock: socket.socket, sequence: int) -> tuple[list[dict[int, bytes]], bool]:
    replies: list[dict[int, bytes]] = []
    interrupted = False
    while True:
        try:
            data = sock.recv(1 << 17)
        except TimeoutError as exc:
            raise NetlinkError("the kernel did not finish an nftables dump") from exc
        for kind, flags, seq, payload in messages(data):
            if seq != sequence:
                continue
            interrupted |= bool(flags & NLM_F_DUMP_INTR)
            if kind == NLMSG_DONE:
                return replies, interrupted
            if kind == NLMSG_ERROR:
                code = -struct.unpack_from("=i", payload)[0] if len(payload) >= 4 else 0
                if code == 0:
                    continue
                raise NetlinkError(code, f"nftables dump refused: {os.strerror(code)}")
            replies.append(parse_attributes(payload[_NFGEN.size:]))


def messages(data: bytes) -> Iterator[tuple[int, int, int, bytes]]:
    """(type, flags, sequence, payload) of each netlink message in one datagram."""
    offset = 0
    while offset + _HEADER.size <= len(data):
        length, kind, flags, seq, _port = _HEADER.unpack_from(data, offset)
        if length < _HEADER.size or offset + length > len(data):
            raise NetlinkError(f"a netlink message of {length} bytes at offset {offset} of {len(data)}")
        yield kind, flags, seq, data[offset + _HEADER.size:offset + length]
        offset += (length + 3) & ~3


def parse_attributes(data: bytes) -> dict[int, bytes]:
    """Attribute type -> value of a run of netlink attributes (nested ones stay bytes)."""
    found = {}
    offset = 0
    while offset + _ATTR.size <= len(data):
        length, kind = _ATTR.unpack_from(data, offset)
        if length < _ATTR.size or offset + length > len(data):
            raise NetlinkError(f"a netlink attribute of {length} bytes at offset {offset} of {len(data)}")
        found[kind & NLA_TYPE_MASK] = data[offset + _ATTR.size:offset + length]
        offset += (length + 3) & ~3
    return found


def _attr(kind: int, value: bytes) -> bytes:
    padding = b"\0" * (-(_ATTR.size + len(value)) % 4)
    return _ATTR.pack(_ATTR.size + len(value), kind) + value + padding


def _string(text: str) -> bytes:
    return text.encode() + b"\0"


def _text(value: bytes | None) -> str:
    return (value or b"").split(b"\0", 1)[0].decode(errors="replace")


def _u32(value: bytes | None) -> int:
    return struct.unpack(">I", value)[0] if value is not None and len(value) == 4 else 0


def _u64(value: bytes | None) -> int:
    return struct.unpack(">Q", value)[0] if value is not None and len(value) == 8 else 0
