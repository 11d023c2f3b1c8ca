"""Layers from layer sources: ``collect_entries`` asks the ``cib_layer_source`` plugins for
each source of an ``add_files`` call, :class:`LayerBuilder` normalizes the entries (sorted
paths, parents, owners, times) and writes them through the pipeline (``layers.pipeline``) to
a temporary file (:class:`BuiltLayer`) or any sink callable. :func:`build_layer` does all of it.

Reproducibility: every parent directory is present (mode 0755); uid/gid are 0 and user/group
names empty; mtimes are ``SOURCE_DATE_EPOCH`` or 0 (unless a source marks explicit values to
keep, as ``CustomFile`` does); see ``layers.tar`` for the order and the headers and
``layers.pipeline`` for the compressed bytes.

When two entries of one layer have the same path, the one from the source listed last wins
(``add_files``' mapping order, then the order a source yields). A path that is a file in one
source and a directory (or a parent directory) in another is an error.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import hashlib
import logging
import os
import stat
import tarfile
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple, cast

from cib_core import mediatypes
from cib_core.errors import LayerSourceError, PluginError
from cib_core.layers.pipeline import (
    CHUNK,
    GZIP_IMPLEMENTATION,
    BuiltLayer,
    LayerInfo,
    Pipeline,
    Sink,
    make_compressor,
    to_file,
)
from cib_core.layers.tar import (
    KEPT_PAX_PREFIXES,
    OTHER_TYPES,
    REGULAR,
    join,
    normalize_target,
    sort_key,
    source_date_epoch,
    tar_header,
)
from cib_core.plugin_api import Entry, LayerOptions, LazyFile, Readable, kept_fields

if TYPE_CHECKING:
    import pluggy

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Listing and planning a tree allocate several objects per file and free almost none,
    so the cyclic garbage collector would walk the growing heap again and again for nothing
    (a quarter of the planning time of 20,000 files). Paused meanwhile, it goes on after."""
    if not gc.isenabled():  # paused by the caller, or by another thread listing: theirs
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@dataclass
class _Record:
    info: tarfile.TarInfo
    fileobj: Readable | None
    origin: str  # for messages: where the entry came from



class _Planned(NamedTuple):
    info: tarfile.TarInfo
    fileobj: Readable | None
    origin: str
    header: bytes  # the entry's tar header block(s), PAX ones included



