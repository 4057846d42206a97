"""The state directory's privacy: it holds every tenant's TLS keys (in the database), the secrets,
CA and heartbeat keys, so only root may enter it.

``make_private`` is called by every command that creates or opens the state directory: the
directory becomes 0700 and any file directly in it that others could read (a database or key
made by an older Cohort, SQLite's ``-wal``/``-shm`` files) loses its group and other bits.
``PRIVATE_UMASK`` is set by Cohort's processes at start, so whatever they create later (keys,
the database, certificates' private keys, agents' state) is private from the start.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

PRIVATE_UMASK = 0o077


def make_private(state_dir: Path) -> Path:
    """Create ``state_dir`` if needed and make it and its top-level files private; returns it."""
    os.umask(PRIVATE_UMASK)
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    state_dir.chmod(0o700)
    for entry in state_dir.iterdir():
        try:
            mode = entry.lstat().st_mode
        except FileNotFoundError:
            continue
        if stat.S_ISREG(mode) and mode & 0o077:
            entry.chmod(stat.S_IMODE(mode) & 0o700)
    return state_dir
