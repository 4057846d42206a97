"""Serve Keystone's public WSGI application with gunicorn; run by the Keystone virtualenv's python.

Keystone parses the process's arguments with oslo.config, so gunicorn's own command line cannot
be used: this runner takes ``CONFIG HOST PORT``, clears ``sys.argv`` and drives gunicorn from code.
It imports nothing of Cohort (Keystone lives in a virtualenv of its own).
"""

from __future__ import annotations

import os
import sys
from typing import Any


def main() -> None:
    config, host, port = sys.argv[1:4]
    os.environ["OS_KEYSTONE_CONFIG_FILES"] = config
    sys.argv = [sys.argv[0]]
    from gunicorn.app.base import BaseApplication

    class Keystone(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            self.cfg.set("bind", f"{host}:{port}")
            # One worker: Keystone on SQLite fails requests whose transactions race for the write lock.
            self.cfg.set("workers", 1)
            self.cfg.set("timeout", 120)
            self.cfg.set("accesslog", None)

        def load(self) -> Any:
            from keystone.server import wsgi

            return wsgi.initialize_public_application()

    Keystone().run()


if __name__ == "__main__":
    main()
