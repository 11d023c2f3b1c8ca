"""Blob uploads: the distribution API's upload sessions, in the four ways cib needs them.

- **monolithic**: digest and length known and a body that can be sent again (bytes, a
  seekable file): ``POST`` then one ``PUT ?digest=``; a failed attempt gets a new session.
- **chunked**: anything else (an iterable, a pipe): ``PATCH`` chunks of one size, hashed on
  the fly, each resumed from the registry's ``Range`` after a dropped connection; memory is
  bounded by one chunk.
- **streamed**: a registry ``BlobStream`` that checks its own digest goes out in one ``PUT``
  as it arrives (a registry-to-registry copy, the way skopeo makes it).
- **stream**: bytes whose digest is not known yet in one chunked-encoded ``PATCH`` (a layer
  while it is built); it cannot resume, the producer starts over.

Every new attempt waits by the transport's ``RetryPolicy``.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

from cib_core.authn.challenge import ScopedAuth
from cib_core.callbacks import Progress
from cib_core.digest import verified_digest
from cib_core.errors import (
    AuthenticationError,
    AuthorizationError,
    ConfigurationError,
    DigestMismatch,
    NotFound,
    RegistryError,
)
from cib_core.fileio import chunks
from cib_core.remote.blobs import hasher_for
from cib_core.remote.body import READ_SIZE
from cib_core.remote.session import RepositorySession
from cib_core.retry import TEMPORARY_STATUSES, parse_retry_after

log = logging.getLogger(__name__)

MAX_ANSWER_BODY = 64 * 1024


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


class UploadLost(RegistryError):
    """A chunked upload the registry can no longer resume. ``upload`` starts over when its
    source can be rewound and raises a plain ``RegistryError`` otherwise."""


def with_query(url: str, params: Iterable[tuple[str, str]]) -> str:
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True) + list(params)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query, safe=":"), ""))


class BlobUploader:
    """Uploads into the repository of ``session``."""

    def __init__(self, session: RepositorySession) -> None:
        self.session = session
        self.policy = session.transport.retry

    @property
    def name(self) -> str:
        return self.session.name

    def _temporary(self, message: str) -> RegistryError:
        return RegistryError(message, registry=self.session.registry,
                             repository=self.session.repository, temporary=True)

    # -- sessions -------------------------------------------------------------------------------
    def start(self, scope: ScopedAuth) -> tuple[str, int]:
        """A new upload session: its URL and the registry's minimum chunk size (0: none)."""
        s = self.session
        resp = s.check(s.send("POST", s.path("blobs", "uploads/"), scope=scope), (202,),
                       "start of a blob upload")
        resp.close()
        location = resp.headers.get("Location")
        if not location:
            raise RegistryError(f"{self.name} started a blob upload without a Location header",
                                status=resp.status_code, registry=s.registry, repository=s.repository)
        min_chunk = resp.headers.get("OCI-Chunk-Min-Length", "")
        return urljoin(resp.url, location), int(min_chunk) if min_chunk.isdigit() else 0

    def cancel(self, location: str, scope: ScopedAuth) -> None:
        try:
            self.session.send("DELETE", location, scope=scope).close()
        except RegistryError as exc:  # the session expires on its own anyway
            log.debug("cancelling an upload session in %s failed: %s", self.name, exc)

    def finish(self, location: str, digest: str, size: int, scope: ScopedAuth) -> UploadResult:
        """The closing ``PUT ?digest=`` of an upload session."""
        s = self.session
        try:
            resp = s.send("PUT", with_query(location, [("digest", digest)]), scope=scope,
                          headers={"Content-Length": "0"}, data=b"")
            s.check(resp, (201, 204), f"finishing the upload of blob {digest}").close()
        except (AuthenticationError, AuthorizationError):
            raise
        except RegistryError as exc:
            # a lost answer to the final PUT: retried, it finds the session closed
            if not s.blob_exists(digest):
                raise
            log.debug("finishing the upload of %s failed (%s) but the blob arrived", digest, exc)
            return UploadResult(201, digest, size)
        return UploadResult(resp.status_code, digest, size)

    def status(self, location: str, scope: ScopedAuth) -> tuple[int, str]:
        """(bytes the registry confirms, the upload's current URL) from ``GET location``."""
        s = self.session
        resp = s.check(s.send("GET", location, scope=scope), (200, 204), "status of a blob upload")
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

    # -- the entry point ------------------------------------------------------------------------
    def upload(self, blob: bytes | IO[bytes] | Iterable[bytes], content_length: int | None = None,
               digest: str | None = None, *, force: bool = False, progress: Progress | None = None,
               chunk_size: int | None = None) -> UploadResult:
        """See ``RegistryClient.upload``."""
        s = self.session
        progress = progress or s.progress
        chunk_size = chunk_size or s.chunk_size
        if digest is not None:
            hasher_for(digest, "a blob upload")
        if isinstance(blob, (bytes, bytearray, memoryview)):
            data = bytes(blob)
            actual = "sha256:" + hashlib.sha256(data).hexdigest()
            if digest is not None and digest.startswith("sha256:") and digest != actual:
                raise DigestMismatch(f"blob upload to {self.name}", digest, actual)
            if content_length is not None and content_length != len(data):
                raise ConfigurationError(f"upload to {self.name}: content_length is {content_length} "
                                         f"but the bytes given are {len(data)} long")
            return self.monolithic(data, digest or actual, len(data), force, progress)
        seekable = False
        if hasattr(blob, "seek") and hasattr(blob, "tell"):
            try:
                seekable = bool(getattr(blob, "seekable", lambda: True)())
            except (OSError, ValueError):
                seekable = False
        if digest is not None and content_length is not None and seekable:
            return self.monolithic(blob, digest, content_length, force, progress)
        if digest is not None and not force and s.blob_exists(digest):
            size = content_length if content_length is not None else s.blob_size(digest) or 0
            return UploadResult(200, digest, size)
        source: Any = blob
        start = source.tell() if seekable else None
        # a registry BlobStream of this very digest checks it itself: no second hash
        verified = digest is not None and verified_digest(blob) == digest
        if verified and digest is not None and start is None:
            return self.streamed(blob, digest, content_length, progress)
        try:
            return self.chunked(blob, content_length, digest, progress, chunk_size, verified=verified)
        except UploadLost as exc:
            if start is None:
                raise self._temporary(f"{exc}; the source is a stream that cannot be rewound, so "
                                      "upload it again") from None
            log.debug("%s; starting the upload over from the beginning of the file", exc)
            source.seek(start)
            return self.chunked(blob, content_length, digest, progress, chunk_size)

    # -- monolithic -----------------------------------------------------------------------------
    def monolithic(self, data: Any, digest: str, size: int, force: bool,
                   progress: Progress | None) -> UploadResult:
        s = self.session
        if not force and s.blob_exists(digest):
            return UploadResult(200, digest, size)
        scope = s.scoped("push")
        start = None if isinstance(data, (bytes, bytearray)) else data.tell()
        attempt = 0
        while True:
            location, _ = self.start(scope)
            try:
                resp = s.send("PUT", with_query(location, [("digest", digest)]), scope=scope,
                              headers={"Content-Type": "application/octet-stream",
                                       "Content-Length": str(size)}, data=data)
                s.check(resp, (201, 204), f"upload of blob {digest}").close()
                break
            except (AuthenticationError, AuthorizationError):
                raise
            except RegistryError as exc:
                # the answer may have been lost after the registry took the blob (its session is
                # then gone, so a retry of the PUT fails): the blob being there is success
                if s.blob_exists(digest):
                    log.debug("upload of %s to %s failed (%s) but the blob arrived", digest,
                              self.name, exc)
                    resp = None
                    break
                if not (exc.temporary or isinstance(exc, NotFound)) or attempt >= self.policy.retries:
                    raise
                log.debug("upload of %s to %s failed (%s); new session, attempt %d", digest,
                          self.name, exc, attempt + 2)
                self.policy.wait(attempt)
                attempt += 1
                if start is not None:
                    data.seek(start)
        if progress is not None:
            progress(digest, size, size)
        log.debug("uploaded %s (%d bytes) to %s in one request", digest, size, self.name)
        return UploadResult(resp.status_code if resp is not None else 201, digest, size)

    # -- streamed, for a stream that checks its own digest ----------------------------------------
    def streamed(self, blob: Any, digest: str, size: int | None,
                 progress: Progress | None) -> UploadResult:
        """One PUT whose body is ``blob`` read as it arrives, for a registry stream that checks
        its own digest: a registry-to-registry copy the way skopeo makes it, with no chunk
        buffers and none of the registry's per-chunk bookkeeping. It cannot resume; a copy that
        breaks off is a temporary error, and ``stores.transfer_blob`` starts it over."""
        s = self.session
        scope = s.scoped("push")
        location, _ = self.start(scope)
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
            resp = s.send("PUT", with_query(location, [("digest", digest)]), scope=scope,
                          headers={"Content-Type": "application/octet-stream"}, data=body(),
                          retry=False)
            s.check(resp, (201, 204), f"upload of blob {digest}").close()
        except (AuthenticationError, AuthorizationError, DigestMismatch):
            raise
        except RegistryError as exc:
            if s.blob_exists(digest):  # the answer was lost after the registry took it
                return UploadResult(201, digest, sent)
            raise RegistryError(f"the streamed upload of {digest} to {self.name} broke off after "
                                f"{sent} bytes: {exc}", status=exc.status, errors=exc.errors,
                                registry=s.registry, repository=s.repository,
                                temporary=True) from exc
        log.debug("uploaded %s (%d bytes) to %s in one streamed request", digest, sent, self.name)
        return UploadResult(resp.status_code, digest, sent)

    # -- one streamed PATCH, digest unknown -------------------------------------------------------
    def stream(self, pieces: Iterable[bytes], *, progress: Progress | None = None,
               label: str = "new blob") -> UploadResult:
        """See ``RegistryClient.upload_stream``."""
        s = self.session
        progress = progress or s.progress
        scope = s.scoped("push")
        location, _ = self.start(scope)
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
            resp = s.send("PATCH", location, scope=scope, data=body(), retry=False,
                          headers={"Content-Type": "application/octet-stream"})
            s.check(resp, (202, 204), "a streamed blob upload").close()
        except BaseException as exc:
            self.cancel(location, scope)
            if isinstance(exc, RegistryError) and not isinstance(
                    exc, (AuthenticationError, AuthorizationError)):
                raise RegistryError(f"the streamed upload to {self.name} broke off after {sent} "
                                    f"bytes: {exc}", status=exc.status, errors=exc.errors,
                                    registry=s.registry, repository=s.repository,
                                    temporary=True) from exc
            raise
        location = urljoin(resp.url, resp.headers.get("Location") or location)
        result = self.finish(location, "sha256:" + hasher.hexdigest(), sent, scope)
        if progress is not None:
            progress(label, sent, sent)  # the size is known now: the bar can finish
        log.debug("uploaded %s (%d bytes) to %s in one streamed PATCH", result.digest, sent,
                  self.name)
        return result

    # -- chunked, resumable -----------------------------------------------------------------------
    def patch(self, location: str, chunk: bytes | bytearray, offset: int, scope: ScopedAuth) -> str:
        """Send ``chunk`` (which starts at ``offset``) and return the next upload URL; on a
        dropped connection or a temporary error, ask the registry what arrived and resume."""
        s = self.session
        start = 0
        attempt = 0
        while True:
            body = chunk[start:] if start else chunk
            first = offset + start
            headers = {"Content-Type": "application/octet-stream",
                       "Content-Range": f"{first}-{first + len(body) - 1}",
                       "Content-Length": str(len(body))}
            failure: str
            retry_after: float | None = None
            try:
                resp = s.send("PATCH", location, scope=scope, headers=headers, data=body, retry=False)
            except RegistryError as exc:
                if exc.status is not None or not exc.temporary:
                    raise
                failure = str(exc)
            else:
                if resp.status_code in (202, 204):
                    resp.close()
                    return urljoin(resp.url, resp.headers.get("Location") or location)
                if resp.status_code != 416 and resp.status_code not in TEMPORARY_STATUSES:
                    raise s.error(resp, f"chunk {first}-{first + len(body) - 1} of a blob upload")
                failure = f"HTTP {resp.status_code}"
                retry_after = parse_retry_after(resp.headers.get("Retry-After"))
                resp.close()
            if attempt >= self.policy.retries:
                raise self._temporary(f"a blob upload to {self.name} kept failing at byte {first} "
                                      f"({failure}); giving up after {attempt + 1} attempts")
            self.policy.wait(attempt, retry_after)
            attempt += 1
            try:
                confirmed, location = self.status(location, scope)
            except NotFound as exc:
                # distribution cancels a session whose state token is stale (the dropped
                # request had reached it): nothing left to resume
                raise UploadLost(
                    f"cannot resume a blob upload to {self.name} after {failure}: the registry no "
                    f"longer knows the upload session ({', '.join(exc.codes) or exc.status})",
                    registry=s.registry, repository=s.repository, temporary=True) from exc
            log.debug("upload to %s interrupted (%s); registry confirms %d bytes, resuming",
                      self.name, failure, confirmed)
            if confirmed < offset or confirmed > offset + len(chunk):
                raise UploadLost(
                    f"cannot resume a blob upload to {self.name}: the registry has {confirmed} bytes "
                    f"but only bytes {offset}-{offset + len(chunk) - 1} are still at hand",
                    registry=s.registry, repository=s.repository, temporary=True)
            start = confirmed - offset
            if start == len(chunk):
                return location

    def chunked(self, blob: Any, content_length: int | None, digest: str | None,
                progress: Progress | None, chunk_size: int, *,
                verified: bool = False) -> UploadResult:
        """``verified``: the source itself checks ``digest`` (a ``BlobStream`` raises before it
        hands out bytes that do not match), so the upload does not hash it again."""
        scope = self.session.scoped("push")
        location, min_chunk = self.start(scope)
        size = max(chunk_size, min_chunk)
        hasher = None if verified and digest else (
            hasher_for(digest, "a blob upload") if digest else hashlib.sha256())
        algo = digest.split(":", 1)[0] if digest else "sha256"
        label = digest or "new blob"
        offset = 0
        try:
            pieces = chunks(blob, size)
            while True:
                chunk = next(pieces, None)
                if chunk is None:
                    break
                if hasher is not None:
                    hasher.update(chunk)
                location = self.patch(location, chunk, offset, scope)
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
            self.cancel(location, scope)
            raise
        result = self.finish(location, actual, offset, scope)
        if progress is not None and content_length is None:
            progress(label, offset, offset)  # the size is known now: the bar can finish
        log.debug("uploaded %s (%d bytes) to %s in chunks of %d", actual, offset, self.name, size)
        return result


__all__ = ["MAX_ANSWER_BODY", "BlobUploader", "UploadLost", "UploadResult", "with_query"]
