"""How many bytes a wheel unpacks to, read from its zip directory without downloading it.

The packager gives each distribution over 64 MiB unpacked a layer of its own, so the layers'
keys depend on these sizes. A build whose layers a cache already holds (a fresh CI runner with
a warm ``cache_repo``) should not download every wheel only to learn them: a zip keeps its
directory at its end, so two or three HTTP range requests for the last few hundred kilobytes
(or a look at a local file) give every member's size. A server that ignores ``Range`` gives
``None``, and the wheel is downloaded after all. The sizes are not trusted for anything but the
grouping: every installed wheel is still checked against the lock's hash.
"""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

TAIL = 256 << 10
"""The first range request: enough for the directory of a wheel of a few thousand files."""

_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")


def local_unpacked(path: Path) -> int:
    """Bytes of the members of the zip file at ``path`` (``zipfile.BadZipFile``, ``OSError``)."""
    with zipfile.ZipFile(path) as archive:
        return sum(info.file_size for info in archive.infolist())


class _Tail(io.RawIOBase):
    """The end of a remote file, read with range requests: the part from ``start`` to the
    end is held, and a read before it fetches the missing span."""

    def __init__(self, fetch: Callable[[int, int], bytes], size: int, start: int, data: bytes) -> None:
        self._fetch, self._size, self._start, self._data = fetch, size, start, data
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def read(self, n: int = -1) -> bytes:
        end = self._size if n is None or n < 0 else min(self._size, self._pos + n)
        if self._pos >= end:
            return b""
        if self._pos < self._start:
            self._data = self._fetch(self._pos, self._start - 1) + self._data
            self._start = self._pos
        out = self._data[self._pos - self._start:end - self._start]
        self._pos += len(out)
        return out

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)


def remote_unpacked(get: Callable[[str, str], Any], url: str) -> int | None:
    """Bytes of the members of the zip file at ``url``, from its directory read with range
    requests (``get(url, range_header)`` returns a ``requests`` response); ``None`` when the
    server does not serve ranges. ``zipfile.BadZipFile`` for a file that is not a zip."""
    response = get(url, f"bytes=-{TAIL}")
    with response:
        found = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
        if response.status_code != 206 or found is None:
            return None
        start, total = int(found.group(1)), int(found.group(3))
        data = response.content

    def fetch(first: int, last: int) -> bytes:
        with get(url, f"bytes={first}-{last}") as part:
            got = _CONTENT_RANGE.fullmatch(part.headers.get("Content-Range", "").strip())
            if part.status_code != 206 or got is None or int(got.group(1)) != first:
                raise zipfile.BadZipFile(f"the server answered a range request with HTTP "
                                         f"{part.status_code}")
            body: bytes = part.content
            if len(body) != last - first + 1:
                raise zipfile.BadZipFile("the server sent a short range")
            return body

    if len(data) != total - start:
        return None
    with zipfile.ZipFile(_Tail(fetch, total, start, data)) as archive:
        return sum(info.file_size for info in archive.infolist())


__all__ = ["local_unpacked", "remote_unpacked"]
