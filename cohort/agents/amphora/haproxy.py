"""HAProxy instances of the amphora: one per load balancer, each in master-worker mode, jailed.

Every HAProxy process (the ``-c`` check included) runs in the amphora's jail
(``cohort.agents.common.jail``): its own unprivileged user, chrooted into a directory that
holds nothing but its own configuration, sockets and certificates. Paths in the
configuration and on HAProxy's command line are therefore the jail's (``/haproxy/...``,
``/certs/...``); the agent, as root outside, reaches the same files under the jail's root.

Owns the layout the configuration renderer (``cohort.drivers.amphora.haproxy_config``)
refers to, under one flat directory (``haproxy_state_dir`` in ``/1.0/info``): for load
balancer ``L`` the installed ``L.cfg``, the master's pid file ``L.pid``, the admin stats
socket ``L.sock``, the server state file ``L.state`` (saved before each reload so members
found down stay down), the master CLI ``L.master``, and ``ping-wrapper.sh`` for PING
monitors. A PROMETHEUS listener's renaming proxy (``metrics``) runs while its HAProxy
does, on ``L-metrics.sock``. When that directory's path is too long for UNIX socket names, the agent
works through a short name for it (``/proc/self/fd/N`` of a descriptor it holds).
Certificates live in ``/certs/L/`` of the jail.

A configuration is validated with ``haproxy -c`` before it replaces the installed one.
HAProxy runs daemonized (``-W -D``), so it outlives the agent; a new agent adopts it
through the pid file. Reload is the master's seamless one (``SIGUSR2``): new workers
take the listening sockets over, old workers finish their connections.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

from cohort.agents.amphora import stats
from cohort.agents.amphora.metrics import MetricsProxies
from cohort.agents.common.files import atomic_write, short_dir
from cohort.agents.common.jail import Jail
from cohort.agents.common.proc import CommandFailed, cmdline, pid_alive, read_pid, run

LOG = logging.getLogger(__name__)

HAPROXY = "haproxy"
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_FILE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
# The longest socket name under the state directory: "/" + a 64-character id + "-prometheus.sock".
_SOCKET_NAME_MAX = 1 + 64 + len("-prometheus.sock")
REVALIDATE = 2.0
# A HAProxy that keeps dying is started again at most this often.
RESTART_BACKOFF = 1.0


class InvalidConfig(ValueError):
    """HAProxy refused the configuration; the message is HAProxy's."""


def check_id(value: str, what: str = "id") -> str:
    if not _ID_RE.match(value):
        raise ValueError(f"invalid {what} {value!r}")
    return value


def haproxy_version() -> str:
    try:
        first = run([HAPROXY, "-v"]).splitlines()[0]
    except (OSError, CommandFailed, IndexError):
        return "unknown"
    match = re.search(r"version (\S+)", first)
    return match.group(1) if match else first


PING_WRAPPER = """#!/bin/sh
# HAProxy external check: $3 is the server address. Written by the cohort amphora agent.
case "$3" in
  *:*) exec ping -6 -q -n -c 1 -W 1 "$3" >/dev/null 2>&1 ;;
  *) exec ping -q -n -c 1 -W 1 "$3" >/dev/null 2>&1 ;;
esac
"""