class LayerBuilder:
    """Collects entries, then writes one deterministic layer.

    ``add_source(target, entries)`` takes entries as a ``cib_layer_source`` plugin yields them
    (names relative to ``target``); ``add(info, fileobj)`` takes an entry whose name is already
    the full path in the layer. ``write(sink)`` or ``build()`` then produce the layer; a
    builder can write more than once only if its file objects can be read again.
    """

    def __init__(self, *, compression: str = "gzip", level: int | None = None,
                 docker_flavour: bool = False, media_type: str | None = None,
                 mtime: int | None = None) -> None:
        self._compressor_args = (compression, level)
        make_compressor(compression, level)  # validate early
        self.media_type = media_type or mediatypes.layer_media_type(docker_flavour, compression)
        self.mtime = source_date_epoch() if mtime is None else int(mtime)
        self._records: dict[str, _Record] = {}
        self._planned: list[_Planned] | None = None  # until the next add

    # -- collecting ---------------------------------------------------------------------------
    def add(self, info: tarfile.TarInfo, fileobj: Readable | None = None, *,
            origin: str | None = None) -> None:
        path = join("", info.name, origin or info.name)
        if info.type == tarfile.LNKTYPE:
            info.linkname = join("", info.linkname, origin or info.name)
        self._put(path, info, fileobj, origin or path)

    def add_source(self, target: str, entries: Iterable[Entry], *, origin: str | None = None) -> None:
        base = normalize_target(target)
        for info, fileobj in entries:
            what = origin or base
            path = join(base, info.name, what)
            if info.type == tarfile.LNKTYPE:
                info.linkname = join(base, info.linkname, what)
            self._put(path, info, fileobj, what)

    def _put(self, path: str, info: tarfile.TarInfo, fileobj: Readable | None, origin: str) -> None:
        if not path:
            if info.type == tarfile.DIRTYPE:
                return  # the image root itself is never an entry
            raise LayerSourceError(origin, "cannot place a file at the image root '/'; "
                                   "name a target path for it")
        if info.type not in REGULAR and info.type not in OTHER_TYPES:
            raise LayerSourceError(origin, f"entry {path!r} has tar type {info.type!r}, which "
                                   "cib does not put into layers (sparse or vendor-specific)")
        if info.type in REGULAR and info.size > 0 and fileobj is None:
            raise LayerSourceError(origin, f"entry {path!r} is a file of {info.size} bytes "
                                   "without a file object")
        old = self._records.get(path)
        if old is not None and old.fileobj is not None and old.fileobj is not fileobj:
            old.fileobj.close()
        self._records[path] = _Record(info, fileobj, origin)
        self._planned = None

    def __len__(self) -> int:
        return len(self._records)

    # -- normalizing --------------------------------------------------------------------------
    def _normalized(self, path: str, rec: _Record) -> tarfile.TarInfo:
        src = rec.info
        keep = kept_fields(src)
        out = tarfile.TarInfo(path)
        out.type = tarfile.REGTYPE if src.type in REGULAR else src.type
        out.mode = stat.S_IMODE(src.mode)
        out.uid = src.uid if "uid" in keep else 0
        out.gid = src.gid if "gid" in keep else 0
        out.mtime = int(src.mtime) if "mtime" in keep else self.mtime
        out.uname = out.gname = ""
        out.size = src.size if out.type == tarfile.REGTYPE else 0
        if out.type in (tarfile.SYMTYPE, tarfile.LNKTYPE):
            out.linkname = src.linkname
        if out.type in (tarfile.CHRTYPE, tarfile.BLKTYPE):
            out.devmajor, out.devminor = src.devmajor, src.devminor
        out.pax_headers = {k: v for k, v in src.pax_headers.items()
                           if k.startswith(KEPT_PAX_PREFIXES)}
        return out

    def _plan(self) -> list[_Planned]:
        """The layer's entries in order, normalized, with their tar headers; computed once
        (the rebuild cache's fingerprint and the write share it) until the next add."""
        if self._planned is None:
            with _gc_paused():
                self._planned = [_Planned(info, fileobj, origin, tar_header(info))
                                 for info, fileobj, origin in self._entries()]
        return self._planned

    def _entries(self) -> list[tuple[tarfile.TarInfo, Readable | None, str]]:
        records = self._records
        # Parent directories, and paths that are both a file and a parent.
        for path in list(records):
            parts = path.split("/")
            for i in range(1, len(parts)):
                parent = "/".join(parts[:i])
                rec = records.get(parent)
                if rec is None:
                    info = tarfile.TarInfo(parent)
                    info.type = tarfile.DIRTYPE
                    info.mode = 0o755
                    records[parent] = _Record(info, None, parent)
                elif rec.info.type != tarfile.DIRTYPE:
                    raise LayerSourceError(rec.origin, f"{parent!r} is not a directory in the layer "
                                           f"but {path!r} is under it; two sources disagree")
        order = sorted(records, key=sort_key)
        position = {p: i for i, p in enumerate(order)}
        infos = {p: self._normalized(p, records[p]) for p in order}
        files: dict[str, Readable | None] = {p: records[p].fileobj for p in order}

        # Hard links: the first of a group in path order carries the content.
        groups: dict[str, list[str]] = {}
        for p in order:
            if infos[p].type != tarfile.LNKTYPE:
                continue
            root, seen = p, {p}
            while infos[root].type == tarfile.LNKTYPE:
                nxt = infos[root].linkname
                if nxt not in infos:
                    raise LayerSourceError(records[p].origin, f"{p!r} is a hard link to {nxt!r}, "
                                           "which is not in the layer")
                if nxt in seen:
                    raise LayerSourceError(records[p].origin, f"{p!r} is part of a hard-link cycle")
                seen.add(nxt)
                root = nxt
            if infos[root].type == tarfile.DIRTYPE:
                raise LayerSourceError(records[p].origin, f"{p!r} is a hard link to the directory "
                                       f"{root!r}")
            groups.setdefault(root, [root]).append(p)
        for root, members in groups.items():
            members.sort(key=position.__getitem__)
            first = members[0]
            if first != root:
                moved = copy.copy(infos[root])
                moved.name = first
                moved.pax_headers = dict(infos[root].pax_headers)
                infos[first], files[first] = moved, files[root]
                files[root] = None
            for m in members[1:]:
                link = infos[m]
                link.type = tarfile.LNKTYPE
                link.linkname = first
                link.size = 0
                link.pax_headers = {}
                files[m] = None
        return [(infos[p], files[p], records[p].origin) for p in order]

    # -- writing ------------------------------------------------------------------------------
    def write(self, sink: Sink, *, digest: bool = True) -> LayerInfo:
        """Write the layer to ``sink`` (called with successive chunks of the blob).

        ``digest=False`` is for a sink that hashes the blob itself (an upload): the blob is
        not hashed a second time here and the returned ``digest`` is empty, for the caller to
        fill in from the sink."""
        plan = self._plan()
        pipe = Pipeline(make_compressor(*self._compressor_args), sink, digest=digest)
        try:
            _write_tar(plan, pipe)
            diff_id, blob_digest, size = pipe.finish()
        finally:
            pipe.abort()
            for entry in plan:
                if entry.fileobj is not None:
                    entry.fileobj.close()
        log.debug("layer %s (diff_id %s): %d entries, %d bytes", blob_digest or "(hashed by the sink)",
                  diff_id, len(plan), size)
        return LayerInfo(digest=blob_digest, diff_id=diff_id, size=size, media_type=self.media_type)

    def fingerprint(self, racy_seconds: float = 2.0) -> str | None:
        """A key for the layer cache (see ``cib_core.layers.cache``), or ``None`` when the layer
        cannot be cached: some content is not a plain local file, or a file changed within
        ``racy_seconds``. Cheap: one ``stat`` per file, nothing read."""
        limit = time.time_ns() - int(racy_seconds * 1e9)
        h = hashlib.sha256(b"cib-layer-cache-1\0")
        h.update(repr((self._compressor_args, self.media_type,
                       GZIP_IMPLEMENTATION)).encode())
        for info, fileobj, _, header in self._plan():
            h.update(header)
            if info.type != tarfile.REGTYPE or not info.size:
                continue
            if type(fileobj) is not LazyFile or fileobj.closed:
                return None
            st = fileobj.stat_result  # from the listing, a moment ago
            if st is None:
                try:
                    st = os.stat(fileobj.name)
                except OSError:
                    return None
            if (st.st_size != info.size or not stat.S_ISREG(st.st_mode)
                    or max(st.st_mtime_ns, st.st_ctime_ns) >= limit):
                return None
            h.update(f"\0{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}\0"
                     .encode())
        return h.hexdigest()

    def build(self, dir: str | None = None) -> BuiltLayer:
        """Write the layer to a temporary file (in ``dir``, default the system's temp dir)."""
        return to_file(self.write, dir)


