"""Content keys: a digest of what makes a layer, computed without tarring or compressing it.

The key covers, in the layer's order, every entry's normalized tar header (its path in the
image, type, mode, size, owner ids, link target, the layer time and kept xattrs: exactly what
the tar will say), the sha256 of every regular file's content, the layer's media type, the
compression, its level and implementation (isal and zlib deflate differently), and any inputs
a packager adds (a lock file's hash, a platform, a target interpreter), each named. Nothing
local goes in: no absolute path, inode, device or file time, so the same inputs give the same
key in any checkout on any machine, and any change to them gives another key.

A layer whose content is not all plain local files or in-memory bytes (a stream handed to
``CustomFile``, a member of a tarball read by a plugin) has no key: reading it here would use
up what the build must read.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import io
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass

from cib_core.errors import ConfigurationError, LayerSourceError
from cib_core.layers.build import CHUNK, LayerBuilder
from cib_core.plugin_api import LazyFile

KEY_DOMAIN = b"cib-layer-content-key-1\0"
"""Changes whenever the meaning of a key changes, so old records stop matching."""

HASH_JOBS = 4
"""Files hashed side by side: hashlib releases the GIL, reads overlap."""


@dataclass(frozen=True)
class _Stamp:
    path: str
    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int


@dataclass(frozen=True)
class ContentKey:
    """A layer's content key (64 hex digits) and what its files looked like when read."""

    key: str
    stamps: tuple[_Stamp, ...] = ()

    def still_valid(self) -> bool:
        """Whether every file read for the key is unchanged now (size, times, inode), so the
        layer built after the key was computed was built from the content the key names."""
        for s in self.stamps:
            try:
                st = os.stat(s.path)
            except OSError:
                return False
            if (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino) != (
                    s.size, s.mtime_ns, s.ctime_ns, s.inode):
                return False
        return True


def _named_value(h: hashlib._Hash, name: str, value: bytes) -> None:
    raw_name = name.encode("utf-8", "surrogateescape")
    h.update(b"%d:%s%d:" % (len(raw_name), raw_name, len(value)))
    h.update(value)


def _hash_file(path: str, size: int) -> tuple[str, _Stamp]:
    try:
        with open(path, "rb", buffering=0) as f:
            before = os.fstat(f.fileno())
            h = hashlib.sha256()
            buffer = bytearray(CHUNK)
            view = memoryview(buffer)
            total = 0
            while True:
                n = f.readinto(buffer)
                if not n:
                    break
                h.update(view[:n])
                total += n
    except OSError as exc:
        raise LayerSourceError(path, f"cannot be read: {exc.strerror or exc}") from exc
    if total != size or not stat.S_ISREG(before.st_mode):
        raise LayerSourceError(path, f"changed while being read: {total} bytes instead of the "
                               f"{size} it had when listed; build again once it has stopped changing")
    return h.hexdigest(), _Stamp(path, before.st_size, before.st_mtime_ns, before.st_ctime_ns,
                                 before.st_ino)


def _hash_range(jobs: list[tuple[str, int]]) -> list[tuple[str, _Stamp]]:
    return [_hash_file(path, size) for path, size in jobs]


class KeyPlan:
    """A content key ready to be computed: everything but the local files' bytes is hashed
    (so it may be finished in another thread while the build reads the same entries)."""

    def __init__(self, head: bytes, headers: list[bytes], contents: list[str | None],
                 files: list[tuple[str, int]]) -> None:
        self._head, self._headers, self._contents, self._files = head, headers, contents, files
        h = hashlib.sha256(b"cib-layer-shape-1\0" + head)
        for header in headers:
            h.update(header)
        self.shape = h.hexdigest()
        """A key of the layer's shape only (paths, modes, sizes, settings; no file bytes):
        cheap, and equal for a touched or re-cloned tree."""

    def finish(self) -> ContentKey:
        """Read and hash the local files; the content key."""
        hashed = _hash_files(self._files)
        digests = iter(digest for digest, _stamp in hashed)
        h = hashlib.sha256(KEY_DOMAIN + self._head)
        h.update(b"entries:%d\0" % len(self._headers))
        for header, known in zip(self._headers, self._contents, strict=True):
            h.update(header)
            h.update(b"\0content:%s\0" % (next(digests) if known is None else known).encode())
        return ContentKey(h.hexdigest(), tuple(stamp for _digest, stamp in hashed))


def plan_key(builder: LayerBuilder,
             inputs: Mapping[str, str | bytes] | None = None) -> KeyPlan | None:
    """The first, cheap half of :func:`content_key`: ``None`` when some content cannot be
    read without using it up."""
    head = hashlib.sha256()
    compression, level, implementation = builder.compression_settings
    for setting, text in (("media-type", builder.media_type), ("compression", compression),
                          ("level", "" if level is None else str(level)),
                          ("implementation", implementation)):
        _named_value(head, setting, text.encode())
    given = dict(inputs or {})
    for name in sorted(given, key=str):
        value = given[name]
        if not isinstance(name, str) or not isinstance(value, (str, bytes)):
            raise ConfigurationError(f"cache key input {name!r}: names must be str and values "
                                     f"str or bytes, not {type(value).__name__}")
        _named_value(head, "input:" + name, value.encode() if isinstance(value, str) else value)

    headers: list[bytes] = []
    contents: list[str | None] = []  # per entry: a digest known now, or None for a local file
    files: list[tuple[str, int]] = []
    for size, fileobj, header in builder.planned():
        headers.append(header)
        if not size:
            contents.append("")
        elif type(fileobj) is LazyFile and not fileobj.closed:
            contents.append(None)
            files.append((fileobj.name, size))
        elif isinstance(fileobj, io.BytesIO):
            with fileobj.getbuffer() as whole, whole[fileobj.tell():] as data:
                if len(data) != size:
                    return None
                contents.append(hashlib.sha256(data).hexdigest())
        else:
            return None
    return KeyPlan(head.digest(), headers, contents, files)


def content_key(builder: LayerBuilder,
                inputs: Mapping[str, str | bytes] | None = None) -> ContentKey | None:
    """The content key of the layer ``builder`` will write, or ``None`` when some content
    cannot be read without using it up. ``inputs`` are a packager's own named inputs (values
    are str or bytes): ``{"python.lock-sha256": ..., "python.platform": "linux/arm64"}``."""
    plan = plan_key(builder, inputs)
    return None if plan is None else plan.finish()


def _hash_files(files: list[tuple[str, int]]) -> list[tuple[str, _Stamp]]:
    """The sha256 and stat of each file, in order; several at once for a big tree."""
    total = sum(size for _path, size in files)
    if len(files) < 2 or total < (4 << 20):
        return _hash_range(files)
    jobs = min(HASH_JOBS, len(files), os.cpu_count() or 1)
    # contiguous runs of about equal bytes, so order is kept and no thread idles long
    runs: list[list[tuple[str, int]]] = [[]]
    share, filled = total / jobs, 0
    for item in files:
        if filled >= share * len(runs) and len(runs) < jobs:
            runs.append([])
        runs[-1].append(item)
        filled += item[1]
    with concurrent.futures.ThreadPoolExecutor(len(runs), "cib-content-key") as pool:
        return [r for part in pool.map(_hash_range, runs) for r in part]


__all__ = ["KEY_DOMAIN", "ContentKey", "KeyPlan", "content_key", "plan_key"]
