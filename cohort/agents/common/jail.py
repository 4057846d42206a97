"""Jails for the daemons an agent runs on a tenant's behalf (HAProxy, keepalived, the BGP speaker).

A tenant's values shape these daemons' configurations, so none of them may run as root or
see the host: a parser bug, or a value that slipped past validation, must find nothing to
read and nothing to write. A jail is one directory of the agent's state that becomes the
daemon's whole filesystem:

- a private mount namespace in which ``/usr`` (binaries and libraries, Debian's merged
  ``/bin``, ``/lib`` ... are symlinks into it) is bound read-only, ``nosuid``, ``nodev``,
  with ``/dev/null`` and ``/dev/urandom``, and, only when asked, a procfs mounted
  ``hidepid=invisible`` so the jail's user sees its own processes and no other;
- ``chroot`` into the directory, then ``setpriv`` drops to the jail's own uid and gid,
  clears supplementary groups, sets ``no_new_privs`` and keeps no capability but the ones
  named (keepalived needs ``net_admin``/``net_raw`` for VRRP, nothing else needs any).

Each amphora has its own uid (allocated by the compute driver), so the daemons of two
amphorae cannot signal or trace each other. ``/etc`` of the jail holds only a passwd and a
group file naming that user, for daemons that look a user up by name.

The launcher is this module run as a program (``python -m cohort.agents.common.jail``): it
does the mounting and the chroot as root in its own short-lived process, then replaces
itself with ``setpriv`` and the daemon, so the agent's threads never fork into a half-set-up
namespace.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import os
import re
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

SETPRIV = "/usr/bin/setpriv"
USER = "cohort-jail"
_CAP = re.compile(r"^[a-z_]{1,32}$")
_LINKS = ("bin", "sbin", "lib", "lib64")
_DEVICES = ("null", "urandom")
# First uid of the range jails use; far above regular users and the usual subordinate-id ranges.
UID_BASE = 2_000_000_000
UID_SPAN = 100_000_000

CLONE_NEWNS = 0x00020000
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000


def uid_for(identity: str) -> int:
    """A uid in the jail range derived from an instance id, for agents started without one."""
    return UID_BASE + int.from_bytes(hashlib.sha256(identity.encode()).digest()[:8], "big") % UID_SPAN


@dataclass(frozen=True)
class Jail:
    root: Path
    uid: int
    gid: int

    def __post_init__(self) -> None:
        if not self.root.is_absolute():
            raise ValueError(f"jail root {self.root} must be absolute")
        for value, what in ((self.uid, "uid"), (self.gid, "gid")):
            if not 0 < value < 2**32 - 1:
                raise ValueError(f"jail {what} {value} is out of range")

    def prepare(self) -> None:
        """Create the skeleton: mount points, the merged-/usr symlinks and the user's passwd entry."""
        self.root.mkdir(parents=True, exist_ok=True, mode=0o755)
        # The jail's user must be able to walk into its root; nothing in it but its own dirs is writable.
        self.root.chmod(0o755)
        # Modes are set explicitly: the agent's umask keeps what it creates private, but the jail's
        # user must be able to walk these.
        for name, mode in (("usr", 0o755), ("proc", 0o555), ("dev", 0o755), ("etc", 0o755)):
            (self.root / name).mkdir(exist_ok=True)
            (self.root / name).chmod(mode)
        for device in _DEVICES:
            (self.root / "dev" / device).touch(exist_ok=True)
        for link in _LINKS:
            path = self.root / link
            if not path.is_symlink():
                path.symlink_to(f"usr/{link}")
        etc = self.root / "etc"
        _write_if_changed(etc / "passwd", f"{USER}:x:{self.uid}:{self.gid}::/nonexistent:/usr/sbin/nologin\n")
        _write_if_changed(etc / "group", f"{USER}:x:{self.gid}:\n")

    def private_dir(self, name: str) -> Path:
        """A directory of the jail owned by its user (mode 0700), created if missing."""
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.give(path)
        path.chmod(0o700)
        return path

    def give(self, path: Path) -> None:
        """Hand a file the agent wrote (as root) inside the jail to the jail's user."""
        os.chown(path, self.uid, self.gid, follow_symlinks=False)

    def inside(self, host_path: Path) -> str:
        """``host_path`` as the jailed daemon sees it."""
        relative = host_path.relative_to(self.root)
        return "/" + relative.as_posix() if str(relative) != "." else "/"

    def holds(self, pid: int) -> bool:
        """Whether process ``pid`` runs chrooted in this jail (a pid file alone can be stale or reused)."""
        try:
            return os.readlink(f"/proc/{pid}/root") == str(self.root)
        except OSError:
            return False

    def command(self, argv: Sequence[str], caps: Sequence[str] = (), proc: bool = False) -> list[str]:
        """The command line that runs ``argv`` (paths as seen inside) in this jail."""
        for cap in caps:
            if not _CAP.match(cap):
                raise ValueError(f"invalid capability name {cap!r}")
        program = argv[0] if "/" in argv[0] else shutil.which(argv[0])
        if program is None or not program.startswith("/usr/"):
            # /usr is all of the host a jail sees.
            raise FileNotFoundError(f"{argv[0]!r} is not a program under /usr")
        launcher = [sys.executable, "-I", "-m", "cohort.agents.common.jail", "--root", str(self.root),
                    "--uid", str(self.uid), "--gid", str(self.gid)]
        if caps:
            launcher += ["--caps", ",".join(caps)]
        if proc:
            launcher.append("--proc")
        return [*launcher, "--", program, *argv[1:]]