def _write_tar(plan: list[_Planned], pipe: Pipeline) -> None:
    buf = bytearray()
    total = 0
    for info, fileobj, origin, header in plan:
        buf += header
        total += len(header)
        if info.type == tarfile.REGTYPE and info.size:
            assert fileobj is not None  # noqa: S101 - checked in _put
            name = getattr(fileobj, "name", None) or origin
            remaining = info.size
            while remaining:
                chunk = fileobj.read(min(remaining, CHUNK))
                if not chunk:
                    raise LayerSourceError(name, f"changed size while being read: expected "
                                           f"{info.size} bytes, got {info.size - remaining}; "
                                           "build again once it has stopped changing")
                if len(chunk) > remaining:
                    raise LayerSourceError(name, f"changed size while being read: more than the "
                                           f"{info.size} bytes it had when listed")
                remaining -= len(chunk)
                if len(chunk) >= CHUNK // 4:
                    if buf:
                        pipe.write(buf)
                        buf = bytearray()
                    pipe.write(chunk)
                else:
                    buf += chunk
            if fileobj.read(1):
                raise LayerSourceError(name, f"changed size while being read: grew past the "
                                       f"{info.size} bytes it had when listed; build again once "
                                       "it has stopped changing")
            fileobj.close()
            pad = -info.size % tarfile.BLOCKSIZE
            buf += bytes(pad)
            total += info.size + pad
        if len(buf) >= CHUNK:
            pipe.write(buf)
            buf = bytearray()
    end = 2 * tarfile.BLOCKSIZE
    end += -(total + end) % tarfile.RECORDSIZE  # pad to a full record, as tar and tarfile do
    buf += bytes(end)
    pipe.write(buf)



def _describe(source: object) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fsdecode(os.fspath(source))
    return repr(source)


def _ask_plugins(pm: pluggy.PluginManager, source: object, target: str,
                 options: LayerOptions) -> Iterable[Entry] | None:
    try:
        result = pm.hook.cib_layer_source(source=source, target=target, options=options)
    except PluginError as exc:
        raise PluginError(exc.plugin, f"{exc.reason} (source {_describe(source)!r})") from exc
    return None if result is None else cast("Iterable[Entry]", result)


