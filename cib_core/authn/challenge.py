"""Authentication that follows the registry's challenge.

The flow is docker's: ping ``/v2/`` once per registry, read ``WWW-Authenticate``, then either
send Basic credentials or exchange them at the Bearer challenge's realm for a token scoped to
what the request needs. Tokens are cached per registry, credentials and scope set until they
expire. The ``Authorization`` header is only ever set on requests to the registry's own host:
a redirect to blob storage never carries it.

Credentials never travel in clear to a token realm: a realm must be HTTPS unless it is on the
registry's own host and that host is loopback or named insecure (go-containerregistry's
``bearer.go`` has the same rule); other schemes are refused, and so are redirects of the token
request that break the rule.

This module knows nothing of sessions or retries; it sends through a :class:`Requester`
(``cib_core.remote.transport.Transport`` is one).
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urljoin

import requests
import requests.auth

from cib_core.authn.credentials import IDENTITY_TOKEN_USER, Credentials
from cib_core.authn.realm import host_of, realm_problem
from cib_core.errors import AuthenticationError, AuthorizationError, RegistryError
from cib_core.redact import redact_url
from cib_core.retry import TEMPORARY_STATUSES

log = logging.getLogger(__name__)


DEFAULT_TOKEN_LIFETIME = 60
CLIENT_ID = "cib"
_MAX_TOKEN_BODY = 1 << 20
_MAX_DRAIN = 64 * 1024
MAX_TOKEN_REDIRECTS = 5
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


# -- WWW-Authenticate ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Challenge:
    """One challenge of a ``WWW-Authenticate`` header; ``scheme`` and parameter names lowercased."""

    scheme: str
    params: Mapping[str, str] = field(default_factory=dict)
    token68: str | None = None

    @property
    def realm(self) -> str | None:
        return self.params.get("realm")

    @property
    def service(self) -> str | None:
        return self.params.get("service")

    @property
    def scope(self) -> str | None:
        return self.params.get("scope")

    @property
    def scopes(self) -> tuple[str, ...]:
        return tuple((self.scope or "").split())

    @property
    def error(self) -> str | None:
        return self.params.get("error")


_TCHARS = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_TOKEN68_CHARS = frozenset("-._~+/0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


class _Scanner:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def skip_ws(self) -> None:
        while self.peek() in (" ", "\t"):
            self.pos += 1

    def skip_ws_commas(self) -> None:
        while self.peek() in (" ", "\t", ","):
            self.pos += 1

    def token(self) -> str:
        start = self.pos
        while self.peek() and self.peek() in _TCHARS:
            self.pos += 1
        return self.text[start:self.pos]

    def quoted(self) -> str:
        # at the opening quote; RFC 9110 quoted-string with backslash escapes
        self.pos += 1
        out: list[str] = []
        while not self.at_end():
            ch = self.text[self.pos]
            if ch == "\\" and self.pos + 1 < len(self.text):
                out.append(self.text[self.pos + 1])
                self.pos += 2
            elif ch == '"':
                self.pos += 1
                return "".join(out)
            else:
                out.append(ch)
                self.pos += 1
        return "".join(out)  # unterminated: take what there is

    def param_ahead(self) -> bool:
        """Whether ``name = value`` starts here (as opposed to a new scheme or a token68)."""
        save = self.pos
        try:
            if not self.token():
                return False
            self.skip_ws()
            if self.peek() != "=":
                return False
            self.pos += 1
            self.skip_ws()
            nxt = self.peek()
            return nxt == '"' or (nxt != "" and nxt in _TCHARS)
        finally:
            self.pos = save

    def token68_ahead(self) -> str | None:
        save = self.pos
        while self.peek() and self.peek() in _TOKEN68_CHARS:
            self.pos += 1
        if self.pos == save:
            return None
        while self.peek() == "=":
            self.pos += 1
        end = self.pos
        self.skip_ws()
        if self.at_end() or self.peek() == ",":
            return self.text[save:end]
        self.pos = save
        return None


def parse_www_authenticate(value: str) -> list[Challenge]:
    """Parse a ``WWW-Authenticate`` value (several challenges allowed) into :class:`Challenge` s.

    Unparseable fragments are skipped rather than raised: a registry's odd header must not
    hide the challenges cib understands.
    """
    sc = _Scanner(value)
    out: list[Challenge] = []
    while True:
        sc.skip_ws_commas()
        if sc.at_end():
            break
        scheme = sc.token()
        if not scheme:
            sc.pos += 1  # junk character; resynchronise
            continue
        params: dict[str, str] = {}
        token68: str | None = None
        sc.skip_ws()
        if not sc.param_ahead():
            token68 = sc.token68_ahead()
        while token68 is None:
            sc.skip_ws_commas()
            if not sc.param_ahead():
                break
            name = sc.token().lower()
            sc.skip_ws()
            sc.pos += 1  # '='
            sc.skip_ws()
            val = sc.quoted() if sc.peek() == '"' else sc.token()
            params.setdefault(name, val)
        out.append(Challenge(scheme.lower(), params, token68))
    return out


# -- scopes --------------------------------------------------------------------------------------

_ACTION_ORDER = {"pull": 0, "push": 1, "delete": 2, "*": 3}


def repository_scope(repository: str, actions: str | Iterable[str] = "pull") -> str:
    """``repository:NAME:pull,push`` for the actions given (``"push"`` implies ``pull``)."""
    acts = set(actions.split(",")) if isinstance(actions, str) else set(actions)
    acts = {a.strip() for a in acts if a.strip()}
    if "push" in acts:
        acts.add("pull")
    return f"repository:{repository}:{','.join(sorted(acts, key=lambda a: (_ACTION_ORDER.get(a, 9), a)))}"


def merge_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    """Merge scope strings: one entry per resource, with the union of its actions; sorted."""
    merged: dict[tuple[str, str], set[str]] = {}
    order: list[tuple[str, str]] = []
    for scope in scopes:
        for one in scope.split():
            # the resource name may itself contain ':' (a registry host with a port)
            kind, _, rest = one.partition(":")
            name, sep, actions = rest.rpartition(":")
            if not sep:
                name, actions = rest, ""
            key = (kind, name)
            if key not in merged:
                merged[key] = set()
                order.append(key)
            merged[key].update(a for a in actions.split(",") if a)
    out = []
    for kind, name in sorted(order):
        acts = sorted(merged[(kind, name)], key=lambda a: (_ACTION_ORDER.get(a, 9), a))
        out.append(f"{kind}:{name}:{','.join(acts)}")
    return tuple(out)


def _covers(have: tuple[str, ...], want: tuple[str, ...]) -> bool:
    return merge_scopes(have + want) == have


# -- the requester and the token cache --------------------------------------------------------

class Requester(Protocol):
    """What the auth needs from a transport: its base URL, a way to send a request and to read
    an answer's body within its deadline, and the hosts the caller named insecure."""

    registry: str

    @property
    def base_url(self) -> str: ...

    def request(self, method: str, url: str, *, headers: Mapping[str, str] | None = None,
                params: Any = None, data: Any = None, auth: Any = None,
                allow_redirects: bool = True, stream: bool = False,
                retry: bool = True) -> requests.Response: ...

    def read_body(self, resp: requests.Response, cap: int, what: str) -> bytes: ...

    def named_insecure(self, host: str) -> bool: ...


