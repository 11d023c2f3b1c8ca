"""One HTTP session per registry host: timeouts, bounded retries, TLS rules, redacted logs.

The adapter comes from the ``cib_transport`` hook (the builtin ``http-transport`` plugin gives a
pooled one); everything around it is cib's: a ``User-Agent``, a timeout on every request,
retries with exponential backoff and jitter on connection errors and on 408/429/5xx answers
(honouring ``Retry-After``) for requests whose body can be sent again, and the scheme rules:
HTTPS with certificate checks, plain HTTP for loopback hosts, and for hosts the caller names
insecure HTTPS without verification first, then plain HTTP.
"""

from __future__ import annotations

import email.utils
import logging
import os
import random
import re
import socket
import ssl
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import requests
import requests.adapters
import urllib3

from cib_core.authn.challenge import RegistryAuth, TokenCache
from cib_core.authn.credentials import Credentials
from cib_core.errors import PluginError, RegistryError
from cib_core.reference import is_loopback_host

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
SENSITIVE_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie",
                               "x-registry-auth", "x-amz-security-token"})
_SENSITIVE_QUERY = re.compile(
    r"(token|secret|password|passwd|signature|sig|credential|key|auth|code|session|_state)", re.I)


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


# -- redaction ------------------------------------------------------------------------------------

def redact_url(url: str) -> str:
    """A URL fit for logs and messages: no user info, sensitive query values replaced."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    netloc = parts.netloc.rsplit("@", 1)[-1]
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, "***" if _SENSITIVE_QUERY.search(k) else v) for k, v in pairs],
                          safe="*:/,")
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


_URL_HEADERS = frozenset({"location", "content-location"})
_LINK_TARGET = re.compile(r"<([^>]*)>")


def redact_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Headers fit for logs: credentials masked, and the URLs in ``Location`` and ``Link``
    redacted like any URL (a redirect to blob storage carries a pre-signed signature)."""
    out: dict[str, str] = {}
    for key, value in headers.items():
        lower = key.lower()
        if lower in SENSITIVE_HEADERS:
            value = "***"
        elif lower in _URL_HEADERS:
            value = redact_url(value)
        elif lower == "link":
            value = _LINK_TARGET.sub(lambda m: f"<{redact_url(m.group(1))}>", value)
        out[key] = value
    return out


# -- retries --------------------------------------------------------------------------------------

def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    current = datetime.now(timezone.utc).timestamp() if now is None else now
    return max(0.0, when.timestamp() - current)


@dataclass(frozen=True)
class TransportOptions:
    """Timeouts (seconds), retry bounds and TLS options of a :class:`Transport`."""

    connect_timeout: float = 15.0
    read_timeout: float = 120.0
    max_retries: int = 4
    backoff_base: float = 0.5
    backoff_max: float = 20.0
    retry_after_max: float = 60.0
    ca_bundle: str | None = None


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


