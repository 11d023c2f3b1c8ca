"""One HTTP session per registry host: timeouts, deadlines, bounded retries, TLS rules, redacted logs.

The adapter comes from the ``cib_transport`` hook (the builtin ``http-transport`` plugin gives a
pooled one); everything around it is cib's: a ``User-Agent``, a connect and a read timeout on
every request and an overall deadline that grows with the bytes expected (``remote.body``),
retries by the one ``RetryPolicy`` on connection errors and on 408/429/5xx answers (honouring
``Retry-After``) for requests whose body can be sent again, and the scheme rules: HTTPS with
certificate checks, plain HTTP for loopback hosts, and for hosts the caller names insecure
HTTPS without verification first, then plain HTTP.
"""

from __future__ import annotations

import http.client
import io
import logging

# requests imports netrc on the first request of a session that trusts the environment and
# sends no credentials of its own; that request may come from a worker thread, and no import
# may happen there (one racing another thread's can fail or deadlock)
import netrc  # noqa: F401
import os
import re
import socket
import ssl
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

import requests
import requests.adapters
import urllib3
import urllib3.connection

from cib_core.authn.challenge import RegistryAuth, TokenCache
from cib_core.authn.credentials import Credentials
from cib_core.authn.realm import host_of, named_insecure
from cib_core.errors import CibError, ConfigurationError, PluginError, RegistryError
from cib_core.redact import redact_headers, redact_text, redact_url, secret_forms
from cib_core.reference import is_loopback_host
from cib_core.remote.body import Deadline, attach_deadline, read_body
from cib_core.retry import TEMPORARY_STATUSES, RetryPolicy, parse_retry_after

log = logging.getLogger(__name__)

DEADLINE_ENV = "CIB_REQUEST_DEADLINE"
MIN_RATE_ENV = "CIB_MIN_TRANSFER_RATE"


def _version() -> str:
    from cib_core import __version__
    return __version__


def user_agent() -> str:
    return f"cib/{_version()}"


def is_loopback(host: str) -> bool:
    return is_loopback_host(host)


# Registries that serve HTTPS with publicly trusted certificates and never plain HTTP: naming
# one insecure is never the cure for a failure to reach it.
_PUBLIC_TLS_HOSTS = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io", "gcr.io",
                               "ghcr.io", "quay.io", "public.ecr.aws", "mcr.microsoft.com",
                               "registry.gitlab.com", "nvcr.io", "registry.k8s.io"})
_PUBLIC_TLS_SUFFIXES = (".gcr.io", ".pkg.dev", ".amazonaws.com", ".azurecr.io")


def may_be_insecure(host: str) -> bool:
    """Whether ``host`` could be a registry without TLS or without a trusted certificate, so
    that naming it insecure could help: not a loopback host (those may always use plain HTTP)
    and not one of the big public registries."""
    name = (urlsplit(f"//{host}").hostname or host).lower()
    if is_loopback(host) or name in _PUBLIC_TLS_HOSTS:
        return False
    return not name.endswith(_PUBLIC_TLS_SUFFIXES)