def _write_if_changed(path: Path, text: str) -> None:
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
        path.chmod(0o644)


# -- the launcher: runs as root in its own process, then becomes setpriv and the daemon ----------

def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _mount(libc: ctypes.CDLL, source: str | None, target: str, fstype: str | None, flags: int,
           data: str | None = None) -> None:
    _check(
        libc.mount(
            source.encode() if source else None,
            target.encode(),
            fstype.encode() if fstype else None,
            ctypes.c_ulong(flags),
            data.encode() if data else None,
        ),
        f"mount {target}",
    )


def enter(root: Path, proc: bool) -> None:
    """Make a private mount namespace with the jail's binds, and chroot into ``root``."""
    libc = _libc()
    _check(libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    # Nothing mounted from here on may propagate back to the host's namespace.
    _mount(libc, None, "/", None, MS_REC | MS_PRIVATE)
    usr = str(root / "usr")
    _mount(libc, "/usr", usr, None, MS_BIND | MS_REC)
    _mount(libc, None, usr, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    for device in _DEVICES:
        _mount(libc, f"/dev/{device}", str(root / "dev" / device), None, MS_BIND)
    if proc:
        _mount(libc, "proc", str(root / "proc"), "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, "hidepid=invisible")
    os.chroot(root)
    os.chdir("/")


def setpriv_argv(uid: int, gid: int, caps: Sequence[str], argv: Sequence[str]) -> list[str]:
    kept = "".join(f",+{cap}" for cap in caps)
    command = [SETPRIV, f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--no-new-privs",
               f"--inh-caps=-all{kept}", f"--bounding-set=-all{kept}"]
    if caps:
        command.append("--ambient-caps=" + ",".join(f"+{cap}" for cap in caps))
    return [*command, "--", *argv]


def main(args: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cohort.agents.common.jail")
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--uid", type=int, required=True)
    parser.add_argument("--gid", type=int, required=True)
    parser.add_argument("--caps", default="")
    parser.add_argument("--proc", action="store_true")
    parser.add_argument("argv", nargs="+")
    opts = parser.parse_args(args)
    jail = Jail(opts.root, opts.uid, opts.gid)
    caps = [cap for cap in opts.caps.split(",") if cap]
    jail.command(opts.argv, caps)  # validates the capability names
    enter(jail.root, opts.proc)
    command = setpriv_argv(jail.uid, jail.gid, caps, opts.argv)
    os.execv(command[0], command)
    return 127  # not reached: execv replaces this process or raises


if __name__ == "__main__":
    sys.exit(main())
