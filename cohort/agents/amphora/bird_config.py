"""The BGP speaker's settings as the controller sends them, and the BIRD 2 configuration they make.

The controller sends a speaker (``local_as``, the amphora's front-end address as ``router_id``
and session source) with its peers (address, AS, MD5 password, TTL hops, hold and keepalive
times, BFD intervals); the agent keeps, per VIP, whether it is announced. Every value is checked
here before it is written: addresses without zone ids or blanks, ASNs in 1..2**32-1, timers in
BGP's ranges, passwords of printable ASCII without quotes or backslashes (BIRD strings are
double-quoted). The renderer writes one ``static`` protocol per VIP (``disabled`` while the VIP
must not be announced) and one ``bgp`` protocol per peer, named after stable hashes, so that
BIRD's reconfiguration restarts only what changed: a new VIP or a withdrawn one never touches
a session, and a peer whose settings did not change keeps its session (and its BFD).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from cohort import validation

MAX_ASN = 2**32 - 1
_PASSWORD = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]{1,80}$")  # printable ASCII but '"', '\\', blank
INTERFACE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
# Ceiling of BIRD's wait before a failed session starts again (see render).
ERROR_WAIT_MAX_S = 2


@dataclass(frozen=True)
class Bfd:
    min_rx: int  # ms
    min_tx: int  # ms
    multiplier: int


@dataclass(frozen=True)
class Peer:
    peer_ip: str
    remote_as: int
    password: str | None = None
    ttl_hops: int = 1
    hold_time: int = 90
    keepalive_interval: int = 30
    bfd: Bfd | None = None

    @property
    def protocol(self) -> str:
        return "peer_" + hashlib.sha256(self.peer_ip.encode()).hexdigest()[:10]


@dataclass(frozen=True)
class Speaker:
    local_as: int
    router_id: str
    local_address: str
    interface: str
    peers: tuple[Peer, ...]


def vip_protocol(vip: str) -> str:
    return "vip_" + hashlib.sha256(vip.encode()).hexdigest()[:10]


def _int(body: dict[str, Any], name: str, low: int, high: int, default: int | None = None) -> int:
    value = body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer in {low}..{high}")
    return value


def _address(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be an IP address")
    return validation.canonical_ip(value, what)


def parse_peer(body: Any) -> Peer:
    if not isinstance(body, dict):
        raise ValueError("a peer must be an object")
    password = body.get("password")
    if password is not None and (not isinstance(password, str) or not _PASSWORD.match(password)):
        raise ValueError("password must be 1-80 printable ASCII characters without blanks, quotes or backslashes")
    hold = _int(body, "hold_time", 0, 65535, 90)
    if hold in (1, 2):
        raise ValueError("hold_time must be 0 or at least 3 seconds")
    keepalive = _int(body, "keepalive_interval", 0, 21845, 30)
    if hold and keepalive * 3 > hold:
        raise ValueError("keepalive_interval must be at most a third of hold_time")
    bfd_body = body.get("bfd")
    bfd = None
    if bfd_body is not None:
        if not isinstance(bfd_body, dict):
            raise ValueError("bfd must be an object or null")
        bfd = Bfd(_int(bfd_body, "min_rx", 10, 60000), _int(bfd_body, "min_tx", 10, 60000),
                  _int(bfd_body, "multiplier", 1, 255))
    return Peer(_address(body.get("peer_ip"), "peer_ip"), _int(body, "remote_as", 1, MAX_ASN), password,
                _int(body, "ttl_hops", 1, 255, 1), hold, keepalive, bfd)


def parse_speaker(body: Any) -> Speaker:
    if not isinstance(body, dict):
        raise ValueError("the speaker must be an object")
    interface = body.get("interface", "fe0")
    if not isinstance(interface, str) or not INTERFACE.match(interface):
        raise ValueError("interface must be an interface name")
    peers_body = body.get("peers")
    if not isinstance(peers_body, list) or not 1 <= len(peers_body) <= 16:
        raise ValueError("peers must be a list of 1 to 16 peers")
    peers = tuple(parse_peer(p) for p in peers_body)
    if len({p.peer_ip for p in peers}) != len(peers):
        raise ValueError("peer addresses must be distinct")
    router_id = _address(body.get("router_id"), "router_id")
    if ":" in router_id:
        raise ValueError("router_id must be an IPv4 address")
    return Speaker(_int(body, "local_as", 1, MAX_ASN), router_id, _address(body.get("local_address"), "local_address"),
                   interface, peers)


def render(speaker: Speaker, vips: dict[str, bool], log_path: str) -> str:
    """bird.conf: the speaker, its peers and one static protocol per VIP (disabled unless announced)."""
    if '"' in log_path or "\n" in log_path:
        raise ValueError("log path must not contain quotes or newlines")
    lines = [
        "# The amphora's BGP speaker; rendered by the cohort amphora agent, do not edit.",
        f'log "{log_path}" {{ info, warning, error, fatal }};',
        f"router id {validation.canonical_ip(speaker.router_id, 'router_id')};",
        # Since when each session is down, to the millisecond: the controller counts from then.
        "timeformat protocol iso long ms;",
        "protocol device { scan time 10; }",
    ]
    bfd = next((peer.bfd for peer in speaker.peers if peer.bfd is not None), None)
    if bfd is not None:
        # Sessions on the front-end link; each BGP protocol asks for its own intervals as well.
        lines += ["protocol bfd cohort_bfd {",
                  f'  interface "{speaker.interface}" {{ min rx interval {bfd.min_rx} ms; '
                  f"min tx interval {bfd.min_tx} ms; multiplier {bfd.multiplier}; }};",
                  "}"]
    for vip, announced in sorted(vips.items()):
        address = validation.ip_address(vip, "VIP")
        prefix = 32 if address.version == 4 else 128
        lines += [f"protocol static {vip_protocol(vip)} {{",
                  f"  {'ipv4' if address.version == 4 else 'ipv6'};",
                  f"  route {address.compressed}/{prefix} blackhole;",
                  *([] if announced else ["  disabled;"]),
                  "}", ""]
    for peer in speaker.peers:
        lines += [f"protocol bgp {peer.protocol} {{",
                  f"  local {validation.canonical_ip(speaker.local_address, 'local_address')} as {speaker.local_as};",
                  f"  neighbor {validation.canonical_ip(peer.peer_ip, 'peer_ip')} as {peer.remote_as};",
                  "  direct;" if peer.ttl_hops == 1 else f"  multihop {peer.ttl_hops};",
                  # GTSM: packets from further than ttl_hops away never reach BGP.
                  "  ttl security on;",
                  f"  hold time {peer.hold_time};",
                  f"  keepalive time {peer.keepalive_interval};" if peer.hold_time else "",
                  # A session that failed comes back within seconds, not BIRD's default minutes,
                  # and a new or recovered amphora connects after 1 s, not 5: it is not in the
                  # router's next hops, so not carrying traffic, until it does. The wait after an
                  # error doubles with each error that follows another within 5 minutes (BIRD's
                  # error forget time), so its ceiling bounds how long a BFD blip keeps a healthy
                  # amphora out. With 10 s, four blips of 0.5 s kept one out 2.2, 2.8, 4.7 and
                  # 7.9 s, and the controller (then patient for 3 s) replaced it, breaking its
                  # connections. BFD's slow start (a packet a second) and BGP's connect delay come
                  # on top: at 2 s a blip's return took 2.3-4.3 s, within ``bgp_sessions_down_after``.
                  "  connect delay time 1;",
                  f"  error wait time 1, {ERROR_WAIT_MAX_S};",
                  "  connect retry time 2;"]
        if peer.password is not None:
            lines.append(f'  password "{peer.password}";')
        if peer.bfd is not None:
            lines.append(f"  bfd {{ min rx interval {peer.bfd.min_rx} ms; min tx interval {peer.bfd.min_tx} ms; "
                         f"multiplier {peer.bfd.multiplier}; }};")
        channel = "ipv4" if ":" not in peer.peer_ip else "ipv6"
        lines += [f"  {channel} {{ import none; export where source = RTS_STATIC; next hop self; }};", "}", ""]
    return "\n".join(line for line in lines if line != "") + "\n"