@dataclass(frozen=True)
class _Token:
    value: str
    expires_at: float


class TokenCache:
    """Bearer tokens keyed by (credential identity, scope set), safe to share between threads.

    A cached token whose scope set covers the one asked for is reused, so a push token also
    serves the reads that follow it.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._tokens: dict[tuple[str, tuple[str, ...]], _Token] = {}

    def get(self, identity: str, scopes: tuple[str, ...]) -> str | None:
        now = self._clock()
        with self._lock:
            exact = self._tokens.get((identity, scopes))
            if exact is not None and exact.expires_at > now:
                return exact.value
            for (ident, have), tok in self._tokens.items():
                if ident == identity and tok.expires_at > now and _covers(have, scopes):
                    return tok.value
        return None

    def put(self, identity: str, scopes: tuple[str, ...], value: str, lifetime: float) -> None:
        # renew a little early so a token does not expire between cache and registry
        margin = min(10.0, lifetime / 4)
        with self._lock:
            now = self._clock()
            self._tokens = {k: t for k, t in self._tokens.items() if t.expires_at > now}
            self._tokens[(identity, scopes)] = _Token(value, now + lifetime - margin)

    def values(self) -> tuple[str, ...]:
        """Every token held (to remove from text a registry sends back)."""
        with self._lock:
            return tuple(t.value for t in self._tokens.values())

    def discard(self, value: str) -> None:
        with self._lock:
            self._tokens = {k: t for k, t in self._tokens.items() if t.value != value}


def _identity(creds: Credentials) -> str:
    if creds.token is not None:
        return "token"
    return f"user:{creds.username}" if creds.username is not None else "anonymous"


# -- the per-registry auth state -----------------------------------------------------------------

class RegistryAuth:
    """Everything auth-related one registry needs, shared by every client of that registry:
    the ping's challenge, the credentials and the token cache."""

    def __init__(self, requester: Requester, credentials: Credentials | None = None, *,
                 token_cache: TokenCache | None = None, oauth_password_grant: bool = False) -> None:
        self.requester = requester
        self.registry = requester.registry
        self.credentials = credentials or Credentials()
        self.tokens = token_cache or TokenCache()
        self.oauth_password_grant = oauth_password_grant
        self._lock = threading.RLock()
        self._pinged = False
        self._challenges: tuple[Challenge, ...] = ()

    # -- ping ---------------------------------------------------------------------------------
    def ping(self) -> tuple[Challenge, ...]:
        """``GET /v2/`` once; the challenges the registry answered with (empty: open)."""
        with self._lock:
            if not self._pinged:
                resp = self.requester.request("GET", self.requester.base_url + "/v2/",
                                              allow_redirects=True, stream=True)
                try:
                    if resp.status_code == 401:
                        self._challenges = tuple(
                            parse_www_authenticate(resp.headers.get("WWW-Authenticate", "")))
                    elif resp.status_code >= 500:
                        raise RegistryError(
                            f"registry {self.registry} answered {resp.status_code} to its /v2/ ping; "
                            "it may be down, try again later",
                            status=resp.status_code, registry=self.registry, temporary=True)
                finally:
                    _drain(self.requester, resp)
                self._pinged = True
                log.debug("registry %s challenges: %s", self.registry,
                          [c.scheme for c in self._challenges] or "none")
            return self._challenges

    def learn(self, challenges: Sequence[Challenge]) -> None:
        if challenges:
            with self._lock:
                self._challenges = tuple(challenges)
                self._pinged = True

    def _challenge(self, scheme: str) -> Challenge | None:
        for c in self.ping():
            if c.scheme == scheme:
                return c
        return None

    # -- header values ------------------------------------------------------------------------
    def authorization(self, scopes: tuple[str, ...], repository: str | None = None) -> str | None:
        """The ``Authorization`` value for a request needing ``scopes``, or None (no auth)."""
        challenges = self.ping()
        if not challenges:
            return None
        creds = self.credentials
        if creds.token is not None:
            return f"Bearer {creds.token}"
        bearer = self._challenge("bearer")
        if bearer is not None and bearer.realm:
            token = self.tokens.get(_identity(creds), scopes)
            if token is None:
                token = self._fetch_token(bearer, scopes, repository)
            return f"Bearer {token}"
        if self._challenge("basic") is not None and creds.username is not None:
            raw = f"{creds.username}:{creds.secret or ''}".encode()
            return "Basic " + base64.b64encode(raw).decode("ascii")
        return None

    def forget(self, header: str | None) -> None:
        if header and header.startswith("Bearer ") and self.credentials.token is None:
            self.tokens.discard(header[len("Bearer "):])

    # -- token exchange -----------------------------------------------------------------------
    def _fetch_token(self, challenge: Challenge, scopes: tuple[str, ...],
                     repository: str | None) -> str:
        with self._lock:
            creds = self.credentials
            cached = self.tokens.get(_identity(creds), scopes)
            if cached is not None:
                return cached
            realm = challenge.realm or ""
            self._check_realm(realm, "asks for its token at")
            resp = None
            if creds.username == IDENTITY_TOKEN_USER and creds.secret:
                resp = self._oauth_post(realm, challenge, scopes, {
                    "grant_type": "refresh_token", "refresh_token": creds.secret})
            elif self.oauth_password_grant and creds.username is not None and creds.secret:
                resp = self._oauth_post(realm, challenge, scopes, {
                    "grant_type": "password", "username": creds.username, "password": creds.secret})
            if resp is None:
                params: list[tuple[str, str]] = []
                if challenge.service:
                    params.append(("service", challenge.service))
                params.extend(("scope", s) for s in scopes)
                basic = None
                if creds.username is not None and creds.username != IDENTITY_TOKEN_USER:
                    params.append(("account", creds.username))
                if creds.username is not None:
                    basic = requests.auth.HTTPBasicAuth(creds.username, creds.secret or "")
                log.debug("token request for %s at %s, scopes %s (%s)", self.registry,
                          host_of(realm), list(scopes), "basic" if basic else "anonymous")
                resp = self._token_request("GET", realm, params=params, auth=basic)
            value, lifetime = self._token_from(resp, repository)
            self.tokens.put(_identity(creds), scopes, value, lifetime)
            return value

    def _oauth_post(self, realm: str, challenge: Challenge, scopes: tuple[str, ...],
                    form: dict[str, str]) -> requests.Response | None:
        data = dict(form)
        data["client_id"] = CLIENT_ID
        if challenge.service:
            data["service"] = challenge.service
        if scopes:
            data["scope"] = " ".join(scopes)
        log.debug("OAuth2 token request (%s) for %s at %s, scopes %s", form["grant_type"],
                  self.registry, host_of(realm), list(scopes))
        resp = self._token_request(
            "POST", realm, data=data, headers={"Content-Type": "application/x-www-form-urlencoded"})
        if resp.status_code in (404, 405):
            # docker does the same: a token server without the OAuth2 form takes the GET
            resp.close()
            log.debug("token server at %s has no OAuth2 endpoint; using GET", host_of(realm))
            return None
        return resp

    def _check_realm(self, url: str, how: str) -> None:
        trouble = realm_problem(url, self.requester.base_url, self.requester.named_insecure)
        if trouble is not None:
            raise RegistryError(f"registry {self.registry} {how} {redact_url(url)}, and {trouble}; "
                                "refusing to send credentials there", registry=self.registry)

    def _token_request(self, method: str, url: str, *, params: Any = None, data: Any = None,
                       auth: Any = None, headers: Mapping[str, str] | None = None) -> requests.Response:
        """A request to the token server whose redirects are followed only where the realm
        rule lets credentials go; Basic credentials and an OAuth2 form stay on the realm's host."""
        first_host = host_of(url)
        for _ in range(MAX_TOKEN_REDIRECTS + 1):
            resp = self.requester.request(method, url, params=params, data=data, auth=auth,
                                          headers=headers, stream=True, allow_redirects=False)
            location = resp.headers.get("Location")
            if resp.status_code not in _REDIRECTS or not location:
                return resp
            resp.close()
            target = urljoin(resp.url or url, location)
            self._check_realm(target, "redirects its token request to")
            if host_of(target) != first_host:
                if data is not None:
                    raise RegistryError(
                        f"the token server of registry {self.registry} redirects the OAuth2 "
                        f"request to another host ({host_of(target)}); refusing to send the "
                        "credentials there", registry=self.registry)
                auth = None
            if resp.status_code == 303 or (resp.status_code in (301, 302) and method == "POST"):
                method, data = "GET", None
            url, params = target, None
        raise RegistryError(f"the token server of registry {self.registry} redirects more than "
                            f"{MAX_TOKEN_REDIRECTS} times; giving up", registry=self.registry)

    def _token_from(self, resp: requests.Response, repository: str | None) -> tuple[str, float]:
        where = f"registry {self.registry}" + (f", repository {repository}" if repository else "")
        try:
            if resp.status_code == 401:
                who = ("no credentials were given; pass auth or log in with `cib auth login`"
                       if self.credentials.anonymous else "check the username and secret")
                raise AuthenticationError(
                    f"the token server of {where} refused the credentials: {who}",
                    status=401, registry=self.registry, repository=repository)
            if resp.status_code == 403:
                raise AuthorizationError(
                    f"the token server of {where} denied access for these credentials",
                    status=403, registry=self.registry, repository=repository)
            if resp.status_code != 200:
                raise RegistryError(
                    f"the token server of {where} answered {resp.status_code}",
                    status=resp.status_code, registry=self.registry, repository=repository,
                    temporary=resp.status_code in TEMPORARY_STATUSES)
            raw = self.requester.read_body(resp, _MAX_TOKEN_BODY + 1, f"the token server of {where}")
            if len(raw) > _MAX_TOKEN_BODY:
                raise RegistryError(f"the token server of {where} answered with more than "
                                    f"{_MAX_TOKEN_BODY} bytes", status=resp.status_code,
                                    registry=self.registry, repository=repository)
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
            if not isinstance(body, dict):
                raise RegistryError(f"the token server of {where} answered without a JSON object",
                                    status=resp.status_code, registry=self.registry,
                                    repository=repository)
            value = body.get("access_token") or body.get("token")
            if not isinstance(value, str) or not value:
                raise RegistryError(f"the token server of {where} answered without a token",
                                    status=resp.status_code, registry=self.registry,
                                    repository=repository)
            lifetime = body.get("expires_in")
            if not isinstance(lifetime, (int, float)) or lifetime <= 0:
                lifetime = DEFAULT_TOKEN_LIFETIME
            return value, float(lifetime)
        finally:
            resp.close()

    def scoped(self, scopes: Iterable[str], repository: str | None = None) -> ScopedAuth:
        return ScopedAuth(self, merge_scopes(scopes), repository)


