"""Blob bytes on the move: verified download streams, upload chunking, plain-URL downloads.

A :class:`BlobStream` hashes a blob as it arrives and holds the last piece back until the end
has been seen and the digest checked, so a mismatch raises before any byte past the verified
point is handed out; a body that breaks off is asked for again from where it stopped (a
``Range`` request), by the transport's retry policy.
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import urlsplit

import requests

from cib_core.callbacks import Progress
from cib_core.digest import new_hasher, problem
from cib_core.errors import ConfigurationError, DigestMismatch, InvalidReference, NotFound, RegistryError
from cib_core.redact import redact_url
from cib_core.remote.body import READ_SIZE, BodyBrokenOff, read_piece
from cib_core.retry import DEFAULT_POLICY, TEMPORARY_STATUSES, RetryPolicy

if TYPE_CHECKING:
    from cib_core.remote.transport import TransportPool

log = logging.getLogger(__name__)


def hasher_for(digest: str, what: str) -> Any:
    """A hasher for ``digest``, which must be one cib can verify (``InvalidReference`` if not)."""
    trouble = problem(digest)
    if trouble is not None:
        raise InvalidReference(digest, f"{trouble}, for {what}")
    return new_hasher(digest)


class BlobStream(io.RawIOBase):
    """A blob's bytes as they arrive, hashed on the way. The last piece is held back until
    the end of the body has been seen and the digest checked, so a mismatch raises
    ``DigestMismatch`` before any byte past the verified point is handed out.

    After a body that broke off, ``reopen(offset)`` asks again from ``offset`` (a ``Range``
    request), at most ``policy.retries`` times with the policy's waits; the bytes already
    hashed are never hashed twice. A body too slow for its deadline is not asked again.
    """

    def __init__(self, resp: requests.Response, digest: str, what: str, *,
                 size: int | None = None, progress: Progress | None = None,
                 reopen: Callable[[int], requests.Response] | None = None,
                 policy: RetryPolicy = DEFAULT_POLICY) -> None:
        super().__init__()
        self._resp = resp
        self._reopen = reopen
        self._policy = policy
        self._resumes = 0
        self._skip = 0  # bytes to drop from a reopened answer that ignored the Range
        self.digest = digest
        # what a consumer may rely on: no byte is handed out past a point that does not match
        # this digest, so storing the stream under it needs no second hash
        self.verified_digest = digest
        self._what = what
        self._hash = hasher_for(digest, what)
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
                piece = read_piece(self._resp, READ_SIZE, f"the download of {self._what}")
            except BodyBrokenOff as exc:
                if self._reopen is None or self._resumes >= self._policy.retries:
                    raise RegistryError(f"the download of {self._what} broke off after "
                                        f"{self._read_total} bytes: {exc}",
                                        temporary=True) from exc
                self._resume(str(exc))
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
        return piece

    def _resume(self, failure: str) -> None:
        assert self._reopen is not None
        self._resp.close()
        offset = self._read_total
        log.debug("the download of %s broke off after %d bytes (%s); asking again from there",
                  self._what, offset, failure)
        self._policy.wait(self._resumes)
        self._resumes += 1
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
                if self.size is not None and self._read_total < self.size:
                    self._held = b""
                    self._resp.close()
                    raise RegistryError(f"the download of {self._what} ended after "
                                        f"{self._read_total} of its {self.size} bytes",
                                        temporary=True)
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


def fetch_url(url: str, digest: str, *, size: int | None = None, insecure: bool = False,
              pm: Any = None, progress: Progress | None = None,
              pool: TransportPool | None = None) -> BinaryIO:
    """Download a blob from a plain URL (a non-distributable layer's ``urls``), anonymously,
    verified against ``digest`` like ``RegistryClient.blob``. Use it as a context manager.
    ``pool`` gives the URL host's transport (its session is shared and stays open)."""
    from cib_core.remote.transport import Transport

    what = f"blob {digest} from {redact_url(url)}"
    hasher_for(digest, what)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigurationError(f"{redact_url(url)} is not an http(s) URL; cannot fetch {digest}")
    host = parts.netloc.rsplit("@", 1)[-1]
    transport = (pool.get(host, insecure=insecure) if pool is not None
                 else Transport(host, insecure=insecure, pm=pm))
    resp = transport.request("GET", url, stream=True, expected_size=size)
    if resp.status_code != 200:
        resp.close()
        if pool is None:
            transport.close()
        err = NotFound if resp.status_code == 404 else RegistryError
        raise err(f"{what}: HTTP {resp.status_code}", status=resp.status_code, registry=host,
                  temporary=resp.status_code in TEMPORARY_STATUSES)
    return io.BufferedReader(BlobStream(resp, digest, what, size=size, progress=progress,
                                        policy=transport.retry), READ_SIZE)


__all__ = ["BlobStream", "Progress", "fetch_url", "hasher_for"]
