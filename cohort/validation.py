"""The rules every tenant value obeys, shared by the API (400 on a bad value) and the renderers.

The API validates with these functions so that whatever it accepts the HAProxy, keepalived and
nftables renderers accept too: a value a renderer would refuse is a 400, never an amphora in
ERROR. The renderers call them again rather than trust the database (defence in depth). Each
function returns the value in canonical form or raises ValueError; nothing here imports from
``cohort.api`` or ``cohort.drivers``.
"""

from __future__ import annotations

import ipaddress
import re

import pcre2

INT32_MAX = 2**31 - 1
# HAProxy keeps a time as a signed 32-bit count of milliseconds and refuses a larger one.
HAPROXY_MAX_MS = INT32_MAX
HAPROXY_MAX_SECONDS = HAPROXY_MAX_MS // 1000
# HAProxy 2.6's MAX_THREADS on 64-bit builds.
HAPROXY_MAX_THREADS = 64

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Patterns end in \Z, not $: $ also matches before a trailing newline.
# Only what a literal address or prefix is made of: this is what keeps out IPv6 zone ids
# ("fe80::1%eth0"), whose text Python accepts verbatim (newlines included).
_ADDRESS_CHARS = re.compile(r"^[0-9A-Fa-f.:]{2,45}\Z")
_NETWORK_CHARS = re.compile(r"^[0-9A-Fa-f.:/]{2,90}\Z")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# RFC 7230 token minus the characters that mean something to HAProxy's parser
# (quotes, '$', '#', backslash) or to sample-fetch arguments (',', '(', ')').
_TOKEN = re.compile(r"^[A-Za-z0-9!%&*+.^_|~-]{1,256}\Z")
_CIPHERS = re.compile(r"^[A-Za-z0-9:+!@=._-]{1,4096}\Z")
_ALPN = re.compile(r"^[A-Za-z0-9._/-]{1,64}\Z")
_HOSTNAME = re.compile(r"^(?=.{1,253}\Z)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,62})(?:\.[A-Za-z0-9_-]{1,63})*\.?\Z")
_URL_PATH = re.compile(r"^/[\x21-\x7e]{0,2047}\Z")
_URL = re.compile(r"^https?://[\x21-\x7e]{1,2040}\Z")
_HTTP_METHOD = re.compile(r"^[A-Z]{1,16}\Z")
_EXPECTED_CODES = re.compile(r"^(?:\d{3}(?: *, *\d{3})*|\d{3}-\d{3})\Z", re.ASCII)
_DIGITS = re.compile(r"^[0-9]{1,9}\Z")
# A Linux interface name (IFNAMSIZ - 1 characters), from the characters our drivers use.
_INTERFACE = re.compile(r"^[A-Za-z0-9_.-]{1,15}\Z")
# Escapes the Python binding reads differently from HAProxy's own PCRE2 build (which runs
# without PCRE2_ALT_BSUX and without UTF): refused rather than guessed at.
_PCRE_ESCAPE = re.compile(r"\\(.)", re.S)
_DIVERGENT_ESCAPES = frozenset("uUNC")

L7_KEYED_TYPES = frozenset({"HEADER", "COOKIE", "SSL_DN_FIELD"})
L7_QUOTED_TYPES = frozenset({"HEADER", "COOKIE"})


def ip_address(value: str, what: str = "IP address") -> IPAddress:
    """A literal IPv4 or IPv6 address: no zone id, no blank, no control character."""
    if not isinstance(value, str) or not _ADDRESS_CHARS.match(value):
        raise ValueError(f"{what} {value!r} is not a valid IP address")
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"{what} {value!r} is not a valid IP address") from None


def ip_network(value: str, what: str = "CIDR") -> IPNetwork:
    """An address with an optional prefix (host bits allowed), in any form Python reads, zone ids excepted."""
    if not isinstance(value, str) or not _NETWORK_CHARS.match(value):
        raise ValueError(f"{what} {value!r} is not a valid CIDR")
    try:
        return ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(f"{what} {value!r} is not a valid CIDR") from None


def canonical_ip(value: str, what: str = "IP address") -> str:
    return ip_address(value, what).compressed


def canonical_cidr(value: str, what: str = "CIDR") -> str:
    return ip_network(value, what).compressed


def netmask_bits(value: str, what: str = "persistence_granularity") -> int:
    """A session persistence granularity: a contiguous IPv4 netmask, or a prefix length."""
    text = value.strip().lstrip("/") if isinstance(value, str) else ""
    if text.isascii() and text.isdigit():
        bits = int(text[:4])
        if not 0 < bits <= 128:
            raise ValueError(f"{what} {value!r} is out of range")
        return bits
    mask = ip_address(text, what)
    if mask.version != 4:
        raise ValueError(f"{what} {value!r} must be an IPv4 netmask such as 255.255.255.0")
    try:
        bits = ipaddress.IPv4Network(f"0.0.0.0/{mask}").prefixlen
    except ValueError:
        raise ValueError(f"{what} {value!r} is not a netmask") from None
    if bits == 0:
        raise ValueError(f"{what} {value!r} must keep at least one bit")
    return bits


def interface_name(value: str) -> str:
    if not isinstance(value, str) or not _INTERFACE.match(value) or value in (".", ".."):
        raise ValueError(f"interface name {value!r} is invalid")
    return value


def printable(value: str, what: str) -> str:
    """A non-empty text without control characters (tab and newline included)."""
    if value == "":
        raise ValueError(f"{what} must not be empty")
    if _CONTROL.search(value):
        raise ValueError(f"{what} {value!r} contains control characters")
    return value


