"""Running an agent's system commands (ip, nft, sysctl, haproxy, keepalived) and reading processes.

Owns ``CommandFailed`` (a command's own message, readable in API errors) and the
``/proc`` readers both agents use to adopt the daemons a previous agent left running.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence


class CommandFailed(RuntimeError):
    """A command exited non-zero; ``output`` holds what it said (stderr, else stdout)."""

    def __init__(self, cmd: Sequence[str], returncode: int, output: str) -> None:
        super().__init__(f"{' '.join(cmd)} exited {returncode}: {output.strip()}")
        self.cmd = list(cmd)
        self.returncode = returncode
        self.output = output


def run(cmd: Sequence[str], stdin: str | None = None, timeout: float = 30.0) -> str:
    """Run ``cmd`` (fed ``stdin``), return its stdout; raise CommandFailed with its message when it fails."""
    proc = subprocess.run(list(cmd), input=stdin, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise CommandFailed(cmd, proc.returncode, proc.stderr or proc.stdout)
    return proc.stdout


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            # A zombie has exited; only its parent's wait() is missing.
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def read_pid(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []
