"""keepalived (VRRP) for ACTIVE_STANDBY amphorae: validated config, start, reload, stop.

keepalived's pid files default to /run, which every namespace on a host shares;
each amphora therefore keeps its own under ``<state>/vrrp/``. Like HAProxy it
daemonizes, so it survives a restart of the agent.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from pathlib import Path

from cohort.agents.amphora.haproxy import InvalidConfig
from cohort.agents.common.proc import CommandFailed, cmdline, pid_alive, read_pid, run

KEEPALIVED = "keepalived"


class KeepalivedManager:
    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir / "vrrp"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.dir / "keepalived.conf"
        self._pid_file = self.dir / "keepalived.pid"
        self._lock = threading.Lock()

    def put_config(self, text: str) -> bool:
        """Validate with ``keepalived -t`` when keepalived is installed, then install; True if changed."""
        with self._lock:
            if self.config_path.exists() and self.config_path.read_text() == text:
                return False
            candidate = self.dir / ".keepalived.conf.new"
            candidate.write_text(text)
            if shutil.which(KEEPALIVED):
                try:
                    run([KEEPALIVED, "-t", "-f", str(candidate)])
                except CommandFailed as e:
                    candidate.unlink(missing_ok=True)
                    raise InvalidConfig(e.output.strip()) from e
            os.replace(candidate, self.config_path)
            return True

    def get_config(self) -> str:
        if not self.config_path.exists():
            raise LookupError("no keepalived configuration")
        return self.config_path.read_text()

    def pid(self) -> int | None:
        pid = read_pid(str(self._pid_file))
        if pid is None or not pid_alive(pid):
            return None
        args = cmdline(pid)
        if not args or "keepalived" not in args[0] or str(self.config_path) not in args:
            return None
        return pid

    def running(self) -> bool:
        return self.pid() is not None

    def start(self) -> None:
        with self._lock:
            if self.running():
                return
            if not self.config_path.exists():
                raise LookupError("no keepalived configuration")
            run(
                [
                    KEEPALIVED, "--vrrp",
                    "-f", str(self.config_path),
                    "-p", str(self._pid_file),
                    "-r", str(self.dir / "vrrp.pid"),
                    "-c", str(self.dir / "checkers.pid"),
                    "-b", str(self.dir / "bfd.pid"),
                ]
            )  # fmt: skip
            deadline = time.monotonic() + 5.0
            while not self.running() and time.monotonic() < deadline:
                time.sleep(0.05)
            if not self.running():
                raise RuntimeError("keepalived did not start")

    def reload(self) -> None:
        with self._lock:
            pid = self.pid()
        if pid is None:
            self.start()
        else:
            os.kill(pid, signal.SIGHUP)

    def stop(self) -> None:
        with self._lock:
            pid = self.pid()
            if pid is None:
                return
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 5.0
            while pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
            self._pid_file.unlink(missing_ok=True)
