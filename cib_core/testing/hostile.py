"""A hostile registry for tests: a stdlib HTTP server that misbehaves in ways a real one cannot.

A :class:`HostileRegistry` answers ``GET /v2/`` (200, or a challenge given by ``challenge``)
and whatever routes a test installs: ``registry.route("/v2/app/manifests/1", fn)`` with ``fn``
called on the request's :class:`HostileHandler`, which can answer normally, with a body
shorter than its ``Content-Length``, a byte at a time, a redirect, or anything else a test
writes. Every request is recorded in ``seen``. Loopback only (or a TLS certificate for it).
"""

from __future__ import annotations

import contextlib
import os
import re
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from cib_core.testing.common import _LoopbackServer, _QuietHandler, _ServerThread

Route = Callable[["HostileHandler"], None]


@dataclass(frozen=True)
class SeenRequest:
    method: str
    path: str
    headers: Mapping[str, str] = field(default_factory=dict)


class HostileRegistry:
    """A registry that does what a test tells it. ``challenge``: the ``WWW-Authenticate``
    value for unauthenticated requests (None: open); ``accept``: the ``Authorization`` values
    it takes; ``tls``: (certificate, key) to serve HTTPS."""

    def __init__(self, *, challenge: str | None = None, accept: tuple[str, ...] = (),
                 tls: tuple[Path, Path] | None = None) -> None:
        self.challenge = challenge
        self.accept = accept
        self.routes: dict[str, Route] = {}
        self.patterns: list[tuple[re.Pattern[str], Route]] = []
        self.seen: list[SeenRequest] = []
        self.closing = threading.Event()
        self._lock = threading.Lock()
        self._server = _LoopbackServer(HostileHandler, self)
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(tls[0]), str(tls[1]))
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.scheme = "https" if tls is not None else "http"
        self._thread = _ServerThread(self._server, "cib-hostile-registry")

    def route(self, path: str, fn: Route) -> None:
        """Answer requests for ``path`` (without its query) with ``fn``."""
        self.routes[path] = fn

    def route_matching(self, pattern: str, fn: Route) -> None:
        """Answer requests whose path (without query) fully matches ``pattern`` with ``fn``."""
        self.patterns.append((re.compile(pattern), fn))

    def requests_for(self, path_prefix: str) -> list[SeenRequest]:
        with self._lock:
            return [r for r in self.seen if r.path.startswith(path_prefix)]

    def _record(self, request: SeenRequest) -> None:
        with self._lock:
            if len(self.seen) < 100_000:
                self.seen.append(request)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self._server.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}"

    def start(self) -> HostileRegistry:
        self._thread.start()
        return self

    def close(self) -> None:
        self.closing.set()
        self._thread.stop()

    def __enter__(self) -> HostileRegistry:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class HostileHandler(_QuietHandler):
    """The request being answered, with the ways to answer it."""

    # headers and body go out in two writes; with Nagle's algorithm the second waits for the
    # client's delayed ACK of the first, 40 ms a request
    disable_nagle_algorithm = True

    def _owner(self) -> HostileRegistry:
        return cast(HostileRegistry, cast(_LoopbackServer, self.server).owner)

    @property
    def bare_path(self) -> str:
        return self.path.split("?", 1)[0]

    def do_GET(self) -> None:
        owner = self._owner()
        headers = {k.lower(): v for k, v in self.headers.items()}
        owner._record(SeenRequest(self.command, self.path, headers))
        if self.command in ("POST", "PUT", "PATCH"):
            with contextlib.suppress(Exception):
                self._read_small_body(64 << 20)
        if owner.challenge is not None and headers.get("authorization") not in owner.accept:
            self.reply(401, b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}',
                       {"WWW-Authenticate": owner.challenge})
            return
        route = owner.routes.get(self.bare_path)
        if route is None:
            route = next((fn for pattern, fn in owner.patterns if pattern.fullmatch(self.bare_path)),
                         None)
        if route is not None:
            route(self)
        elif self.bare_path == "/v2/":
            self.reply(200, b"{}")
        else:
            self.reply(404, b'{"errors":[{"code":"NAME_UNKNOWN","message":"not here"}]}')

    do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    # -- answers ------------------------------------------------------------------------------
    def reply(self, status: int, body: bytes = b"", headers: Mapping[str, str] | None = None,
              content_type: str = "application/json") -> None:
        self._send(status, body, headers, content_type=content_type)

    def reply_truncated(self, body: bytes, announced: int, headers: Mapping[str, str] | None = None,
                        content_type: str = "application/json", status: int = 200) -> None:
        """``Content-Length: announced``, then only ``body`` and the connection closed."""
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(announced))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
            self.wfile.flush()
        self.close_connection = True

    def reply_trickle(self, body: bytes, *, every: float, piece: int = 1,
                      headers: Mapping[str, str] | None = None,
                      content_type: str = "application/json", chunked: bool = False) -> int:
        """200 with the whole length announced (or chunked), then ``piece`` bytes every
        ``every`` seconds until the body is out, the client hangs up or the server closes;
        returns the bytes sent."""
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        sent = 0
        owner = self._owner()
        try:
            while sent < len(body) and not owner.closing.is_set():
                part = body[sent:sent + piece]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part) if chunked else part)
                self.wfile.flush()
                sent += len(part)
                if owner.closing.wait(every):
                    break
            if chunked and sent == len(body):
                self.wfile.write(b"0\r\n\r\n")
        except OSError:
            pass
        self.close_connection = True
        return sent

    def redirect(self, location: str, status: int = 307) -> None:
        self.reply(status, b"", {"Location": location})


