"""The tar -> compress -> hash pipeline: a layer's bytes in, its blob and digests out.

:class:`Pipeline` takes the uncompressed tar in chunks, hashes it (the ``diff_id``) in the
caller's thread and compresses, hashes and hands the blob to a sink in a second thread.
:func:`to_file` runs a writer into a temporary file, giving a :class:`BuiltLayer`.

gzip headers carry no time or name and a fixed OS byte. The compressed bytes (the
``digest``) are stable for one compressor implementation and level: ``isal`` and ``zlib``
produce different deflate streams, so the fallback changes digests but never ``diff_id``.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import queue
import struct
import tempfile
import threading
import weakref
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any, BinaryIO, Protocol

from cib_core.digest import of as digest_of
from cib_core.errors import ConfigurationError

CHUNK = 1 << 20
"""Size of the writes through the compressor and the reads of files and tarballs."""

GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
"""Magic, deflate, no flags, mtime 0, no extra flags, OS 255 (unknown), as Go and Python write."""

COMPRESSIONS = ("gzip", "zstd", "none")

_isal_zlib: Any
try:
    _isal_zlib = importlib.import_module("isal.isal_zlib")
except ImportError:  # pragma: no cover - isal is a dependency, but keep a working fallback
    _isal_zlib = None

GZIP_IMPLEMENTATION = "isal" if _isal_zlib is not None else "zlib"
"""Which deflate makes the blobs: part of the rebuild cache's key, as the bytes differ."""


def gzip_implementation() -> str:
    """``"isal"`` or ``"zlib"``: they make different gzip bytes of the same tar, so a cache of
    built layers keys on it."""
    return GZIP_IMPLEMENTATION

# Measured on a 200 MB tree (text, random, 2000 small files): level 1 is 6% faster than 2,
# level 2 is 3% smaller than 1, level 3 takes 1.5x as long for 1% less.
DEFAULT_GZIP_LEVEL_ISAL = 2
DEFAULT_GZIP_LEVEL_ZLIB = 6
DEFAULT_ZSTD_LEVEL = 3

Sink = Callable[[bytes], object]


@dataclass(frozen=True)
class LayerInfo:
    """A layer as a manifest and a config name it."""

    digest: str
    """sha256 of the (compressed) blob: the manifest's layer digest."""
    diff_id: str
    """sha256 of the uncompressed tar: the config's ``rootfs.diff_ids`` entry."""
    size: int
    """Bytes of the blob."""
    media_type: str



class _Compressor(Protocol):
    def compress(self, data: bytes | bytearray) -> bytes: ...

    def flush(self) -> bytes: ...


class _GzipCompressor:
    """Raw deflate framed by a fixed gzip header and the crc32/size trailer."""

    def __init__(self, level: int | None) -> None:
        if _isal_zlib is not None:
            lvl = DEFAULT_GZIP_LEVEL_ISAL if level is None else level
            if not 0 <= lvl <= 3:
                raise ConfigurationError(f"isal gzip levels are 0 to 3, not {lvl}")
            self._z: Any = _isal_zlib.compressobj(lvl, _isal_zlib.DEFLATED, -15)
            self._crc32: Callable[[Any, int], int] = _isal_zlib.crc32
        else:
            lvl = DEFAULT_GZIP_LEVEL_ZLIB if level is None else level
            if not 0 <= lvl <= 9:
                raise ConfigurationError(f"gzip levels are 0 to 9, not {lvl}")
            self._z = zlib.compressobj(lvl, zlib.DEFLATED, -15)
            self._crc32 = zlib.crc32
        self._crc = 0
        self._length = 0
        self._header = GZIP_HEADER

    def compress(self, data: bytes | bytearray) -> bytes:
        self._crc = self._crc32(data, self._crc)
        self._length += len(data)
        out: bytes = self._z.compress(data)
        if self._header and out:
            out, self._header = self._header + out, b""
        return out

    def flush(self) -> bytes:
        tail: bytes = self._z.flush()
        out = self._header + tail + struct.pack("<II", self._crc & 0xFFFFFFFF,
                                                self._length & 0xFFFFFFFF)
        self._header = b""
        return out


class _ZstdCompressor:
    def __init__(self, level: int | None) -> None:
        try:
            import zstandard
        except ImportError as exc:
            raise ConfigurationError("compression 'zstd' needs the zstandard package: "
                                     "pip install 'cib-core[zstd]'") from exc
        self._z: Any = zstandard.ZstdCompressor(
            level=DEFAULT_ZSTD_LEVEL if level is None else level).compressobj()

    def compress(self, data: bytes | bytearray) -> bytes:
        out: bytes = self._z.compress(data)
        return out

    def flush(self) -> bytes:
        out: bytes = self._z.flush()
        return out


