"""The README's `openstack` walkthrough, word for word, after `cohort up --demo`.

The block marked ``<!-- walkthrough -->`` in README.md runs in bash (``set -e``) against a
private Cohort on a private lab where the demo load balancer already runs, as after ``make up``.
Only its configuration differs: the API address in ``OS_ENDPOINT`` is the private one, and
``COHORT_STATE_DIR``/``COHORT_LAB_PREFIX`` point ``cohort lab`` at the private lab. Every member
it adds must serve, and the load balancer must spread requests over them.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from cohort import harness
from cohort.demo import run_demo

pytestmark = [pytest.mark.root, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
DEFAULT_ENDPOINT = "http://127.0.0.1:9876"


def walkthrough() -> str:
    readme = (ROOT / "README.md").read_text()
    found = re.search(r"<!-- walkthrough -->\n```sh\n(.*?)```", readme, re.S)
    assert found, "README.md has no walkthrough block"
    return found.group(1)


def test_readme_walkthrough_runs_word_for_word(tmp_path: Path, client_env: dict[str, str]) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    script = walkthrough()
    assert DEFAULT_ENDPOINT in script
    with harness.private_cohort(tmp_path / "state", tag="r") as cohort:
        run_demo(cohort.settings, Console(file=open(os.devnull, "w")))  # noqa: SIM115 - closed with the process
        env = {**client_env, "COHORT_STATE_DIR": str(cohort.settings.state_dir),
               "COHORT_LAB_PREFIX": cohort.settings.lab_prefix,
               "PATH": f"{Path(sys.executable).parent}:{client_env.get('PATH', '')}"}
        done = subprocess.run(["bash", "-e", "-c", script.replace(DEFAULT_ENDPOINT, cohort.base)], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=600, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        answers = [line for line in done.stdout.splitlines() if line in ("web1", "web2")]
        # Four requests, round robin over both members the walkthrough added.
        assert sorted(answers) == ["web1", "web1", "web2", "web2"], done.stdout
        assert cohort.lab is not None
        assert not {"web1", "web2"} & {m["name"] for m in cohort.lab.status()["members"]}
