"""Replacing an agent's files atomically: readers (HAProxy, a restarted agent) see the old content or the new.

Owns the write-a-temporary-then-rename dance the agents use for their records, HAProxy's
server state, certificates and the distributor's state file.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path


def atomic_write(path: Path, data: str | bytes, *, mode: int = 0o666, durable: bool = False) -> None:
    """Replace ``path`` with ``data`` in one rename.

    The new file is created with ``mode`` (less the umask). ``durable`` also fsyncs the file
    and its directory, so the new content survives a crash of the host, not only of the agent.
    """
    # Per process and thread: concurrent requests never share a temporary file.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    payload = data.encode() if isinstance(data, str) else data
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
