"""Reading HAProxy's runtime state from its stats socket and shaping it for heartbeats.

The renderer names frontends by listener id, backends by pool id and servers by
member id, so ``show stat`` maps one to one onto the heartbeat's listeners and pools.
"""

from __future__ import annotations

import csv
import io
import socket
from typing import Any

MEMBER_STATES = ("UP", "DOWN", "MAINT", "DRAIN", "no check")


def query(socket_path: str, command: str, timeout: float = 2.0) -> str:
    """Send one command to a HAProxy UNIX socket and return the full answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(socket_path)
        s.sendall(command.encode() + b"\n")
        # The master CLI answers only once it sees the end of input.
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


def parse_csv(text: str) -> list[dict[str, str]]:
    """Rows of ``show stat`` keyed by column name (``pxname``, ``svname``, ``status``...)."""
    text = text.lstrip()
    if text.startswith("# "):
        text = text[2:]
    return [row for row in csv.DictReader(io.StringIO(text)) if row.get("pxname")]


def show_stat(socket_path: str) -> list[dict[str, str]]:
    return parse_csv(query(socket_path, "show stat"))


def _int(row: dict[str, str], key: str) -> int:
    try:
        return int(row.get(key) or 0)
    except ValueError:
        return 0


def listener_status(status: str) -> str:
    return status if status in ("OPEN", "FULL") else "DOWN"


def member_status(status: str) -> str:
    # Transitional states read "UP 1/3" or "DOWN 1/2"; "MAINT (via x/y)" is maintenance too.
    for state in MEMBER_STATES:
        if status.startswith(state):
            return state
    if status.startswith("NOLB"):
        return "DRAIN"
    return "DOWN"


def summarize(rows: list[dict[str, str]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Heartbeat ``listeners`` and ``pools`` sections from ``show stat`` rows."""
    listeners: dict[str, Any] = {}
    pools: dict[str, Any] = {}
    for row in rows:
        name, kind, status = row["pxname"], row.get("svname", ""), row.get("status", "")
        if kind == "FRONTEND":
            listeners[name] = {
                "status": listener_status(status),
                "stats": {
                    "bytes_in": _int(row, "bin"),
                    "bytes_out": _int(row, "bout"),
                    "active_connections": _int(row, "scur"),
                    "total_connections": _int(row, "stot"),
                    "request_errors": _int(row, "ereq"),
                },
            }
        elif kind == "BACKEND":
            pool = pools.setdefault(name, {"status": "DOWN", "members": {}})
            pool["status"] = "UP" if status.startswith("UP") else "DOWN"
        else:
            pool = pools.setdefault(name, {"status": "DOWN", "members": {}})
            pool["members"][kind] = member_status(status)
    return listeners, pools
