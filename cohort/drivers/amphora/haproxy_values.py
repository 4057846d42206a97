"""Validation and quoting of every value that reaches an HAProxy configuration.

Tenant strings (L7 rule values, URLs, cookie names, health-check paths...) are
written into a line-oriented file whose parser splits words on blanks, treats
``#`` as a comment, expands ``$VAR`` inside double quotes and reads a leading
``-`` as a flag. Everything rendered goes through one of these helpers, so a
value either comes out as exactly one inert word or is refused with ValueError.
The rules themselves live in ``cohort.validation``, which the API applies too,
so a value refused here was a 400 there; they are checked again here because a
renderer does not trust the database.
"""

from __future__ import annotations

import re

from cohort import validation
from cohort.validation import IPAddress, ciphers, hostname, printable, token

__all__ = [
    "address_port",
    "alpn",
    "cidr",
    "ciphers",
    "hostname",
    "http_method",
    "interface",
    "ip",
    "milliseconds",
    "name",
    "port_number",
    "quote",
    "seconds",
    "token",
    "url_path",
]

# Patterns end in \Z, not $: $ also matches before a trailing newline.
# HAProxy proxy, server and ACL names: letters, digits, '-', '_', '.', ':'.
_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,128}\Z")


def name(value: str, what: str) -> str:
    """An identifier used as a proxy, server or ACL name (ids are UUIDs in practice)."""
    if not _NAME.match(value):
        raise ValueError(f"{what} {value!r} is not usable as an HAProxy name")
    return value


def interface(value: str) -> str:
    return validation.interface_name(value)


def alpn(protocols: tuple[str, ...]) -> str:
    return ",".join(validation.alpn_protocol(proto) for proto in protocols)


def quote(value: str, what: str) -> str:
    """One literal word: single-quoted (no escapes, no variable expansion inside).

    An embedded single quote closes the quote, adds an escaped quote and reopens,
    as in a POSIX shell; HAProxy's parser joins the pieces into one word.
    """
    printable(value, what)
    return "'" + value.replace("'", "'\\''") + "'"


def ip(value: str, what: str) -> IPAddress:
    return validation.ip_address(value, what)


def cidr(value: str) -> str:
    return validation.canonical_cidr(value, "allowed CIDR")


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
    return quote(validation.url_path(value), "url_path")


def http_method(value: str) -> str:
    return validation.http_method(value)


def milliseconds(value: int, what: str) -> str:
    """A duration HAProxy reads as milliseconds, capped to what it can hold."""
    try:
        return str(validation.haproxy_ms(value))
    except ValueError as exc:
        raise ValueError(f"{what}: {exc}") from None


def seconds(value: int, what: str) -> str:
    """A duration in seconds with its unit, capped to what HAProxy can hold."""
    try:
        return f"{validation.haproxy_seconds(value)}s"
    except ValueError as exc:
        raise ValueError(f"{what}: {exc}") from None
