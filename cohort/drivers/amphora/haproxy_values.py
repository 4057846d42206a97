"""Validation and quoting of every value that reaches an HAProxy configuration.

Tenant strings (L7 rule values, URLs, cookie names, health-check paths...) are
written into a line-oriented file whose parser splits words on blanks, treats
``#`` as a comment, expands ``$VAR`` inside double quotes and reads a leading
``-`` as a flag. Everything rendered goes through one of these helpers, so a
value either comes out as exactly one inert word or is refused with ValueError
(the API turns that into a 400 before it reaches the controller).
"""

from __future__ import annotations

import ipaddress
import re

# HAProxy proxy, server and ACL names: letters, digits, '-', '_', '.', ':'.
_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
# RFC 7230 token minus the characters that mean something to HAProxy's parser
# (quotes, '$', '#', backslash) or to sample-fetch arguments (',', '(', ')').
_TOKEN = re.compile(r"^[A-Za-z0-9!%&*+.^_|~-]{1,256}$")
_CIPHERS = re.compile(r"^[A-Za-z0-9:+!@=._-]{1,4096}$")
_ALPN = re.compile(r"^[A-Za-z0-9._/-]{1,64}$")
_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,62})(?:\.[A-Za-z0-9_-]{1,63})*\.?$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_INTERFACE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")


def name(value: str, what: str) -> str:
    """An identifier used as a proxy, server or ACL name (ids are UUIDs in practice)."""
    if not _NAME.match(value):
        raise ValueError(f"{what} {value!r} is not usable as an HAProxy name")
    return value


def token(value: str, what: str) -> str:
    """A header or cookie name, or a DN field, used inside a sample fetch's parentheses."""
    if not _TOKEN.match(value):
        raise ValueError(f"{what} {value!r} must be an HTTP token (letters, digits, -_.!%&*+^|~)")
    return value


def interface(value: str) -> str:
    if not _INTERFACE.match(value):
        raise ValueError(f"interface name {value!r} is invalid")
    return value


def hostname(value: str, what: str) -> str:
    if not _HOSTNAME.match(value):
        raise ValueError(f"{what} {value!r} is not a valid host name")
    return value


def ciphers(value: str) -> str:
    if not _CIPHERS.match(value):
        raise ValueError(f"cipher string {value!r} has characters outside an OpenSSL cipher list")
    return value


def alpn(protocols: tuple[str, ...]) -> str:
    for proto in protocols:
        if not _ALPN.match(proto):
            raise ValueError(f"ALPN protocol {proto!r} is invalid")
    return ",".join(protocols)


def _printable(value: str, what: str) -> str:
    if value == "":
        raise ValueError(f"{what} must not be empty")
    if _CONTROL.search(value):
        raise ValueError(f"{what} {value!r} contains control characters")
    return value


def quote(value: str, what: str) -> str:
    """One literal word: single-quoted (no escapes, no variable expansion inside).

    An embedded single quote closes the quote, adds an escaped quote and reopens,
    as in a POSIX shell; HAProxy's parser joins the pieces into one word.
    """
    _printable(value, what)
    return "'" + value.replace("'", "'\\''") + "'"


def ip(value: str, what: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"{what} {value!r} is not an IP address") from None


def cidr(value: str) -> str:
    try:
        return str(ipaddress.ip_network(value, strict=False))
    except ValueError:
        raise ValueError(f"allowed CIDR {value!r} is invalid") from None


def address_port(address: str, port: int, what: str) -> str:
    """``addr:port`` for bind and server lines; IPv6 in brackets."""
    parsed = ip(address, what)
    port_number(port, what)
    if parsed.version == 6:
        return f"[{parsed.compressed}]:{port}"
    return f"{parsed.compressed}:{port}"


def port_number(port: int, what: str) -> int:
    if not 1 <= port <= 65535:
        raise ValueError(f"{what} port {port} is out of range")
    return port


def url_path(value: str) -> str:
    if not value.startswith("/") or re.search(r"[\s\x00-\x1f\x7f]", value):
        raise ValueError(f"health monitor url_path {value!r} must start with '/' and contain no blanks")
    return quote(value, "url_path")


def http_method(value: str) -> str:
    if not re.match(r"^[A-Z]{1,16}$", value):
        raise ValueError(f"health monitor http_method {value!r} is invalid")
    return value
