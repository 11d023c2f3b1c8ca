"""Tar entries as cib writes them: paths in the layer, their order, and ustar/PAX headers.

Entries are sorted by path components (byte order of the file-system encoding), so a
directory's contents follow it; the tar is PAX format (USTAR headers, PAX records only for
long or non-ASCII names and big numbers).
"""

from __future__ import annotations

import os
import re
import sys
import tarfile
import zlib
from typing import NamedTuple

from cib_core.errors import ConfigurationError, LayerSourceError
from cib_core.plugin_api import Readable


def normalize_target(target: str) -> str:
    """``target`` as an absolute, normalized path in the image (``"app/"`` → ``"/app"``).

    A relative target is taken from the image root; ``..`` may not leave the root.
    """
    if not isinstance(target, str) or "\0" in target:
        raise ConfigurationError(f"target path {target!r} must be a string without NUL bytes")
    parts: list[str] = []
    for part in target.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise ConfigurationError(f"target path {target!r} leaves the image root through '..'")
            parts.pop()
            continue
        parts.append(part)
    return "/" + "/".join(parts)


# a relative path with no empty, "." or ".." segment: joined as it is
_CLEAN_RELATIVE = re.compile(r"(?!\.\.?(?:/|\Z))[^/]+(?:/(?!\.\.?(?:/|\Z))[^/]+)*\Z")


def join(base: str, name: str, what: object) -> str:
    """``name`` (relative, as a source yields it) under ``base`` (``""`` or a path from
    ``normalize_target``)."""
    if _CLEAN_RELATIVE.match(name):  # the usual entry: one match instead of a split and scan
        head = base.strip("/")
        return f"{head}/{name}" if head else name
    return join_parts(base, name, what)


def join_parts(base: str, name: str, what: object) -> str:
    parts = [p for p in base.split("/") if p]
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            raise LayerSourceError(what, f"entry {name!r} contains '..'; entries must stay "
                                   "under their target")
        parts.append(part)
    return "/".join(parts)


_FS_ENCODING, _FS_ERRORS = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()


def sort_key(path: str) -> bytes:
    """Orders paths component by component in byte order, so a directory's contents follow it
    right away ("a/z" before "a.d"): "/" becomes NUL, which sorts below every byte a name can
    hold. One bytes object per path, not a list of components."""
    # os.fsencode's work without its Python-level call: this runs for every entry
    return path.encode(_FS_ENCODING, _FS_ERRORS).replace(b"/", b"\0")


_USTAR_LIMIT = 8 ** 11  # sizes and times that fit the 12-byte octal fields
_ID_LIMIT = 8 ** 7  # uids and gids that fit the 8-byte fields
_MAGIC_AND_REST = tarfile.POSIX_MAGIC + bytes(32 + 32 + 8 + 8 + 155 + 12)
"""The ustar block after the link name: magic, and empty owner names, devices, prefix, padding."""
_CHECKSUM_SPACES_SUM = 8 * 0x20


def _tail(kind: bytes, link: bytes) -> bytes:
    return b"%s%s%s" % (kind, link.ljust(100, b"\0"), _MAGIC_AND_REST)


def _ascii_sum(block: bytes) -> int:
    # Every byte of a fast-path block is ASCII (below 128), so the sum of at most 512 of them
    # is at most 65,024 and Adler-32's low half, (1 + sum) mod 65,521, is exactly 1 + sum:
    # one C call instead of summing hundreds of Python ints.
    return (zlib.adler32(block) & 0xFFFF) - 1


_PLAIN_TAILS = {kind: (tail, _ascii_sum(tail) + _CHECKSUM_SPACES_SUM)
                for kind in (tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.FIFOTYPE)
                for tail in (_tail(kind, b""),)}
"""The block after the checksum of entries without a link name, with its byte sum plus the
checksum field's eight spaces: the same for every file, directory and FIFO."""


REGULAR = frozenset({tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE})
OTHER_TYPES = frozenset({tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE,
                          tarfile.BLKTYPE, tarfile.FIFOTYPE})
KEPT_PAX_PREFIXES = ("SCHILY.xattr.", "LIBARCHIVE.xattr.")
DEVICE_TYPES = frozenset({tarfile.CHRTYPE, tarfile.BLKTYPE})


