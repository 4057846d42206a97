"""The agents' HTTPS plumbing: a threaded mutual-TLS server and a tiny regex router.

Kept apart from the routes so the HTTP and TLS details (handshake off the accept
thread, body limits, JSON/text responses) and the mapping of a handler's exceptions
to statuses live in one place, for both the amphora and the distributor agent.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import socketserver
import ssl
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

LOG = logging.getLogger(__name__)
MAX_BODY = 16 * 1024 * 1024
HANDSHAKE_TIMEOUT = 10.0
IDLE_TIMEOUT = 120.0


@dataclass
class Request:
    method: str
    path: str
    params: dict[str, str]
    body: bytes

    def json(self) -> dict[str, Any]:
        try:
            data = json.loads(self.body or b"{}")
        except ValueError as e:
            raise HttpError(400, f"invalid JSON body: {e}") from e
        if not isinstance(data, dict):
            raise HttpError(400, "JSON body must be an object")
        return data

    def text(self) -> str:
        try:
            return self.body.decode()
        except UnicodeDecodeError as e:
            raise HttpError(400, "body is not UTF-8") from e


@dataclass
class Response:
    status: int = 200
    body: Any = None  # dict/list -> JSON, str -> text/plain
    headers: dict[str, str] = field(default_factory=dict)


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


Handler = Callable[[Request], Response]
Route = tuple[str, str, Handler]
# (exception class or classes, status): the first that matches turns a handler's exception into HttpError.
ErrorStatuses = Iterable[tuple[type[Exception] | tuple[type[Exception], ...], int]]


class Router:
    """Routes ``(method, pattern, handler)``; ``errors`` maps what handlers raise to statuses."""

    def __init__(self, routes: Iterable[Route] = (), errors: ErrorStatuses = ()) -> None:
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = []
        self._errors = tuple(errors)
        for method, pattern, handler in routes:
            self.add(method, pattern, handler)

    def add(self, method: str, pattern: str, handler: Handler) -> None:
        """``pattern`` uses ``{name}`` for one path segment."""
        regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", pattern)
        self._routes.append((method, re.compile(f"^{regex}$"), self._mapped(handler)))

    def _mapped(self, handler: Handler) -> Handler:
        if not self._errors:
            return handler

        def mapped(req: Request) -> Response:
            try:
                return handler(req)
            except HttpError:
                raise
            except Exception as e:
                for kinds, status in self._errors:
                    if isinstance(e, kinds):
                        raise HttpError(status, str(e)) from e
                raise

        return mapped

    def dispatch(self, method: str, path: str, body: bytes) -> Response:
        allowed = False
        for m, regex, handler in self._routes:
            match = regex.match(path)
            if match is None:
                continue
            if m != method:
                allowed = True
                continue
            return handler(Request(method, path, match.groupdict(), body))
        if allowed:
            raise HttpError(405, f"{method} not allowed on {path}")
        raise HttpError(404, f"no such resource {path}")


class _Handler(BaseHTTPRequestHandler):
    server: AgentHttpServer
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        conn = self.request
        assert isinstance(conn, ssl.SSLSocket)
        conn.settimeout(HANDSHAKE_TIMEOUT)
        conn.do_handshake()
        conn.settimeout(IDLE_TIMEOUT)
        super().setup()

    def _serve(self) -> None:
        path = self.path.split("?", 1)[0]
        try:
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                raise HttpError(413, "body too large")
            body = self.rfile.read(length) if length else b""
            response = self.server.router.dispatch(self.command, path, body)
        except HttpError as e:
            response = Response(e.status, {"error": e.message})
        except Exception as e:
            LOG.exception("%s %s failed", self.command, path)
            response = Response(500, {"error": f"{type(e).__name__}: {e}"})
        self._send(response)

    def _send(self, response: Response) -> None:
        if isinstance(response.body, str):
            payload, ctype = response.body.encode(), "text/plain; charset=utf-8"
        else:
            payload, ctype = json.dumps(response.body).encode(), "application/json"
        self.send_response(response.status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(payload)))
        for k, v in response.headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_PUT = do_POST = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:
        LOG.info("%s %s", self.address_string(), format % args)


class AgentHttpServer(ThreadingHTTPServer):
    """Accepts TCP, hands the TLS handshake to the request thread so a slow peer blocks nobody."""

    daemon_threads = True
    # Keep-alive connections of the controller would otherwise hold a stopping agent for IDLE_TIMEOUT.
    block_on_close = False

    def __init__(self, address: tuple[str, int], router: Router, context: ssl.SSLContext) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.router = router
        self.context = context
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the address's FQDN: a DNS query from inside the amphora,
        # which hangs for seconds once a default route exists and no resolver answers.
        socketserver.TCPServer.server_bind(self)
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])

    def get_request(self) -> tuple[socket.socket, Any]:
        conn, addr = self.socket.accept()
        return self.context.wrap_socket(conn, server_side=True, do_handshake_on_connect=False), addr

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients without a valid certificate end here; that is expected, not a crash.
        LOG.warning("connection from %s failed", client_address, exc_info=True)
