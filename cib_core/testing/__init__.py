"""Real registries, a token server and fault injection for tests: a pytest plugin.

Installed with cib (entry point ``pytest11: cib``), so a plugin author's tests get the same
fixtures cib's own tests use:

- ``registry``, ``second_registry``: open registries (Debian's ``docker-registry``, distribution
  2.8) on free loopback ports; ``basic_registry`` (htpasswd); ``token_registry`` (bearer tokens from
  a :class:`TokenServer` in this module); ``any_registry`` runs a test once per mode.
  Each is a :class:`RegistryServer`, started once per session and stopped by its own PID.
- ``base_image``, ``oci_base_image``, ``multiarch_base_image``: small images with a static
  busybox, pushed into ``registry`` by plain ``requests`` calls (an oracle independent of cib's
  client). ``push_image``/``push_base_image`` push the same into any registry.
- ``fault_proxy``: a factory of :class:`FaultProxy` (5xx, 429, resets, truncation, slowness,
  tag-list pagination) in front of a registry.
- Oracles: :func:`skopeo_inspect`, :func:`skopeo_copy`, :func:`pull_to_oci`, :func:`umoci_unpack`.

With ``CI=true`` a missing tool fails the test; elsewhere the test is skipped with the reason.
This module only defines fixtures and helpers; heavy libraries load inside the functions.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import gzip
import hashlib
import http.client
import http.server
import io
import json
import logging
import os
import random
import re
import secrets
import shutil
import signal
import socket
import socketserver
import struct
import subprocess
import tarfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast, overload

import pytest

from cib_core.errors import ConfigurationError

if TYPE_CHECKING:
    import requests

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_FAULT_KINDS",
    "FAULT_KINDS",
    "FaultProxy",
    "PaginatingProxy",
    "PushedImage",
    "RegistryServer",
    "TokenRequest",
    "TokenServer",
    "fetch_token",
    "free_port",
    "in_ci",
    "make_layer",
    "pull_to_oci",
    "push_base_image",
    "push_image",
    "push_index",
    "require_tool",
    "run_registry",
    "skopeo_copy",
    "skopeo_inspect",
    "umoci_unpack",
]

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


# --------------------------------------------------------------------------------------------
# tools and ports
# --------------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------
# small loopback HTTP servers (token server and proxies)
# --------------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------
# token server
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TokenRequest:
    """One request the token server answered, as tests see it."""

    method: str                       # "GET" or "POST"
    grant_type: str | None            # "password", "refresh_token", or None for GET
    scopes: tuple[str, ...]           # every scope asked for, as sent
    basic_auth: bool                  # whether Basic credentials (or a password grant) came
    username: str | None              # the authenticated user; None when anonymous or refused
    status: int
    granted: tuple[str, ...]          # "type:name:a,b" per granted resource
    service: str | None
    offline: bool                     # a refresh token was asked for
    client_id: str | None


def _parse_scope(scope: str) -> tuple[str, str, tuple[str, ...]] | None:
    """``repository:a/b:pull,push`` -> (type, name, actions); ``None`` when malformed."""
    first = scope.find(":")
    last = scope.rfind(":")
    if first <= 0 or last <= first:
        return None
    actions = tuple(a for a in scope[last + 1:].split(",") if a)
    return scope[:first], scope[first + 1:last], actions


class TokenServer:
    """A Docker token server on 127.0.0.1 issuing RS256 JWTs for ``docker-registry``.

    Accepts ``GET /token?service=S&scope=..&scope=..`` with Basic credentials (or anonymously),
    and the OAuth2 form ``POST /token`` (``grant_type=password`` and ``grant_type=refresh_token``;
    ``access_type=offline`` adds a ``refresh_token``). Grants exactly the actions asked for that
    the user may have (``permissions``), plus ``registry:catalog:*`` for authenticated users who ask.
    Every request is kept in :attr:`requests` so tests can assert on least privilege.
    """

    def __init__(self, *, service: str = "cib-test-registry", issuer: str = "cib-test-issuer",
                 users: Mapping[str, str] | None = None, anonymous_pull: bool = False,
                 expires_in: int = 300) -> None:
        self.service = service
        self.issuer = issuer
        self.users: dict[str, str] = dict(users or {})
        # user -> allowed repository actions; a user missing here may do everything
        self.permissions: dict[str, frozenset[str]] = {}
        self.anonymous_pull = anonymous_pull
        self.expires_in = expires_in
        self._log: list[TokenRequest] = []
        self._refresh_tokens: dict[str, str] = {}
        self._lock = threading.Lock()
        self.tokens_issued = 0  # every JWT signed, whatever clear_requests() dropped
        self._issued_lock = threading.Lock()
        self._key_pem, self.cert_pem, self._cert_der = self._make_key_and_cert()
        # the request threads sign tokens with PyJWT (``issue``): imported here, in the
        # caller's thread, so that no import happens in them
        import jwt  # noqa: F401
        self._server = _LoopbackServer(_TokenHandler, self)
        self._thread = _ServerThread(self._server, "cib-token-server")

    def __repr__(self) -> str:
        return f"TokenServer(realm={self.realm!r}, service={self.service!r}, issuer={self.issuer!r})"

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> TokenServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self._thread.stop()

    def __enter__(self) -> TokenServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def port(self) -> int:
        return self._server.port

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    def write_bundle(self, path: Path) -> Path:
        """Write the signing certificate (the registry's ``rootcertbundle``) to ``path``."""
        path.write_bytes(self.cert_pem)
        return path

    # -- what tests use -----------------------------------------------------------------------
    @property
    def requests(self) -> list[TokenRequest]:
        with self._lock:
            return list(self._log)

    def clear_requests(self) -> None:
        with self._lock:
            self._log.clear()

    def add_user(self, username: str, password: str, actions: Iterable[str] | None = None) -> None:
        """Add a user; ``actions`` (e.g. ``("pull",)``) limits what it may be granted."""
        with self._lock:
            self.users[username] = password
            if actions is None:
                self.permissions.pop(username, None)
            else:
                self.permissions[username] = frozenset(actions)

    @contextlib.contextmanager
    def configured(self, *, anonymous_pull: bool | None = None,
                   expires_in: int | None = None) -> Iterator[TokenServer]:
        """Change settings for the duration of a ``with`` block (the server is session-wide)."""
        saved = (self.anonymous_pull, self.expires_in)
        if anonymous_pull is not None:
            self.anonymous_pull = anonymous_pull
        if expires_in is not None:
            self.expires_in = expires_in
        try:
            yield self
        finally:
            self.anonymous_pull, self.expires_in = saved

    def issue(self, subject: str, access: Sequence[Mapping[str, Any]], *,
              expires_in: int | None = None) -> str:
        """A signed token for ``access`` (a list of ``{type, name, actions}``)."""
        import jwt

        with self._issued_lock:
            self.tokens_issued += 1
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": subject,
            "aud": self.service,
            "exp": now + (self.expires_in if expires_in is None else expires_in),
            "nbf": now - 1,
            "iat": now,
            "jti": secrets.token_hex(16),
            "access": [dict(a) for a in access],
        }
        headers = {"x5c": [base64.b64encode(self._cert_der).decode()]}
        return jwt.encode(claims, self._key_pem, algorithm="RS256", headers=headers)

    def decode(self, token: str) -> dict[str, Any]:
        """The claims of a token this server issued (signature and audience checked)."""
        import jwt
        from cryptography import x509

        public_key = x509.load_pem_x509_certificate(self.cert_pem).public_key()
        claims: dict[str, Any] = jwt.decode(token, cast(Any, public_key), algorithms=["RS256"],
                                            audience=self.service, issuer=self.issuer)
        return claims

    # -- internals ----------------------------------------------------------------------------
    @staticmethod
    def _make_key_and_cert() -> tuple[bytes, bytes, bytes]:
        import datetime

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import NameOID

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cib test token signer")])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=True, crl_sign=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256())
        )
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        return (key_pem, cert.public_bytes(serialization.Encoding.PEM),
                cert.public_bytes(serialization.Encoding.DER))

    def _check_password(self, username: str | None, password: str | None) -> bool:
        if username is None or password is None:
            return False
        with self._lock:
            expected = self.users.get(username)
        return expected is not None and secrets.compare_digest(expected.encode(), password.encode())

    def _grant(self, username: str | None, scopes: Sequence[str]) -> list[dict[str, Any]]:
        with self._lock:
            allowed_user = self.permissions.get(username) if username else None
            anonymous_pull = self.anonymous_pull
        granted: dict[tuple[str, str], list[str]] = {}
        for scope in scopes:
            parsed = _parse_scope(scope)
            if parsed is None:
                continue
            rtype, name, actions = parsed
            if rtype == "registry":
                allowed: frozenset[str] = frozenset({"*"}) if username else frozenset()
            elif rtype.split("(")[0] == "repository":
                if username is None:
                    allowed = frozenset({"pull"}) if anonymous_pull else frozenset()
                elif allowed_user is None:
                    allowed = frozenset({"pull", "push", "delete", "*"})
                else:
                    allowed = allowed_user
            else:
                allowed = frozenset()
            entry = granted.setdefault((rtype, name), [])
            for action in actions:
                if action in allowed and action not in entry:
                    entry.append(action)
        return [{"type": t, "name": n, "actions": a} for (t, n), a in granted.items() if a]

    def _record(self, request: TokenRequest) -> None:
        with self._lock:
            self._log.append(request)

    def handle(self, method: str, query: Mapping[str, list[str]], form: Mapping[str, list[str]],
               authorization: str | None) -> tuple[int, dict[str, Any], dict[str, str]]:
        """Answer one token request: (status, JSON body, extra headers)."""
        params = form if method == "POST" else query

        def one(key: str) -> str | None:
            values = params.get(key)
            return values[0] if values else None

        scopes = tuple(s for value in params.get("scope", []) for s in value.split(" ") if s)
        grant_type = one("grant_type") if method == "POST" else None
        service = one("service")
        client_id = one("client_id")
        offline = (one("access_type") == "offline") if method == "POST" else (
            one("offline_token") in ("true", "1"))

        username: str | None = None
        basic = False
        status = 200
        if method == "POST":
            basic = grant_type == "password"
            if grant_type == "password":
                username = one("username")
                if not self._check_password(username, one("password")):
                    status = 401
            elif grant_type == "refresh_token":
                with self._lock:
                    username = self._refresh_tokens.get(one("refresh_token") or "")
                if username is None:
                    status = 401
            else:
                status = 400
        elif authorization:
            basic = authorization.lower().startswith("basic ")
            user, password = _decode_basic(authorization)
            username = user
            if not self._check_password(user, password):
                status = 401
        if status == 200 and service is not None and service != self.service:
            status = 400

        granted: list[dict[str, Any]] = []
        if status == 200 and username is None and method == "GET" and not self.anonymous_pull:
            status = 401
        if status == 200:
            granted = self._grant(username, scopes)
        self._record(TokenRequest(
            method=method, grant_type=grant_type, scopes=scopes, basic_auth=basic,
            username=username if status == 200 else None, status=status,
            granted=tuple(f"{g['type']}:{g['name']}:{','.join(g['actions'])}" for g in granted),
            service=service, offline=offline, client_id=client_id))
        if status == 400:
            return 400, {"error": "invalid_request",
                         "details": "unsupported grant_type or unknown service"}, {}
        if status == 401:
            return 401, {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]}, {
                "WWW-Authenticate": 'Basic realm="cib test token server"'}

        token = self.issue(username or "", granted)
        now = time.time()
        body: dict[str, Any] = {
            "token": token,
            "access_token": token,
            "expires_in": self.expires_in,
            "issued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
        }
        if method == "POST":
            body["scope"] = " ".join(scopes)
        if offline and username is not None:
            refresh = one("refresh_token") if grant_type == "refresh_token" else None
            if refresh is None:
                refresh = secrets.token_urlsafe(24)
                with self._lock:
                    self._refresh_tokens[refresh] = username
            body["refresh_token"] = refresh
        return 200, body, {}