def _named(source: object, entries: Iterable[Entry]) -> Iterator[Entry]:
    try:
        yield from entries
    except PluginError as exc:
        raise PluginError(exc.plugin, f"{exc.reason} (source {_describe(source)!r})") from exc


def collect_entries(pm: pluggy.PluginManager, sources: Mapping[str, object], *,
                    options: LayerOptions | None = None) -> list[Entry]:
    """Ask the ``cib_layer_source`` plugins for every ``{target: source}`` item.

    Returns entries whose names (and hard-link names) are full paths in the layer, without a
    leading ``/``, in the order the sources were given. Every source gets the same
    ``options``; a source no plugin claims raises ``LayerSourceError``.
    """
    options = options or LayerOptions()
    out: list[Entry] = []
    for target, source in sources.items():
        base = normalize_target(target)
        entries = _ask_plugins(pm, source, base, options)
        what = _describe(source)
        if entries is None:
            raise LayerSourceError(
                what,
                "no layer source claims it: it is not an existing local file or directory, "
                "a CustomFile, 'tar:PATH', or a prefix of an installed plugin (see `cib plugins`)")
        for info, fileobj in _named(source, entries):
            info.name = join(base, info.name, what)
            if not info.name and info.type != tarfile.DIRTYPE:
                raise LayerSourceError(what, "cannot place a file at the image root '/'; "
                                       "name a target path for it")
            if info.type == tarfile.LNKTYPE:
                info.linkname = join(base, info.linkname, what)
            out.append((info, fileobj))
    return out


def prepare_layer(pm: pluggy.PluginManager, sources: Mapping[str, object], *,
                  compression: str = "gzip", docker_flavour: bool = False,
                  ignores: Iterable[str] = (), ignore_files: Iterable[str] = (),
                  follow_symlinks: bool = True, level: int | None = None,
                  mtime: int | None = None) -> LayerBuilder:
    """The :class:`LayerBuilder` of ``{target: source}`` with every entry listed, not yet
    written: ``fingerprint()`` it, then ``write(sink)`` or ``build()``."""
    return _builder_for(pm, sources, compression=compression, docker_flavour=docker_flavour,
                        ignores=ignores, ignore_files=ignore_files,
                        follow_symlinks=follow_symlinks, level=level, mtime=mtime)


def _builder_for(pm: pluggy.PluginManager, sources: Mapping[str, object], *, compression: str,
                 docker_flavour: bool, ignores: Iterable[str], ignore_files: Iterable[str],
                 follow_symlinks: bool, level: int | None, mtime: int | None) -> LayerBuilder:
    builder = LayerBuilder(compression=compression, level=level, docker_flavour=docker_flavour,
                           mtime=mtime)
    with _gc_paused():
        options = LayerOptions(tuple(ignores), tuple(ignore_files), follow_symlinks)
        for info, fileobj in collect_entries(pm, sources, options=options):
            builder.add(info, fileobj)
    return builder


def build_layer(pm: pluggy.PluginManager, sources: Mapping[str, object], *,
                compression: str = "gzip", docker_flavour: bool = False,
                ignores: Iterable[str] = (), ignore_files: Iterable[str] = (),
                follow_symlinks: bool = True, level: int | None = None, mtime: int | None = None,
                dir: str | None = None) -> BuiltLayer:
    """One layer from ``{target: source}`` in a temporary file (in ``dir``).

    ``mtime`` overrides the layer time (default ``SOURCE_DATE_EPOCH`` or 0); ``level`` the
    compression level (isal gzip 0-3, default 2; zlib 0-9, default 6; zstd default 3).
    """
    return _builder_for(pm, sources, compression=compression, docker_flavour=docker_flavour,
                        ignores=ignores, ignore_files=ignore_files,
                        follow_symlinks=follow_symlinks, level=level, mtime=mtime).build(dir)


def write_layer(pm: pluggy.PluginManager, sources: Mapping[str, object], sink: Sink, *,
                compression: str = "gzip", docker_flavour: bool = False,
                ignores: Iterable[str] = (), ignore_files: Iterable[str] = (),
                follow_symlinks: bool = True, level: int | None = None,
                mtime: int | None = None) -> LayerInfo:
    """Like :func:`build_layer`, but stream the blob to ``sink`` (called with each chunk, from
    a worker thread, in order) -- for a chunked upload that needs no temporary file."""
    return _builder_for(pm, sources, compression=compression, docker_flavour=docker_flavour,
                        ignores=ignores, ignore_files=ignore_files,
                        follow_symlinks=follow_symlinks, level=level, mtime=mtime).write(sink)

