"""``CustomFile``: a file for a layer given as bytes, text or a stream instead of a path."""

from __future__ import annotations

import io
import stat
import tempfile
from datetime import datetime
from typing import IO, BinaryIO

from cib_core.errors import ConfigurationError
from cib_core.fileio import FileSlice
from cib_core.layers.pipeline import CHUNK
from cib_core.plugin_api import Readable

SPOOL_THRESHOLD = 8 << 20
"""A non-seekable ``CustomFile`` stream is kept in memory up to this size, then on disk."""


class CustomFile:
    """An in-memory file for ``add_files``: ``{"/etc/motd": CustomFile("hello\\n")}``.

    ``data`` is bytes, a str (UTF-8 encoded) or a binary file object read when the layer is
    built. A seekable stream is read from its current position to its end; a non-seekable one
    is spooled once (in memory up to 8 MiB, then to a temporary file) to learn its size.
    ``mtime`` (seconds since the epoch, or a datetime) and ``uid``/``gid`` are kept as given;
    with ``mtime=None`` the layer's time applies (``SOURCE_DATE_EPOCH`` or 0).
    """

    __slots__ = ("_bytes", "_start", "_stream", "gid", "mode", "mtime", "size", "uid")

    def __init__(self, data: bytes | str | BinaryIO | IO[bytes], *, mode: int = 0o644,
                 mtime: float | datetime | None = None, uid: int = 0, gid: int = 0) -> None:
        self.mode = stat.S_IMODE(mode)
        if isinstance(mtime, datetime):
            mtime = mtime.timestamp()
        self.mtime: int | None = None if mtime is None else int(mtime)
        if uid < 0 or gid < 0:
            raise ConfigurationError(f"CustomFile uid/gid must not be negative (got {uid}/{gid})")
        self.uid = uid
        self.gid = gid
        self._bytes: bytes | None = None
        self._stream: IO[bytes] | None = None
        self._start = 0
        if isinstance(data, str):
            data = data.encode("utf-8")
        if isinstance(data, (bytes, bytearray, memoryview)):
            self._bytes = bytes(data)
            self.size = len(self._bytes)
            return
        if not hasattr(data, "read"):
            raise ConfigurationError(
                f"CustomFile data must be bytes, str or a binary file object, not {type(data).__name__}")
        stream: IO[bytes] = data
        seekable = False
        try:
            seekable = bool(stream.seekable())
        except (AttributeError, OSError, ValueError):
            seekable = False
        if seekable:
            self._start = stream.tell()
            end = stream.seek(0, io.SEEK_END)
            stream.seek(self._start)
            self._stream = stream
            self.size = end - self._start
        else:
            spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_THRESHOLD)  # noqa: SIM115
            size = 0
            while True:
                chunk = stream.read(CHUNK)
                if not chunk:
                    break
                if not isinstance(chunk, bytes | bytearray):
                    raise ConfigurationError("CustomFile stream must be binary (read() gave str)")
                spool.write(chunk)
                size += len(chunk)
            spool.seek(0)
            self._stream = spool
            self.size = size

    def open(self) -> Readable:
        """A new reader of the content from its start.

        Readers of one stream may be used in turns: each seeks to its own position.
        """
        if self._bytes is not None:
            return io.BytesIO(self._bytes)
        assert self._stream is not None  # noqa: S101
        return FileSlice(self._stream, self._start, self.size, name="<CustomFile stream>")

    def __repr__(self) -> str:
        return (f"CustomFile(<{self.size} bytes>, mode={self.mode:#o}, mtime={self.mtime!r}, "
                f"uid={self.uid}, gid={self.gid})")

