"""Tar entries as cib writes them: paths in the layer, their order, and ustar/PAX headers.

Entries are sorted by path components (byte order of the file-system encoding), so a
directory's contents follow it; the tar is PAX format (USTAR headers, PAX records only for
long or non-ASCII names and big numbers).
"""

from __future__ import annotations

import os
import re
import tarfile

from cib_core.errors import ConfigurationError, LayerSourceError


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


def sort_key(path: str) -> list[bytes]:
    return os.fsencode(path).split(b"/")  # "/" is b"/" in every filesystem encoding


_USTAR_LIMIT = 8 ** 11  # sizes and times that fit the 12-byte octal fields
_ID_LIMIT = 8 ** 7  # uids and gids that fit the 8-byte fields
_DEVICE_TYPES = (tarfile.CHRTYPE, tarfile.BLKTYPE)


def tar_header(info: tarfile.TarInfo) -> bytes:
    """``info.tobuf(PAX_FORMAT, "utf-8", "surrogateescape")``, byte for byte.

    The common entry (an ASCII name and link of at most 100 bytes, no PAX records, no owner
    names, no device numbers, numbers that fit their octal fields) needs no PAX header, and
    its ustar block is built here about four times faster than tarfile does it, which counts
    for trees of tens of thousands of files (a node_modules). Anything else goes to tarfile.
    The unit tests hold the two equal.
    """
    name, link = info.name, info.linkname
    if info.type == tarfile.DIRTYPE and not name.endswith("/"):
        name += "/"
    size, mtime, uid, gid = info.size, info.mtime, info.uid, info.gid
    if (info.pax_headers or info.uname or info.gname or info.type in _DEVICE_TYPES
            or len(name) > 100 or len(link) > 100 or not name.isascii() or not link.isascii()
            or type(size) is not int or type(mtime) is not int or type(uid) is not int
            or type(gid) is not int or type(info.mode) is not int
            or not (0 <= size < _USTAR_LIMIT and 0 <= mtime < _USTAR_LIMIT
                    and 0 <= uid < _ID_LIMIT and 0 <= gid < _ID_LIMIT)):
        return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    raw_name, raw_link = name.encode("ascii"), link.encode("ascii")
    block = b"".join((
        raw_name, bytes(100 - len(raw_name)),
        b"%07o\0%07o\0%07o\0%011o\0%011o\0" % (info.mode & 0o7777, uid, gid, size, mtime),
        b"        ",  # the checksum field counts as spaces
        info.type, raw_link, bytes(100 - len(raw_link)), tarfile.POSIX_MAGIC,
        bytes(32 + 32 + 8 + 8 + 155 + 12),  # uname, gname, devmajor, devminor, prefix, padding
    ))
    return b"%s%06o\0%s" % (block[:148], sum(block), block[155:])


REGULAR = frozenset({tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE})
OTHER_TYPES = frozenset({tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE,
                          tarfile.BLKTYPE, tarfile.FIFOTYPE})
KEPT_PAX_PREFIXES = ("SCHILY.xattr.", "LIBARCHIVE.xattr.")


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

