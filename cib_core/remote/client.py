"""``RegistryClient``: the whole distribution API for one repository of one registry.

Every request asks only for the scope it needs (``pull`` to read, ``pull,push`` to write,
``pull`` on the source of a mount, in one token). Manifests are read as exact bytes and
checked against their digest; blobs stream and are verified as they go; uploads are one
request when length and digest are known and the body can be sent again, otherwise chunked,
hashed on the fly and resumed from the registry's ``Range`` after a dropped connection, with
memory bounded by one chunk.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import IO, Any, BinaryIO, Literal, overload
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

import requests

from cib_core import mediatypes
from cib_core.authn.challenge import (
    RegistryAuth,
    ScopedAuth,
    merge_scopes,
    parse_www_authenticate,
    repository_scope,
)
from cib_core.authn.credentials import Credentials
from cib_core.authn.resolve import resolve_credentials
from cib_core.callbacks import Progress
from cib_core.digest import ALGORITHMS, GRAMMAR, new_hasher, problem, sha256_digest, verified_digest
from cib_core.documents import canonical_json, json_object, manifest_media_type
from cib_core.errors import (
    AuthenticationError,
    AuthorizationError,
    ConfigurationError,
    DigestMismatch,
    InvalidReference,
    ManifestError,
    NotFound,
    RegistryError,
    RegistryErrorDetail,
)
from cib_core.fileio import chunks as _chunks_of
from cib_core.reference import DOCKER_HUB_API_HOST, is_docker_hub
from cib_core.remote.transport import RETRY_STATUSES, Transport, TransportOptions, TransportPool, redact_url

log = logging.getLogger(__name__)


MAX_MANIFEST_SIZE = 4 * 1024 * 1024
DEFAULT_CHUNK_SIZE = 8 * 1024 * 1024
MAX_ERROR_BODY = 64 * 1024
MAX_LIST_BODY = 16 * 1024 * 1024
MAX_PAGES = 100_000
READ_SIZE = 1024 * 1024
UPLOAD_RESUME_ATTEMPTS = 5

NOT_FOUND_CODES = frozenset({"BLOB_UNKNOWN", "MANIFEST_UNKNOWN", "NAME_UNKNOWN",
                             "BLOB_UPLOAD_UNKNOWN", "TAG_UNKNOWN"})
_WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@dataclass(frozen=True)
class UploadResult:
    """What an upload did: the HTTP ``status`` of the request that finished it, the
    ``digest`` now present, its ``size``, and (for manifests) the registry's answer ``body``
    and its ``OCI-Subject`` header: the subject digest a registry with the referrers API
    indexed the manifest under (``None``: the client must keep the fallback tag itself)."""

    status: int
    digest: str
    size: int = 0
    body: bytes = b""
    subject: str | None = None


def _hasher(digest: str, what: str) -> Any:
    """A hasher for ``digest``, which must be one cib can verify (``InvalidReference`` if not)."""
    trouble = problem(digest)
    if trouble is not None:
        raise InvalidReference(digest, f"{trouble}, for {what}")
    return new_hasher(digest)


def is_digest(ref: str) -> bool:
    """True when ``ref`` (a tag or a digest) has the digest grammar: tags have no colon."""
    return GRAMMAR.fullmatch(ref) is not None


def _manifest_subject(ref: str) -> str:
    """How a message names a manifest reference: ``tag 'v1'`` or ``manifest sha256:...``."""
    return f"manifest {ref}" if is_digest(ref) else f"tag {ref!r}"


def referrers_tag(digest: str) -> str:
    """The distribution spec's referrers tag for ``digest``: the algorithm cut to 32
    characters, ``-``, the encoded part cut to 64, anything a tag cannot hold turned into ``-``
    (``sha256:ab..`` -> ``sha256-ab..``)."""
    algorithm, sep, encoded = digest.partition(":")
    if not sep or not algorithm or not encoded:
        raise InvalidReference(digest, "not a digest (expected algorithm:hex)")
    return re.sub(r"[^A-Za-z0-9_.-]", "-", f"{algorithm[:32]}-{encoded[:64]}")


def _with_query(url: str, params: Iterable[tuple[str, str]]) -> str:
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True) + list(params)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query, safe=":"), ""))


def _media_type(header: str | None) -> str:
    return (header or "").split(";", 1)[0].strip()


def _read_capped(resp: requests.Response, cap: int) -> bytes:
    """At most ``cap`` bytes of a streamed body (the rest is left unread and the response closed)."""
    try:
        if resp.raw is None:
            return resp.content[:cap]
        out = bytearray()
        while len(out) < cap:
            piece = resp.raw.read(min(READ_SIZE, cap - len(out)), decode_content=True)
            if not piece:
                break
            out += piece
        return bytes(out)
    except Exception:  # noqa: BLE001 - an error body we cannot read is just absent
        return b""
    finally:
        resp.close()


class _UploadLost(RegistryError):
    """Internal: a chunked upload the registry can no longer resume. ``upload`` starts over
    when its source can be rewound and raises a plain ``RegistryError`` otherwise."""


class BlobStream(io.RawIOBase):
    """A blob's bytes as they arrive, hashed on the way. The last piece is held back until
    the end of the body has been seen and the digest checked, so a mismatch raises
    ``DigestMismatch`` before any byte past the verified point is handed out."""

    def __init__(self, resp: requests.Response, digest: str, what: str, *,
                 size: int | None = None, progress: Progress | None = None,
                 reopen: Callable[[int], requests.Response] | None = None,
                 resumes: int = 0) -> None:
        super().__init__()
        self._resp = resp
        # after a broken body: ``reopen(offset)`` asks again from ``offset`` (Range), at most
        # ``resumes`` times; the bytes already hashed are never hashed twice
        self._reopen = reopen
        self._resumes_left = resumes
        self._skip = 0  # bytes to drop from a reopened answer that ignored the Range
        self.digest = digest
        # what a consumer may rely on: no byte is handed out past a point that does not match
        # this digest, so storing the stream under it needs no second hash
        self.verified_digest = digest
        self._what = what
        self._hash = _hasher(digest, what)
        length = resp.headers.get("Content-Length")
        self.size = size if size is not None else (int(length) if length and length.isdigit() else None)
        self._progress = progress
        self._read_total = 0  # bytes taken from the network
        self._done = 0  # bytes handed out
        self._held = b""  # read and hashed, not yet handed out
        self._out = memoryview(b"")  # free to hand out
        self._eof = False
        self._failed: DigestMismatch | None = None

    def readable(self) -> bool:
        return True

    def _next_piece(self) -> bytes:
        while True:
            try:
                piece = self._resp.raw.read(READ_SIZE, decode_content=True)
            except Exception as exc:
                if self._reopen is None or self._resumes_left <= 0:
                    raise RegistryError(f"the download of {self._what} broke off after "
                                        f"{self._read_total} bytes: {type(exc).__name__}",
                                        temporary=True) from exc
                self._resume(type(exc).__name__)
                continue
            if self._skip and piece:
                dropped = min(self._skip, len(piece))
                self._skip -= dropped
                piece = piece[dropped:]
                if not piece:
                    continue
            break
        if piece:
            self._read_total += len(piece)
            self._hash.update(piece)
            if self.size is not None and self._read_total > self.size:
                self._fail(f"more than the {self.size} bytes announced")
        return bytes(piece)

    def _resume(self, failure: str) -> None:
        assert self._reopen is not None
        self._resumes_left -= 1
        self._resp.close()
        offset = self._read_total
        log.debug("the download of %s broke off after %d bytes (%s); asking again from there",
                  self._what, offset, failure)
        time.sleep(0.1)
        resp = self._reopen(offset)
        self._skip = 0
        if resp.status_code == 206:
            m = re.match(r"bytes (\d+)-", resp.headers.get("Content-Range", ""))
            if m is None or int(m.group(1)) != offset:
                resp.close()
                raise RegistryError(f"the download of {self._what} broke off after {offset} bytes "
                                    "and the registry answered the retry with another range",
                                    status=206, temporary=True)
        else:
            self._skip = offset  # a whole answer: drop what was already read
        self._resp = resp

    def _fail(self, actual: str) -> None:
        self._failed = DigestMismatch(self._what, self.digest, actual)
        self._held = b""
        self._resp.close()
        raise self._failed

    def _refill(self) -> None:
        while not len(self._out) and not self._eof:
            piece = self._next_piece()
            if piece:
                self._out, self._held = memoryview(self._held), piece
                continue
            self._eof = True
            actual = f"{self.digest.split(':', 1)[0]}:{self._hash.hexdigest()}"
            if actual != self.digest:
                self._fail(actual)
            if self.size is not None and self._read_total != self.size:
                self._fail(f"{self._read_total} bytes instead of {self.size}")
            self._out, self._held = memoryview(self._held), b""
            self._resp.close()

    def readinto(self, buffer: Any) -> int:
        if self._failed is not None:
            raise self._failed
        if self.closed:
            raise ValueError("read from a closed blob stream")
        self._refill()
        n = min(len(buffer), len(self._out))
        if n == 0:
            return 0
        buffer[:n] = self._out[:n]
        self._out = self._out[n:]
        self._done += n
        if self._progress is not None:
            self._progress(self.digest, self._done, self.size)
        return n

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return self.readall()
        buf = bytearray(size)
        n = self.readinto(buf)
        return bytes(buf[:n])

    def readall(self) -> bytes:
        parts: list[bytes] = []
        while True:
            if self._failed is not None:
                raise self._failed
            self._refill()
            if not len(self._out):
                return b"".join(parts)
            parts.append(bytes(self._out))
            self._done += len(self._out)
            self._out = memoryview(b"")
            if self._progress is not None:
                self._progress(self.digest, self._done, self.size)

    def iter_chunks(self) -> Iterator[bytes]:
        while True:
            piece = self.read(READ_SIZE)
            if not piece:
                return
            yield piece

    def close(self) -> None:
        if not self.closed:
            self._resp.close()
        super().close()


class RegistryClient:
    """A client for one repository of one registry.

    ``auth`` is that registry's options (``{"Username": ..., "Secret": ...}`` or
    ``{"token": ...}``) or a ``Credentials``; without it the ``cib_credentials`` plugins are
    asked. ``insecure`` allows plain HTTP or unverified TLS (loopback hosts always may).
    Pass one ``pool`` (a ``TransportPool``) to clients of one registry to share a session,
    the ``/v2/`` ping and the tokens; ``progress(digest, done, total)`` is called as blobs move.
    """

    def __init__(self, registry: str, repository: str,
                 auth: Mapping[str, str] | Credentials | None = None, *, insecure: bool = False,
                 pm: Any = None, pool: TransportPool | None = None,
                 transport: Transport | None = None, options: TransportOptions | None = None,
                 chunk_size: int = DEFAULT_CHUNK_SIZE, progress: Progress | None = None) -> None:
        if not registry or not repository:
            raise ConfigurationError("RegistryClient needs a registry host and a repository name, "
                                     f"got {registry!r} and {repository!r}")
        self.registry = registry
        self.repository = repository
        self.api_host = DOCKER_HUB_API_HOST if is_docker_hub(registry) else registry
        self.chunk_size = chunk_size
        self.progress = progress
        if transport is None:
            transport = (pool.get(self.api_host, insecure=insecure) if pool is not None
                         else Transport(self.api_host, insecure=insecure, pm=pm, options=options))
        self.transport = transport
        self._auth_options = auth
        self._pm = pm
        self._credentials: Credentials | None = None
        self._auth_state: RegistryAuth | None = None
        self._auth_lock = threading.Lock()

    def __repr__(self) -> str:
        user = self._credentials.username if self._credentials is not None else None
        return f"RegistryClient({self.registry!r}, {self.repository!r}, user={user!r})"

    @property
    def credentials(self) -> Credentials:
        """The credentials this client uses: the explicit options, else the first credential
        provider's answer, else anonymous."""
        if self._credentials is None:
            self._credentials = resolve_credentials(self.registry, self.repository,
                                                    options=self._auth_options, pm=self._pm)
        return self._credentials

    @property
    def _registry_auth(self) -> RegistryAuth:
        """The registry's auth state for these credentials. Without explicit options, the
        registry is pinged anonymously first: an open registry never needs the credential
        providers (the keyring alone costs ~80 ms to ask), one that challenges gets them."""
        state = self._auth_state
        if state is not None:
            return state
        with self._auth_lock:
            if self._auth_state is None:
                if self._credentials is None and not self._auth_options:
                    anonymous = self.transport.registry_auth(Credentials())
                    challenges = anonymous.ping()
                    if not challenges:
                        self._credentials = Credentials()
                        self._auth_state = anonymous
                        return anonymous
                    state = self.transport.registry_auth(self.credentials)
                    state.learn(challenges)
                else:
                    state = self.transport.registry_auth(self.credentials)
                self._auth_state = state
            return self._auth_state

    def authenticate(self) -> Credentials:
        """Settle now which credentials this client uses (the first request does otherwise):
        the explicit options, or, after an anonymous ping, the credential providers' answer if
        the registry asks for credentials. Call it before sharing the client with threads, so
        the providers (which may import modules when first asked) run in the calling thread."""
        return self._registry_auth.credentials

    @property
    def name(self) -> str:
        return f"{self.registry}/{self.repository}"

    # -- plumbing -----------------------------------------------------------------------------
    def _path(self, *parts: str) -> str:
        return f"/v2/{self.repository}/" + "/".join(parts)

    def _scoped(self, actions: str = "pull", extra: Iterable[str] = ()) -> ScopedAuth:
        scopes = [repository_scope(self.repository, actions), *extra]
        return self._registry_auth.scoped(merge_scopes(scopes), self.repository)

    def _send(self, method: str, path_or_url: str, *, scope: ScopedAuth | None = None,
              headers: Mapping[str, str] | None = None, params: Any = None, data: Any = None,
              retry: bool = True, allow_redirects: bool = True) -> requests.Response:
        url = path_or_url if "://" in path_or_url else self.transport.url(path_or_url)
        return self.transport.request(method, url, headers=headers, params=params, data=data,
                                      auth=scope if scope is not None else self._scoped("pull"),
                                      stream=True, retry=retry, allow_redirects=allow_redirects)

    def _error(self, resp: requests.Response, what: str, *,
               missing: str | None = None) -> RegistryError:
        """The error for an unexpected answer, from its (capped) JSON body; closes ``resp``.

        ``what`` names the request (``upload of blob sha256:...``); ``missing`` names the thing
        a 404 means is absent (``tag 'v1'``), for a message that says so."""
        status = resp.status_code
        method = (resp.request.method or "").upper()
        body = b"" if method == "HEAD" else _read_capped(resp, MAX_ERROR_BODY)
        resp.close()
        details: list[RegistryErrorDetail] = []
        note = ""
        ctype = _media_type(resp.headers.get("Content-Type")).lower()
        if body.strip():
            try:
                doc = json.loads(body)
            except ValueError:
                doc = None
            if isinstance(doc, dict) and isinstance(doc.get("errors"), list):
                for e in doc["errors"]:
                    if isinstance(e, dict):
                        details.append(RegistryErrorDetail(str(e.get("code") or "UNKNOWN"),
                                                           str(e.get("message") or "")))
            elif ctype == "text/html" or body.lstrip()[:1] == b"<":
                note = "; it answered with an HTML page, not the registry API (is this a registry?)"
            elif status == 405:
                note = ""  # distribution's plain "Method not allowed"; the status says it all
            elif doc is None:
                note = "; its answer was not valid JSON"
            else:
                note = "; its answer had no 'errors' list"
        codes = tuple(d.code for d in details)
        summary = ", ".join(f"{d.code}: {d.message}" if d.message else d.code for d in details)
        where = f"{self.registry}/{self.repository}"
        base = f"{what} in {where}: HTTP {status}" + (f" ({summary})" if summary else "") + note
        challenges = parse_www_authenticate(resp.headers.get("WWW-Authenticate", ""))
        common: dict[str, Any] = {"status": status, "errors": details, "registry": self.registry,
                                  "repository": self.repository}
        if status == 401 and any(c.error == "insufficient_scope" for c in challenges):
            return AuthorizationError(base + ": these credentials do not allow this action", **common)
        if status == 401:
            hint = (f"no credentials were found; pass auth or log in with `cib auth login {self.registry}`"
                    if self.credentials.anonymous else "the registry refused the credentials")
            return AuthenticationError(f"{base}: {hint}", **common)
        if status == 403 or "DENIED" in codes:
            return AuthorizationError(f"{base}: access denied for these credentials", **common)
        if status == 404 or (codes and set(codes) <= NOT_FOUND_CODES):
            answer = f"HTTP {status}" + (f", {summary}" if summary else "")
            if "NAME_UNKNOWN" in codes:
                return NotFound(f"repository {where} not found ({what}: {answer})", **common)
            if missing is not None:
                return NotFound(f"{missing} not found in {where} ({answer})", **common)
            return NotFound(base, **common)
        if status == 405 and method in _WRITE_METHODS:
            return self._write_refused(resp, method, what, codes, base, common)
        return RegistryError(base, temporary=status in RETRY_STATUSES, **common)

    def _write_refused(self, resp: requests.Response, method: str, what: str,
                       codes: tuple[str, ...], base: str, common: dict[str, Any]) -> RegistryError:
        """A 405 to a write: deletes switched off, or a registry that takes no writes at all
        (distribution's ``maintenance.readonly``, which answers every write with a plain 405
        and ``Allow: GET, HEAD``)."""
        if method == "DELETE" and "UNSUPPORTED" in codes:
            return RegistryError(f"{base}: registry {self.registry} does not allow deletes "
                                 "(docker-registry needs storage.delete.enabled: true)", **common)
        allow = [m.strip().upper() for m in resp.headers.get("Allow", "").split(",") if m.strip()]
        takes_writes = any(m in _WRITE_METHODS for m in allow) if allow else bool(codes)
        if takes_writes:
            return RegistryError(base, **common)  # this one request refused, not every write
        allowed = f", it allows only {', '.join(allow)}" if allow else ""
        return RegistryError(
            f"registry {self.registry} refuses writes to repository {self.repository}: it is "
            f"read-only, for example in maintenance mode ({what}: HTTP 405{allowed}); try again "
            "once it takes writes, or write to another registry", **common)

    def _check(self, resp: requests.Response, ok: Iterable[int], what: str, *,
               missing: str | None = None) -> requests.Response:
        if resp.status_code in set(ok):
            return resp
        raise self._error(resp, what, missing=missing)

    def _read_json(self, resp: requests.Response, cap: int, what: str) -> Any:
        raw = _read_capped(resp, cap + 1)
        if len(raw) > cap:
            raise RegistryError(f"{what} in {self.name} is larger than {cap} bytes", status=resp.status_code,
                                registry=self.registry, repository=self.repository)
        try:
            return json.loads(raw) if raw.strip() else None
        except ValueError as exc:
            raise RegistryError(f"{what} in {self.name} is not valid JSON", status=resp.status_code,
                                registry=self.registry, repository=self.repository) from exc

    @staticmethod
    def _check_ref(ref: str) -> str:
        if not ref or "/" in ref:
            raise InvalidReference(ref, "expected a tag or a digest")
        if ":" in ref and not is_digest(ref):
            raise InvalidReference(ref, "not a valid digest (expected algorithm:hex)")
        return ref

    # -- manifests ----------------------------------------------------------------------------
    def manifest_raw(self, ref: str) -> tuple[bytes, str, str]:
        """The exact stored bytes, media type and digest of a manifest or index (tag or digest)."""
        self._check_ref(ref)
        what = f"manifest {ref}"
        resp = self._check(self._send("GET", self._path("manifests", ref),
                                      headers={"Accept": mediatypes.ACCEPT}), (200,), what,
                           missing=_manifest_subject(ref))
        length = resp.headers.get("Content-Length")
        if length and length.isdigit() and int(length) > MAX_MANIFEST_SIZE:
            resp.close()
            raise RegistryError(f"{what} in {self.name} is {length} bytes, over the "
                                f"{MAX_MANIFEST_SIZE}-byte limit for manifests; refusing to read it",
                                status=200, registry=self.registry, repository=self.repository)
        raw = _read_capped(resp, MAX_MANIFEST_SIZE + 1)
        if len(raw) > MAX_MANIFEST_SIZE:
            raise RegistryError(f"{what} in {self.name} is over the {MAX_MANIFEST_SIZE}-byte limit "
                                "for manifests; refusing to read it", status=200,
                                registry=self.registry, repository=self.repository)
        header_digest = resp.headers.get("Docker-Content-Digest")
        algo = ref.split(":", 1)[0] if is_digest(ref) else (
            header_digest.split(":", 1)[0] if header_digest and header_digest.split(":", 1)[0]
            in ALGORITHMS else "sha256")
        digest = f"{algo}:{hashlib.new(algo, raw).hexdigest()}"
        if is_digest(ref) and digest != ref:
            raise DigestMismatch(f"manifest {ref} from {self.name}", ref, digest)
        if header_digest and header_digest.split(":", 1)[0] == algo and header_digest != digest:
            raise DigestMismatch(f"{what} from {self.name} (Docker-Content-Digest)", header_digest, digest)
        media_type = _media_type(resp.headers.get("Content-Type"))
        if media_type not in mediatypes.ALL_MANIFESTS:
            try:
                media_type = manifest_media_type(raw)
            except ManifestError:
                pass  # not JSON: the caller's parse says so, naming the manifest
        return raw, media_type, digest

    def manifest(self, ref: str) -> dict[str, Any]:
        """A manifest or index as a dict (Docker schema 2, OCI manifest, OCI index, manifest list)."""
        raw, media_type, _ = self.manifest_raw(ref)
        return json_object(raw, f"manifest {ref} in {self.name}")

    def manifest_exists(self, ref: str) -> bool:
        self._check_ref(ref)
        resp = self._send("HEAD", self._path("manifests", ref), headers={"Accept": mediatypes.ACCEPT})
        if resp.status_code == 404:
            resp.close()
            return False
        self._check(resp, (200,), f"manifest {ref}", missing=_manifest_subject(ref)).close()
        return True

    def manifest_digest(self, ref: str) -> str:
        """The digest of a manifest by tag (HEAD, falling back to GET when no header is sent)."""
        if is_digest(ref):
            return ref
        self._check_ref(ref)
        resp = self._check(self._send("HEAD", self._path("manifests", ref),
                                      headers={"Accept": mediatypes.ACCEPT}), (200,),
                           f"manifest {ref}", missing=_manifest_subject(ref))
        resp.close()
        digest = resp.headers.get("Docker-Content-Digest")
        return digest if digest and is_digest(digest) else self.manifest_raw(ref)[2]

    def manifest_upload(self, tag: str | None, manifest: bytes | Mapping[str, Any],
                        media_type: str | None = None) -> UploadResult:
        """Push a manifest or index under ``tag`` (``None``: by digest only). A dict is
        serialized as compact JSON; the media type comes from the document when not given."""
        if isinstance(manifest, (bytes, bytearray)):
            raw = bytes(manifest)
        else:
            raw = canonical_json(manifest)
        if media_type is None:
            media_type = manifest_media_type(raw, "the manifest to upload")
        digest = sha256_digest(raw)
        ref = self._check_ref(tag) if tag else digest
        resp = self._send("PUT", self._path("manifests", ref), scope=self._scoped("push"),
                          headers={"Content-Type": media_type}, data=raw)
        self._check(resp, (200, 201, 202), f"upload of manifest {ref}")
        body = _read_capped(resp, MAX_ERROR_BODY)
        answered = resp.headers.get("Docker-Content-Digest")
        if answered and answered.startswith("sha256:") and answered != digest:
            raise DigestMismatch(f"manifest pushed to {self.name}", digest, answered)
        log.debug("pushed manifest %s to %s as %s", digest, self.name, ref)
        subject = resp.headers.get("OCI-Subject") or None
        return UploadResult(resp.status_code, digest, len(raw), body, subject)

    def delete_manifest(self, ref: str) -> None:
        """Delete a manifest (a tag is resolved to its digest first; registries delete by digest)."""
        digest = self.manifest_digest(ref)
        resp = self._send("DELETE", self._path("manifests", digest),
                          scope=self._scoped("delete", [repository_scope(self.repository, "pull")]))
        self._check(resp, (200, 202, 204), f"delete of manifest {ref}",
                    missing=_manifest_subject(digest)).close()

    # -- listing --------------------------------------------------------------------------------
    def _paginate(self, first: str, key: str, scope: ScopedAuth, what: str,
                  page_size: int | None) -> list[str]:
        start = self.transport.url(first)
        if page_size:
            start = _with_query(start, [("n", str(page_size))])
        url: str | None = start
        out: list[str] = []
        seen: set[str] = set()
        while url is not None:
            if url in seen or len(seen) >= MAX_PAGES:
                raise RegistryError(f"the {what} of {self.name} paginates in a loop at "
                                    f"{redact_url(url)}", registry=self.registry,
                                    repository=self.repository)
            seen.add(url)
            resp = self._check(self._send("GET", url, scope=scope), (200,), what)
            nxt = resp.links.get("next", {}).get("url")
            doc = self._read_json(resp, MAX_LIST_BODY, what)
            items = doc.get(key) if isinstance(doc, dict) else None
            if items is not None and not isinstance(items, list):
                raise RegistryError(f"the {what} of {self.name} has no '{key}' list",
                                    registry=self.registry, repository=self.repository)
            out.extend(str(i) for i in items or [])
            url = urljoin(resp.url, nxt) if nxt else None
        return out

    def tags(self, page_size: int | None = None) -> list[str]:
        """Every tag of the repository, following ``Link`` pagination."""
        return self._paginate(self._path("tags", "list"), "tags", self._scoped("pull"),
                              "tag list", page_size)

    def catalog(self, page_size: int | None = None) -> list[str]:
        """Every repository of the registry, following ``Link`` pagination."""
        scope = self._registry_auth.scoped(("registry:catalog:*",), None)
        return self._paginate("/v2/_catalog", "repositories", scope, "catalog", page_size)

    # -- blobs ----------------------------------------------------------------------------------
    def blob_exists(self, digest: str) -> bool:
        _hasher(digest, "a blob")
        resp = self._send("HEAD", self._path("blobs", digest))
        if resp.status_code == 404:
            resp.close()
            return False
        self._check(resp, (200,), f"blob {digest}").close()
        return True

    def _blob_size(self, digest: str) -> int | None:
        resp = self._send("HEAD", self._path("blobs", digest))
        if resp.status_code != 200:
            resp.close()
            return None
        resp.close()
        length = resp.headers.get("Content-Length")
        return int(length) if length and length.isdigit() else None

    @overload
    def blob(self, digest: str, stream: Literal[False] = ..., *, size: int | None = ...,
             progress: Progress | None = ...) -> bytes: ...

    @overload
    def blob(self, digest: str, stream: Literal[True], *, size: int | None = ...,
             progress: Progress | None = ...) -> BinaryIO: ...

    @overload
    def blob(self, digest: str, stream: bool, *, size: int | None = ...,
             progress: Progress | None = ...) -> bytes | BinaryIO: ...

    def blob(self, digest: str, stream: bool = False, *, size: int | None = None,
             progress: Progress | None = None) -> bytes | BinaryIO:
        """A blob's bytes, or a readable binary stream of them, verified against ``digest``
        (a mismatch raises ``DigestMismatch`` before the last piece is handed out)."""
        what = f"blob {digest} from {self.name}"
        _hasher(digest, what)
        path = self._path("blobs", digest)
        resp = self._check(self._send("GET", path), (200,), f"blob {digest}",
                           missing=f"blob {digest}")

        def reopen(offset: int) -> requests.Response:
            return self._check(self._send("GET", path, headers={"Range": f"bytes={offset}-"}),
                               (200, 206), f"blob {digest}")

        reader = BlobStream(resp, digest, what, size=size, progress=progress or self.progress,
                            reopen=reopen, resumes=max(1, self.transport.options.max_retries))
        if stream:
            return io.BufferedReader(reader, READ_SIZE)
        with reader:
            return reader.readall()

    def delete_blob(self, digest: str) -> None:
        _hasher(digest, "a blob")
        resp = self._send("DELETE", self._path("blobs", digest),
                          scope=self._scoped("delete", [repository_scope(self.repository, "pull")]))
        self._check(resp, (200, 202, 204), f"delete of blob {digest}").close()

    def mount(self, digest: str, from_repository: str) -> bool:
        """Mount a blob from another repository of this registry: True when mounted, False when
        the registry declined (the upload session it opened instead is cancelled)."""
        _hasher(digest, "a blob")
        scope = self._scoped("push", [repository_scope(from_repository, "pull")])
        resp = self._send("POST", self._path("blobs", "uploads/"), scope=scope,
                          params=[("mount", digest), ("from", from_repository)])
        if resp.status_code == 201:
            resp.close()
            log.debug("mounted %s from %s into %s", digest, from_repository, self.name)
            return True
        self._check(resp, (202,), f"mount of blob {digest} from {from_repository}").close()
        location = resp.headers.get("Location")
        if location:
            self._cancel_upload(urljoin(resp.url, location), scope)
        log.debug("%s declined to mount %s from %s", self.name, digest, from_repository)
        return False

    def _cancel_upload(self, location: str, scope: ScopedAuth) -> None:
        try:
            self._send("DELETE", location, scope=scope).close()
        except RegistryError as exc:  # the session expires on its own anyway
            log.debug("cancelling an upload session in %s failed: %s", self.name, exc)

    # -- uploads ----------------------------------------------------------------------------
    def _start_upload(self, scope: ScopedAuth) -> tuple[str, int]:
        resp = self._check(self._send("POST", self._path("blobs", "uploads/"), scope=scope),
                           (202,), "start of a blob upload")
        resp.close()
        location = resp.headers.get("Location")
        if not location:
            raise RegistryError(f"{self.name} started a blob upload without a Location header",
                                status=resp.status_code, registry=self.registry,
                                repository=self.repository)
        min_chunk = resp.headers.get("OCI-Chunk-Min-Length", "")
        return urljoin(resp.url, location), int(min_chunk) if min_chunk.isdigit() else 0

    def upload(self, blob: bytes | IO[bytes] | Iterable[bytes], content_length: int | None = None,
               digest: str | None = None, *, force: bool = False, progress: Progress | None = None,
               chunk_size: int | None = None) -> UploadResult:
        """Upload a blob (bytes, a binary file object or an iterable of bytes).

        With digest and length known and a body that can be sent again (bytes, a seekable
        file), one monolithic request; otherwise a chunked upload hashed on the fly and resumed
        after a dropped connection. A blob the repository has is skipped unless ``force``.
        """
        progress = progress or self.progress
        if digest is not None:
            _hasher(digest, "a blob upload")
        if isinstance(blob, (bytes, bytearray, memoryview)):
            data = bytes(blob)
            actual = "sha256:" + hashlib.sha256(data).hexdigest()
            if digest is not None and digest.startswith("sha256:") and digest != actual:
                raise DigestMismatch(f"blob upload to {self.name}", digest, actual)
            if content_length is not None and content_length != len(data):
                raise ConfigurationError(f"upload to {self.name}: content_length is {content_length} "
                                         f"but the bytes given are {len(data)} long")
            return self._monolithic(data, digest or actual, len(data), force, progress)
        seekable = False
        if hasattr(blob, "seek") and hasattr(blob, "tell"):
            try:
                seekable = bool(getattr(blob, "seekable", lambda: True)())
            except (OSError, ValueError):
                seekable = False
        if digest is not None and content_length is not None and seekable:
            return self._monolithic(blob, digest, content_length, force, progress)
        if digest is not None and not force and self.blob_exists(digest):
            size = content_length if content_length is not None else self._blob_size(digest) or 0
            return UploadResult(200, digest, size)
        source: Any = blob
        start = source.tell() if seekable else None
        # a registry BlobStream of this very digest checks it itself: no second hash
        verified = digest is not None and verified_digest(blob) == digest
        if verified and digest is not None and start is None:
            return self._streamed(blob, digest, content_length, progress)
        try:
            return self._chunked(blob, content_length, digest, progress, chunk_size or self.chunk_size,
                                 verified=verified)
        except _UploadLost as exc:
            if start is None:
                raise RegistryError(f"{exc}; the source is a stream that cannot be rewound, so "
                                    "upload it again", registry=self.registry,
                                    repository=self.repository, temporary=True) from None
            log.debug("%s; starting the upload over from the beginning of the file", exc)
            source.seek(start)
            return self._chunked(blob, content_length, digest, progress, chunk_size or self.chunk_size)

    def _monolithic(self, data: Any, digest: str, size: int, force: bool,
                    progress: Progress | None) -> UploadResult:
        if not force and self.blob_exists(digest):
            return UploadResult(200, digest, size)
        scope = self._scoped("push")
        start = None if isinstance(data, (bytes, bytearray)) else data.tell()
        attempt = 0
        while True:
            location, _ = self._start_upload(scope)
            try:
                resp = self._send("PUT", _with_query(location, [("digest", digest)]), scope=scope,
                                  headers={"Content-Type": "application/octet-stream",
                                           "Content-Length": str(size)}, data=data)
                self._check(resp, (201, 204), f"upload of blob {digest}").close()
                break
            except (AuthenticationError, AuthorizationError):
                raise
            except RegistryError as exc:
                # the answer may have been lost after the registry took the blob (its session is
                # then gone, so a retry of the PUT fails): the blob being there is success
                if self.blob_exists(digest):
                    log.debug("upload of %s to %s failed (%s) but the blob arrived", digest,
                              self.name, exc)
                    resp = None
                    break
                if not (exc.temporary or isinstance(exc, NotFound)) or attempt >= UPLOAD_RESUME_ATTEMPTS:
                    raise
                attempt += 1
                log.debug("upload of %s to %s failed (%s); new session, attempt %d", digest,
                          self.name, exc, attempt + 1)
                time.sleep(min(8.0, 0.2 * (2 ** attempt)))
                if start is not None:
                    data.seek(start)
        if progress is not None:
            progress(digest, size, size)
        log.debug("uploaded %s (%d bytes) to %s in one request", digest, size, self.name)
        return UploadResult(resp.status_code if resp is not None else 201, digest, size)

    def _streamed(self, blob: Any, digest: str, size: int | None,
                  progress: Progress | None) -> UploadResult:
        """One PUT whose body is ``blob`` read as it arrives, for a registry stream that checks
        its own digest: a registry-to-registry copy the way skopeo makes it, with no chunk
        buffers and none of the registry's per-chunk bookkeeping. It cannot resume; a copy that
        breaks off is a temporary error, and ``stores.transfer_blob`` starts it over."""
        scope = self._scoped("push")
        location, _ = self._start_upload(scope)
        sent = 0

        def body() -> Iterator[bytes]:
            nonlocal sent
            while True:
                piece = blob.read(READ_SIZE)
                if not piece:
                    return
                sent += len(piece)
                if progress is not None:
                    progress(digest, sent, size)
                yield piece

        try:
            resp = self._send("PUT", _with_query(location, [("digest", digest)]), scope=scope,
                              headers={"Content-Type": "application/octet-stream"}, data=body(),
                              retry=False)
            self._check(resp, (201, 204), f"upload of blob {digest}").close()
        except (AuthenticationError, AuthorizationError, DigestMismatch):
            raise
        except RegistryError as exc:
            if self.blob_exists(digest):  # the answer was lost after the registry took it
                return UploadResult(201, digest, sent)
            raise RegistryError(f"the streamed upload of {digest} to {self.name} broke off after "
                                f"{sent} bytes: {exc}", status=exc.status, errors=exc.errors,
                                registry=self.registry, repository=self.repository,
                                temporary=True) from exc
        log.debug("uploaded %s (%d bytes) to %s in one streamed request", digest, sent, self.name)
        return UploadResult(resp.status_code, digest, sent)

    def upload_stream(self, pieces: Iterable[bytes], *, progress: Progress | None = None,
                      label: str = "new blob") -> UploadResult:
        """Upload a blob whose digest is not known yet in one streamed ``PATCH`` (chunked
        transfer encoding), hashed on the way, then the closing ``PUT``: the way docker, crane
        and skopeo push a layer while it is being made. The registry takes the bytes as they
        come, with no round trip per chunk and no per-chunk bookkeeping, but nothing can be
        resumed: this is for a producer that can make the bytes again (a layer build), and a
        break-off is a temporary ``RegistryError``. ``upload`` is the resumable way.
        ``label`` names the blob to ``progress`` while its digest is not known."""
        progress = progress or self.progress
        scope = self._scoped("push")
        location, _ = self._start_upload(scope)
        hasher = hashlib.sha256()
        sent = 0

        def body() -> Iterator[bytes | bytearray | memoryview]:
            nonlocal sent
            for piece in pieces:
                if not isinstance(piece, (bytes, bytearray, memoryview)):
                    raise ConfigurationError(f"an upload's iterable must yield bytes, not "
                                             f"{type(piece).__name__}")
                if not piece:
                    continue  # an empty piece would end the chunked body early
                hasher.update(piece)
                sent += len(piece)
                if progress is not None:
                    progress(label, sent, None)
                yield piece

        try:
            resp = self._send("PATCH", location, scope=scope, data=body(), retry=False,
                              headers={"Content-Type": "application/octet-stream"})
            self._check(resp, (202, 204), "a streamed blob upload").close()
        except BaseException as exc:
            self._cancel_upload(location, scope)
            if isinstance(exc, RegistryError) and not isinstance(
                    exc, (AuthenticationError, AuthorizationError)):
                raise RegistryError(f"the streamed upload to {self.name} broke off after {sent} "
                                    f"bytes: {exc}", status=exc.status, errors=exc.errors,
                                    registry=self.registry, repository=self.repository,
                                    temporary=True) from exc
            raise
        location = urljoin(resp.url, resp.headers.get("Location") or location)
        result = self._finish_upload(location, "sha256:" + hasher.hexdigest(), sent, scope)
        if progress is not None:
            progress(label, sent, sent)  # the size is known now: the bar can finish
        log.debug("uploaded %s (%d bytes) to %s in one streamed PATCH", result.digest, sent,
                  self.name)
        return result

    def _finish_upload(self, location: str, digest: str, size: int,
                       scope: ScopedAuth) -> UploadResult:
        """The closing ``PUT ?digest=`` of an upload session."""
        try:
            resp = self._send("PUT", _with_query(location, [("digest", digest)]), scope=scope,
                              headers={"Content-Length": "0"}, data=b"")
            self._check(resp, (201, 204), f"finishing the upload of blob {digest}").close()
        except (AuthenticationError, AuthorizationError):
            raise
        except RegistryError as exc:
            # a lost answer to the final PUT: retried, it finds the session closed
            if not self.blob_exists(digest):
                raise
            log.debug("finishing the upload of %s failed (%s) but the blob arrived", digest, exc)
            return UploadResult(201, digest, size)
        return UploadResult(resp.status_code, digest, size)

    def _upload_status(self, location: str, scope: ScopedAuth) -> tuple[int, str]:
        """(bytes the registry confirms, the upload's current URL) from ``GET location``."""
        resp = self._check(self._send("GET", location, scope=scope), (200, 204),
                           "status of a blob upload")
        resp.close()
        rng = resp.headers.get("Range", "")
        m = re.fullmatch(r"(?:bytes=)?0-(\d+)", rng.strip())
        confirmed = 0
        if m:
            end = int(m.group(1))
            # distribution answers "0-0" for an empty upload; any other end is inclusive
            confirmed = end + 1 if end > 0 else 0
        location = urljoin(resp.url, resp.headers.get("Location") or location)
        return confirmed, location

    def _patch(self, location: str, chunk: bytes | bytearray, offset: int, scope: ScopedAuth) -> str:
        """Send ``chunk`` (which starts at ``offset``) and return the next upload URL; on a
        dropped connection or a temporary error, ask the registry what arrived and resume."""
        start = 0
        attempt = 0
        while True:
            body = chunk[start:] if start else chunk
            first = offset + start
            headers = {"Content-Type": "application/octet-stream",
                       "Content-Range": f"{first}-{first + len(body) - 1}",
                       "Content-Length": str(len(body))}
            failure: str
            try:
                resp = self._send("PATCH", location, scope=scope, headers=headers, data=body,
                                  retry=False)
            except RegistryError as exc:
                if exc.status is not None or not exc.temporary:
                    raise
                failure = str(exc)
            else:
                if resp.status_code in (202, 204):
                    resp.close()
                    return urljoin(resp.url, resp.headers.get("Location") or location)
                if resp.status_code != 416 and resp.status_code not in RETRY_STATUSES:
                    raise self._error(resp, f"chunk {first}-{first + len(body) - 1} of a blob upload")
                failure = f"HTTP {resp.status_code}"
                resp.close()
            attempt += 1
            if attempt > UPLOAD_RESUME_ATTEMPTS:
                raise RegistryError(f"a blob upload to {self.name} kept failing at byte {first} "
                                    f"({failure}); giving up after {attempt} attempts",
                                    registry=self.registry, repository=self.repository, temporary=True)
            time.sleep(min(8.0, 0.2 * (2 ** attempt)))
            try:
                confirmed, location = self._upload_status(location, scope)
            except NotFound as exc:
                # distribution cancels a session whose state token is stale (the dropped
                # request had reached it): nothing left to resume
                raise _UploadLost(
                    f"cannot resume a blob upload to {self.name} after {failure}: the registry no "
                    f"longer knows the upload session ({', '.join(exc.codes) or exc.status})",
                    registry=self.registry, repository=self.repository, temporary=True) from exc
            log.debug("upload to %s interrupted (%s); registry confirms %d bytes, resuming",
                      self.name, failure, confirmed)
            if confirmed < offset or confirmed > offset + len(chunk):
                raise _UploadLost(
                    f"cannot resume a blob upload to {self.name}: the registry has {confirmed} bytes "
                    f"but only bytes {offset}-{offset + len(chunk) - 1} are still at hand",
                    registry=self.registry, repository=self.repository, temporary=True)
            start = confirmed - offset
            if start == len(chunk):
                return location

    def _chunked(self, blob: Any, content_length: int | None, digest: str | None,
                 progress: Progress | None, chunk_size: int, *,
                 verified: bool = False) -> UploadResult:
        """``verified``: the source itself checks ``digest`` (a ``BlobStream`` raises before it
        hands out bytes that do not match), so the upload does not hash it again."""
        scope = self._scoped("push")
        location, min_chunk = self._start_upload(scope)
        size = max(chunk_size, min_chunk)
        hasher = None if verified and digest else (
            _hasher(digest, "a blob upload") if digest else hashlib.sha256())
        algo = digest.split(":", 1)[0] if digest else "sha256"
        label = digest or "new blob"
        offset = 0
        try:
            chunks = _chunks_of(blob, size)
            while True:
                chunk = next(chunks, None)
                if chunk is None:
                    break
                if hasher is not None:
                    hasher.update(chunk)
                location = self._patch(location, chunk, offset, scope)
                offset += len(chunk)
                del chunk  # before the next one is built: one chunk in memory, not two
                if progress is not None:
                    progress(label, offset, content_length)
            actual = f"{algo}:{hasher.hexdigest()}" if hasher is not None else str(digest)
            if digest is not None and actual != digest:
                raise DigestMismatch(f"blob upload to {self.name}", digest, actual)
            if content_length is not None and content_length != offset:
                raise ConfigurationError(f"upload to {self.name}: content_length is {content_length} "
                                         f"but the source gave {offset} bytes")
        except BaseException:
            self._cancel_upload(location, scope)
            raise
        result = self._finish_upload(location, actual, offset, scope)
        if progress is not None and content_length is None:
            progress(label, offset, offset)  # the size is known now: the bar can finish
        log.debug("uploaded %s (%d bytes) to %s in chunks of %d", actual, offset, self.name, size)
        return result

    def copy_blob_to(self, target: RegistryClient, digest: str, size: int | None = None, *,
                     progress: Progress | None = None, force: bool = False) -> UploadResult:
        """Stream a blob from this repository into ``target`` (any registry) with no temporary
        file: a verified download feeding a chunked upload with the digest known."""
        if not force and target.blob_exists(digest):
            return UploadResult(200, digest, size or 0)
        with self.blob(digest, stream=True, size=size) as reader:
            return target.upload(reader, content_length=size, digest=digest,
                                 force=True, progress=progress)

    # -- referrers ------------------------------------------------------------------------------
    def referrers(self, digest: str, artifact_type: str | None = None) -> dict[str, Any]:
        """The manifests that refer to ``digest`` as an OCI index: the referrers API, else the
        ``sha256-<hex>`` tag scheme, else an empty index."""
        _hasher(digest, "referrers")
        params = [("artifactType", artifact_type)] if artifact_type else None
        resp = self._send("GET", self._path("referrers", digest), params=params,
                          headers={"Accept": mediatypes.OCI_INDEX})
        index: Any = None
        filtered = False
        if resp.status_code == 200 and _media_type(resp.headers.get("Content-Type")) in (
                mediatypes.OCI_INDEX, "application/json"):
            filtered = "artifactType" in resp.headers.get("OCI-Filters-Applied", "")
            index = self._read_json(resp, MAX_MANIFEST_SIZE, f"referrers of {digest}")
        elif resp.status_code in (200, 404, 405, 400):
            resp.close()
            try:
                index = self.manifest(referrers_tag(digest))
            except NotFound:
                index = None
        else:
            raise self._error(resp, f"referrers of {digest}")
        if not isinstance(index, dict):
            index = {"schemaVersion": 2, "mediaType": mediatypes.OCI_INDEX, "manifests": []}
        manifests = index.get("manifests") or []
        if artifact_type and not filtered:
            manifests = [m for m in manifests if isinstance(m, dict)
                         and m.get("artifactType") == artifact_type]
        return {"schemaVersion": 2, "mediaType": mediatypes.OCI_INDEX, "manifests": list(manifests)}


