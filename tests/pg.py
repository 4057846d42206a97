"""A throwaway PostgreSQL server for tests: initdb into a temporary directory, start, hand out databases, stop.

It uses the Debian ``postgresql`` package's binaries (``/usr/lib/postgresql/<version>/bin``),
listens on 127.0.0.1 on a free port and on a unix socket inside its own directory, and runs
without durability (fsync off): it only ever holds test data. The server refuses to run as
root, so when the tests run as root its files belong to the ``postgres`` user and its
commands run through ``runuser``. ``stop()`` stops exactly this server (``pg_ctl stop`` on its
data directory, then its postmaster pid if that did not work) and removes the directory.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from tests.support import free_port

SERVER_USER = "postgres"


def find_bin_dir() -> Path | None:
    """The newest installed PostgreSQL's bin directory that has initdb and pg_ctl."""
    candidates = []
    for path in Path("/usr/lib/postgresql").glob("*/bin"):
        if (path / "initdb").exists() and (path / "pg_ctl").exists():
            try:
                candidates.append((int(path.parent.name.split(".")[0]), path))
            except ValueError:
                continue
    if not candidates:
        found = shutil.which("pg_ctl")
        return Path(found).parent if found and (Path(found).parent / "initdb").exists() else None
    return max(candidates)[1]


def unavailable_reason() -> str | None:
    """Why a throwaway server cannot run here, or None when it can."""
    if find_bin_dir() is None:
        return "PostgreSQL is not installed (apt-get install postgresql; CI installs it)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SERVER_USER)
        except KeyError:
            return f"running as root and there is no '{SERVER_USER}' user to run PostgreSQL as"
        if shutil.which("runuser") is None:
            return "running as root and runuser is missing"
    return None


class ThrowawayPostgres:
    def __init__(self) -> None:
        bin_dir = find_bin_dir()
        if bin_dir is None:
            raise RuntimeError(unavailable_reason() or "PostgreSQL not found")
        self.bin_dir = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="cohort-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = free_port()
        self.host = "127.0.0.1"
        self.started = False

    # The server's own commands run as its user when we are root.
    def _as_server(self, *command: str) -> list[str]:
        return ["runuser", "-u", SERVER_USER, "--", *command] if os.geteuid() == 0 else list(command)

    def _run(self, *command: str, timeout: float = 60) -> None:
        done = subprocess.run(self._as_server(*command), capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}\n"
                               f"{self.log.read_text() if self.log.exists() else ''}")

    def start(self) -> None:
        if os.geteuid() == 0:
            entry = pwd.getpwnam(SERVER_USER)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self._run(str(self.bin_dir / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust",
                  "-E", "UTF8", "--no-locale", "--no-sync")
        options = (f"-c listen_addresses={self.host} -p {self.port} -k {self.root} -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", options,
                  "-w", "-t", "60", "start")
        self.started = True

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@{self.host}:{self.port}/{database}"

    def _admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(f"host={self.host} port={self.port} user=postgres dbname=postgres",
                             autocommit=True) as conn:
            conn.execute(sql.encode())

    def create_database(self, name: str | None = None) -> str:
        """A new empty database; returns its SQLAlchemy URL."""
        name = name or f"cohort_{secrets.token_hex(4)}"
        self._admin(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    def stop(self) -> None:
        try:
            if self.started:
                pid = self.pid()
                try:
                    self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w",
                              "-t", "30", "stop", timeout=45)
                except (RuntimeError, subprocess.TimeoutExpired):
                    if pid is not None:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGKILL)
                        time.sleep(0.5)
                self.started = False
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def throwaway_postgres() -> Iterator[ThrowawayPostgres]:
    server = ThrowawayPostgres()
    try:
        server.start()
        yield server
    finally:
        server.stop()