def _decode_basic(authorization: str) -> tuple[str | None, str | None]:
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "basic":
        return None, None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode()
    except ValueError:
        return None, None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else (None, None)


class _TokenHandler(_QuietHandler):
    def _owner(self) -> TokenServer:
        return cast(TokenServer, cast(_LoopbackServer, self.server).owner)

    def _answer(self, method: str) -> None:
        parsed = urllib.parse.urlsplit(self.path)
        if parsed.path.rstrip("/") != "/token":
            self._send(404, b'{"error":"not found"}')
            return
        query = urllib.parse.parse_qs(parsed.query, keep_blank_values=True)
        form: dict[str, list[str]] = {}
        if method == "POST":
            form = urllib.parse.parse_qs(self._read_small_body().decode(), keep_blank_values=True)
        status, body, headers = self._owner().handle(method, query, form,
                                                     self.headers.get("Authorization"))
        self._send(status, _json_bytes(body), headers)

    def do_GET(self) -> None:
        self._answer("GET")

    def do_POST(self) -> None:
        self._answer("POST")


# --------------------------------------------------------------------------------------------
# registries
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RegistryServer:
    """A running ``docker-registry``; ``host`` is ``127.0.0.1:PORT`` (plain HTTP, loopback)."""

    host: str
    mode: Mode
    storage: Path
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    token_server: TokenServer | None = field(default=None, repr=False)
    pid: int | None = None
    log_path: Path | None = None
    tls: bool = False  # served over HTTPS with a certificate from ``run_registry(tls=...)``
    read_only: bool = False  # started with ``run_registry(read_only=True)``: answers 405 to writes

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}"

    @property
    def auth(self) -> dict[str, str] | None:
        """The ``auth`` options cib takes for this host, or ``None`` for an open registry."""
        if self.username is None or self.password is None:
            return None
        return {"Username": self.username, "Secret": self.password}

    def creds_arg(self) -> str | None:
        """``user:pass`` for ``skopeo --creds``; ``None`` for an open registry."""
        if self.username is None or self.password is None:
            return None
        return f"{self.username}:{self.password}"

    def ref(self, repository: str, tag: str = "latest") -> str:
        """``127.0.0.1:PORT/repository:tag`` (or ``@digest`` when ``tag`` is a digest)."""
        sep = "@" if tag.startswith("sha256:") else ":"
        return f"{self.host}/{repository}{sep}{tag}"


