from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import Api, running_cohort


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[object, str]]:
    with running_cohort(tmp_path, drivers="noop") as pair:
        yield pair


@pytest.fixture
def api(server: tuple[object, str]) -> Api:
    return Api(server[1])
