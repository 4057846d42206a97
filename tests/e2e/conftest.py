"""Fixtures for the real-client tests: one Cohort (noop drivers) per module and a clean client environment."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import running_cohort

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def cohort_base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_cohort(tmp_path_factory.mktemp("cohort"), drivers="noop") as (_, base):
        yield base


@pytest.fixture(scope="module")
def client_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The caller's environment without any OS_* setting or clouds.yaml that could redirect the clients."""
    home = tmp_path_factory.mktemp("home")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"), PYTHONWARNINGS="ignore")
    return env


@pytest.fixture(scope="module")
def openstack_bin() -> str:
    found = BIN / "openstack"
    if found.exists():
        return str(found)
    on_path = shutil.which("openstack")
    if on_path is None:
        pytest.skip("the openstack CLI is not installed (pip install -e '.[test]')")
    return on_path
