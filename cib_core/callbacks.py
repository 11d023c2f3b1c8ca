"""The callback types through which the library reports to its caller, and their helpers.

The library never draws anything. Whatever moves blobs (``RegistryClient.upload``, the
registry and local stores, ``Image``, ``copy_image``) takes an optional ``progress`` callable
and calls it as ``progress(digest, done, total)``: ``done`` is the number of bytes of the blob
moved so far (it only grows, except when an upload restarts), ``total`` the blob's size when
known. ``digest`` names the blob; a new layer streamed while it is made has no digest yet and
is named by a label instead (``new layer /app``), which never contains a digest's ``:``. Calls
come from several threads at once, because several blobs move at once.

A callback that also has a ``step(label, done, total)`` method is told about work that moves
no blob but takes time, such as writing a docker-archive tarball from the blobs at the end.
The command line's renderer is ``cib_core.cli.bars.ProgressRenderer``.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from typing import Any, BinaryIO

Progress = Callable[[str, int, "int | None"], None]
"""``progress(digest, done, total)``: bytes of ``digest`` moved so far, and its size if known."""

_DIGEST = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:([a-fA-F0-9]{12,})")
LABEL_WIDTH = 24
"""Labels are at most this many characters."""


def label_for(name: str) -> str:
    """A bar's label: the short digest of a blob (its first 12 hex digits), else the label
    itself, cut to ``LABEL_WIDTH`` characters."""
    found = _DIGEST.fullmatch(name)
    if found is not None:
        return found.group(1)[:12]
    return name if len(name) <= LABEL_WIDTH else name[:LABEL_WIDTH - 3] + "..."


def report_step(progress: object, label: str, done: int, total: int | None) -> None:
    """Tell ``progress`` about work that moves no blob, if it has a ``step`` method."""
    step = getattr(progress, "step", None)
    if callable(step):
        step(label, done, total)


class ProgressReader(io.RawIOBase):
    """A binary stream read through, calling ``report(bytes read so far)`` as it goes."""

    def __init__(self, source: BinaryIO, report: Callable[[int], None]) -> None:
        super().__init__()
        self._source = source
        self._report = report
        self.done = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        readinto = getattr(self._source, "readinto", None)
        if readinto is not None:
            n = int(readinto(view) or 0)
        else:
            data = self._source.read(len(view))
            n = len(data)
            view[:n] = data
        if n:
            self.done += n
            self._report(self.done)
        return n