def json_pages(handler: HostileHandler, key: str, page: Callable[[int], list[str]],
               path: str) -> None:
    """Answer a tag list or catalog request: page ``n`` (from ``?page=n``) from ``page(n)``,
    with a ``Link`` to page ``n + 1`` always: the list never ends."""
    import json
    from urllib.parse import parse_qs, urlsplit

    query = parse_qs(urlsplit(handler.path).query)
    n = int(query.get("page", ["0"])[0])
    body = json.dumps({"name": "endless", key: page(n)}).encode()
    handler.reply(200, body, {"Link": f'<{path}?page={n + 1}>; rel="next"'})


@contextlib.contextmanager
def hostile_registry(**options: Any) -> Iterator[HostileRegistry]:
    """A started :class:`HostileRegistry`, closed afterwards."""
    registry = HostileRegistry(**options).start()
    try:
        yield registry
    finally:
        registry.close()


def write_test_certificates(directory: Path, addresses: Sequence[str] = ("127.0.0.1",),
                            ) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for the IP ``addresses`` (valid for a day),
    written to ``directory``: (CA certificate, server certificate, server key) paths."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cib test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, addresses[0])]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    ca_path, cert_path, key_path = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return ca_path, cert_path, key_path


def run_cib(home: Path, *args: str, env: Mapping[str, str] | None = None, timeout: float = 120.0,
            stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """The ``cib`` script of this interpreter's environment, run with ``home`` as its home (no
    credentials of this machine's user), plugins autoloading off and the keyring disabled."""
    full = dict(os.environ, HOME=str(home), DOCKER_CONFIG=str(home / ".docker"),
                XDG_CONFIG_HOME=str(home / ".config"), XDG_RUNTIME_DIR=str(home / "run"),
                CIB_DISABLE_PLUGIN_AUTOLOAD="1", NO_PROXY="*",
                PYTHON_KEYRING_BACKEND="keyring.backends.null.Keyring")
    full.pop("REGISTRY_AUTH_FILE", None)
    full.update(env or {})
    script = str(Path(sys.executable).parent / "cib")
    return subprocess.run([script, *args], capture_output=True, text=True, env=full,
                          timeout=timeout, input=stdin, check=False)


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` passes; whether it held."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


__all__ = ["HostileHandler", "HostileRegistry", "SeenRequest", "hostile_registry", "json_pages",
           "run_cib", "wait_for", "write_test_certificates"]