def _registry_config(port: int, storage: Path, auth: Mapping[str, Any] | None,
                     tls: tuple[Path, Path] | None = None, *,
                     read_only: bool = False, deletes: bool = True) -> dict[str, Any]:
    config: dict[str, Any] = {
        "version": 0.1,
        "log": {"level": "info", "formatter": "text", "accesslog": {"disabled": False}},
        "storage": {
            "filesystem": {"rootdirectory": str(storage)},
            "delete": {"enabled": deletes},
            # readonly: distribution's maintenance mode, in which every write is refused
            "maintenance": {"uploadpurging": {"enabled": False},
                            "readonly": {"enabled": read_only}},
        },
        "http": {"addr": f"127.0.0.1:{port}", "secret": secrets.token_hex(16)},
        # Non-distributable (foreign) layers name URLs; distribution refuses every URL unless
        # allowed here. Loopback only, so foreign-layer tests stay on this machine.
        "validation": {"manifests": {"urls": {"allow": [r"^https?://127\.0\.0\.1(:[0-9]+)?/"]}}},
    }
    if auth:
        config["auth"] = dict(auth)
    if tls is not None:
        config["http"]["tls"] = {"certificate": str(tls[0]), "key": str(tls[1])}
    return config


def _probe_v2(host: str, timeout: float = 2.0, tls: bool = False) -> int | None:
    conn: http.client.HTTPConnection
    if tls:
        import ssl

        # only "is it up": the certificate is what the test under way is about
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        conn = http.client.HTTPSConnection(host, timeout=timeout, context=context)
    else:
        conn = http.client.HTTPConnection(host, timeout=timeout)
    try:
        conn.request("GET", "/v2/")
        response = conn.getresponse()
        response.read()
        return response.status
    except OSError:
        return None
    finally:
        conn.close()


def _log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM if the test process dies without cleaning up."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()  # SIGTERM to this PID only
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@contextlib.contextmanager
def run_registry(workdir: Path, *, mode: Mode = "open", username: str | None = None,
                 password: str | None = None, token_server: TokenServer | None = None,
                 startup_timeout: float = 30.0,
                 tls: tuple[Path, Path] | None = None,
                 read_only: bool = False, deletes: bool = True) -> Iterator[RegistryServer]:
    """Start ``docker-registry serve`` on a free loopback port and stop it (by PID) on exit.

    ``mode`` is ``"open"``, ``"basic"`` (htpasswd with a bcrypt hash) or ``"token"`` (a
    :class:`TokenServer` is started unless one is given). Credentials are generated unless given.
    ``tls`` is a (certificate, key) pair of PEM files: the registry then serves HTTPS only.
    ``read_only`` starts it in distribution's maintenance mode (``maintenance.readonly``): reads
    work, every write is answered 405. The storage is ``workdir/storage``, so a registry started
    again on the same ``workdir`` serves what an earlier one stored: push into a writable one,
    stop it, and start a read-only one there. ``deletes=False`` turns deletes off
    (``storage.delete.enabled``), as in distribution's default configuration.
    """
    binary = require_tool("docker-registry")
    if mode not in ("open", "basic", "token"):
        raise ConfigurationError(f"registry mode {mode!r}: use 'open', 'basic' or 'token'")
    workdir.mkdir(parents=True, exist_ok=True)
    storage = workdir / "storage"
    storage.mkdir(exist_ok=True)
    if mode != "open":
        username = username or f"user-{secrets.token_hex(4)}"
        password = password or secrets.token_urlsafe(18)
    else:
        username = password = None

    with contextlib.ExitStack() as stack:
        auth: dict[str, Any] | None = None
        if mode == "basic":
            import bcrypt

            assert username is not None and password is not None
            hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
            htpasswd = workdir / "htpasswd"
            htpasswd.write_text(f"{username}:{hashed}\n")
            htpasswd.chmod(0o600)
            auth = {"htpasswd": {"realm": "cib-test-registry", "path": str(htpasswd)}}
        elif mode == "token":
            if token_server is None:
                assert username is not None and password is not None
                token_server = stack.enter_context(TokenServer(users={username: password}))
            else:
                token_server.start()
            bundle = token_server.write_bundle(workdir / "token-signer.pem")
            auth = {"token": {"realm": token_server.realm, "service": token_server.service,
                              "issuer": token_server.issuer, "rootcertbundle": str(bundle)}}

        log_path = workdir / "registry.log"
        ready_status = 200 if mode == "open" else 401
        for attempt in range(5):
            port = free_port()
            config_path = workdir / "config.yml"
            # JSON is YAML: no YAML library needed.
            config_path.write_text(json.dumps(
                _registry_config(port, storage, auth, tls, read_only=read_only, deletes=deletes),
                indent=2))
            with log_path.open("ab") as log_file:
                proc = subprocess.Popen([binary, "serve", str(config_path)], stdin=subprocess.DEVNULL,
                                        stdout=log_file, stderr=subprocess.STDOUT,
                                        preexec_fn=_die_with_parent)
            host = f"127.0.0.1:{port}"
            deadline = time.monotonic() + startup_timeout
            status = None
            while time.monotonic() < deadline and proc.poll() is None:
                status = _probe_v2(host, tls=tls is not None)
                if status is not None:
                    break
                time.sleep(0.05)
            if status == ready_status:
                break
            _stop_process(proc)
            tail = _log_tail(log_path)
            if "address already in use" in tail and attempt < 4:
                continue
            pytest.fail(f"docker-registry ({mode}) did not answer GET /v2/ with {ready_status} "
                        f"on {host} within {startup_timeout:.0f}s (got {status}); log {log_path}:\n{tail}",
                        pytrace=False)
        stack.callback(_stop_process, proc)
        log.debug("docker-registry (%s) on %s, pid %d", mode, host, proc.pid)
        yield RegistryServer(host=host, mode=mode, storage=storage, username=username,
                             password=password, token_server=token_server, pid=proc.pid,
                             log_path=log_path, tls=tls is not None, read_only=read_only)


# --------------------------------------------------------------------------------------------
# an oracle client: plain requests, no cib code
# --------------------------------------------------------------------------------------------

def fetch_token(server: RegistryServer, scopes: Sequence[str], *, anonymous: bool = False) -> str:
    """A bearer token from ``server``'s token server (GET with Basic credentials)."""
    import requests

    if server.token_server is None:
        raise ConfigurationError(f"registry {server.host} is not in token mode")
    auth = None if anonymous or server.username is None or server.password is None else (
        server.username, server.password)
    response = requests.get(server.token_server.realm,
                            params=[("service", server.token_server.service)]
                            + [("scope", s) for s in scopes],
                            auth=auth, timeout=_HTTP_TIMEOUT)
    if response.status_code != 200:
        raise ConfigurationError(f"token server for {server.host} answered {response.status_code}")
    return str(response.json()["token"])


