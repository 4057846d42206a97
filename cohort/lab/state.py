"""The lab's state file: one JSON document per lab, read and written only under an exclusive lock.

The controller, the ``cohort lab`` commands and tests are separate processes that share one
lab; every change happens in :meth:`LabStateFile.transaction`, which holds an ``fcntl`` lock
on a file beside the state, re-reads it, and saves it (atomically) on the way out, also when
the body fails: records are written before the kernel objects they describe are made, and
making those is idempotent, so a retry (or ``down()``) finds everything that may exist.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class LabStateFile:
    def __init__(self, directory: Path, prefix: str) -> None:
        self.directory = directory
        self.path = directory / f"lab-{prefix}.json"
        self._lock_path = directory / f"lab-{prefix}.lock"
        self._tlock = threading.RLock()
        self._depth = 0
        self._state: dict[str, Any] = {}

    def read(self) -> dict[str, Any]:
        """The saved state, without the lock (a possibly stale view, for reads that tolerate it)."""
        try:
            data = json.loads(self.path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}
        return data if isinstance(data, dict) else {}

    @contextlib.contextmanager
    def transaction(self) -> Iterator[dict[str, Any]]:
        """The state under the lock (re-entrant within a thread), saved on exit."""
        with self._tlock:
            if self._depth:
                self._depth += 1
                try:
                    yield self._state
                finally:
                    self._depth -= 1
                return
            self.directory.mkdir(parents=True, exist_ok=True)
            with open(self._lock_path, "a+") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                self._state = self.read()
                before = json.dumps(self._state, sort_keys=True)
                self._depth = 1
                try:
                    yield self._state
                finally:
                    self._depth = 0
                    if json.dumps(self._state, sort_keys=True) != before:
                        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
                        tmp.write_text(json.dumps(self._state, sort_keys=True, indent=1))
                        os.replace(tmp, self.path)

    def snapshot(self) -> dict[str, Any]:
        with self.transaction() as state:
            return json.loads(json.dumps(state))  # type: ignore[no-any-return]
