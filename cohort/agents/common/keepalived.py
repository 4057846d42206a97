"""keepalived (VRRP) run by an agent: validated config, start, reload, stop, adoption.

Both agents use it: ACTIVE_STANDBY amphorae (their VIP between two amphorae) and the L2
distributor pair (every VIP between two distributors). keepalived runs in the agent's jail
(``cohort.agents.common.jail``) as its unprivileged user, keeping only the capabilities the
caller names: ``net_admin`` (the VIPs) and ``net_raw`` (VRRP and gratuitous ARP), plus
``setgid`` where a track script runs (keepalived insists on setting the script's group). Its
procfs shows that user's processes only. Its configuration and pid files are the jail's paths
(``/vrrp/...``). It daemonizes, so it survives a restart of the agent, which adopts it.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from collections.abc import Sequence

from cohort.agents.common.jail import Jail
from cohort.agents.common.proc import CommandFailed, cmdline, pid_alive, read_pid, run

KEEPALIVED = "keepalived"
VRRP_CAPABILITIES = ("net_admin", "net_raw")


class InvalidConfig(ValueError):
    """keepalived refused a configuration (``keepalived -t``); its message says why."""


class KeepalivedManager:
    def __init__(self, jail: Jail, caps: Sequence[str] = VRRP_CAPABILITIES) -> None:
        self.jail = jail
        self.caps = tuple(caps)
        jail.prepare()
        self.dir = jail.private_dir("vrrp")
        self.inner_dir = jail.inside(self.dir)
        self.config_path = self.dir / "keepalived.conf"
        self._pid_file = self.dir / "keepalived.pid"
        self._lock = threading.Lock()

    def _inner(self, name: str) -> str:
        return f"{self.inner_dir}/{name}"

    def _run(self, argv: list[str]) -> str:
        return run(self.jail.command(argv, caps=self.caps, proc=True))

    def put_config(self, text: str) -> bool:
        """Validate with ``keepalived -t`` when keepalived is installed, then install; True if changed."""
        with self._lock:
            if self.config_path.exists() and self.config_path.read_text() == text:
                return False
            candidate = self.dir / ".keepalived.conf.new"
            candidate.write_text(text)
            self.jail.give(candidate)
            if shutil.which(KEEPALIVED):
                try:
                    self._run([KEEPALIVED, "-t", "-f", self._inner(candidate.name)])
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
        if not args or "keepalived" not in args[0] or self._inner(self.config_path.name) not in args:
            return None
        return pid if self.jail.holds(pid) else None

    def running(self) -> bool:
        return self.pid() is not None

    def start(self) -> None:
        with self._lock:
            if self.running():
                return
            if not self.config_path.exists():
                raise LookupError("no keepalived configuration")
            self._run(
                [
                    KEEPALIVED, "--vrrp",
                    "-f", self._inner(self.config_path.name),
                    "-p", self._inner(self._pid_file.name),
                    "-r", self._inner("vrrp.pid"),
                    "-c", self._inner("checkers.pid"),
                    "-b", self._inner("bfd.pid"),
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
