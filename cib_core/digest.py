"""Content digests: the one grammar, the algorithms cib verifies, hashing, and reading a
stream that checks its digest.

A digest is ``algorithm:encoded`` in the OCI image spec's grammar. cib verifies ``sha256`` and
``sha512``, whose encoded parts are lowercase hex of a fixed length; a digest of another
algorithm may pass the grammar (the OCI validator ignores algorithms it does not know) but
cannot be verified.
"""

from __future__ import annotations

import hashlib
import io
import re
from typing import Any, BinaryIO, Protocol

from cib_core.errors import DigestMismatch

ALGORITHMS: dict[str, int] = {"sha256": 64, "sha512": 128}
"""The algorithms cib verifies, with the length of their hex encoding."""

GRAMMAR = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")
"""The OCI image spec's digest grammar (``algorithm:encoded``), for ``fullmatch``."""

_LOWER_HEX = re.compile(r"[a-f0-9]+")


def is_digest(text: object) -> bool:
    """True for a digest cib can verify: sha256 or sha512 with the right lowercase hex."""
    if not isinstance(text, str):
        return False
    algorithm, sep, encoded = text.partition(":")
    length = ALGORITHMS.get(algorithm)
    return bool(sep) and length == len(encoded) and _LOWER_HEX.fullmatch(encoded) is not None


def problem(text: object) -> str | None:
    """Why ``text`` is not a digest cib can verify, in a few words; ``None`` when it is one."""
    if not isinstance(text, str) or not GRAMMAR.fullmatch(text):
        return "not of the form sha256:<64 lowercase hex digits>"
    algorithm, _, encoded = text.partition(":")
    length = ALGORITHMS.get(algorithm)
    if length is None:
        return f"unsupported digest algorithm {algorithm!r} (cib verifies sha256 and sha512)"
    if len(encoded) != length or not _LOWER_HEX.fullmatch(encoded):
        return f"not {algorithm}: followed by {length} lowercase hex digits"
    return None


def new_hasher(digest: str | None = None) -> Any:
    """A new hashlib object for the algorithm of ``digest`` (sha256 when ``None``).

    The caller has checked ``digest`` (:func:`is_digest`); an unknown algorithm raises
    ``ValueError``.
    """
    algorithm = digest.partition(":")[0] if digest else "sha256"
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unsupported digest algorithm {algorithm!r}")
    return hashlib.new(algorithm)



def of(hashed: Any) -> str:
    """``algorithm:hex`` of a finished hashlib object."""
    return f"{hashed.name}:{hashed.hexdigest()}"


def sha256_digest(data: bytes) -> str:
    """The sha256 digest of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def verified_digest(stream: object) -> str | None:
    """The digest ``stream`` checks by itself as it is read (its ``verified_digest``, also
    behind the ``io.BufferedReader`` that wraps it), else None.

    Such a stream (a registry blob download, a :func:`verified_reader`) raises before it hands
    out a byte past a mismatch, so storing it under that digest needs no second hash.
    """
    found = getattr(stream, "verified_digest", None)
    if found is None:
        found = getattr(getattr(stream, "raw", None), "verified_digest", None)
    return found if isinstance(found, str) else None


_READ_SIZE = 1 << 16


class ByteSource(Protocol):
    """What :func:`verified_reader` reads: ``read(n)`` and ``close()``."""

    def read(self, size: int = -1, /) -> bytes: ...

    def close(self) -> None: ...


class _VerifyingRaw(io.RawIOBase):
    """Passes a stream through, checking its digest (and size) before the last byte leaves.

    The final bytes are held back until the source is exhausted and the digest checked, so a
    reader that gets all the data got verified data; a mismatch raises ``DigestMismatch``
    instead of returning the tail.
    """

    def __init__(self, source: ByteSource, digest: str, what: str, size: int | None) -> None:
        super().__init__()
        self._source = source
        self.verified_digest = digest
        self._what = what
        self._size = size
        self._hasher = new_hasher(digest)
        self._pending = bytearray()
        self._count = 0
        self._eof = False
        self._done = False

    def readable(self) -> bool:
        return True

    def _verify(self) -> None:
        if self._size is not None and self._count != self._size:
            raise DigestMismatch(f"{self._what} (size)", str(self._size), str(self._count))
        actual = of(self._hasher)
        if actual != self.verified_digest:
            raise DigestMismatch(self._what, self.verified_digest, actual)

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        want = len(view)
        if self._done or want == 0:
            return 0
        while not self._eof and len(self._pending) <= want:
            block = self._source.read(max(_READ_SIZE, want))
            if not block:
                self._eof = True
                break
            self._hasher.update(block)
            self._count += len(block)
            if self._size is not None and self._count > self._size:
                self._verify()
            self._pending += block
        if self._eof and len(self._pending) <= want:
            self._verify()
            n = len(self._pending)
            view[:n] = self._pending
            self._pending.clear()
            self._done = True
            return n
        view[:want] = self._pending[:want]
        del self._pending[:want]
        return want

    def close(self) -> None:
        if not self.closed:
            try:
                self._source.close()
            finally:
                super().close()


def verified_reader(source: ByteSource, digest: str, what: str, size: int | None = None) -> BinaryIO:
    """``source`` wrapped so that reading it to the end checks ``digest`` (and ``size``, when
    given): a mismatch raises ``DigestMismatch`` (naming ``what``) before the last bytes are
    handed out. Closing the result closes ``source``."""
    return io.BufferedReader(_VerifyingRaw(source, digest, what, size), buffer_size=_READ_SIZE)
