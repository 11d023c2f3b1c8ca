"""``CustomFile``: a file for a layer given as bytes, text or a stream instead of a path."""

from __future__ import annotations

import io
import tempfile
from datetime import datetime
from typing import IO, BinaryIO

from cib_core.errors import ConfigurationError
from cib_core.fileio import FileSlice
from cib_core.layers.pipeline import CHUNK
from cib_core.plugin_api import Readable

SPOOL_THRESHOLD = 8 << 20
"""A non-seekable ``CustomFile`` stream is kept in memory up to this size, then on disk."""


MAX_MODE = 0o7777
MAX_ID = 2**32 - 2
"""The largest uid or gid: Linux's ids are 32 bits, and 2**32 - 1 means "none"."""
MAX_MTIME = 8**11 - 1
"""The last second a tar header's own mtime field holds (the year 2242)."""


def _checked_int(name: str, value: object, maximum: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationError(f"CustomFile {name} must be an int ({what}), not "
                                 f"{type(value).__name__} {value!r}")
    if not 0 <= value <= maximum:
        shown = f"{value:#o}" if name == "mode" else str(value)
        limit = f"{maximum:#o}" if name == "mode" else str(maximum)
        raise ConfigurationError(f"CustomFile {name}={shown} is out of range; {what} from 0 to "
                                 f"{limit}")
    return int(value)


def _checked_mtime(mtime: object) -> int:
    value = mtime.timestamp() if isinstance(mtime, datetime) else mtime
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise ConfigurationError(f"CustomFile mtime must be seconds since 1970 (an int or float) "
                                 f"or a datetime, not {type(mtime).__name__} {mtime!r}")
    if not 0 <= value <= MAX_MTIME:
        raise ConfigurationError(f"CustomFile mtime={mtime!r} is out of range; seconds since 1970 "
                                 f"from 0 to {MAX_MTIME}")
    return int(value)


class CustomFile:
    """An in-memory file for ``add_files``: ``{"/etc/motd": CustomFile("hello\\n")}``.

    ``data`` is bytes, a str (UTF-8 encoded) or a binary file object read when the layer is
    built. A seekable stream is read from its current position to its end; a non-seekable one
    is spooled once (in memory up to 8 MiB, then to a temporary file) to learn its size.
    ``mode`` is the permission bits (0 to 0o7777); ``mtime`` (seconds since 1970, from 0 to
    8**11 - 1, or a datetime) and ``uid``/``gid`` (0 to 2**32 - 2) are kept as given; with
    ``mtime=None`` the layer's time applies (``SOURCE_DATE_EPOCH`` or 0). A value out of its
    range or of another type is a ``ConfigurationError`` naming the argument.
    """

    __slots__ = ("_bytes", "_start", "_stream", "gid", "mode", "mtime", "size", "uid")

    def __init__(self, data: bytes | str | BinaryIO | IO[bytes], *, mode: int = 0o644,
                 mtime: float | datetime | None = None, uid: int = 0, gid: int = 0) -> None:
        self.mode = _checked_int("mode", mode, MAX_MODE, "permission bits such as 0o644")
        self.mtime: int | None = None if mtime is None else _checked_mtime(mtime)
        self.uid = _checked_int("uid", uid, MAX_ID, "a user id")
        self.gid = _checked_int("gid", gid, MAX_ID, "a group id")
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

