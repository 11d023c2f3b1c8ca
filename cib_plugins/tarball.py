"""Builtin layer source *tarball*: the members of a tar archive, unpacked under the target.

Claims ``cib_core.plugin_api.TarballSource(path)`` objects and strings ``"tar:PATH"``
(``cib build --add tar:rootfs.tar.gz:/``). A plain local path to a tarball is *not* claimed:
``add_files({"/app": "x.tar"})`` puts the file ``x.tar`` at ``/app``. Plain, gzip (one or
more members), zstd, xz and bzip2 tarballs are recognized from their content.

Members keep their types, modes, owners (uid/gid) and mtimes, and their extended attributes;
user and group names are cleared. Member names may not contain ``..``; hard links refer to
other members. A compressed tarball is unpacked to an anonymous temporary file first, so that
cib can read the members in path order without decompressing the stream again and again.
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Iterator
from typing import IO

import cib_core
from cib_core import LayerSourceError
from cib_core.plugin_api import Entry, FileSlice, TarballSource, decompressed, keep_fields

PREFIX = "tar:"
_CHUNK = 1 << 20


@cib_core.hookimpl
def cib_layer_source(source: object, target: str) -> Iterator[Entry] | None:
    if isinstance(source, TarballSource):
        path = os.fsdecode(os.fspath(source.path))
    elif isinstance(source, str) and source.startswith(PREFIX):
        path = source[len(PREFIX):]
        if not path:
            raise LayerSourceError(source, "names no file; write tar:PATH")
    else:
        return None
    return _entries(path)


def _open_plain(path: str) -> IO[bytes]:
    import shutil
    import tempfile

    try:
        src = open(path, "rb")  # noqa: SIM115 - kept open by the slices, closed when dropped
    except OSError as exc:
        raise LayerSourceError(path, f"cannot be read: {exc.strerror or exc}") from None
    try:
        plain, kind = decompressed(src, path)
        if kind is None:
            src.seek(0)
            return src
        out = tempfile.TemporaryFile(prefix="cib-tarball-")  # noqa: SIM115 - returned
        try:
            shutil.copyfileobj(plain, out, _CHUNK)
        except BaseException:
            out.close()
            raise
    except OSError as exc:
        src.close()
        raise LayerSourceError(path, f"cannot be read: {exc.strerror or exc}") from None
    except BaseException:
        src.close()
        raise
    src.close()
    out.flush()
    out.seek(0)
    return out


def _member_name(path: str, name: str) -> str:
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise LayerSourceError(path, f"member {name!r} contains '..'; cib does not unpack "
                               "members outside the target")
    return "/".join(parts)


def _entries(path: str) -> Iterator[Entry]:
    data = _open_plain(path)
    try:
        archive = tarfile.open(fileobj=data, mode="r:", encoding="utf-8",  # noqa: SIM115
                               errors="surrogateescape")
    except tarfile.TarError as exc:
        data.close()
        raise LayerSourceError(path, f"is not a tar archive: {exc}") from None
    try:
        members = archive.getmembers()
    except tarfile.TarError as exc:
        raise LayerSourceError(path, f"is a damaged tar archive: {exc}") from None
    for m in members:
        if m.issparse():
            raise LayerSourceError(path, f"member {m.name!r} is a sparse file, which cib does "
                                   "not unpack")
        name = _member_name(path, m.name)
        info = tarfile.TarInfo(name)
        info.type = m.type
        info.mode = m.mode
        info.uid, info.gid, info.mtime = m.uid, m.gid, int(m.mtime)
        info.pax_headers = dict(m.pax_headers)
        fileobj = None
        if m.isreg():
            info.size = m.size
            fileobj = FileSlice(data, m.offset_data, m.size, name=f"{path}:{m.name}")
        elif m.islnk():
            info.linkname = _member_name(path, m.linkname)
        elif m.issym():
            info.linkname = m.linkname
        elif m.ischr() or m.isblk():
            info.devmajor, info.devminor = m.devmajor, m.devminor
        yield keep_fields(info, "uid", "gid", "mtime"), fileobj
