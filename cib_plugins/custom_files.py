"""Builtin layer source *custom-files*: ``cib_core.CustomFile`` objects.

A ``CustomFile`` becomes one regular file at the target path, with its mode; its uid/gid are
kept, and its mtime when one was given (otherwise the layer's time applies).
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator

import cib_core
from cib_core.plugin_api import Entry, SortedEntries, file_entry, keep_fields


@cib_core.hookimpl
def cib_layer_source(source: object, target: str) -> SortedEntries | None:
    if not isinstance(source, cib_core.CustomFile):
        return None
    return SortedEntries(_entries(source))  # one entry: in order


def _entries(source: cib_core.CustomFile) -> Iterator[Entry]:
    info, fileobj = file_entry("", source.size, source.open(), source.mode)
    info.uid, info.gid = source.uid, source.gid
    keep = ["uid", "gid"]
    if source.mtime is not None:
        info.mtime = source.mtime
        keep.append("mtime")
    kept: tarfile.TarInfo = keep_fields(info, *keep)
    yield kept, fileobj
