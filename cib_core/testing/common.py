"""Tools, ports and the small loopback HTTP servers the test bed is built from."""


from __future__ import annotations

import contextlib
import hashlib
import http.client
import http.server
import json
import logging
import os
import shutil
import socket
import socketserver
import struct
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

import pytest

from cib_core.errors import ConfigurationError

if TYPE_CHECKING:
    pass


log = logging.getLogger(__name__)

# Written out here rather than imported from cib_core.mediatypes: the fixtures are an oracle.
_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
_DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
_DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
_OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
_OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
_OCI_INDEX = "application/vnd.oci.image.index.v1+json"

_CHUNK = 64 * 1024
_HTTP_TIMEOUT = 60.0
_TOOL_PACKAGES = {
    "docker-registry": "docker-registry",
    "skopeo": "skopeo",
    "umoci": "umoci",
    "runc": "runc",
    "busybox": "busybox-static",
}

Mode = Literal["open", "basic", "token"]



def in_ci() -> bool:
    """True when ``CI`` is set to a true value: missing tools then fail instead of skipping."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes", "on")


def _missing(what: str) -> None:
    if in_ci():
        pytest.fail(f"{what} (CI is set, so this is a failure, not a skip)", pytrace=False)
    pytest.skip(what)


def require_tool(name: str) -> str:
    """The path of executable ``name``; fails the test under CI, skips it elsewhere, if missing."""
    path = shutil.which(name)
    if path is None:
        package = _TOOL_PACKAGES.get(name, name)
        _missing(f"{name!r} is not on PATH; install the Debian package {package!r} to run this test")
        raise AssertionError("unreachable")  # pragma: no cover - pytest.skip/fail raise
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _json_bytes(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=False).encode()



class _LoopbackServer(http.server.ThreadingHTTPServer):
    """A threading HTTP server on 127.0.0.1 that can cut every open connection on close."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, handler: type[http.server.BaseHTTPRequestHandler], owner: object) -> None:
        self.owner = owner
        self._connections: set[socket.socket] = set()
        self._reset: set[socket.socket] = set()
        self._conn_lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind asks DNS for the host's FQDN, which can hang without a resolver.
        socketserver.TCPServer.server_bind(self)
        self.server_name = "127.0.0.1"
        self.server_port = int(self.server_address[1])

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._conn_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def mark_reset(self, sock: socket.socket) -> None:
        """Close ``sock`` with an RST instead of a FIN when its handler finishes."""
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with self._conn_lock:
            self._reset.add(sock)

    def shutdown_request(self, request: Any) -> None:
        with self._conn_lock:
            self._connections.discard(request)
            reset = request in self._reset
            self._reset.discard(request)
        if reset:
            self.close_request(request)  # no shutdown(SHUT_WR): that would send a FIN first
        else:
            super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("loopback server: error while handling %s", client_address, exc_info=True)

    def close_connections(self) -> None:
        with self._conn_lock:
            conns = list(self._connections)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class _ServerThread:
    """Runs a :class:`_LoopbackServer` in a daemon thread; ``stop`` is bounded in time."""

    def __init__(self, server: _LoopbackServer, name: str) -> None:
        self.server = server
        self.thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                                       name=name, daemon=True)
        self.started = False

    def start(self) -> None:
        if not self.started:
            self.thread.start()
            self.started = True

    def stop(self) -> None:
        if self.started:
            self.server.shutdown()
            self.thread.join(timeout=5)
            self.started = False
        self.server.close_connections()
        self.server.server_close()


class _QuietHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 30  # a keep-alive connection left idle ends its thread

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s: " + format, type(self).__name__, *args)

    def _send(self, status: int, body: bytes, headers: Mapping[str, str] | None = None,
              *, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _read_small_body(self, limit: int = 1 << 20) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        if length > limit:
            raise ConfigurationError(f"request body of {length} bytes is larger than {limit}")
        return self.rfile.read(length) if length > 0 else b""