def token(value: str, what: str) -> str:
    """A header or cookie name, or a DN field, used inside a sample fetch's parentheses."""
    if not _TOKEN.match(value):
        raise ValueError(f"{what} {value!r} must be an HTTP token (letters, digits, -_.!%&*+^|~)")
    return value


def hostname(value: str, what: str) -> str:
    if not _HOSTNAME.match(value):
        raise ValueError(f"{what} {value!r} is not a valid host name")
    return value


def ciphers(value: str) -> str:
    if not _CIPHERS.match(value):
        raise ValueError(f"cipher string {value!r} has characters outside an OpenSSL cipher list")
    return value


def alpn_protocol(value: str) -> str:
    if not _ALPN.match(value):
        raise ValueError(f"ALPN protocol {value!r} is invalid (letters, digits, '.', '_', '/', '-')")
    return value


def url_path(value: str) -> str:
    if not _URL_PATH.match(value):
        raise ValueError(f"url_path {value!r} must start with '/' and hold only visible ASCII characters")
    return value


def redirect_url(value: str, what: str = "redirect URL") -> str:
    if not _URL.match(value):
        raise ValueError(f"{what} {value!r} must be an http:// or https:// URL of visible ASCII characters")
    return value


def http_method(value: str) -> str:
    if not _HTTP_METHOD.match(value):
        raise ValueError(f"http_method {value!r} is invalid")
    return value


def expected_codes(codes: str) -> list[int]:
    """``200``, ``200,202`` or ``200-204`` (mixes too) as the codes, each within 100-599."""
    result: list[int] = []
    for part in codes.replace(" ", "").split(","):
        low, sep, high = part.partition("-")
        if not (low.isascii() and low.isdigit()) or (sep and not (high.isascii() and high.isdigit())):
            raise ValueError(f"expected_codes {codes!r} is not like 200, 200,202 or 200-204")
        first, last = int(low[:4]), int(high[:4]) if sep else int(low[:4])
        if not 100 <= first <= last <= 599:
            raise ValueError(f"expected_codes {codes!r}: codes are 100-599 and a range goes from low to high")
        result.extend(code for code in range(first, last + 1) if code not in result)
    return result


def api_expected_codes(codes: str) -> str:
    """What the API takes: Octavia's list or range forms, checked with the renderer's rules."""
    if not _EXPECTED_CODES.match(codes):
        raise ValueError(f"expected_codes {codes!r} is not like 200, 200,202 or 200-204")
    expected_codes(codes)
    return codes


def regex(value: str, what: str = "regex") -> str:
    """A pattern HAProxy's PCRE2 compiles, checked with PCRE2 itself (8-bit, non-UTF, JIT as HAProxy)."""
    printable(value, what)
    for match in _PCRE_ESCAPE.finditer(value):
        escape = match.group(1)
        if escape in _DIVERGENT_ESCAPES or (escape in "xo" and value.startswith("{", match.end())):
            raise ValueError(f"{what} {value!r}: the escape \\{escape} is not supported")
    try:
        pcre2.compile(value.encode(), jit=True)
    # Any failure of the compiler (syntax, limits, memory) means HAProxy would refuse it too.
    except Exception as exc:
        raise ValueError(f"{what} {value!r} is not a valid regex: {exc}") from None
    return value


def ssl_verify_result(value: str) -> int:
    if not _DIGITS.match(value):
        raise ValueError(f"SSL_VERIFY_RESULT value {value!r} must be a number")
    return int(value)


def l7_rule(rule_type: str, compare_type: str, key: str | None, value: str) -> None:
    """The checks of one L7 rule that depend on several of its fields."""
    if rule_type in L7_KEYED_TYPES:
        if not key:
            raise ValueError(f"key is required for L7 rules of type {rule_type}")
        token(key, "L7 rule key")
    elif key:
        raise ValueError(f"key is not valid for L7 rules of type {rule_type}")
    printable(value, "L7 rule value")
    if rule_type == "FILE_TYPE" and compare_type not in ("EQUAL_TO", "REGEX"):
        raise ValueError("FILE_TYPE rules take compare_type EQUAL_TO or REGEX")
    if rule_type == "FILE_TYPE" and compare_type == "EQUAL_TO":
        printable(value.removeprefix("."), "FILE_TYPE extension")
    if rule_type == "SSL_CONN_HAS_CERT" and (compare_type != "EQUAL_TO" or value.lower() != "true"):
        raise ValueError("SSL_CONN_HAS_CERT rules take compare_type EQUAL_TO and value 'True'")
    if rule_type == "SSL_VERIFY_RESULT":
        if compare_type != "EQUAL_TO":
            raise ValueError("SSL_VERIFY_RESULT rules take compare_type EQUAL_TO")
        ssl_verify_result(value)
    if compare_type == "REGEX":
        regex(value, "L7 rule value")
    elif rule_type not in L7_QUOTED_TYPES and re.search(r"\s", value):
        raise ValueError("L7 rule value: whitespace is only allowed in HEADER and COOKIE values")


def haproxy_ms(value: int) -> int:
    """A duration in milliseconds as HAProxy can hold it (Octavia allows up to a year)."""
    if value < 0:
        raise ValueError(f"duration {value} ms must not be negative")
    return min(value, HAPROXY_MAX_MS)


def haproxy_seconds(value: int) -> int:
    if value < 0:
        raise ValueError(f"duration {value} s must not be negative")
    return min(value, HAPROXY_MAX_SECONDS)


def bounded(value: int, low: int, high: int, what: str) -> int:
    """An integer (not a bool) within [low, high], as a renderer writes it into a kernel program."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{what} {value!r} must be an integer from {low} to {high}")
    return value