class _OracleClient:
    """Just enough of the distribution API to push test images, with plain ``requests``."""

    def __init__(self, server: RegistryServer, repository: str) -> None:
        import requests

        self.server = server
        self.repository = repository
        self.session = requests.Session()
        if server.mode == "basic":
            assert server.username is not None and server.password is not None
            self.session.auth = (server.username, server.password)
        elif server.mode == "token":
            token = fetch_token(server, [f"repository:{repository}:pull,push"])
            self.session.headers["Authorization"] = f"Bearer {token}"

    def close(self) -> None:
        self.session.close()

    def _request(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        if url.startswith("/"):
            url = self.server.url + url
        return self.session.request(method, url, timeout=_HTTP_TIMEOUT, **kwargs)

    def _expect(self, response: requests.Response, *statuses: int) -> requests.Response:
        if response.status_code not in statuses:
            raise ConfigurationError(
                f"{response.request.method} {urllib.parse.urlsplit(response.url).path} on "
                f"{self.server.host}: {response.status_code} {response.text[:300]}")
        return response

    def put_blob(self, data: bytes) -> str:
        digest = _sha256(data)
        name = self.repository
        if self._request("HEAD", f"/v2/{name}/blobs/{digest}").status_code == 200:
            return digest
        started = self._expect(self._request("POST", f"/v2/{name}/blobs/uploads/"), 202)
        location = urllib.parse.urljoin(self.server.url + "/", started.headers["Location"])
        sep = "&" if "?" in location else "?"
        self._expect(self._request("PUT", f"{location}{sep}digest={digest}", data=data,
                                   headers={"Content-Type": "application/octet-stream"}), 201)
        return digest

    def put_manifest(self, reference: str, raw: bytes, media_type: str) -> str:
        response = self._expect(self._request(
            "PUT", f"/v2/{self.repository}/manifests/{reference}", data=raw,
            headers={"Content-Type": media_type}), 201)
        digest = _sha256(raw)
        echoed = response.headers.get("Docker-Content-Digest")
        if echoed and echoed != digest:
            raise ConfigurationError(f"registry {self.server.host} stored {echoed}, sent {digest}")
        return digest


# --------------------------------------------------------------------------------------------
# test images
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PushedImage:
    """An image (or index) pushed by the fixtures. ``manifest``/``config`` are fresh copies.

    For an index, ``platforms`` maps ``"linux/amd64"``, ``"linux/arm64/v8"`` to the pushed
    manifests, and ``config``/``layers`` are those of the first platform.
    """

    server: RegistryServer
    repository: str
    tag: str | None
    digest: str
    media_type: str
    raw: bytes = field(repr=False)
    config_raw: bytes = field(repr=False)
    blobs: Mapping[str, bytes] = field(repr=False)
    platforms: Mapping[str, PushedImage] = field(default_factory=dict, repr=False)

    @property
    def ref(self) -> str:
        """``127.0.0.1:PORT/repo:tag`` (``@digest`` if pushed without a tag)."""
        return self.server.ref(self.repository, self.tag or self.digest)

    @property
    def ref_by_digest(self) -> str:
        return f"{self.server.host}/{self.repository}@{self.digest}"

    @property
    def manifest(self) -> dict[str, Any]:
        return cast(dict[str, Any], json.loads(self.raw))

    @property
    def config(self) -> dict[str, Any]:
        return cast(dict[str, Any], json.loads(self.config_raw))

    @property
    def config_digest(self) -> str:
        return _sha256(self.config_raw)

    @property
    def layers(self) -> list[dict[str, Any]]:
        if self.platforms:
            return next(iter(self.platforms.values())).layers
        return cast(list[dict[str, Any]], self.manifest["layers"])


def make_layer(files: Mapping[str, bytes | str] | None = None, *, dirs: Iterable[str] = (),
               symlinks: Mapping[str, str] | None = None, modes: Mapping[str, int] | None = None,
               compress: bool = True) -> bytes:
    """A reproducible layer (gzip unless ``compress=False``): sorted entries, uid/gid 0, mtime 0.

    Paths are relative (``bin/busybox``); parent directories are added (0755). ``modes`` overrides
    a file's or directory's mode (files default to 0644, directories to 0755).
    """
    modes = dict(modes or {})
    entries: dict[str, tuple[bytes, int, bytes | str | None]] = {}

    def add_parents(path: str) -> None:
        parts = path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            parent = "/".join(parts[:i])
            entries.setdefault(parent, (tarfile.DIRTYPE, modes.get(parent, 0o755), None))

    for raw_dir in dirs:
        name = raw_dir.strip("/")
        add_parents(name)
        entries[name] = (tarfile.DIRTYPE, modes.get(name, 0o755), None)
    for raw_name, data in (files or {}).items():
        name = raw_name.strip("/")
        add_parents(name)
        entries[name] = (tarfile.REGTYPE, modes.get(name, 0o644), data)
    for raw_name, target in (symlinks or {}).items():
        name = raw_name.strip("/")
        add_parents(name)
        entries[name] = (tarfile.SYMTYPE, 0o777, target)

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(entries):
            kind, mode, payload = entries[name]
            info = tarfile.TarInfo(name)
            info.type = kind
            info.mode = mode
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if kind == tarfile.REGTYPE:
                data = payload.encode() if isinstance(payload, str) else cast(bytes, payload)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                if kind == tarfile.SYMTYPE:
                    info.linkname = cast(str, payload)
                tar.addfile(info)
    raw = buffer.getvalue()
    return gzip.compress(raw, compresslevel=6, mtime=0) if compress else raw


def _diff_id(layer: bytes) -> str:
    return _sha256(gzip.decompress(layer) if layer[:2] == b"\x1f\x8b" else layer)


def push_image(server: RegistryServer, repo: str, tag: str | None, layers: Sequence[bytes],
               config: Mapping[str, Any], *, oci: bool) -> PushedImage:
    """Push layers (gzip or plain tar bytes), the config and a manifest with plain HTTP calls.

    ``config`` gets ``rootfs`` (diff IDs computed from ``layers``) if it has none. ``oci`` picks
    OCI media types, else Docker schema 2. ``tag`` ``None`` pushes by digest only. Authenticates
    with basic credentials or via the token server, as ``server.mode`` needs.
    """
    config = dict(config)
    if "rootfs" not in config:
        config["rootfs"] = {"type": "layers", "diff_ids": [_diff_id(layer) for layer in layers]}
    config_raw = _json_bytes(config)
    layer_descriptors = []
    for layer in layers:
        gzipped = layer[:2] == b"\x1f\x8b"
        if oci:
            media_type = _OCI_LAYER_GZIP if gzipped else _OCI_LAYER
        elif gzipped:
            media_type = _DOCKER_LAYER
        else:
            raise ConfigurationError("Docker schema 2 layers must be gzip compressed; use oci=True")
        layer_descriptors.append({"mediaType": media_type, "size": len(layer),
                                  "digest": _sha256(layer)})
    manifest_type = _OCI_MANIFEST if oci else _DOCKER_MANIFEST
    manifest = {
        "schemaVersion": 2,
        "mediaType": manifest_type,
        "config": {"mediaType": _OCI_CONFIG if oci else _DOCKER_CONFIG, "size": len(config_raw),
                   "digest": _sha256(config_raw)},
        "layers": layer_descriptors,
    }
    raw = json.dumps(manifest, indent=3).encode()
    client = _OracleClient(server, repo)
    try:
        blobs = {}
        for blob in (*layers, config_raw):
            blobs[client.put_blob(blob)] = blob
        digest = client.put_manifest(tag or _sha256(raw), raw, manifest_type)
    finally:
        client.close()
    return PushedImage(server=server, repository=repo, tag=tag, digest=digest,
                       media_type=manifest_type, raw=raw, config_raw=config_raw, blobs=blobs)


def _platform_of(image: PushedImage) -> dict[str, str]:
    config = image.config
    platform = {"architecture": str(config["architecture"]), "os": str(config["os"])}
    if config.get("variant"):
        platform["variant"] = str(config["variant"])
    return platform


def _platform_key(platform: Mapping[str, str]) -> str:
    return "/".join(p for p in (platform["os"], platform["architecture"], platform.get("variant"))
                    if p)


def push_index(server: RegistryServer, repo: str, tag: str | None, images: Sequence[PushedImage],
               *, oci: bool = True) -> PushedImage:
    """Push an OCI index (or Docker manifest list) over ``images``, already pushed to ``repo``."""
    index_type = _OCI_INDEX if oci else _DOCKER_LIST
    manifests = [{"mediaType": img.media_type, "size": len(img.raw), "digest": img.digest,
                  "platform": _platform_of(img)} for img in images]
    index = {"schemaVersion": 2, "mediaType": index_type, "manifests": manifests}
    raw = json.dumps(index, indent=3).encode()
    client = _OracleClient(server, repo)
    try:
        digest = client.put_manifest(tag or _sha256(raw), raw, index_type)
    finally:
        client.close()
    blobs: dict[str, bytes] = {}
    for img in images:
        blobs.update(img.blobs)
    return PushedImage(server=server, repository=repo, tag=tag, digest=digest, media_type=index_type,
                       raw=raw, config_raw=images[0].config_raw, blobs=blobs,
                       platforms={_platform_key(_platform_of(img)): img for img in images})


BASE_ENV = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8")
_BUSYBOX_APPLETS = ("sh", "ls", "cat", "echo", "env", "true", "false", "pwd", "id", "mkdir", "rm",
                    "test", "sleep", "wc", "head", "grep", "find", "stat", "readlink", "uname")
_OS_RELEASE = ('PRETTY_NAME="cib test base"\nNAME="cib-test"\nID=cib-test\nVERSION_ID="1"\n'
               'HOME_URL="https://example.invalid/cib"\n')


def _busybox_path() -> Path:
    for candidate in (Path("/bin/busybox"), Path("/usr/bin/busybox")):
        if candidate.is_file():
            return candidate
    _missing("/bin/busybox is missing; install the Debian package 'busybox-static'")
    raise AssertionError("unreachable")  # pragma: no cover


@functools.lru_cache(maxsize=1)
def _base_layers_cached(busybox: str) -> tuple[bytes, bytes]:
    binary = Path(busybox).read_bytes()
    bin_layer = make_layer({"bin/busybox": binary}, modes={"bin/busybox": 0o755},
                           symlinks={f"bin/{applet}": "busybox" for applet in _BUSYBOX_APPLETS})
    etc_layer = make_layer(
        {"etc/os-release": _OS_RELEASE,
         "etc/passwd": "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
         "etc/group": "root:x:0:\nnogroup:x:65534:\n"},
        dirs=("root", "tmp", "run", "usr/local/bin", "var/empty"),
        symlinks={"var/run": "/run"},
        modes={"root": 0o700, "tmp": 0o1777})
    return bin_layer, etc_layer


def _base_layers() -> tuple[bytes, bytes]:
    return _base_layers_cached(str(_busybox_path()))


def _base_config(layers: Sequence[bytes], *, architecture: str = "amd64",
                 variant: str | None = None) -> dict[str, Any]:
    created = "2024-01-01T00:00:00Z"
    config: dict[str, Any] = {
        "architecture": architecture,
        "os": "linux",
        "created": created,
        "config": {"Env": list(BASE_ENV), "Cmd": ["sh"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [_diff_id(layer) for layer in layers]},
        "history": [
            *({"created": created, "created_by": f"/bin/sh -c #(nop) ADD file:layer{i} in / "}
              for i in range(len(layers))),
            {"created": created, "created_by": '/bin/sh -c #(nop)  CMD ["sh"]', "empty_layer": True},
        ],
    }
    if variant:
        config["variant"] = variant
    return config


def push_base_image(server: RegistryServer, repo: str = "base/docker", tag: str | None = "1", *,
                    flavour: Literal["docker", "oci", "multiarch"] = "docker") -> PushedImage:
    """Push the fixtures' base image into any registry (the same bytes, hence the same digests).

    ``docker``/``oci``: two gzip layers (static busybox with applet links; /etc files, dirs and
    a symlink), Env/Cmd/WorkingDir set, amd64. ``multiarch``: an OCI index over linux/amd64 and
    linux/arm64/v8, each with the /etc layer, a small layer of its own and its own config.
    """
    if flavour in ("docker", "oci"):
        layers = _base_layers()
        return push_image(server, repo, tag, layers, _base_config(layers), oci=flavour == "oci")
    if flavour != "multiarch":
        raise ConfigurationError(f"base image flavour {flavour!r}: use docker, oci or multiarch")
    _, etc_layer = _base_layers()
    children = []
    for architecture, variant in (("amd64", None), ("arm64", "v8")):
        platform = "/".join(p for p in ("linux", architecture, variant) if p)
        own = make_layer({"etc/platform": f"{platform}\n"})
        platform_layers = [etc_layer, own]
        children.append(push_image(server, repo, None, platform_layers,
                                   _base_config(platform_layers, architecture=architecture,
                                                variant=variant),
                                   oci=True))
    return push_index(server, repo, tag, children, oci=True)


# --------------------------------------------------------------------------------------------
# fault injection and pagination
# --------------------------------------------------------------------------------------------

FAULT_KINDS = ("500", "502", "503", "504", "429", "reset", "reset_body", "truncate", "slow",
               "lost_response")
"""What :class:`FaultProxy` can inject.

``500``-``504``: that status with a registry-style JSON error, without forwarding.
``429``: Too Many Requests with ``Retry-After: 1``, without forwarding.
``reset``: the connection is reset (RST) before any response; the request is not forwarded.
``reset_body``: forwarded; headers and half the body are sent, then RST.
``truncate``: forwarded; headers (full Content-Length) and half the body, then a clean close.
``slow``: forwarded; the answer is held back ``slow_seconds``.
``lost_response``: forwarded and processed upstream; the answer is dropped with an RST.
"""

DEFAULT_FAULT_KINDS = ("500", "502", "503", "504", "429", "reset", "reset_body", "truncate")

_HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
                         "te", "trailer", "trailers", "transfer-encoding", "upgrade", "host",
                         "content-length"})