class Transport:
    """The HTTP session of one registry host. Safe to share between threads and clients.

    ``request()`` takes absolute URLs (a redirect target or a token realm may be elsewhere);
    ``base_url`` is ``scheme://host`` of the registry, decided on first use.
    """

    def __init__(self, registry: str, *, insecure: bool = False, pm: Any = None,
                 options: TransportOptions | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.registry = registry
        self.insecure = insecure
        self.options = options or TransportOptions()
        self.loopback = is_loopback(registry)
        self._sleep = sleep
        self._lock = threading.Lock()
        self._base_url: str | None = None
        self._auths: dict[tuple[str | None, str | None, str | None], RegistryAuth] = {}
        self.token_cache = TokenCache()
        self.session = requests.Session()
        self.session.headers["User-Agent"] = user_agent()
        adapter = self._adapter(pm)
        self.session.mount("https://", adapter)
        self.session.mount("http://", adapter)
        self.verify: bool | str = self._verify()
        if insecure:
            # The caller named this registry insecure: say so once, instead of urllib3's warning
            # on every request (which would also break the CLI's one-line error contract).
            host = (urllib3.util.parse_url(f"//{self.registry}").host or self.registry).strip("[]")
            warnings.filterwarnings("ignore", category=urllib3.exceptions.InsecureRequestWarning,
                                    message=f".*host '{re.escape(host)}'")
            log.info("registry %s is named insecure: TLS certificates are not checked", self.registry)

    def _adapter(self, pm: Any) -> requests.adapters.BaseAdapter:
        if pm is None:
            from cib_core.plugins import get_plugin_manager
            pm = get_plugin_manager()
        try:
            adapter = pm.hook.cib_transport(registry=self.registry)
        except Exception as exc:  # noqa: BLE001 - a plugin's failure, named
            raise PluginError("cib_transport", f"failed for registry {self.registry}: "
                              f"{type(exc).__name__}: {exc}") from exc
        if adapter is None:
            adapter = requests.adapters.HTTPAdapter(pool_maxsize=16, max_retries=0)
        if not isinstance(adapter, requests.adapters.BaseAdapter):
            raise PluginError("cib_transport", f"returned {type(adapter).__name__} for registry "
                              f"{self.registry}, not a requests adapter")
        return adapter

    def _verify(self) -> bool | str:
        if self.insecure:
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
    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        opts = self.options
        delay = random.uniform(0, min(opts.backoff_max, opts.backoff_base * (2 ** attempt)))  # noqa: S311
        if retry_after is not None:
            delay = max(delay, min(retry_after, opts.retry_after_max))
        return delay

    def request(self, method: str, url: str, *, headers: Mapping[str, str] | None = None,
                params: Any = None, data: Any = None, auth: Any = None,
                allow_redirects: bool = True, stream: bool = False, retry: bool = True,
                timeout: tuple[float, float] | None = None) -> requests.Response:
        """Send one request, retrying when that is safe. Connection failures that survive the
        retries raise ``RegistryError`` with ``status=None`` and ``temporary=True``."""
        replayable, pos = _replay_position(data)
        can_retry = retry and replayable
        limit = self.options.max_retries if can_retry else 0
        tmo = timeout or (self.options.connect_timeout, self.options.read_timeout)
        attempt = 0
        while True:
            if pos is not None:
                data.seek(pos)
            started = time.monotonic()
            if log.isEnabledFor(logging.DEBUG):
                log.debug("--> %s %s", method, redact_url(url))
            try:
                resp = self.session.request(method, url, headers=dict(headers or {}), params=params,
                                            data=data, auth=auth, allow_redirects=allow_redirects,
                                            stream=stream, timeout=tmo, verify=self.verify)
            except requests.exceptions.SSLError as exc:
                # a certificate problem does not go away by asking again
                cure = "give a CA bundle (REQUESTS_CA_BUNDLE or SSL_CERT_FILE)"
                if may_be_insecure(self.registry) and not self.insecure:
                    cure += " or name the registry as insecure"
                raise RegistryError(
                    f"TLS with registry {self.registry} failed ({method} {redact_url(url)}): "
                    f"{_root_cause(exc)}; {cure}", registry=self.registry) from exc
            except (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                    requests.exceptions.ChunkedEncodingError) as exc:
                if attempt < limit:
                    delay = self._backoff(attempt, None)
                    log.debug("%s %s failed (%s); retry %d/%d in %.2fs", method, redact_url(url),
                              type(exc).__name__, attempt + 1, limit, delay)
                    attempt += 1
                    self._sleep(delay)
                    continue
                if connection_failure(exc) == "dns":
                    raise RegistryError(
                        f"the host name of registry {self.registry} could not be resolved "
                        f"({method} {redact_url(url)}): {_root_cause(exc)}",
                        registry=self.registry, temporary=True) from exc
                raise RegistryError(
                    f"cannot reach registry {self.registry} ({method} {redact_url(url)}): "
                    f"{_root_cause(exc)}", registry=self.registry, temporary=True) from exc
            self._log_response(resp, started)
            if resp.status_code in RETRY_STATUSES and attempt < limit:
                retry_after = parse_retry_after(resp.headers.get("Retry-After"))
                delay = self._backoff(attempt, retry_after)
                log.debug("%s %s answered %d; retry %d/%d in %.2fs", method, redact_url(url),
                          resp.status_code, attempt + 1, limit, delay)
                resp.close()
                attempt += 1
                self._sleep(delay)
                continue
            return resp

    @staticmethod
    def _log_response(resp: requests.Response, started: float) -> None:
        if not log.isEnabledFor(logging.DEBUG):
            return
        for r in [*resp.history, resp]:
            req = r.request
            # one line a request (what `cib -v` shows), then the redacted headers (`-vv`)
            log.debug("<-- %d %s %s (%.0f ms)", r.status_code, req.method, redact_url(r.url or ""),
                      (time.monotonic() - started) * 1000)
            log.debug("    request headers %s", redact_headers(req.headers))
            log.debug("    response headers %s", redact_headers(r.headers))

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
                t = Transport(registry, insecure=insecure, pm=self.pm, options=self.options)
                self._transports[key] = t
            return t

    def close(self) -> None:
        with self._lock:
            for t in self._transports.values():
                t.close()
            self._transports.clear()
