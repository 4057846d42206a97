"""Layers point one way: what runs with noop drivers loads neither the lab nor the namespace code,
and the import contracts of ``make lint`` hold."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _loaded_after(code: str) -> set[str]:
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(m for m in sys.modules if m.startswith('cohort'))))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    return set(json.loads(out.splitlines()[-1]))


def test_noop_drivers_load_neither_the_lab_nor_netns(tmp_path: Path) -> None:
    loaded = _loaded_after(
        "from cohort.config import Settings\n"
        "from cohort.controller.wiring import make_drivers\n"
        "import cohort.drivers.compute.noop, cohort.drivers.network.noop\n"
        "import cohort.drivers.amphora.noop, cohort.drivers.distributor.noop\n"
        f"make_drivers(Settings(state_dir={str(tmp_path)!r}))\n"
    )
    assert "cohort.drivers.compute.noop" in loaded and "cohort.controller.wiring" in loaded
    assert not {m for m in loaded if m == "cohort.lab" or m.startswith("cohort.lab.")}
    assert "cohort.netns" not in loaded
    # No CA, key or certificate is made for drivers that talk to nobody.
    assert not (tmp_path / "pki").exists()


def test_the_api_loads_no_driver_controller_or_lab() -> None:
    loaded = _loaded_after("import cohort.api.app, cohort.api.routes.loadbalancers")
    assert not {m for m in loaded if m.startswith(("cohort.drivers", "cohort.controller", "cohort.lab"))}
    assert "cohort.netns" not in loaded


def test_import_contracts_hold() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint), "--no-cache"], capture_output=True, text=True, cwd=ROOT, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout
