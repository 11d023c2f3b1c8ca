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
CLEAN_RELATIVE = re.compile(r"(?!\.\.?(?:/|\Z))[^/]+(?:/(?!\.\.?(?:/|\Z))[^/]+)*\Z")


def join(base: str, name: str, what: object) -> str:
    """``name`` (relative, as a source yields it) under ``base`` (``""`` or a path from
    ``normalize_target``)."""
    if CLEAN_RELATIVE.match(name):  # the usual entry: one match instead of a split and scan
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


FS_ENCODING, FS_ERRORS = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()


def sort_key(path: str) -> bytes:
    """Orders paths component by component in byte order, so a directory's contents follow it
    right away ("a/z" before "a.d"): "/" becomes NUL, which sorts below every byte a name can
    hold. One bytes object per path, not a list of components."""
    # os.fsencode's work without its Python-level call: this runs for every entry
    return path.encode(FS_ENCODING, FS_ERRORS).replace(b"/", b"\0")


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


_DIRTYPE = tarfile.DIRTYPE


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
        # (type, mode, uid, gid, mtime, has a link) -> the fixed parts of such a block and the
        # byte sum of what is fixed; None: they need tarfile
        self._fixed: dict[tuple[bytes, int, int, int, int, bool],
                          tuple[bytes, bytes, bytes, int] | None] = {}

    def __call__(self, rec: Record) -> bytes:
        path, kind, mode, uid, gid, mtime, size, link, _, _, _, extra = rec
        if extra is None and 0 <= size < _USTAR_LIMIT:
            if kind == _DIRTYPE and not path.endswith("/"):
                path += "/"
            if len(path) <= 100 and path.isascii() and (
                    not link or (len(link) <= 100 and link.isascii())):
                key = (kind, mode, uid, gid, mtime, bool(link))
                try:
                    fixed = self._fixed[key]
                except KeyError:
                    fixed = self._fixed[key] = _fixed_fields(*key)
                if fixed is not None:
                    mode_owner, mtime_field, tail, fixed_sum = fixed
                    raw_name = path.encode("ascii")
                    size_field = b"%011o\0" % size
                    # one running Adler-32 over both: its low half is 1 + their byte sum
                    checksum = (zlib.adler32(size_field, zlib.adler32(raw_name)) & 0xFFFF) - 1
                    if link:
                        raw_link = link.encode("ascii")
                        tail = b"%s%s%s" % (kind, raw_link.ljust(100, b"\0"), _MAGIC_AND_REST)
                        checksum += _ascii_sum(raw_link)
                    return b"".join((raw_name.ljust(100, b"\0"), mode_owner, size_field,
                                     mtime_field, b"%06o\0 " % (checksum + fixed_sum), tail))
        info = tarfile.TarInfo(rec.path)
        info.type, info.mode, info.uid, info.gid = kind, mode, uid, gid
        info.mtime, info.size, info.linkname = mtime, size, link
        info.uname = info.gname = ""
        if extra is not None:
            info.devmajor, info.devminor = extra.devmajor, extra.devminor
            info.pax_headers = dict(extra.pax_headers)
        return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def _fixed_fields(kind: bytes, mode: int, uid: int, gid: int, mtime: int,
                  has_link: bool) -> tuple[bytes, bytes, bytes, int] | None:
    """The mode, uid and gid fields, the mtime field, the block after the checksum (without
    its link name when there is one) and the byte sum of all that is fixed (the checksum
    field counting as spaces); ``None`` when a number does not fit its octal field (tarfile
    then writes PAX records)."""
    numbers = _numeric_fields(mode, uid, gid, mtime)
    if numbers is None:
        return None
    mode_owner, mtime_field, numbers_sum = numbers
    tail = _tail(kind, b"")  # with a link, its name goes where these zeros are
    return mode_owner, mtime_field, tail, numbers_sum + _ascii_sum(tail) + _CHECKSUM_SPACES_SUM


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
