"""Heartbeat keys: the controller's master key, and each agent's own key derived from it.

An agent signs its heartbeats with ``HMAC-SHA256(master, "cohort-heartbeat:<kind>:<id>")``
written in hex to a private file of its own, and never sees the master key, so holding one
agent's key does not let anybody speak for another agent. The verifier derives the key of
the agent a heartbeat claims to come from and checks the MAC with it.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
import tempfile
from pathlib import Path

AMPHORA = "amphora"
DISTRIBUTOR = "distributor"
KINDS = (AMPHORA, DISTRIBUTOR)


def agent_key(master: bytes, kind: str, agent_id: str) -> bytes:
    """The key ``kind`` agent ``agent_id`` signs with: hex text, as it is stored in its key file."""
    if not master:
        raise ValueError("heartbeat master key must not be empty")
    if kind not in KINDS:
        raise ValueError(f"unknown agent kind {kind!r}")
    label = f"cohort-heartbeat:{kind}:{agent_id}".encode()
    return hmac.new(master, label, hashlib.sha256).hexdigest().encode()


def _private_temp(path: Path, data: bytes) -> Path:
    """``data`` in a new 0600 file beside ``path`` (mkstemp creates it O_EXCL with that mode)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        os.unlink(name)
        raise
    return Path(name)


def _read_key(path: Path) -> bytes:
    if path.stat().st_mode & 0o077:
        path.chmod(0o600)  # a key file left readable by an older release
    key = path.read_bytes().strip()
    if not key:
        raise ValueError(f"heartbeat key file {path} is empty")
    return key


def master_key(path: Path) -> bytes:
    """The master key in ``path``, generated on first use.

    Several processes may start at once: each writes a complete candidate to a private
    temporary file and hard-links it into place, which fails for all but the first, so
    every process reads the same key and none ever sees a partly written file.
    """
    with contextlib.suppress(FileNotFoundError):
        return _read_key(path)
    candidate = _private_temp(path, secrets.token_hex(32).encode())
    try:
        with contextlib.suppress(FileExistsError):
            os.link(candidate, path)
    finally:
        candidate.unlink()
    return _read_key(path)


def write_key_file(path: Path, key: bytes) -> Path:
    """Write an agent's key to ``path`` (0600), atomically replacing an older copy."""
    os.replace(_private_temp(path, key), path)
    return path
