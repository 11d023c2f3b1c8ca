"""Fault injection and pagination in front of a real registry."""


from __future__ import annotations

import http.client
import http.server
import json
import logging
import random
import re
import threading
import time
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, cast

from cib_core.errors import ConfigurationError

if TYPE_CHECKING:
    pass

from cib_core.testing.common import (
    _CHUNK,
    _HTTP_TIMEOUT,
    _json_bytes,
    _LoopbackServer,
    _QuietHandler,
    _ServerThread,
)
from cib_core.testing.registries import (
    RegistryServer,
)

log = logging.getLogger(__name__)

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


