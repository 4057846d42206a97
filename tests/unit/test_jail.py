"""The jail's command line and layout (the jail itself is exercised for real in tests/functional)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cohort.agents.common import jail as jail_module
from cohort.agents.common.jail import UID_BASE, UID_SPAN, Jail, setpriv_argv, uid_for


def _uid() -> int:
    # chown to another user needs root; without it the test's own uid stands in.
    return 2_000_000_777 if os.geteuid() == 0 else os.geteuid()


def test_command_runs_the_program_from_usr_through_the_launcher(tmp_path: Path) -> None:
    jail = Jail(tmp_path / "j", 2_000_000_001, 2_000_000_002)
    cmd = jail.command(["haproxy", "-c", "-f", "/haproxy/x.cfg"])
    launcher, program = cmd[: cmd.index("--")], cmd[cmd.index("--") + 1:]
    assert launcher[1:4] == ["-I", "-m", "cohort.agents.common.jail"]
    assert launcher[launcher.index("--uid") + 1] == "2000000001"
    assert launcher[launcher.index("--gid") + 1] == "2000000002"
    assert "--caps" not in launcher and "--proc" not in launcher
    assert program[0].startswith("/usr/") and program[0].endswith("/haproxy")
    assert program[1:] == ["-c", "-f", "/haproxy/x.cfg"]


def test_command_refuses_programs_outside_usr_and_bad_capabilities(tmp_path: Path) -> None:
    jail = Jail(tmp_path / "j", 2_000_000_001, 2_000_000_001)
    with pytest.raises(FileNotFoundError):
        jail.command(["/tmp/evil"])
    with pytest.raises(ValueError):
        jail.command(["/usr/sbin/keepalived"], caps=["net_admin,sys_admin"])
    with pytest.raises(ValueError):
        jail.command(["/usr/sbin/keepalived"], caps=["NET_ADMIN"])


@pytest.mark.parametrize("uid", [0, -1, 2**32 - 1])
def test_root_and_invalid_ids_are_refused(tmp_path: Path, uid: int) -> None:
    with pytest.raises(ValueError):
        Jail(tmp_path / "j", uid, 2_000_000_001)
    with pytest.raises(ValueError):
        Jail(tmp_path / "j", 2_000_000_001, uid)
    with pytest.raises(ValueError):
        Jail(Path("relative"), 2_000_000_001, 2_000_000_001)


def test_setpriv_drops_to_the_user_with_no_capability_but_those_named() -> None:
    plain = setpriv_argv(5, 6, [], ["/usr/sbin/haproxy"])
    assert plain[0] == "/usr/bin/setpriv"
    assert {"--reuid=5", "--regid=6", "--clear-groups", "--no-new-privs", "--inh-caps=-all",
            "--bounding-set=-all"} <= set(plain)
    assert not any(arg.startswith("--ambient-caps") for arg in plain)
    assert plain[-2:] == ["--", "/usr/sbin/haproxy"]
    vrrp = setpriv_argv(5, 5, ["net_admin", "net_raw"], ["/usr/sbin/keepalived"])
    assert "--bounding-set=-all,+net_admin,+net_raw" in vrrp
    assert "--ambient-caps=+net_admin,+net_raw" in vrrp


def test_uid_for_is_stable_and_in_the_jail_range() -> None:
    assert uid_for("amp-1") == uid_for("amp-1") != uid_for("amp-2")
    assert UID_BASE <= uid_for("x") < UID_BASE + UID_SPAN


def test_prepare_makes_a_walkable_skeleton_and_private_dirs(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        uid = _uid()
        jail = Jail(tmp_path / "j", uid, uid)
        jail.prepare()
        jail.prepare()  # idempotent
        private = jail.private_dir("haproxy")
    finally:
        os.umask(old)
    root = jail.root
    for name in ("usr", "dev", "etc"):
        assert (root / name).stat().st_mode & 0o755 == 0o755
    assert os.readlink(root / "lib") == "usr/lib"
    assert f":{uid}:{uid}:" in (root / "etc" / "passwd").read_text()
    assert jail_module.USER in (root / "etc" / "group").read_text()
    assert private.stat().st_mode & 0o777 == 0o700 and private.stat().st_uid == uid
    assert jail.inside(private) == "/haproxy" and jail.inside(root) == "/"
    assert not jail.holds(os.getpid())