_STATUS_CODES = {"500": "INTERNAL_ERROR", "502": "UNAVAILABLE", "503": "UNAVAILABLE",
                 "504": "UNAVAILABLE", "429": "TOOMANYREQUESTS"}
_TAGS_PATH = re.compile(r"/v2/(?P<name>.+)/tags/list")
_MAX_TRAILER_LINES = 64
_MAX_UPSTREAM_PAGES = 100


class FaultProxy:
    """An HTTP forwarder on 127.0.0.1 that injects faults into a fraction of requests.

    Request and response bodies stream (Content-Length or chunked); ``Location`` headers naming
    the upstream are rewritten to the proxy. ``rate`` (0..1, seeded by ``seed``) picks the
    eligible requests (``methods``, ``path_pattern`` regex) that get one of ``kinds``;
    ``inject_next`` queues exact faults first; ``max_faults`` caps them. ``counts`` tells what was
    injected. ``throttle`` (bytes a second) sends every response body no faster than that.
    With ``paginate=N`` tag lists and the catalog are paged N at a time with ``Link``
    headers (the upstream's full list is fetched and cut). Use as a context manager or
    ``start()``/``close()``; ``close`` cuts open connections and returns within seconds.
    """

    def __init__(self, upstream: RegistryServer | str, *, rate: float = 0.0,
                 kinds: Iterable[str] = DEFAULT_FAULT_KINDS, seed: int = 0,
                 slow_seconds: float = 0.5, paginate: int | None = None,
                 methods: Iterable[str] | None = None, path_pattern: str | None = None,
                 max_faults: int | None = None, timeout: float = _HTTP_TIMEOUT,
                 add_headers: Mapping[str, Mapping[str, str]] | None = None,
                 throttle: float | None = None) -> None:
        host = upstream.host if isinstance(upstream, RegistryServer) else upstream
        host = host.removeprefix("http://").rstrip("/")
        self.upstream_host = host
        self.kinds = tuple(kinds)
        unknown = [k for k in self.kinds if k not in FAULT_KINDS]
        if unknown:
            raise ConfigurationError(f"unknown fault kinds {unknown}; choose from {FAULT_KINDS}")
        if not 0.0 <= rate <= 1.0:
            raise ConfigurationError(f"fault rate {rate} must be between 0 and 1")
        if paginate is not None and paginate < 1:
            raise ConfigurationError(f"paginate={paginate} must be at least 1")
        self.rate = rate
        self.slow_seconds = slow_seconds
        self.paginate = paginate
        self.methods = frozenset(m.upper() for m in methods) if methods else None
        self.path_pattern = re.compile(path_pattern) if path_pattern else None
        self.max_faults = max_faults
        self.timeout = timeout
        if throttle is not None and throttle <= 0:
            raise ConfigurationError(f"throttle={throttle} must be a positive rate in bytes a second")
        self.throttle = throttle
        self._rng = random.Random(seed)  # noqa: S311 - test fault selection, not crypto
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}
        self._script: list[str] = []
        self._requests = 0
        self._pages = 0
        # headers added to every answer to a method ({"POST": {"OCI-Chunk-Min-Length": "..."}}),
        # for what no real registry here sends
        self.add_headers = {m.upper(): dict(h) for m, h in (add_headers or {}).items()}
        self.seen: list[tuple[str, str, dict[str, str]]] = []  # method, path, request headers
        self._server = _LoopbackServer(_ProxyHandler, self)
        self._thread = _ServerThread(self._server, "cib-fault-proxy")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.host} -> {self.upstream_host}, rate={self.rate})"

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def close(self) -> None:
        self._thread.stop()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self._server.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def ref(self, repository: str, tag: str = "latest") -> str:
        sep = "@" if tag.startswith("sha256:") else ":"
        return f"{self.host}/{repository}{sep}{tag}"

    # -- what tests use -----------------------------------------------------------------------
    @property
    def counts(self) -> dict[str, int]:
        """Injected faults per kind (only kinds that happened)."""
        with self._lock:
            return dict(self._counts)

    @property
    def faults_injected(self) -> int:
        with self._lock:
            return sum(self._counts.values())

    @property
    def requests_seen(self) -> int:
        with self._lock:
            return self._requests

    @property
    def pages_served(self) -> int:
        with self._lock:
            return self._pages

    def inject_next(self, kind: str, count: int = 1) -> None:
        """Give the next ``count`` eligible requests fault ``kind``, before any random one."""
        if kind not in FAULT_KINDS:
            raise ConfigurationError(f"unknown fault kind {kind!r}; choose from {FAULT_KINDS}")
        with self._lock:
            self._script.extend([kind] * count)

    def reset_counts(self) -> None:
        with self._lock:
            self._counts.clear()
            self._requests = 0
            self._pages = 0

    # -- used by the handler ------------------------------------------------------------------
    def _choose(self, method: str, path: str, headers: Mapping[str, str] | None = None) -> str | None:
        with self._lock:
            self._requests += 1
            if len(self.seen) < 100_000:
                self.seen.append((method, path, dict(headers or {})))
            if self.methods is not None and method not in self.methods:
                return None
            if self.path_pattern is not None and not self.path_pattern.search(path):
                return None
            if self._script:
                return self._script.pop(0)
            if self.max_faults is not None and sum(self._counts.values()) >= self.max_faults:
                return None
            if self.rate > 0 and self.kinds and self._rng.random() < self.rate:
                return self._rng.choice(self.kinds)
            return None

    def _count(self, kind: str) -> None:
        with self._lock:
            self._counts[kind] = self._counts.get(kind, 0) + 1

    def _count_page(self) -> None:
        with self._lock:
            self._pages += 1


