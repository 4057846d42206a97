"""The controller's one HTTPS (mutual TLS) client of the agents, amphora and distributor alike.

Owns the transport and the error contract of every agent call: transport failures and
statuses the controller should retry (5xx, 404, ...) are ``DriverError``; input the agent
refuses (400, 405, 413, 422) is ``PermanentDriverError``. Either carries the agent's own
reason (its ``{"error": ...}``, else its text). The drivers add only what they send.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

import httpx

from cohort.drivers.errors import DriverError, PermanentDriverError
from cohort.pki import CertPaths, client_ssl_context

PERMANENT_STATUSES = (400, 405, 413, 422)
READY_POLL = 0.5


class AgentRef(Protocol):
    """What names an agent: its owner's id and the management address it listens on."""

    @property
    def id(self) -> str: ...

    @property
    def lb_network_ip(self) -> str | None: ...


def reason(response: httpx.Response) -> str:
    """Why the agent refused: its ``{"error": ...}`` message, else its text, else the status phrase."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip() or response.reason_phrase
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return str(body["error"])
    return response.text.strip()


class AgentClient:
    """Calls the ``kind`` agents ("amphora", "distributor") on ``port``; errors name ``kind`` and the agent."""

    def __init__(
        self, kind: str, client_cert: CertPaths, port: int, timeout: float, connect_timeout: float
    ) -> None:
        self.kind = kind
        self.port = port
        self._client = httpx.Client(
            verify=client_ssl_context(client_cert),
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
        )

    def close(self) -> None:
        self._client.close()

    def url(self, agent: AgentRef, path: str) -> str:
        host = agent.lb_network_ip
        if not host:
            raise DriverError(f"{self.kind} {agent.id} has no management address yet")
        if ":" in host:
            host = f"[{host}]"
        return f"https://{host}:{self.port}{path}"

    def request(
        self,
        method: str,
        agent: AgentRef,
        path: str,
        *,
        json: Any = None,
        content: bytes | str | None = None,
        allow: tuple[int, ...] = (),
        timeout: float | None = None,
    ) -> httpx.Response:
        """One call to the agent; statuses in ``allow`` are returned, other failures raised."""
        kwargs: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
        try:
            response = self._client.request(method, self.url(agent, path), json=json, content=content, **kwargs)
        except httpx.TransportError as e:
            raise DriverError(f"{self.kind} {agent.id}: {method} {path}: {type(e).__name__}: {e}") from e
        if response.is_success or response.status_code in allow:
            return response
        message = f"{self.kind} {agent.id}: {method} {path}: {response.status_code} {reason(response)}"
        if response.status_code in PERMANENT_STATUSES:
            raise PermanentDriverError(message)
        raise DriverError(message)

    def request_json(
        self, method: str, agent: AgentRef, path: str, *, json: Any = None, timeout: float | None = None
    ) -> dict[str, Any]:
        """``request`` whose answer must be a JSON object (DriverError otherwise)."""
        response = self.request(method, agent, path, json=json, timeout=timeout)
        try:
            body = response.json()
        except ValueError as e:
            raise DriverError(f"{self.kind} {agent.id}: {method} {path}: not JSON") from e
        if not isinstance(body, dict):
            raise DriverError(f"{self.kind} {agent.id}: {method} {path}: unexpected {body!r}")
        return body

    def answers(self, agent: AgentRef, timeout: float) -> bool:
        """Whether the agent answers ``GET /1.0/info`` (no state of its own is locked) within ``timeout``."""
        try:
            self.request("GET", agent, "/1.0/info", timeout=timeout)
        except DriverError:
            return False
        return True

    def wait_ready(
        self, agent: AgentRef, timeout: float, info: Callable[[float], dict[str, Any]]
    ) -> dict[str, Any]:
        """Poll ``info(call_timeout)`` until it answers or ``timeout`` seconds pass; permanent errors end it."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                return info(max(0.5, min(5.0, remaining)))
            except PermanentDriverError:
                raise
            except DriverError as e:
                if time.monotonic() + READY_POLL > deadline:
                    raise DriverError(f"{self.kind} {agent.id} not ready after {timeout:.0f}s: {e}") from e
            time.sleep(READY_POLL)
