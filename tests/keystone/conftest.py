from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.keystone.lab import KeystoneLab
from tests.support import running_cohort


@pytest.fixture(scope="session")
def keystone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeystoneLab]:
    lab = KeystoneLab(tmp_path_factory.mktemp("keystone")).start()
    try:
        yield lab
    finally:
        lab.stop()


@pytest.fixture(scope="module")
def cohort_keystone(keystone: KeystoneLab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Cohort on noop drivers validating Keystone tokens, in the catalogue as load-balancer, network and
    key-manager (its Barbican-compatible ``/v1``)."""
    state: Path = tmp_path_factory.mktemp("cohort-keystone")
    with running_cohort(state, drivers="noop", auth_strategy="keystone", keystone_auth_url=keystone.url,
                        keystone_cache_seconds=60) as (_, url):
        if not keystone.call("GET", "/services?type=load-balancer")["services"]:
            keystone.register_service("load-balancer", "octavia", url)
            keystone.register_service("network", "neutron", url)
            keystone.register_service("key-manager", "barbican", url + "/v1")
        yield url
