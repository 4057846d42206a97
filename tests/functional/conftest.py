"""Fixtures for root tests: labs with a unique prefix and management /24, always torn down.

Each lab is named ``cohort-t{6 hex}`` and takes a management /24 in 198.19.0.0/16 that no
host interface uses yet, so labs of concurrent test runs (and the default ``cohort`` lab)
coexist. Teardown calls ``Lab.down()``, which removes only what that lab made.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cohort.harness import free_mgmt_cidr, private_prefix
from cohort.lab import Lab

IS_ROOT = os.geteuid() == 0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip = pytest.mark.skip(reason="needs root (network namespaces)")
    for item in items:
        if "root" in item.keywords and not IS_ROOT:
            item.add_marker(skip)


def new_lab(state_dir: Path) -> Lab:
    return Lab(state_dir, prefix=private_prefix("t"), mgmt_cidr=free_mgmt_cidr())


@pytest.fixture
def lab_factory(tmp_path: Path) -> Iterator[Callable[[], Lab]]:
    """Makes (not yet up) labs with unique names; downs every one of them afterwards."""
    if not IS_ROOT:
        pytest.skip("needs root (network namespaces)")
    made: list[Lab] = []

    def make() -> Lab:
        lab = new_lab(tmp_path / f"lab{len(made)}")
        made.append(lab)
        return lab

    try:
        yield make
    finally:
        for lab in made:
            lab.down()


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """A lab that is up for the whole test module."""
    if not IS_ROOT:
        pytest.skip("needs root (network namespaces)")
    the_lab = new_lab(tmp_path_factory.mktemp("state") / "lab")  # where the layout keeps it
    try:
        the_lab.up()
        yield the_lab
    finally:
        the_lab.down()
