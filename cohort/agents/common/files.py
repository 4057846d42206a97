"""An agent's files: replaced atomically (readers see the old content or the new), and reached by
a short name when unix socket paths under them would not fit.

Owns the write-a-temporary-then-rename dance the agents use for their records, HAProxy's
server state, certificates and the distributor's state file, and ``short_dir``.
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


SUN_PATH_MAX = 107


def short_dir(real: Path, longest_name: int) -> Path:
    """``real``, or a short name for it when ``real`` + a socket name of ``longest_name`` characters
    would not fit ``sun_path``.

    The short name is ``/proc/self/fd/N`` of a directory descriptor this process keeps open: it
    resolves only in this process and leaves nothing behind on the host when it ends.
    """
    if len(str(real)) + longest_name <= SUN_PATH_MAX:
        return real
    fd = os.open(real, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    return Path(f"/proc/self/fd/{fd}")