def fetch_url(url: str, digest: str, *, size: int | None = None, insecure: bool = False,
              pm: Any = None, progress: Progress | None = None,
              pool: TransportPool | None = None) -> BinaryIO:
    """Download a blob from a plain URL (a non-distributable layer's ``urls``), anonymously,
    verified against ``digest`` like ``RegistryClient.blob``. Use it as a context manager.
    ``pool`` gives the URL host's transport (its session is shared and stays open)."""
    what = f"blob {digest} from {redact_url(url)}"
    _hasher(digest, what)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigurationError(f"{redact_url(url)} is not an http(s) URL; cannot fetch {digest}")
    host = parts.netloc.rsplit("@", 1)[-1]
    transport = (pool.get(host, insecure=insecure) if pool is not None
                 else Transport(host, insecure=insecure, pm=pm))
    resp = transport.request("GET", url, stream=True)
    if resp.status_code != 200:
        resp.close()
        if pool is None:
            transport.close()
        err = NotFound if resp.status_code == 404 else RegistryError
        raise err(f"{what}: HTTP {resp.status_code}", status=resp.status_code, registry=host,
                  temporary=resp.status_code in RETRY_STATUSES)
    return io.BufferedReader(BlobStream(resp, digest, what, size=size, progress=progress), READ_SIZE)


__all__ = ["BlobStream", "RegistryClient", "UploadResult", "fetch_url", "is_digest", "referrers_tag"]