def _drain(requester: Requester, resp: requests.Response) -> None:
    """Read a small answer (the ping's ``{}``, a 401's error) so its connection can be reused,
    then close it; a body larger than an error page is not read (the connection is simply not
    reused)."""
    try:
        if int(resp.headers.get("Content-Length") or _MAX_DRAIN + 1) <= _MAX_DRAIN:
            requester.read_body(resp, _MAX_DRAIN, f"an answer of {requester.registry}")
    except (ValueError, RegistryError) as exc:  # best effort: closing is what matters
        log.debug("an answer of %s was not drained: %s", requester.registry, exc)
    finally:
        resp.close()


_RETRIED_ATTR = "_cib_auth_retried"
_BODY_POS_ATTR = "_cib_body_pos"


class ScopedAuth(requests.auth.AuthBase):
    """A requests auth for one scope set: signs requests to the registry's host only, and on a
    401 from that host re-authenticates once (merging the challenge's scope) and resends."""

    def __init__(self, registry_auth: RegistryAuth, scopes: tuple[str, ...],
                 repository: str | None = None) -> None:
        self.registry_auth = registry_auth
        self.scopes = scopes
        self.repository = repository

    def _own_host(self, url: str | None) -> bool:
        base = self.registry_auth.requester.base_url
        return url is not None and host_of(url) == host_of(base)

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        if not self._own_host(r.url):
            r.headers.pop("Authorization", None)
            return r
        header = self.registry_auth.authorization(self.scopes, self.repository)
        if header is not None:
            r.headers["Authorization"] = header
        body = r.body
        if body is not None and hasattr(body, "tell") and hasattr(body, "seek"):
            try:
                setattr(r, _BODY_POS_ATTR, body.tell())
            except OSError:
                pass
        r.register_hook("response", self.handle_401)  # type: ignore[no-untyped-call]
        return r

    def handle_401(self, r: requests.Response, **kwargs: Any) -> requests.Response:
        if r.status_code != 401 or getattr(r.request, _RETRIED_ATTR, False):
            return r
        if not self._own_host(r.url):
            return r  # someone else's 401 (blob storage): never answer it with our header
        challenges = parse_www_authenticate(r.headers.get("WWW-Authenticate", ""))
        if not challenges:
            return r
        ra = self.registry_auth
        old = r.request.headers.get("Authorization")
        ra.learn(challenges)
        scopes = self.scopes
        bearer = next((c for c in challenges if c.scheme == "bearer"), None)
        if bearer is not None:
            if bearer.scopes:
                scopes = merge_scopes(scopes + bearer.scopes)
            ra.forget(old)
            log.debug("registry %s answered 401 (%s); re-authenticating for %s", ra.registry,
                      bearer.error or "no token", list(scopes))
        header = ra.authorization(scopes, self.repository)
        if header is None or header == old:
            return r
        body = r.request.body
        if body is not None and not isinstance(body, (bytes, bytearray, str)):
            pos = getattr(r.request, _BODY_POS_ATTR, None)
            if pos is None:
                return r  # a stream that cannot be replayed: let the caller see the 401
            body.seek(pos)
        _drain(ra.requester, r)
        prep = r.request.copy()
        prep.headers["Authorization"] = header
        setattr(prep, _RETRIED_ATTR, True)
        new: requests.Response = r.connection.send(prep, **kwargs)
        new.history.append(r)
        new.request = prep
        return new
