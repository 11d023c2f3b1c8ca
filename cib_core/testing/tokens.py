"""A token server issuing signed JWTs, as Docker Hub's and gcr.io's do."""


from __future__ import annotations

import base64
import contextlib
import logging
import secrets
import threading
import time
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    pass

from cib_core.testing.common import (
    _json_bytes,
    _LoopbackServer,
    _QuietHandler,
    _ServerThread,
)

log = logging.getLogger(__name__)

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