class PaginatingProxy(FaultProxy):
    """A :class:`FaultProxy` with no faults that pages tag lists and the catalog ``page_size`` at
    a time, because ``docker-registry`` answers every tag in one response."""

    def __init__(self, upstream: RegistryServer | str, page_size: int = 2) -> None:
        super().__init__(upstream, rate=0.0, paginate=page_size)


class _ProxyHandler(_QuietHandler):
    def _proxy(self) -> FaultProxy:
        return cast(FaultProxy, cast(_LoopbackServer, self.server).owner)

    def _loopback(self) -> _LoopbackServer:
        return cast(_LoopbackServer, self.server)

    # every method goes through one path
    def do_GET(self) -> None:
        self._handle()

    do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_GET

    # -- request body -------------------------------------------------------------------------
    def _chunked(self) -> bool:
        return "chunked" in self.headers.get("Transfer-Encoding", "").lower()

    def _body(self) -> Iterator[bytes]:
        if self._chunked():
            while True:
                line = self.rfile.readline(1024)
                if not line:
                    raise ConnectionError("client closed during a chunked body")
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    for _ in range(_MAX_TRAILER_LINES):
                        if self.rfile.readline(65536) in (b"\r\n", b"\n", b""):
                            break
                    return
                remaining = size
                while remaining > 0:
                    data = self.rfile.read(min(remaining, _CHUNK))
                    if not data:
                        raise ConnectionError("client closed during a chunk")
                    remaining -= len(data)
                    yield data
                self.rfile.readline(8)  # the CRLF after the chunk
        else:
            remaining = int(self.headers.get("Content-Length") or 0)
            while remaining > 0:
                data = self.rfile.read(min(remaining, _CHUNK))
                if not data:
                    raise ConnectionError("client closed during the body")
                remaining -= len(data)
                yield data

    def _has_body(self) -> bool:
        return self._chunked() or int(self.headers.get("Content-Length") or 0) > 0

    def _drain(self) -> None:
        for _ in self._body():
            pass

    # -- faults -------------------------------------------------------------------------------
    def _reset(self) -> None:
        self.close_connection = True
        self._loopback().mark_reset(self.connection)

    def _error(self, kind: str) -> None:
        code = _STATUS_CODES[kind]
        body = _json_bytes({"errors": [{"code": code, "message": f"injected fault {kind}",
                                        "detail": None}]})
        headers = {"Retry-After": "1"} if kind == "429" else {}
        self._send(int(kind), body, headers)

    # -- forwarding ---------------------------------------------------------------------------
    def _upstream_headers(self) -> dict[str, str]:
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        headers["Host"] = self._proxy().upstream_host
        return headers

    def _open_upstream(self, method: str, path: str, *, with_body: bool,
                       headers: Mapping[str, str] | None = None,
                       ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        proxy = self._proxy()
        conn = http.client.HTTPConnection(proxy.upstream_host, timeout=proxy.timeout)
        sent = dict(headers if headers is not None else self._upstream_headers())
        try:
            if with_body and self._chunked():
                sent["Transfer-Encoding"] = "chunked"
                conn.request(method, path, body=self._body(), headers=sent, encode_chunked=True)
            elif with_body and self._has_body():
                sent["Content-Length"] = self.headers["Content-Length"]
                conn.request(method, path, body=self._body(), headers=sent)
            else:
                if method in ("POST", "PUT", "PATCH"):
                    sent["Content-Length"] = "0"
                conn.request(method, path, headers=sent)
            return conn, conn.getresponse()
        except BaseException:
            conn.close()
            raise

    def _response_headers(self, response: http.client.HTTPResponse) -> list[tuple[str, str]]:
        proxy = self._proxy()
        upstream = f"http://{proxy.upstream_host}"
        out = []
        for name, value in response.getheaders():
            lower = name.lower()
            if lower in _HOP_BY_HOP:
                continue
            if lower == "location" and value.startswith(upstream):
                value = proxy.url + value[len(upstream):]
            out.append((name, value))
        out.extend(proxy.add_headers.get(self.command, {}).items())
        return out

    def _handle(self) -> None:
        proxy = self._proxy()
        method = self.command
        path = self.path
        kind = proxy._choose(method, path, {k.lower(): v for k, v in self.headers.items()})
        try:
            if kind in _STATUS_CODES:
                self._drain()
                proxy._count(kind)
                self._error(kind)
                return
            if kind == "reset":
                self._drain()
                proxy._count(kind)
                self._reset()
                return
            if proxy.paginate and method == "GET" and self._paginated(path):
                return
            conn, response = self._open_upstream(method, path, with_body=True)
            try:
                self._relay(method, response, kind)
            finally:
                conn.close()
        except (OSError, http.client.HTTPException, ValueError) as exc:
            log.debug("fault proxy: %s %s failed: %s", method, urllib.parse.urlsplit(path).path, exc)
            self.close_connection = True

    def _relay(self, method: str, response: http.client.HTTPResponse, kind: str | None) -> None:
        proxy = self._proxy()
        no_body = method == "HEAD" or response.status in (204, 304) or response.status < 200
        length = response.length  # None when the upstream answers chunked
        if kind == "lost_response":
            for _ in range(1 << 20):  # bounded: at most 64 GiB read in 64 KiB pieces
                if not response.read(_CHUNK):
                    break
            proxy._count(kind)
            self._reset()
            return
        if kind == "slow":
            proxy._count(kind)
            time.sleep(proxy.slow_seconds)
        cut = kind in ("reset_body", "truncate") and not no_body and length is not None and length >= 2

        self.send_response_only(response.status, response.reason)
        self.send_header("Date", self.date_time_string())
        for name, value in self._response_headers(response):
            self.send_header(name, value)
        raw_length = response.getheader("Content-Length")
        if no_body:
            if raw_length is not None:
                self.send_header("Content-Length", raw_length)
            self.end_headers()
            return
        if length is None:
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            while True:
                data = response.read1(_CHUNK)
                if not data:
                    break
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.write(b"0\r\n\r\n")
            return
        self.send_header("Content-Length", str(length))
        self.end_headers()
        to_send = length // 2 if cut else length
        # a throttled body goes out in tenths of a second's worth
        piece = max(1, min(_CHUNK, int(proxy.throttle / 10))) if proxy.throttle else _CHUNK
        while to_send > 0:
            data = response.read(min(piece, to_send))
            if not data:
                self.close_connection = True  # the upstream fell short: so must we
                return
            self.wfile.write(data)
            to_send -= len(data)
            if proxy.throttle:
                self.wfile.flush()
                time.sleep(len(data) / proxy.throttle)
        if cut:
            assert kind is not None
            proxy._count(kind)
            if kind == "reset_body":
                self._reset()
            else:
                self.wfile.flush()
                self.close_connection = True

    # -- pagination ---------------------------------------------------------------------------
    def _paginated(self, path: str) -> bool:
        parts = urllib.parse.urlsplit(path)
        match = _TAGS_PATH.fullmatch(parts.path)
        if match is None and parts.path != "/v2/_catalog":
            return False
        key = "tags" if match else "repositories"
        query = urllib.parse.parse_qs(parts.query)
        items: list[str] = []
        name: str | None = match.group("name") if match else None
        upstream_path = parts.path + ("?n=1000" if key == "repositories" else "")
        for _ in range(_MAX_UPSTREAM_PAGES):
            conn, response = self._open_upstream("GET", upstream_path, with_body=False)
            try:
                body = response.read()
                if response.status != 200:
                    self._send(response.status, body,
                               {k: v for k, v in self._response_headers(response)
                                if k.lower() in ("www-authenticate", "docker-distribution-api-version")},
                               content_type=response.getheader("Content-Type") or "application/json")
                    return True
                document = json.loads(body)
                items.extend(document.get(key) or [])
                name = document.get("name", name)
                link = response.getheader("Link")
            finally:
                conn.close()
            found = re.search(r"<([^>]+)>", link or "")
            if not found:
                break
            upstream_path = found.group(1)
        items = sorted(set(items))  # the spec's lexical order; this registry lists tags unsorted
        last = query["last"][0] if query.get("last") else None
        if last is not None:
            items = [i for i in items if i > last] if last not in items else items[items.index(last) + 1:]
        proxy = self._proxy()
        assert proxy.paginate is not None
        wanted = query["n"][0] if query.get("n") else None
        size = proxy.paginate if wanted is None else max(0, min(int(wanted), proxy.paginate))
        page = items[:size]
        document_out: dict[str, Any] = {"name": name, "tags": page} if key == "tags" else {
            "repositories": page}
        headers = {"Docker-Distribution-Api-Version": "registry/2.0"}
        if page and len(items) > size:
            headers["Link"] = (f"<{parts.path}?n={size}&last={urllib.parse.quote(page[-1], safe='')}>;"
                               ' rel="next"')
        proxy._count_page()
        self._send(200, _json_bytes(document_out), headers)
        return True


# --------------------------------------------------------------------------------------------
# oracles: skopeo and umoci
# --------------------------------------------------------------------------------------------

def _run(argv: Sequence[str], *, what: str, timeout: float = 300.0) -> bytes:
    result = subprocess.run(list(argv), capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL,
                            check=False)
    if result.returncode != 0:
        # argv may hold credentials: report only the tool and its error output
        pytest.fail(f"{what} failed with exit code {result.returncode}:\n"
                    f"{result.stderr.decode(errors='replace')[-2000:]}", pytrace=False)
    return result.stdout


def _docker_ref(ref: str) -> str:
    if ref.startswith(("docker://", "oci:", "docker-archive:", "oci-archive:", "dir:")):
        return ref
    return "docker://" + ref


@overload
def skopeo_inspect(ref: str, *, raw: Literal[True], config: bool = ..., creds: str | None = ...,
                   arch: str | None = ...) -> bytes: ...


@overload
def skopeo_inspect(ref: str, *, raw: Literal[False] = ..., config: bool = ...,
                   creds: str | None = ..., arch: str | None = ...) -> dict[str, Any]: ...


def skopeo_inspect(ref: str, *, raw: bool = False, config: bool = False, creds: str | None = None,
                   arch: str | None = None) -> dict[str, Any] | bytes:
    """``skopeo inspect`` of ``ref`` (``host/repo:tag`` means ``docker://``; ``oci:DIR:TAG`` works).

    ``raw`` gives the exact manifest (or with ``config`` the config) bytes; otherwise parsed JSON.
    ``arch`` (``arm64``, ``arm64/v8``) picks an index entry (linux); skopeo's ``--raw`` would still
    give the index, so with ``raw`` and ``arch`` on a registry reference the index entry's own
    manifest bytes are fetched by digest. ``creds`` is ``user:pass``.
    """
    skopeo = require_tool("skopeo")
    target = _docker_ref(ref)
    argv = [skopeo]
    architecture, _, variant = (arch or "").partition("/")
    if arch:
        argv += ["--override-os", "linux", "--override-arch", architecture]
        if variant:
            argv += ["--override-variant", variant]
    argv.append("inspect")
    if target.startswith("docker://"):
        argv.append("--tls-verify=false")
        argv += ["--creds", creds] if creds else ["--no-creds"]
    if raw:
        argv.append("--raw")
    if config:
        argv.append("--config")
    argv.append(target)
    out = _run(argv, what=f"skopeo inspect {target}")
    if raw and arch and not config and target.startswith("docker://"):
        document = json.loads(out)
        if document.get("mediaType") in (_OCI_INDEX, _DOCKER_LIST) or "manifests" in document:
            for entry in document.get("manifests", []):
                platform = entry.get("platform") or {}
                if (platform.get("os") == "linux" and platform.get("architecture") == architecture
                        and (not variant or platform.get("variant") == variant)):
                    return skopeo_inspect(_with_digest(target, entry["digest"]), raw=True, creds=creds)
            pytest.fail(f"{ref} has no linux/{arch} entry", pytrace=False)
    if raw:
        return out
    return cast(dict[str, Any], json.loads(out))


def _with_digest(docker_ref: str, digest: str) -> str:
    """``docker://host/repo:tag`` (or ``@digest``) -> ``docker://host/repo@digest``."""
    name = docker_ref.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        name = name[:colon]
    return f"{name}@{digest}"


def skopeo_copy(src: str, dst: str, *, creds: str | None = None, all: bool = False,
                src_creds: str | None = None, dest_creds: str | None = None) -> None:
    """``skopeo copy`` (``host/repo:tag`` means ``docker://``). ``creds`` applies to whichever side
    is a registry unless ``src_creds``/``dest_creds`` say otherwise; ``all`` copies every
    platform of an index."""
    skopeo = require_tool("skopeo")
    source, dest = _docker_ref(src), _docker_ref(dst)
    argv = [skopeo, "--insecure-policy", "copy", "--retry-times", "0"]
    if all:
        argv.append("--all")
    for flag, target, given in (("src", source, src_creds), ("dest", dest, dest_creds)):
        if target.startswith("docker://"):
            argv.append(f"--{flag}-tls-verify=false")
            chosen = given or creds
            argv += [f"--{flag}-creds", chosen] if chosen else [f"--{flag}-no-creds"]
    argv += [source, dest]
    _run(argv, what=f"skopeo copy {source} {dest}")


def pull_to_oci(ref: str, dest: Path | str, creds: str | None = None) -> str:
    """Copy ``ref`` (a registry reference) into the OCI layout ``dest``; returns the layout tag
    (the reference's tag, or ``latest`` for a digest reference)."""
    name = ref.removeprefix("docker://")
    tail = name.rsplit("/", 1)[-1]
    tag = "latest"
    if "@" not in tail and ":" in tail:
        tag = tail.rsplit(":", 1)[1]
    skopeo_copy(name, f"oci:{dest}:{tag}", creds=creds)
    return tag


def umoci_unpack(layout_dir: Path | str, tag: str, bundle_dir: Path | str) -> Path:
    """``umoci unpack`` an OCI layout's ``tag`` into ``bundle_dir``; returns the rootfs path.
    Runs ``--rootless`` when not root."""
    umoci = require_tool("umoci")
    argv = [umoci, "unpack"]
    if os.geteuid() != 0:
        argv.append("--rootless")
    argv += ["--image", f"{layout_dir}:{tag}", str(bundle_dir)]
    _run(argv, what=f"umoci unpack {layout_dir}:{tag}")
    return Path(bundle_dir) / "rootfs"


# --------------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------------

_STARTED = pytest.StashKey[list["RegistryServer"]]()


def _started(config: pytest.Config) -> list[RegistryServer]:
    return config.stash.setdefault(_STARTED, [])


@contextlib.contextmanager
def _session_registry(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                      name: str, mode: Mode) -> Iterator[RegistryServer]:
    with run_registry(tmp_path_factory.mktemp(name), mode=mode) as server:
        _started(request.config).append(server)
        yield server


@pytest.fixture(scope="session")
def registry(request: pytest.FixtureRequest,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """An open ``docker-registry`` for the whole session."""
    with _session_registry(request, tmp_path_factory, "registry-open", "open") as server:
        yield server


@pytest.fixture(scope="session")
def second_registry(request: pytest.FixtureRequest,
                    tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """Another open registry, for copies between registries."""
    with _session_registry(request, tmp_path_factory, "registry-second", "open") as server:
        yield server


@pytest.fixture(scope="session")
def basic_registry(request: pytest.FixtureRequest,
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """A registry with htpasswd (bcrypt) auth; ``.username``/``.password`` are per session."""
    with _session_registry(request, tmp_path_factory, "registry-basic", "basic") as server:
        yield server


@pytest.fixture(scope="session")
def token_registry(request: pytest.FixtureRequest,
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """A registry with bearer-token auth; ``.token_server`` logs every token request."""
    with _session_registry(request, tmp_path_factory, "registry-token", "token") as server:
        yield server


def _http_requests_served(log_path: Path | None) -> tuple[int, int]:
    """(all requests, requests from cib itself) in a registry's access log."""
    if log_path is None or not log_path.exists():
        return 0, 0
    total = ours = 0
    with log_path.open("rb") as handle:
        for line in handle:
            if b' HTTP/1.1" ' in line:
                total += 1
                if b'"cib/' in line:
                    ours += 1
    return total, ours


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """Say which real registries the session ran against and how much HTTP they served."""
    servers = config.stash.get(_STARTED, [])
    if not servers:
        return
    terminalreporter.section("cib test bed: real registries on loopback")
    for server in servers:
        total, ours = _http_requests_served(server.log_path)
        line = (f"docker-registry {server.mode:<5} auth on http://{server.host}: served {total} HTTP "
                f"requests, {ours} of them from cib")
        if server.token_server is not None:
            line += f"; its token server issued {server.token_server.tokens_issued} signed JWTs"
        terminalreporter.write_line(line)


_MODE_FIXTURES = {"open": "registry", "basic": "basic_registry", "token": "token_registry"}


@pytest.fixture(params=["open", "basic", "token"])
def any_registry(request: pytest.FixtureRequest) -> RegistryServer:
    """Each of ``registry``, ``basic_registry`` and ``token_registry`` in turn."""
    return cast(RegistryServer, request.getfixturevalue(_MODE_FIXTURES[request.param]))


@pytest.fixture(scope="session")
def base_image(registry: RegistryServer) -> PushedImage:
    """Docker schema 2 base with busybox, at ``registry``'s ``base/docker:1``."""
    return push_base_image(registry, "base/docker", "1", flavour="docker")


@pytest.fixture(scope="session")
def oci_base_image(registry: RegistryServer) -> PushedImage:
    """The same content with OCI media types, at ``base/oci:1``."""
    return push_base_image(registry, "base/oci", "1", flavour="oci")


@pytest.fixture(scope="session")
def multiarch_base_image(registry: RegistryServer) -> PushedImage:
    """An OCI index (linux/amd64, linux/arm64/v8) at ``base/multiarch:1``."""
    return push_base_image(registry, "base/multiarch", "1", flavour="multiarch")


@pytest.fixture
def fault_proxy() -> Iterator[Callable[..., FaultProxy]]:
    """A factory: ``fault_proxy(upstream, **FaultProxy options)`` -> a started proxy, closed after
    the test. ``fault_proxy(registry, paginate=2)`` gives a paginating proxy."""
    proxies: list[FaultProxy] = []

    def make(upstream: RegistryServer | str, **options: Any) -> FaultProxy:
        proxy = FaultProxy(upstream, **options).start()
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        proxy.close()