def make_compressor(compression: str, level: int | None) -> _Compressor | None:
    if compression == "gzip":
        return _GzipCompressor(level)
    if compression == "zstd":
        return _ZstdCompressor(level)
    if compression == "none":
        return None
    raise ConfigurationError(f"unknown layer compression {compression!r}; "
                             f"use one of {', '.join(COMPRESSIONS)}")


class Pipeline:
    """Uncompressed chunks in; sha256 of them here, compression, sha256 and sink in a thread.

    hashlib, isal, zlib and zstandard all release the GIL on large buffers, so on two cores
    the tar writer (reading files, hashing the tar) and the compressor run side by side.
    """

    def __init__(self, compressor: _Compressor | None, sink: Sink, *, digest: bool = True) -> None:
        self._compressor = compressor
        self._sink = sink
        self._uncompressed = hashlib.sha256()
        # ``digest=False``: the sink hashes what it is given (an upload does), so hashing the
        # blob here too would only burn a core's time
        self._compressed = hashlib.sha256() if compressor is not None and digest else None
        self.uncompressed_size = 0
        self.size = 0
        self._error: BaseException | None = None
        self._queue: queue.Queue[bytes | bytearray | None] = queue.Queue(maxsize=6)
        self._thread = threading.Thread(target=self._run, name="cib-layer-compress", daemon=True)
        self._finished = False
        self._aborted = False
        self._thread.start()

    def write(self, chunk: bytes | bytearray) -> None:
        """Queue ``chunk``; the caller must not change it afterwards."""
        if not chunk:
            return
        if self._error is not None:
            raise self._error
        self._uncompressed.update(chunk)
        self.uncompressed_size += len(chunk)
        self._queue.put(chunk)

    def _emit(self, data: bytes) -> None:
        if data:
            if self._compressed is not None:
                self._compressed.update(data)
            self.size += len(data)
            self._sink(data)

    def _run(self) -> None:
        while True:
            chunk = self._queue.get()
            if chunk is None:
                break
            if self._error is not None:
                continue  # keep draining so the producer never blocks
            try:
                self._emit(self._compressor.compress(chunk) if self._compressor else bytes(chunk))
            except BaseException as exc:  # noqa: BLE001 - handed to the producer thread
                self._error = exc
        if self._error is None and self._compressor is not None and not self._aborted:
            try:
                self._emit(self._compressor.flush())
            except BaseException as exc:  # noqa: BLE001
                self._error = exc

    def finish(self) -> tuple[str, str, int]:
        """Flush; return ``(diff_id, digest, size)``."""
        self._finished = True
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error
        diff_id = digest_of(self._uncompressed)
        if self._compressed is not None:
            digest = digest_of(self._compressed)
        else:
            digest = diff_id if self._compressor is None else ""  # uncompressed: one hash
        return diff_id, digest, self.size

    def abort(self) -> None:
        if not self._finished:
            self._finished = True
            self._aborted = True
            self._queue.put(None)
            self._thread.join()



def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class BuiltLayer:
    """A layer blob on disk with its :class:`LayerInfo`.

    ``close()`` deletes the file when cib created it (a tarball added as it is stays).
    Usable as a context manager.
    """

    def __init__(self, info: LayerInfo, path: str, *, owned: bool = True) -> None:
        self.info = info
        self.path = path
        self.owned = owned
        self._finalizer = weakref.finalize(self, _unlink, path) if owned else None

    def open(self) -> BinaryIO:
        """The blob's bytes, from the start."""
        return open(self.path, "rb")  # noqa: SIM115 - the caller closes it

    def close(self) -> None:
        if self._finalizer is not None:
            self._finalizer()

    def __enter__(self) -> BuiltLayer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"BuiltLayer({self.info.digest}, size={self.info.size}, path={self.path!r})"


def _temp_blob(dir: str | None) -> tuple[str, IO[bytes]]:
    fd, path = tempfile.mkstemp(prefix="cib-layer-", suffix=".blob", dir=dir)
    return path, os.fdopen(fd, "wb", buffering=0)


def to_file(write: Callable[[Sink], LayerInfo], dir: str | None) -> BuiltLayer:
    path, f = _temp_blob(dir)
    try:
        with f:
            info = write(f.write)
    except BaseException:
        _unlink(path)
        raise
    return BuiltLayer(info, path)

