"""A real Keystone for the tests: from PyPI, in its own virtualenv, on SQLite, served by gunicorn.

``make install`` builds the virtualenv (``.venv-keystone``); :class:`KeystoneLab` configures a
Keystone in a directory of its own, bootstraps it (``keystone-manage``: database, Fernet keys,
admin user, a catalogue with Keystone itself), serves it on a free port of 127.0.0.1 and makes
projects, users and role assignments through Keystone's own v3 API. It removes what it started.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / ".venv-keystone"
ADMIN_PASSWORD = "cohort-keystone-admin"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class KeystoneLab:
    workdir: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    _token: str | None = None
    _roles: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v3"

    def _manage(self, *args: str) -> None:
        command = [str(VENV / "bin" / "keystone-manage"), "--config-file", str(self.workdir / "keystone.conf"), *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise RuntimeError(f"keystone-manage {args[0]} failed: {done.stderr[-2000:]}")

    def start(self) -> KeystoneLab:
        if not (VENV / "bin" / "keystone-manage").exists():
            raise RuntimeError(f"{VENV} has no Keystone: run `make install` (it builds the Keystone virtualenv)")
        for sub in ("fernet", "credential"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        (self.workdir / "keystone.conf").write_text(
            "[DEFAULT]\n"
            f"log_file = {self.workdir / 'keystone.log'}\n"
            "[database]\n"
            # Wait for SQLite's write lock (held by a request of keystone-manage) rather than fail at once.
            f"connection = sqlite:///{self.workdir / 'keystone.db'}?timeout=60\n"
            "[token]\nprovider = fernet\nexpiration = 7200\n"
            # Test passwords need no costly hash: tempest makes seven users per test class.
            "[identity]\npassword_hash_algorithm = bcrypt\npassword_hash_rounds = 4\n"
            f"[fernet_tokens]\nkey_repository = {self.workdir / 'fernet'}\n"
            f"[fernet_receipts]\nkey_repository = {self.workdir / 'fernet'}\n"
            f"[credential]\nkey_repository = {self.workdir / 'credential'}\n"
        )
        user = ["--keystone-user", "root", "--keystone-group", "root"] if os.geteuid() == 0 else []
        self._manage("db_sync")
        self._manage("fernet_setup", *user)
        self._manage("credential_setup", *user)
        self._manage("bootstrap", "--bootstrap-password", ADMIN_PASSWORD, "--bootstrap-region-id", "RegionOne",
                     "--bootstrap-public-url", self.url, "--bootstrap-internal-url", self.url,
                     "--bootstrap-admin-url", self.url)
        log = (self.workdir / "server.log").open("wb")
        self.process = subprocess.Popen(
            [str(VENV / "bin" / "python"), str(Path(__file__).with_name("server.py")),
             str(self.workdir / "keystone.conf"), "127.0.0.1", str(self.port)],
            stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir, start_new_session=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Keystone exited: {(self.workdir / 'server.log').read_text()[-2000:]}")
            try:
                if httpx.get(self.url, timeout=5).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError("Keystone did not answer within 120 s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None

    # -- tokens and the identity API --------------------------------------------------------

    def token(self, user: str, password: str, project: str) -> str:
        body = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
            "name": user, "domain": {"id": "default"}, "password": password}}},
            "scope": {"project": {"name": project, "domain": {"id": "default"}}}}}
        response = httpx.post(f"{self.url}/auth/tokens", json=body, timeout=30)
        response.raise_for_status()
        return response.headers["X-Subject-Token"]

    def admin_token(self) -> str:
        if self._token is None:
            self._token = self.token("admin", ADMIN_PASSWORD, "admin")
        return self._token

    def call(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        response = httpx.request(method, f"{self.url}{path}", json=body, timeout=30,
                                 headers={"X-Auth-Token": self.admin_token()})
        response.raise_for_status()
        return response.json() if response.content else {}

    def project(self, name: str) -> str:
        found = self.call("GET", f"/projects?name={name}")["projects"]
        if found:
            return str(found[0]["id"])
        return str(self.call("POST", "/projects", {"project": {"name": name, "domain_id": "default"}})
                   ["project"]["id"])

    def role(self, name: str) -> str:
        if name not in self._roles:
            found = self.call("GET", f"/roles?name={name}")["roles"]
            self._roles[name] = str(found[0]["id"] if found else
                                    self.call("POST", "/roles", {"role": {"name": name}})["role"]["id"])
        return self._roles[name]

    def user(self, name: str, password: str, project: str, roles: list[str]) -> str:
        """A user with ``roles`` on ``project`` (both made if missing); its id."""
        project_id = self.project(project)
        user_id = str(self.call("POST", "/users", {"user": {"name": name, "password": password,
                                                            "domain_id": "default",
                                                            "default_project_id": project_id}})["user"]["id"])
        for role in roles:
            self.call("PUT", f"/projects/{project_id}/users/{user_id}/roles/{self.role(role)}")
        return user_id

    def register_service(self, service_type: str, name: str, url: str) -> None:
        """A service and its public, internal and admin endpoints in the catalogue."""
        service = self.call("POST", "/services", {"service": {"type": service_type, "name": name}})["service"]["id"]
        for interface in ("public", "internal", "admin"):
            self.call("POST", "/endpoints", {"endpoint": {"service_id": service, "interface": interface,
                                                          "url": url, "region_id": "RegionOne"}})