class Record(NamedTuple):
    """One normalized entry of a layer: what its tar header says and where its content is.

    One per file, kept only while a layer is planned (several sources) and never while one
    sorted source streams; the 512-byte header is made from it when written.
    """

    path: str
    """Full path in the layer, without a leading ``/``."""
    type: bytes
    """``tarfile.REGTYPE`` for every regular file, else the entry's tar type."""
    mode: int
    uid: int
    gid: int
    mtime: int
    size: int
    """Bytes of content: 0 for everything but regular files."""
    link: str
    """A symlink's content or a hard link's target path; ``""`` otherwise."""
    content: Readable | str | None
    """A regular file's file object, or the path of a local file to read (see ``ident``)."""
    ident: bytes | None
    """For content given as a path: that file's identity when listed (``file_identity``)."""
    origin: str
    """Where the entry came from, for messages."""
    extra: tarfile.TarInfo | None
    """Device numbers and kept PAX records, the rare fields; ``None`` for most entries."""


class Headers:
    """Makes the tar header blocks of records, byte for byte as ``tarfile`` writes them
    (``TarInfo.tobuf(PAX_FORMAT, "utf-8", "surrogateescape")``).

    The common entry (an ASCII name and link of at most 100 bytes, no PAX records or device
    numbers, numbers that fit their octal fields) is one ustar block built here several
    times faster than tarfile builds it, which counts for trees of hundreds of thousands of
    files (a node_modules): a layer has few distinct modes, owners and times, so their
    formatted fields are kept per value for the one layer being written, and an entry costs
    the formatting of its name and size. Anything else goes to tarfile; the unit tests hold
    the two equal.
    """

    def __init__(self) -> None:
        self._fields: dict[tuple[int, int, int, int], tuple[bytes, bytes, int] | None] = {}

    def __call__(self, rec: Record) -> bytes:
        if rec.extra is None:
            name, kind, link, size = rec.path, rec.type, rec.link, rec.size
            if kind == tarfile.DIRTYPE and not name.endswith("/"):
                name += "/"
            if (len(name) <= 100 and name.isascii() and 0 <= size < _USTAR_LIMIT
                    and (not link or (len(link) <= 100 and link.isascii()))):
                key = (rec.mode, rec.uid, rec.gid, rec.mtime)
                try:
                    fields = self._fields[key]
                except KeyError:
                    fields = self._fields[key] = _numeric_fields(*key)
                if fields is not None:
                    mode_owner, mtime_field, fields_sum = fields
                    raw_name = name.encode("ascii")
                    size_field = b"%011o\0" % size
                    plain = None if link else _PLAIN_TAILS.get(kind)
                    if plain is not None:
                        tail, tail_sum = plain
                    else:
                        tail = _tail(kind, link.encode("ascii"))
                        tail_sum = _ascii_sum(tail) + _CHECKSUM_SPACES_SUM
                    checksum = _ascii_sum(raw_name) + _ascii_sum(size_field) + fields_sum + tail_sum
                    return b"%s%s%s%s%06o\0 %s" % (raw_name.ljust(100, b"\0"), mode_owner,
                                                  size_field, mtime_field, checksum, tail)
        info = tarfile.TarInfo(rec.path)
        info.type, info.mode, info.uid, info.gid = rec.type, rec.mode, rec.uid, rec.gid
        info.mtime, info.size, info.linkname = rec.mtime, rec.size, rec.link
        info.uname = info.gname = ""
        if rec.extra is not None:
            info.devmajor, info.devminor = rec.extra.devmajor, rec.extra.devminor
            info.pax_headers = dict(rec.extra.pax_headers)
        return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def _numeric_fields(mode: int, uid: int, gid: int, mtime: int) -> tuple[bytes, bytes, int] | None:
    """The mode, uid and gid fields, the mtime field and their byte sum; ``None`` when a value
    does not fit its octal field (tarfile then writes PAX records)."""
    if not (type(mode) is int and type(uid) is int and type(gid) is int and type(mtime) is int
            and 0 <= uid < _ID_LIMIT and 0 <= gid < _ID_LIMIT and 0 <= mtime < _USTAR_LIMIT):
        return None
    mode_owner = b"%07o\0%07o\0%07o\0" % (mode & 0o7777, uid, gid)
    mtime_field = b"%011o\0" % mtime
    return mode_owner, mtime_field, _ascii_sum(mode_owner) + _ascii_sum(mtime_field)


def source_date_epoch() -> int:
    """The layer time: ``SOURCE_DATE_EPOCH`` when set, else 0."""
    raw = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if not raw:
        return 0
    try:
        value = int(raw)
    except ValueError:
        raise ConfigurationError(f"SOURCE_DATE_EPOCH={raw!r} is not an integer number of "
                                 "seconds since the epoch") from None
    if value < 0:
        raise ConfigurationError(f"SOURCE_DATE_EPOCH={raw!r} must not be negative")
    return value
