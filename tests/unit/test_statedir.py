"""The state directory is private: 0700, and the database and keys in it 0600, also when an older
Cohort left them readable."""

from __future__ import annotations

import stat
from pathlib import Path

from cohort.statedir import make_private
from tests.support import Api, running_cohort


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_make_private_tightens_what_an_older_cohort_left(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    (state / "cohort.db").write_text("x")
    (state / "cohort.db").chmod(0o644)
    (state / "secrets.key").write_text("k")
    (state / "secrets.key").chmod(0o640)
    make_private(state)
    assert _mode(state) == 0o700
    assert _mode(state / "cohort.db") == 0o600 and _mode(state / "secrets.key") == 0o600


def test_a_running_cohort_keeps_its_files_private(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with running_cohort(state, drivers="noop") as (_cohort, base):
        api = Api(base)
        # An encrypted password makes the secrets key.
        status, body = api.post("/v2/octavia/bgp_peers", {"bgp_peer": {
            "peer_ip": "203.0.113.1", "remote_as": 64512, "auth_type": "md5", "md5_password": "pw"}})
        assert status == 201, body
    assert _mode(state) == 0o700
    files = [p for p in state.iterdir() if p.is_file()]
    assert {"cohort.db", "secrets.key"} <= {p.name for p in files}
    loose = {p.name: oct(_mode(p)) for p in files if _mode(p) & 0o077}
    assert not loose, loose