ConnectionFailure = Literal["dns", "tls", "refused", "timeout"]


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and what caused it, outermost first: ``__cause__``/``__context__``, and the
    wrapped errors requests and urllib3 keep in ``args[0]`` and ``reason``."""
    chain: list[BaseException] = []
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        chain.append(cur)
        nxt = cur.__cause__ or cur.__context__
        if nxt is None and cur.args and isinstance(cur.args[0], BaseException):
            nxt = cur.args[0]
        reason = getattr(cur, "reason", None)
        if nxt is None and isinstance(reason, BaseException):
            nxt = reason
        cur = nxt
    return chain


def connection_failure(exc: BaseException) -> ConnectionFailure | None:
    """What kept a request from getting an answer, read from ``exc`` and its causes: ``"dns"``
    (the host name did not resolve), ``"tls"``, ``"refused"``, ``"timeout"``, or None."""
    chain = _causes(exc)
    kinds: list[tuple[tuple[type[BaseException], ...], ConnectionFailure]] = [
        ((socket.gaierror, urllib3.exceptions.NameResolutionError), "dns"),
        ((ssl.SSLError, urllib3.exceptions.SSLError, requests.exceptions.SSLError), "tls"),
        ((ConnectionRefusedError,), "refused"),
        ((TimeoutError, urllib3.exceptions.TimeoutError, requests.exceptions.Timeout), "timeout"),
    ]
    for types, kind in kinds:
        if any(isinstance(e, types) for e in chain):
            return kind
    return None


def _env_number(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0 or value == float("inf"):
        raise ConfigurationError(f"{name}={raw!r} is not a positive number")
    return value


@dataclass(frozen=True)
class TransportOptions:
    """Timeouts (seconds), the retry policy, the deadline rule and TLS options of a
    :class:`Transport`.

    A request must be done within ``request_deadline`` seconds plus the time its expected bytes
    take at ``min_rate`` bytes a second (when the size is not known, the bytes received so far);
    ``read_timeout`` bounds each single read, ``connect_timeout`` the connection.
    ``from_environment()`` reads ``CIB_REQUEST_DEADLINE`` and ``CIB_MIN_TRANSFER_RATE``.
    """

    connect_timeout: float = 15.0
    read_timeout: float = 120.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    request_deadline: float = 300.0
    min_rate: float = 32 * 1024
    ca_bundle: str | None = None

    @classmethod
    def from_environment(cls) -> TransportOptions:
        return cls(request_deadline=_env_number(DEADLINE_ENV, cls.request_deadline),
                   min_rate=_env_number(MIN_RATE_ENV, cls.min_rate))

    def deadline(self, expected: int | None = None, registry: str | None = None) -> Deadline:
        return Deadline(self.request_deadline, self.min_rate, self.read_timeout, expected,
                        registry)


def _replay_position(data: Any) -> tuple[bool, int | None]:
    """(replayable, position to seek back to) for a request body."""
    if data is None or isinstance(data, (bytes, bytearray, str, dict, list, tuple)):
        return True, None
    if hasattr(data, "seek") and hasattr(data, "tell"):
        try:
            if getattr(data, "seekable", lambda: True)():
                return True, int(data.tell())
        except (OSError, ValueError):
            pass
    return False, None


def _root_cause(exc: BaseException) -> str:
    """A short reason for a connection failure, without the URL requests puts in its text."""
    last = _causes(exc)[-1]
    text = re.sub(r"url: \S+", "url: <redacted>", str(last))
    text = re.sub(r"https?://\S+", lambda m: redact_url(m.group(0)), text)
    return f"{type(last).__name__}: {text}" if text else type(last).__name__


_REQUEST = threading.local()
"""The deadline of the request this thread is sending, for :class:`_TimedResponse`."""


class _DeadlineReader(io.RawIOBase):
    """A connection's socket read so that the request's whole deadline bounds the answer,
    its status line and headers included: each network read waits at most what is left.
    (Bodies are read piece by piece against the same deadline in ``remote.body``.)"""

    def __init__(self, sock: socket.socket, deadline: Deadline, plain: Any) -> None:
        # ``plain``, the reader http.client made, is kept open until this one closes: it holds
        # the socket's file open (a socket closed by its connection stays readable while one
        # of its readers is open, as http.client relies on)
        self._sock, self._deadline, self._plain = sock, deadline, plain

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        if not self.closed:
            self._plain.close()
        super().close()

    def readinto(self, buffer: Any) -> int:
        left = self._deadline.remaining()
        if left <= 0:
            raise TimeoutError("the request's deadline passed")
        self._sock.settimeout(min(self._deadline.read_timeout, left))
        return self._sock.recv_into(buffer)


class _TimedResponse(http.client.HTTPResponse):
    """``http.client``'s answer, read through :class:`_DeadlineReader`: a server sending its
    headers a byte at a time, each just within the read timeout, is cut off at the deadline."""

    def __init__(self, sock: socket.socket, *args: Any, **kwargs: Any) -> None:
        super().__init__(sock, *args, **kwargs)
        deadline = getattr(_REQUEST, "deadline", None)
        if deadline is not None:
            self.fp = io.BufferedReader(_DeadlineReader(sock, deadline, self.fp))


class _TimedHTTPConnection(urllib3.connection.HTTPConnection):
    response_class = _TimedResponse


class _TimedHTTPSConnection(urllib3.connection.HTTPSConnection):
    response_class = _TimedResponse


class _TimedHTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _TimedHTTPConnection


class _TimedHTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _TimedHTTPSConnection


class _UnverifiedHTTPSPool(_TimedHTTPSPool):
    """HTTPS connections as urllib3 makes them, without its ``InsecureRequestWarning`` for a
    connection whose certificate is not checked.

    cib makes such connections only to hosts its caller named insecure, and logs that once.
    Silencing the warning any other way takes the process-wide warnings filters (or
    ``warnings.catch_warnings``, which swaps them for every thread at once): those belong to
    the program that embeds cib. A pool class is local to the pool manager that uses it.
    """

    def _validate_conn(self, conn: Any) -> None:
        # urllib3's HTTPS pool connects here (so that TLS fails before the request is sent)
        # and then warns when the connection is unverified; this does the first only
        urllib3.HTTPConnectionPool._validate_conn(self, conn)
        if conn.sock is None:
            conn.connect()


def _timed_pools(adapter: requests.adapters.BaseAdapter) -> None:
    """Make ``adapter``'s direct connections read answers within their request's deadline
    (:class:`_TimedResponse`). Only a ``requests`` ``HTTPAdapter`` has urllib3 pool managers
    to set this on; other adapters and proxies keep the per-read timeout alone."""
    if isinstance(adapter, requests.adapters.HTTPAdapter):
        manager = adapter.poolmanager
        manager.pool_classes_by_scheme = {**manager.pool_classes_by_scheme,
                                          "http": _TimedHTTPPool, "https": _TimedHTTPSPool}


def _quiet_unverified_https(adapter: requests.adapters.BaseAdapter) -> None:
    """Make ``adapter``'s direct HTTPS connections use :class:`_UnverifiedHTTPSPool`.

    Only a ``requests`` ``HTTPAdapter`` (the builtin transport's, or a plugin's subclass) has
    urllib3 pool managers to set this on; other adapters make their own connections. Through
    a proxy requests makes pool managers of its own on the way, and urllib3 still warns
    there (once per host under Python's default warning filters).
    """
    if isinstance(adapter, requests.adapters.HTTPAdapter):
        manager = adapter.poolmanager
        manager.pool_classes_by_scheme = {**manager.pool_classes_by_scheme,
                                          "https": _UnverifiedHTTPSPool}


class Transport:
    """The HTTP session of one registry host. Safe to share between threads and clients.

    ``request()`` takes absolute URLs (a redirect target or a token realm may be elsewhere);
    ``base_url`` is ``scheme://host`` of the registry, decided on first use. ``insecure_hosts``
    are the hosts the caller named insecure (this registry among them when ``insecure``).
    """

    def __init__(self, registry: str, *, insecure: bool = False, pm: Any = None,
                 options: TransportOptions | None = None,
                 insecure_hosts: Iterable[str] = ()) -> None:
        self.registry = registry
        self.insecure = insecure
        self.options = options or TransportOptions.from_environment()
        self.retry = self.options.retry
        self.loopback = is_loopback(registry)
        self.insecure_hosts = frozenset(h.lower() for h in insecure_hosts) | (
            {registry.lower()} if insecure else set())
        self._lock = threading.Lock()
        self._base_url: str | None = None
        self._auths: dict[tuple[str | None, str | None, str | None], RegistryAuth] = {}
        self.token_cache = TokenCache()
        self.session = requests.Session()
        self.session.headers["User-Agent"] = user_agent()
        adapter = self._adapter(pm)
        _timed_pools(adapter)
        self.session.mount("https://", adapter)
        self.session.mount("http://", adapter)
        self.verify: bool | str = self._verify(insecure)
        if self.insecure_hosts:
            # Only hosts the caller named insecure get unverified HTTPS: keep urllib3 from
            # warning about each such connection (which would also break the CLI's one-line
            # error contract).
            _quiet_unverified_https(adapter)
        if insecure:
            log.info("registry %s is named insecure: TLS certificates are not checked", self.registry)

    def _adapter(self, pm: Any) -> requests.adapters.BaseAdapter:
        if pm is None:
            from cib_core.plugins import get_plugin_manager
            pm = get_plugin_manager()
        try:
            adapter = pm.hook.cib_transport(registry=self.registry)
        except Exception as exc:
            raise PluginError("cib_transport", f"failed for registry {self.registry}: "
                              f"{type(exc).__name__}: {exc}") from exc
        if adapter is None:
            adapter = requests.adapters.HTTPAdapter(pool_maxsize=16, max_retries=0)
        if not isinstance(adapter, requests.adapters.BaseAdapter):
            raise PluginError("cib_transport", f"returned {type(adapter).__name__} for registry "
                              f"{self.registry}, not a requests adapter")
        return adapter

    def _verify(self, insecure: bool) -> bool | str:
        if insecure:
            return False
        if self.options.ca_bundle:
            return self.options.ca_bundle
        # requests itself reads REQUESTS_CA_BUNDLE and CURL_CA_BUNDLE (trust_env); add
        # SSL_CERT_FILE, which OpenSSL-based tools honour and requests does not.
        if not (os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")):
            cert_file = os.environ.get("SSL_CERT_FILE")
            if cert_file:
                return cert_file
        return True

    def _verify_for(self, url: str) -> bool | str:
        """The registry's TLS rule for its own host and hosts named insecure; full
        verification anywhere else (a token realm on another host gets credentials)."""
        host = host_of(url)
        if host == self.registry.lower() or self.named_insecure(host):
            return self.verify
        return self._verify(False)

    def named_insecure(self, host: str) -> bool:
        """Whether the caller named ``host`` (``name[:port]``) insecure, or it is the same
        machine as a host named insecure."""
        return named_insecure(host, self.insecure_hosts)

    # -- scheme -------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        if self._base_url is None:
            with self._lock:
                if self._base_url is None:
                    self._base_url = self._pick_scheme() + "://" + self.registry
        return self._base_url

    def _pick_scheme(self) -> str:
        if self.loopback:
            return "http"
        if not self.insecure:
            return "https"
        try:
            resp = self.session.get(f"https://{self.registry}/v2/", verify=False,
                                    timeout=(self.options.connect_timeout, self.options.read_timeout),
                                    allow_redirects=False)
            resp.close()
            return "https"
        except (requests.exceptions.SSLError, requests.exceptions.ConnectionError) as exc:
            log.debug("insecure registry %s: HTTPS failed (%s); using plain HTTP", self.registry,
                      type(exc).__name__)
            return "http"

    def url(self, path: str) -> str:
        return self.base_url + path

    # -- auth state shared by every client of this registry -----------------------------------
    def registry_auth(self, credentials: Credentials | None = None) -> RegistryAuth:
        creds = credentials or Credentials()
        key = (creds.username, creds.secret, creds.token)
        with self._lock:
            ra = self._auths.get(key)
            if ra is None:
                ra = RegistryAuth(self, creds, token_cache=self.token_cache)
                self._auths[key] = ra
            return ra

    # -- requests -----------------------------------------------------------------------------
    def _where(self, url: str) -> str:
        host = host_of(url)
        return f"registry {self.registry}" if host in ("", self.registry.lower()) else host

    def request(self, method: str, url: str, *, headers: Mapping[str, str] | None = None,
                params: Any = None, data: Any = None, auth: Any = None,
                allow_redirects: bool = True, stream: bool = False, retry: bool = True,
                expected_size: int | None = None) -> requests.Response:
        """Send one request, retrying when that is safe. The answer carries its deadline
        (``expected_size``: the bytes the body should have, when known) for ``remote.body``.
        Connection failures that survive the retries raise ``RegistryError`` with
        ``status=None`` and ``temporary=True``; a redirect loop or a redirect to something
        that is not HTTP raises a plain ``RegistryError``."""
        replayable, pos = _replay_position(data)
        can_retry = retry and replayable
        policy = self.retry
        limit = policy.retries if can_retry else 0
        verify = self._verify_for(url)
        attempt = 0
        while True:
            if pos is not None:
                data.seek(pos)
            deadline = self.options.deadline(expected_size, self.registry)
            started = time.monotonic()
            if log.isEnabledFor(logging.DEBUG):
                log.debug("--> %s %s", method, redact_url(url))
            _REQUEST.deadline = deadline
            try:
                resp = self.session.request(
                    method, url, headers=dict(headers or {}), params=params, data=data, auth=auth,
                    allow_redirects=allow_redirects, stream=stream, verify=verify,
                    timeout=(self.options.connect_timeout, deadline.read_timeout_now()))
            except requests.exceptions.SSLError as exc:
                # a certificate problem does not go away by asking again
                cure = "give a CA bundle (REQUESTS_CA_BUNDLE or SSL_CERT_FILE)"
                tls_host = host_of(url) or self.registry
                if may_be_insecure(tls_host) and not self.named_insecure(tls_host):
                    cure += " or name the registry as insecure"
                raise RegistryError(
                    f"TLS with {self._where(url)} failed ({method} {redact_url(url)}): "
                    f"{_root_cause(exc)}; {cure}", registry=self.registry) from exc
            except requests.exceptions.TooManyRedirects as exc:
                raise RegistryError(
                    f"{self._where(url)} redirected {method} {redact_url(url)} in a loop (more "
                    f"than {self.session.max_redirects} redirects)", registry=self.registry) from exc
            except CibError:
                raise  # cib's own, from the auth hook: already says what is wrong
            except (requests.exceptions.InvalidSchema, requests.exceptions.InvalidURL,
                    requests.exceptions.MissingSchema, ValueError) as exc:
                # ValueError: urllib's parser on a redirect's Location that is no URL
                raise RegistryError(
                    f"{self._where(url)} sent {method} {redact_url(url)} to a location cib cannot "
                    f"follow (only http and https are): {_root_cause(exc)}",
                    registry=self.registry) from exc
            except (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                    requests.exceptions.ChunkedEncodingError) as exc:
                if deadline.remaining() <= 0:
                    # too slow is not asked again (the answer's headers never completed)
                    raise deadline.exceeded(f"{method} {redact_url(url)}") from exc
                if attempt < limit:
                    delay = policy.delay(attempt)
                    log.debug("%s %s failed (%s); retry %d/%d in %.2fs", method, redact_url(url),
                              type(exc).__name__, attempt + 1, limit, delay)
                    attempt += 1
                    policy.sleep(delay)
                    continue
                if connection_failure(exc) == "dns":
                    raise RegistryError(
                        f"the host name of {self._where(url)} could not be resolved "
                        f"({method} {redact_url(url)}): {_root_cause(exc)}",
                        registry=self.registry, temporary=True) from exc
                raise RegistryError(
                    f"cannot reach {self._where(url)} ({method} {redact_url(url)}): "
                    f"{_root_cause(exc)}", registry=self.registry, temporary=True) from exc
            finally:
                _REQUEST.deadline = None
            attach_deadline(resp, deadline)
            self._log_response(resp, started)
            if resp.status_code in TEMPORARY_STATUSES and attempt < limit:
                retry_after = parse_retry_after(resp.headers.get("Retry-After"))
                delay = policy.delay(attempt, retry_after)
                log.debug("%s %s answered %d; retry %d/%d in %.2fs", method, redact_url(url),
                          resp.status_code, attempt + 1, limit, delay)
                resp.close()
                attempt += 1
                policy.sleep(delay)
                continue
            return resp

    def read_body(self, resp: requests.Response, cap: int, what: str) -> bytes:
        """The whole body of an answer of this transport, within its deadline (at most
        ``cap`` bytes read); a short body is an error, never a short success."""
        return read_body(resp, cap, what)

    def known_secrets(self) -> tuple[str, ...]:
        """Every spelling of the credentials and tokens used with this registry, to remove
        from anything the registry sent before it is logged."""
        with self._lock:
            auths = list(self._auths.values())
        forms: list[str] = list(self.token_cache.values())
        for ra in auths:
            creds = ra.credentials
            forms.extend(secret_forms(creds.username, creds.secret, creds.token))
        return tuple(forms)

    def _log_response(self, resp: requests.Response, started: float) -> None:
        if not log.isEnabledFor(logging.DEBUG):
            return
        secrets = self.known_secrets()
        for r in [*resp.history, resp]:
            req = r.request
            # one line a request (what `cib -v` shows), then the redacted headers (`-vv`); a
            # registry may echo credentials anywhere, in a Location path or a header of its own
            log.debug("<-- %d %s %s (%.0f ms)", r.status_code, req.method,
                      redact_text(redact_url(r.url or ""), secrets),
                      (time.monotonic() - started) * 1000)
            log.debug("    request headers %s", redact_text(str(redact_headers(req.headers)), secrets))
            log.debug("    response headers %s", redact_text(str(redact_headers(r.headers)), secrets))

    def close(self) -> None:
        self.session.close()


class TransportPool:
    """Transports by registry host, so every client of one registry shares its session, its
    ping and its tokens. ``insecure`` names hosts that may go without verified TLS."""

    def __init__(self, *, pm: Any = None, insecure: Iterable[str] = (),
                 options: TransportOptions | None = None) -> None:
        self.pm = pm
        self.insecure = frozenset(h.lower() for h in insecure)
        self.options = options
        self._lock = threading.Lock()
        self._transports: dict[tuple[str, bool], Transport] = {}

    def get(self, registry: str, *, insecure: bool = False) -> Transport:
        insecure = insecure or registry.lower() in self.insecure
        key = (registry.lower(), insecure)
        with self._lock:
            t = self._transports.get(key)
            if t is None:
                t = Transport(registry, insecure=insecure, pm=self.pm, options=self.options,
                              insecure_hosts=self.insecure)
                self._transports[key] = t
            return t

    def close(self) -> None:
        with self._lock:
            for t in self._transports.values():
                t.close()
            self._transports.clear()