class HaproxyManager:
    def __init__(self, jail: Jail, stop_grace: float = 5.0) -> None:
        self.jail = jail
        jail.prepare()
        real = jail.private_dir("haproxy")
        self.dir = short_dir(real, _SOCKET_NAME_MAX)
        self.inner_dir = jail.inside(real)
        certs = jail.private_dir("certs")
        self.certs_root = certs
        self.inner_certs_root = jail.inside(certs)
        wrapper = self.dir / "ping-wrapper.sh"
        wrapper.write_text(PING_WRAPPER)
        wrapper.chmod(0o755)
        self.stop_grace = stop_grace
        self._lock = threading.RLock()
        self.metrics = MetricsProxies(self.dir, self.inner_dir, jail.give)
        self._alive: dict[str, tuple[int | None, float]] = {}
        # Load balancers whose HAProxy should run: started, or found running, and not stopped or drained
        # since. One that dies anyway is started again (``supervise``), as systemd would in a VM.
        self._wanted: set[str] = set()
        self._restarted: dict[str, float] = {}

    def resume(self) -> None:
        """Serve the metrics of the HAProxy instances a previous agent left running."""
        for lb_id in self.lb_ids():
            if self.running(lb_id):
                self._wanted.add(lb_id)
                self.metrics.sync(lb_id, self.config_path(lb_id))

    def supervise(self, before_restart: Callable[[str], object] = lambda _lb_id: None) -> list[str]:
        """Start again every wanted HAProxy that died (at most once a ``RESTART_BACKOFF``); returns them.
        ``before_restart(lb_id)`` runs first: an L3 amphora withdraws the VIP of a dead HAProxy then."""
        restarted = []
        for lb_id in sorted(self._wanted):
            if self.alive(lb_id) or time.monotonic() - self._restarted.get(lb_id, -RESTART_BACKOFF) < RESTART_BACKOFF:
                continue
            before_restart(lb_id)
            with self._lock:
                if lb_id not in self._wanted or self.running(lb_id):
                    continue
                self._restarted[lb_id] = time.monotonic()
                LOG.warning("haproxy of %s died: starting it again", lb_id)
                try:
                    self._start(lb_id)
                    self.metrics.sync(lb_id, self.config_path(lb_id))
                except Exception:  # noqa: BLE001 - try again after the backoff
                    LOG.exception("could not start haproxy of %s again", lb_id)
                    continue
                restarted.append(lb_id)
        return restarted

    # -- layout ---------------------------------------------------------------------------------
    def _path(self, lb_id: str, suffix: str) -> Path:
        return self.dir / f"{check_id(lb_id, 'load balancer id')}{suffix}"

    def _inner(self, lb_id: str, suffix: str) -> str:
        """The path HAProxy, in its jail, knows ``_path(lb_id, suffix)`` by."""
        return f"{self.inner_dir}/{check_id(lb_id, 'load balancer id')}{suffix}"

    def cert_dir(self, lb_id: str) -> Path:
        return self.certs_root / check_id(lb_id, "load balancer id")

    def config_path(self, lb_id: str) -> Path:
        return self._path(lb_id, ".cfg")

    def stats_socket(self, lb_id: str) -> Path:
        return self._path(lb_id, ".sock")

    def _master_socket(self, lb_id: str) -> Path:
        return self._path(lb_id, ".master")

    def _pid_file(self, lb_id: str) -> Path:
        return self._path(lb_id, ".pid")

    def _extra_cfg(self, lb_id: str) -> Path:
        return self._path(lb_id, ".agent")

    def lb_ids(self) -> list[str]:
        return sorted(p.name[: -len(".cfg")] for p in self.dir.glob("*.cfg"))

    # -- configuration --------------------------------------------------------------------------
    def get_config(self, lb_id: str) -> str:
        path = self.config_path(lb_id)
        if not path.exists():
            raise LookupError(f"no configuration for load balancer {lb_id}")
        return path.read_text()

    def _write_extra(self, lb_id: str, path: Path, text: str) -> None:
        """The agent's own snippet, always passed with ``-f`` (a reload re-executes the same
        command line): a stats socket where the agent reads it, unless the config binds one there."""
        sock = self._inner(lb_id, ".sock")
        if re.search(rf"^\s*stats\s+socket\s+{re.escape(sock)}\s", text, re.MULTILINE):
            path.write_text("# the configuration binds the agent's stats socket itself\n")
        else:
            path.write_text(f"global\n    stats socket {sock} mode 600 level admin expose-fd listeners\n")
        self.jail.give(path)

    def put_config(self, lb_id: str, text: str) -> bool:
        """Validate ``text`` and install it; InvalidConfig leaves the installed one untouched.

        Returns whether the installed configuration changed.
        """
        with self._lock:
            path = self.config_path(lb_id)
            if path.exists() and path.read_text() == text:
                return False
            self._cert_dir_made(lb_id)
            candidate, extra = self._path(lb_id, ".cfg.new"), self._path(lb_id, ".agent.new")
            candidate.write_text(text)
            self.jail.give(candidate)
            self._write_extra(lb_id, extra, text)
            try:
                run(self.jail.command([HAPROXY, "-c", "-f", self._inner(lb_id, ".cfg.new"),
                                       "-f", self._inner(lb_id, ".agent.new")]))
            except CommandFailed as e:
                candidate.unlink(missing_ok=True)
                extra.unlink(missing_ok=True)
                raise InvalidConfig(e.output.strip()) from e
            os.replace(extra, self._extra_cfg(lb_id))
            os.replace(candidate, path)
            return True

    # -- processes ------------------------------------------------------------------------------
    def master_pid(self, lb_id: str) -> int | None:
        """The running master of this load balancer, found through its pid file."""
        pid = read_pid(str(self._pid_file(lb_id)))
        if pid is None or not pid_alive(pid):
            return None
        args = cmdline(pid)
        # The pid may have been reused by an unrelated process after a host reboot, or belong to the
        # same load balancer's HAProxy on another amphora: only this jail's process counts.
        if not args or "haproxy" not in args[0] or self._inner(lb_id, ".cfg") not in args:
            return None
        return pid if self.jail.holds(pid) else None

    def running(self, lb_id: str) -> bool:
        return self.master_pid(lb_id) is not None

    def known_masters(self) -> list[int]:
        """The masters ``alive`` last found for the wanted load balancers: what a supervisor waits on."""
        return [pid for lb_id in sorted(self._wanted) if (pid := self._alive.get(lb_id, (None, 0.0))[0]) is not None]

    def alive(self, lb_id: str) -> bool:
        """``running``, cheap enough to ask ten times a second from inside a capped amphora: the
        known master's state is read from /proc (a killed one is a zombie until it is reaped, which a
        signal 0 would miss) and fully re-validated every ``REVALIDATE`` seconds."""
        now = time.monotonic()
        known, checked = self._alive.get(lb_id, (None, 0.0))
        if known is not None and now - checked < REVALIDATE and pid_alive(known):
            return True
        pid = self.master_pid(lb_id)
        self._alive[lb_id] = (pid, now)
        return pid is not None

    def start(self, lb_id: str) -> None:
        with self._lock:
            self._start(lb_id)
            self._wanted.add(lb_id)
            self.metrics.sync(lb_id, self.config_path(lb_id))

    def _start(self, lb_id: str) -> None:
        if self.running(lb_id):
            return
        self._write_extra(lb_id, self._extra_cfg(lb_id), self.get_config(lb_id))
        master = self._master_socket(lb_id)
        master.unlink(missing_ok=True)
        run(
            self.jail.command([
                HAPROXY, "-W", "-D",
                "-S", f"{self._inner(lb_id, '.master')},mode,600",
                "-p", self._inner(lb_id, ".pid"),
                "-f", self._inner(lb_id, ".cfg"),
                "-f", self._inner(lb_id, ".agent"),
            ])
        )  # fmt: skip

    def _workers(self, lb_id: str) -> set[int]:
        """Pids of the current (not old) workers, from the master CLI's ``show proc``."""
        try:
            text = stats.query(str(self._master_socket(lb_id)), "show proc")
        except OSError:
            return set()
        workers: set[int] = set()
        section = ""
        for line in text.splitlines():
            if line.startswith("#"):
                section = line
                continue
            fields = line.split()
            if section.startswith("# workers") and len(fields) > 1 and fields[1] == "worker":
                workers.add(int(fields[0]))
        return workers

    def _save_server_state(self, lb_id: str) -> None:
        try:
            state = stats.query(str(self.stats_socket(lb_id)), "show servers state")
        except OSError:
            return
        path = self._path(lb_id, ".state")
        atomic_write(path, state)
        self.jail.give(path)

    def reload(self, lb_id: str, timeout: float = 10.0) -> None:
        """Seamless reload onto the installed configuration; starts HAProxy if it is not running."""
        with self._lock:
            pid = self.master_pid(lb_id)
            if pid is None:
                self.start(lb_id)
                return
            self._save_server_state(lb_id)
            before = self._workers(lb_id)
            os.kill(pid, signal.SIGUSR2)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                now = self._workers(lb_id)
                if now and not now <= before:
                    # The new configuration may have gained or lost its PROMETHEUS listeners.
                    self.metrics.sync(lb_id, self.config_path(lb_id))
                    return
                time.sleep(0.05)
            raise RuntimeError(f"haproxy of {lb_id} did not reload within {timeout}s")

    def drain(self, lb_id: str) -> None:
        """Soft stop without waiting: HAProxy stops accepting, answers the requests in flight and, on HTTP
        listeners (``option idle-close-on-response``), the next request of each idle keep-alive
        connection with ``Connection: close``, and exits when the last connection ends.

        Clients then reconnect, and their new connections reach amphorae that stay.
        """
        with self._lock:
            self._wanted.discard(lb_id)
            pid = self.master_pid(lb_id)
            if pid is not None:
                os.kill(pid, signal.SIGUSR1)

    def stop(self, lb_id: str) -> None:
        """Soft stop (connections may finish for ``stop_grace`` seconds), then terminate."""
        with self._lock:
            self._wanted.discard(lb_id)
            self.metrics.stop(lb_id)
            pid = self.master_pid(lb_id)
            if pid is None:
                return
            for sig, wait in ((signal.SIGUSR1, self.stop_grace), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    break
                deadline = time.monotonic() + wait
                while pid_alive(pid) and time.monotonic() < deadline:
                    time.sleep(0.05)
                if not pid_alive(pid):
                    break
            self._pid_file(lb_id).unlink(missing_ok=True)

    def delete(self, lb_id: str) -> None:
        with self._lock:
            self.stop(lb_id)
            for suffix in (".cfg", ".agent", ".state", ".sock", ".master", ".pid", ".cfg.new", ".agent.new",
                           "-metrics.sock", "-prometheus.sock"):
                self._path(lb_id, suffix).unlink(missing_ok=True)
            shutil.rmtree(self.cert_dir(lb_id), ignore_errors=True)

    # -- certificates ---------------------------------------------------------------------------
    def put_certificate(self, lb_id: str, filename: str, pem: bytes) -> tuple[Path, bool]:
        """Store a PEM file (0600); returns its path and whether its content changed."""
        if not _FILE_RE.match(filename):
            raise ValueError(f"invalid certificate file name {filename!r}")
        d = self._cert_dir_made(lb_id)
        path = d / filename
        if path.exists() and path.read_bytes() == pem:
            return path, False
        atomic_write(path, pem, mode=0o600)
        self.jail.give(path)
        return path, True

    def _cert_dir_made(self, lb_id: str) -> Path:
        d = self.cert_dir(lb_id)
        d.mkdir(exist_ok=True, mode=0o700)
        self.jail.give(d)
        return d

    # -- runtime state --------------------------------------------------------------------------
    def show_stat(self, lb_id: str) -> list[dict[str, str]]:
        if not self.running(lb_id):
            return []
        try:
            return stats.show_stat(str(self.stats_socket(lb_id)))
        except OSError:
            return []
