"""The agent's side of PROMETHEUS listeners: a renaming proxy in front of HAProxy's exporter.

HAProxy cannot rename its metrics, so a PROMETHEUS listener's frontend hands every
request to the agent on the unix socket ``{state_dir}/{lb_id}-metrics.sock`` (see
``cohort.prometheus``). This module serves that socket: it
fetches ``/metrics`` from the exporter socket ``{state_dir}/{lb_id}-prometheus.sock``,
renames the text to Octavia's ``octavia_*`` families for the listeners and pools
of the installed configuration, and answers. One proxy runs per load balancer
whose configuration routes to it, started and stopped with that load balancer's
HAProxy.
"""

from __future__ import annotations

import http.client
import logging
import socket
import socketserver
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from cohort.prometheus import agent_socket, exporter_socket, proxy_ids, rename_metrics

LOG = logging.getLogger(__name__)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
EXPORTER_TIMEOUT = 10.0
# HAProxy keeps idle server connections for reuse; a handler thread waits this long for the next request.
IDLE_TIMEOUT = 60.0
MAX_EXPORT = 64 * 1024 * 1024


class ExporterError(Exception):
    """HAProxy's exporter could not be reached or did not answer 200."""


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def fetch_exporter(path: str, timeout: float = EXPORTER_TIMEOUT) -> str:
    """The exporter's ``/metrics`` text, read from its unix socket."""
    conn = _UnixHTTPConnection(path, timeout)
    try:
        conn.request("GET", "/metrics", headers={"Accept": "text/plain", "Connection": "close"})
        response = conn.getresponse()
        body = response.read(MAX_EXPORT + 1)
    except (OSError, http.client.HTTPException) as e:
        raise ExporterError(f"exporter at {path}: {type(e).__name__}: {e}") from e
    finally:
        conn.close()
    if response.status != 200:
        raise ExporterError(f"exporter at {path} answered {response.status}")
    if len(body) > MAX_EXPORT:
        raise ExporterError(f"exporter at {path} answered more than {MAX_EXPORT} bytes")
    return body.decode(errors="replace")


class MetricsProxy:
    """Serves one load balancer's metrics socket until stopped."""

    def __init__(self, listen: Path, exporter: Path, config: Path, give: Callable[[Path], None] | None = None) -> None:
        self.listen = listen
        self.exporter = exporter
        self.config = config
        self._give = give
        self._server: _UnixHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def scrape(self) -> str:
        """The exporter's metrics under Octavia's names (raises ExporterError)."""
        text = fetch_exporter(str(self.exporter))
        try:
            listeners, pools = proxy_ids(self.config.read_text())
        except OSError as e:
            raise ExporterError(f"no installed configuration at {self.config}: {e}") from e
        return rename_metrics(text, listeners, pools)

    def start(self) -> None:
        # A socket file left by an agent that died (or by a previous run) would make bind fail.
        self.listen.unlink(missing_ok=True)
        server = _UnixHTTPServer(str(self.listen), self)
        self.listen.chmod(0o600)
        if self._give is not None:
            # HAProxy, jailed under its own user, is the one client of this socket.
            self._give(self.listen)
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.5}, name=f"metrics {self.listen.name}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None
        self.listen.unlink(missing_ok=True)

    @property
    def serving(self) -> bool:
        return self._thread is not None and self._thread.is_alive()


class _Handler(BaseHTTPRequestHandler):
    server: _UnixHTTPServer
    protocol_version = "HTTP/1.1"
    timeout = IDLE_TIMEOUT

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] != "/metrics":
            self._reply(404, "Not Found: metrics are at /metrics\n", "text/plain; charset=utf-8")
            return
        try:
            text = self.server.proxy.scrape()
        except ExporterError as e:
            LOG.warning("metrics of %s: %s", self.server.proxy.listen.name, e)
            self._reply(503, "metrics are unavailable\n", "text/plain; charset=utf-8")
            return
        self._reply(200, text, CONTENT_TYPE)

    def _reply(self, status: int, text: str, content_type: str) -> None:
        payload = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def address_string(self) -> str:
        # Unix peers have no address; the base class would index into an empty string.
        return "haproxy"

    def log_message(self, format: str, *args: Any) -> None:
        LOG.debug("%s %s", self.address_string(), format % args)


class _UnixHTTPServer(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, path: str, proxy: MetricsProxy) -> None:
        self.proxy = proxy
        super().__init__(path, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        LOG.warning("metrics request on %s failed", self.proxy.listen.name, exc_info=True)


class MetricsProxies:
    """The running proxies of an amphora, one per load balancer whose configuration uses one.

    ``directory`` is HAProxy's state directory as the agent reaches it; ``inside`` is the same
    directory as HAProxy sees it in its jail, the one the renderer names the sockets in.
    ``give`` hands a socket the agent made to HAProxy's user.
    """

    def __init__(self, directory: Path, inside: str | None = None, give: Callable[[Path], None] | None = None) -> None:
        self.directory = directory
        self.inside = inside if inside is not None else str(directory)
        self._give = give
        self._proxies: dict[str, MetricsProxy] = {}
        self._lock = threading.Lock()

    def listen_path(self, lb_id: str) -> Path:
        return Path(agent_socket(str(self.directory), lb_id))

    def wanted(self, lb_id: str, config: str) -> bool:
        """Whether ``config`` routes a PROMETHEUS listener to this agent."""
        return f"unix@{agent_socket(self.inside, lb_id)}" in config

    def sync(self, lb_id: str, config_path: Path) -> None:
        """Run the proxy of ``lb_id`` when its installed configuration needs one, stop it otherwise."""
        try:
            config = config_path.read_text()
        except OSError:
            config = ""
        if not self.wanted(lb_id, config):
            self.stop(lb_id)
            return
        with self._lock:
            proxy = self._proxies.get(lb_id)
            if proxy is not None and proxy.serving and proxy.listen.exists():
                return
            if proxy is not None:
                proxy.stop()
            proxy = MetricsProxy(self.listen_path(lb_id), Path(exporter_socket(str(self.directory), lb_id)),
                                 config_path, self._give)
            proxy.start()
            self._proxies[lb_id] = proxy
            LOG.info("serving the metrics of load balancer %s on %s", lb_id, proxy.listen)

    def stop(self, lb_id: str) -> None:
        with self._lock:
            proxy = self._proxies.pop(lb_id, None)
        if proxy is not None:
            proxy.stop()
            LOG.info("stopped the metrics proxy of load balancer %s", lb_id)

    def running(self, lb_id: str) -> bool:
        with self._lock:
            proxy = self._proxies.get(lb_id)
            return proxy is not None and proxy.serving

    def stop_all(self) -> None:
        with self._lock:
            ids = list(self._proxies)
        for lb_id in ids:
            self.stop(lb_id)
