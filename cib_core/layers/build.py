"""Layers from layer sources: ``prepare_layer`` asks the ``cib_layer_source`` plugins for each
source of an ``add_files`` call, :class:`LayerBuilder` normalizes the entries (sorted paths,
parents, owners, times) and writes them through the pipeline (``layers.pipeline``) to a
temporary file (:class:`BuiltLayer`) or any sink callable. :func:`build_layer` does all of it.

Reproducibility: every parent directory is present (mode 0755); uid/gid are 0 and user/group
names empty; mtimes are ``SOURCE_DATE_EPOCH`` or 0 (unless a source marks explicit values to
keep, as ``CustomFile`` does); see ``layers.tar`` for the order and the headers and
``layers.pipeline`` for the compressed bytes.

When two entries of one layer have the same path, the one from the source listed last wins
(``add_files``' mapping order, then the order a source yields). A path that is a file in one
source and a directory (or a parent directory) in another is an error.

Two ways to the same bytes. When every source promises its entries in layer order
(``plugin_api.SortedEntries``, as local directories do) and no target lies inside another,
the sources are walked in target order and each entry is written as it comes: the upload
starts while the tree is still being walked, and nothing is kept per file. Otherwise every
entry becomes one :class:`~cib_core.layers.tar.Record` (a few integers and the path), and
the records are sorted, overridden and their hard links resolved before anything is written.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import tarfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, cast

from cib_core import mediatypes
from cib_core.errors import LayerSourceError, PluginError
from cib_core.layers.fingerprint import ENTRIES_KEY_VERSION, SOURCES_KEY_VERSION, Fingerprint
from cib_core.layers.pipeline import (
    GZIP_IMPLEMENTATION,
    BuiltLayer,
    LayerInfo,
    Pipeline,
    Sink,
    make_compressor,
    to_file,
)
from cib_core.layers.plan import detached, planned
from cib_core.layers.tar import CLEAN_RELATIVE as _CLEAN_RELATIVE
from cib_core.layers.tar import (
    DEVICE_TYPES,
    KEPT_PAX_PREFIXES,
    OTHER_TYPES,
    REGULAR,
    Headers,
    Record,
    join,
    normalize_target,
    sort_key,
    source_date_epoch,
)
from cib_core.layers.tar import FS_ENCODING as _FS_ENCODING
from cib_core.layers.tar import FS_ERRORS as _FS_ERRORS
from cib_core.layers.writer import HashOnly, write_tar
from cib_core.plugin_api import (
    KEEP_ATTRIBUTE,
    Entry,
    LayerOptions,
    LazyFile,
    Readable,
    SortedEntries,
    SourceIdentity,
)

if TYPE_CHECKING:
    import pluggy

log = logging.getLogger(__name__)

_REGTYPE, _DIRTYPE, _LNKTYPE, _SYMTYPE = tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.LNKTYPE, tarfile.SYMTYPE
_NOTHING_KEPT: frozenset[str] = frozenset()
# a Record made by tuple's own constructor: the named tuple's adds a Python call per file
_new_record = cast("Callable[[type[Record], tuple[object, ...]], Record]", tuple.__new__)


_Asked = tuple[str, str, Iterable[Entry]]
"""A source claimed by a plugin: its target, its description for messages, its entries."""


class LayerBuilder:
    """Collects entries, then writes one deterministic layer.

    ``add_source(target, entries)`` takes entries as a ``cib_layer_source`` plugin yields them
    (names relative to ``target``); ``add(info, fileobj)`` takes an entry whose name is already
    the full path in the layer; ``ask(pm, sources, options)`` has the plugins list
    ``{target: source}`` when the layer is written (and again for each write). ``write(sink)``
    or ``build()`` then produce the layer; entries given with ``add`` and ``add_source`` can
    be written more than once only if their file objects can be read again.
    """

    def __init__(self, *, compression: str = "gzip", level: int | None = None,
                 docker_flavour: bool = False, media_type: str | None = None,
                 mtime: int | None = None) -> None:
        self._compressor_args = (compression, level)
        make_compressor(compression, level)  # validate early
        self.media_type = media_type or mediatypes.layer_media_type(docker_flavour, compression)
        self.mtime = source_date_epoch() if mtime is None else int(mtime)
        self._given: list[Record] = []  # entries from add/add_source, in the order given
        self._pm: pluggy.PluginManager | None = None
        self._sources: dict[str, object] = {}
        self._options = LayerOptions()
        self._asked: list[_Asked] | None = None  # claimed, not yet listed
        self._plan: list[Record] | None = None  # sorted and resolved, until written
        self._planned_from: list[_Asked] = []  # the sources listed into the plan
        self._fingerprint: Fingerprint | None = None
        self.entries = 0
        """Entries written by the last ``write``, parent directories included."""
        self.shape: bytes | None = None
        """The sha256 of the tar headers of the last ``write`` or :meth:`headers_digest`: the
        layer's paths, modes, sizes and links, not its bytes."""

    # -- collecting ---------------------------------------------------------------------------
    def add(self, info: tarfile.TarInfo, fileobj: Readable | None = None, *,
            origin: str | None = None) -> None:
        rec = self._record("", info, fileobj, origin or info.name)
        if rec is not None:
            self._given.append(detached(rec if origin else rec._replace(origin=rec.path)))
        self._plan = None

    def add_source(self, target: str, entries: Iterable[Entry], *, origin: str | None = None) -> None:
        base = normalize_target(target)
        what = origin or base
        for info, fileobj in entries:
            rec = self._record(base, info, fileobj, what)
            if rec is not None:
                self._given.append(detached(rec))
        self._plan = None

    def ask(self, pm: pluggy.PluginManager, sources: Mapping[str, object],
            options: LayerOptions | None = None) -> None:
        """Have the ``cib_layer_source`` plugins claim every ``{target: source}`` item now (a
        source none claims raises ``LayerSourceError``); they list the entries when the
        layer is written."""
        self._pm = pm
        self._sources = dict(sources)
        self._options = options or LayerOptions()
        self._asked = _ask_all(pm, self._sources, self._options)
        self._plan = None

    def __len__(self) -> int:
        """Entries given with ``add`` and ``add_source`` (sources are listed only when written)."""
        return len(self._given)

    def _record(self, base: str, info: tarfile.TarInfo, fileobj: Readable | None,
                origin: str) -> Record | None:
        """``info`` under ``base``, normalized; ``None`` for the image root's own entry."""
        name = info.name
        if _CLEAN_RELATIVE.match(name):  # join's usual case, without its call: once per file
            head = base.strip("/")
            path = f"{head}/{name}" if head else name
        else:
            path = join(base, name, origin)
        kind = info.type
        if not path:
            if kind == _DIRTYPE:
                if fileobj is not None:
                    fileobj.close()
                return None  # the image root itself is never an entry
            raise LayerSourceError(origin, "cannot place a file at the image root '/'; "
                                   "name a target path for it")
        if kind in REGULAR:
            kind = _REGTYPE
        elif kind not in OTHER_TYPES:
            raise LayerSourceError(origin, f"entry {path!r} has tar type {kind!r}, which "
                                   "cib does not put into layers (sparse or vendor-specific)")
        size = int(info.size) if kind == _REGTYPE else 0
        if size > 0 and fileobj is None:
            raise LayerSourceError(origin, f"entry {path!r} is a file of {size} bytes "
                                   "without a file object")
        if fileobj is not None and not size:
            fileobj.close()  # nothing will be read from it
            fileobj = None
        keep: frozenset[str] = getattr(info, KEEP_ATTRIBUTE, _NOTHING_KEPT)
        link = ""
        if kind == _LNKTYPE:
            link = join(base, info.linkname, origin)
        elif kind == _SYMTYPE:
            link = info.linkname
        extra = None
        if info.pax_headers or kind in DEVICE_TYPES:
            pax = {k: v for k, v in info.pax_headers.items() if k.startswith(KEPT_PAX_PREFIXES)}
            if pax or kind in DEVICE_TYPES:
                extra = tarfile.TarInfo()
                extra.pax_headers = pax
                extra.devmajor, extra.devminor = info.devmajor, info.devminor
        # kept numbers as whole numbers, as tarfile writes them
        return _new_record(Record, (
            path, kind, info.mode & 0o7777,
            int(info.uid) if "uid" in keep else 0, int(info.gid) if "gid" in keep else 0,
            int(info.mtime) if "mtime" in keep else self.mtime,
            size, link, fileobj, None, origin, extra))

    # -- listing in layer order -----------------------------------------------------------------
    def _streams(self, asked: list[_Asked]) -> bool:
        """Whether the sources can be written as they are listed (see the module's text):
        each promises its order, and no target is another's or inside it. In layer order a
        target's descendants follow it at once, so comparing neighbours finds every nesting."""
        if self._given or not asked:
            return False
        bases = sorted((base for base, _, _ in asked), key=sort_key)
        return (all(isinstance(entries, SortedEntries) for _, _, entries in asked)
                and not any(inner == outer or inner.startswith(outer.rstrip("/") + "/")
                            for outer, inner in zip(bases, bases[1:], strict=False)))

    def _listing(self) -> tuple[Iterator[Record], list[Record] | None, list[_Asked]]:
        """The layer's entries in order (parents not yet added); the plan they come from,
        ``None`` when they come straight from sorted sources in an order still to be checked;
        and the sources listed. After a write the plugins are asked again."""
        if self._plan is not None:
            return iter(self._plan), self._plan, self._planned_from
        if self._asked is None and self._pm is not None:
            self._asked = _ask_all(self._pm, self._sources, self._options)
        asked, self._asked = self._asked or [], None
        if self._streams(asked):
            return self._streamed(sorted(asked, key=lambda a: sort_key(a[0]))), None, asked
        records = list(self._given)
        for base, what, entries in asked:
            for info, fileobj in _named(what, entries):
                rec = self._record(base, info, fileobj, what)
                if rec is not None:
                    records.append(detached(rec))
        self._plan = planned(records)
        self._planned_from = asked
        return iter(self._plan), self._plan, asked

    def _identities(self, asked: list[_Asked]) -> list[Callable[[], SourceIdentity]] | None:
        """Every source's ``identity``, or ``None`` when some source (or an entry given by
        ``add``) has none: then the cache key is hashed entry by entry."""
        if self._given or not asked:
            return None
        found = [entries.identity for _, _, entries in asked if isinstance(entries, SortedEntries)]
        return None if len(found) != len(asked) or None in found else cast(
            "list[Callable[[], SourceIdentity]]", found)

    def _new_fingerprint(self, by_sources: bool, racy_seconds: float) -> Fingerprint:
        if by_sources:
            return Fingerprint(SOURCES_KEY_VERSION + repr((
                self._compressor_args, GZIP_IMPLEMENTATION, self.mtime, self._options)).encode(),
                racy_seconds)
        return Fingerprint(ENTRIES_KEY_VERSION + repr((
            self._compressor_args, GZIP_IMPLEMENTATION)).encode(), racy_seconds)

    def _streamed(self, asked: list[_Asked]) -> Iterator[Record]:
        record = self._record
        for base, what, entries in asked:
            try:
                for info, fileobj in entries:
                    rec = record(base, info, fileobj, what)
                    if rec is not None:
                        yield rec
            except PluginError as exc:
                raise PluginError(exc.plugin, f"{exc.reason} (source {what!r})") from exc

    def _laid_out(self, records: Iterator[Record], check_order: bool) -> Iterator[Record]:
        """``records`` with their missing parent directories (mode 0755) before them; a path
        under a non-directory is an error, and so, in a source's own order, is a path that
        does not come after the one before it."""
        # the directories enclosing the last entry, outermost first, each with its trailing
        # "/"; `top` is the innermost ("" for the root)
        dirs: list[str] = []
        top = ""
        last = last_origin = ""
        last_key = b""
        last_is_dir = True
        mtime = self.mtime
        for rec in records:
            path = rec.path
            if check_order:
                key = path.encode(_FS_ENCODING, _FS_ERRORS).replace(b"/", b"\0")  # sort_key
                if key <= last_key:
                    raise LayerSourceError(rec.origin, (
                        f"listed {path!r} twice" if path == last else
                        f"listed {path!r} after {last!r}") + ", against the layer order its "
                        "layer source promised (a bug of the plugin that reads it)")
                if rec.type == _LNKTYPE and sort_key(rec.link) >= key:
                    raise LayerSourceError(rec.origin, f"{path!r} is a hard link to {rec.link!r}, "
                                           "which its sorted layer source did not list before it")
                last_key = key
            if not path.startswith(top):  # out of the last directory
                while dirs and not path.startswith(dirs[-1]):
                    dirs.pop()
                top = dirs[-1] if dirs else ""
            rest = path[len(top):]
            if "/" in rest:  # parents the sources did not list
                for name in rest.split("/")[:-1]:
                    ancestor = top + name
                    if ancestor == last and not last_is_dir:
                        raise LayerSourceError(last_origin, f"{ancestor!r} is not a directory in "
                                               f"the layer but {path!r} is under it; two "
                                               "sources disagree")
                    yield Record(ancestor, _DIRTYPE, 0o755, 0, 0, mtime, 0, "", None, None,
                                 ancestor, None)
                    top = ancestor + "/"
                    dirs.append(top)
            yield rec
            last, last_origin = path, rec.origin
            last_is_dir = rec.type == _DIRTYPE
            if last_is_dir:
                top = path + "/"
                dirs.append(top)

    # -- writing ------------------------------------------------------------------------------
    def write(self, sink: Sink, *, digest: bool = True,
              fingerprint: float | None = None) -> LayerInfo:
        """Write the layer to ``sink`` (called with successive chunks of the blob).

        ``digest=False`` is for a sink that hashes the blob itself (an upload): the blob is
        not hashed a second time here and the returned ``digest`` is empty, for the caller to
        fill in from the sink. ``fingerprint`` (the racy window in seconds) computes the
        rebuild cache's key on the way, for :meth:`fingerprint` to return without listing
        again. The sha256 of the tar headers in order is kept in :attr:`shape`."""
        records, plan, asked = self._listing()
        headers = hashlib.sha256()
        identities = self._identities(asked)
        fp = None
        if fingerprint is not None:
            fp = self._new_fingerprint(identities is not None, fingerprint)
        self._fingerprint = None
        pipe = Pipeline(make_compressor(*self._compressor_args), sink, digest=digest)
        try:
            self.entries = write_tar(self._laid_out(records, plan is None), pipe,
                                     fp if identities is None else None, headers)
            self.shape = headers.digest()
            diff_id, blob_digest, size = pipe.finish()
            if fp is not None and identities is not None:
                for (base, _, _), identity in zip(asked, identities, strict=True):
                    fp.add_source(base, identity())  # what the finished listing computed
            self._fingerprint = fp
        finally:
            pipe.abort()
            for rec in plan or ():  # what a failure left unread
                if rec.content is not None and not isinstance(rec.content, str):
                    rec.content.close()
            if self._pm is not None:
                self._plan = None  # its file objects are read: list the sources again
        log.debug("layer %s (diff_id %s): %d entries, %d bytes", blob_digest or "(hashed by the sink)",
                  diff_id, self.entries, size)
        return LayerInfo(digest=blob_digest, diff_id=diff_id, size=size, media_type=self.media_type)

    def fingerprint(self, racy_seconds: float = 2.0) -> str | None:
        """A key for the layer cache (see ``cib_core.layers.cache``), or ``None`` when the layer
        cannot be cached: some content is not a plain local file, or a file changed within
        ``racy_seconds``. After ``write(..., fingerprint=racy_seconds)`` it is the key of what
        was written; otherwise the entries are listed for it: one ``stat`` per file, nothing
        read, nothing kept per file when the sources stream."""
        fp = self._fingerprint
        if fp is None or fp.racy_seconds != racy_seconds:
            fp = self._fingerprint = self._check(racy_seconds)
        return fp.key(self.media_type)

    def _check(self, racy_seconds: float) -> Fingerprint:
        if self._plan is None and self._asked is None and self._pm is not None:
            self._asked = _ask_all(self._pm, self._sources, self._options)
        identities = None if self._plan is not None else self._identities(self._asked or [])
        if identities is not None:
            # each source tells its own identity from a walk that lists nothing; the entries
            # stay unlisted for the write
            fp = self._new_fingerprint(True, racy_seconds)
            for (base, _, _), identity in zip(self._asked or [], identities, strict=True):
                fp.add_source(base, identity())
            return fp
        records, plan, asked = self._listing()
        identities = self._identities(asked)
        fp = self._new_fingerprint(identities is not None, racy_seconds)
        if identities is not None:  # a plan listed its sources to the end: they know theirs
            for (base, _, _), identity in zip(asked, identities, strict=True):
                fp.add_source(base, identity())
            return fp
        header = Headers()
        for rec in self._laid_out(records, plan is None):
            if not fp.add(header(rec), rec):
                if plan is None and rec.content is not None and not isinstance(rec.content, str):
                    rec.content.close()  # the check stops here; the write lists again
                break
        return fp

    def build(self, dir: str | None = None, *, fingerprint: float | None = None) -> BuiltLayer:
        """Write the layer to a temporary file (in ``dir``, default the system's temp dir);
        ``fingerprint`` as for :meth:`write`."""
        return to_file(lambda sink: self.write(sink, fingerprint=fingerprint), dir)

    @property
    def compression_settings(self) -> tuple[str, int | None, str]:
        """``(compression, level, implementation)``: what decides the compressed bytes."""
        compression, level = self._compressor_args
        return compression, level, GZIP_IMPLEMENTATION

    def headers_digest(self) -> bytes | None:
        """The sha256 of the layer's tar headers in order (what ``write``
        keeps in :attr:`shape`), from a listing; ``None`` when some content could not be listed again for
        the write (entries given with ``add``, a stream). Nothing is read."""
        if self._given:
            return None
        records, plan, asked = self._listing()
        if plan is None:  # keep the listing as a plan, for the write to follow
            plan = self._plan = planned([detached(rec) for rec in records])
            self._planned_from = asked
        headers = hashlib.sha256()
        make_header = Headers()
        for rec in self._laid_out(iter(plan), False):
            if not _rereadable(rec.content):
                return None
            headers.update(make_header(rec))
        self.shape = headers.digest()
        return self.shape

    def tar_digest(self) -> str:
        """The layer's diff_id, from its tar hashed as written (nothing compressed or kept):
        every file is read. Call :meth:`headers_digest` first to know the content can be
        listed again for the write."""
        records, plan, _ = self._listing()
        sink = HashOnly()
        try:
            write_tar(self._laid_out(records, plan is None), sink, None)
        finally:
            for rec in plan or ():
                if rec.content is not None and not isinstance(rec.content, str):
                    rec.content.close()
            if self._pm is not None:
                self._plan = None  # its file objects are read: list the sources again
        return "sha256:" + sink.hash.hexdigest()

    def recipe(self, *, relocatable: bool = False) -> str | None:
        """What the layer is asked to be made of, as a key: the targets and the sources as
        named (local paths made absolute; with ``relocatable``, the targets only, so that a
        checkout of the project anywhere has the same one), the options, the compressor and
        the layer time; ``None`` when a source is not a path or a string (a ``CustomFile``, an
        object of a plugin). The rebuild cache remembers the recipes it has seen, so that a
        layer never built before goes straight to building, with no check first."""
        named = []
        for target, source in self._sources.items():
            if isinstance(source, (str, os.PathLike)):
                path = os.path.abspath(os.fsdecode(os.fspath(source)))
                named.append((normalize_target(target), "" if relocatable else path))
            else:
                return None
        if not named or self._given:
            return None
        return hashlib.sha256(b"cib-layer-recipe-2\0" + repr((
            relocatable, named, self._compressor_args, GZIP_IMPLEMENTATION, self.mtime,
            self._options)).encode()
        ).hexdigest()


def _rereadable(content: Readable | str | None) -> bool:
    """Whether a listing's content may be read for a key and listed afresh for the write: a
    local file by its path, a local file not yet opened, or bytes in memory."""
    return (content is None or isinstance(content, (str, io.BytesIO))
            or (type(content) is LazyFile and not content.opened and not content.closed))


# --------------------------------------------------------------------------------------------
# Sources → entries
# --------------------------------------------------------------------------------------------
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


def _ask_all(pm: pluggy.PluginManager, sources: Mapping[str, object],
             options: LayerOptions) -> list[tuple[str, str, Iterable[Entry]]]:
    """``(target, description, entries)`` of every source, in the order given; a source no
    plugin claims raises ``LayerSourceError``."""
    asked = []
    for target, source in sources.items():
        base = normalize_target(target)
        entries = _ask_plugins(pm, source, base, options)
        what = _describe(source)
        if entries is None:
            raise LayerSourceError(
                what,
                "no layer source claims it: it is not an existing local file or directory, "
                "a CustomFile, 'tar:PATH', or a prefix of an installed plugin (see `cib plugins`)")
        asked.append((base, what, entries))
    return asked


def _named(source: object, entries: Iterable[Entry]) -> Iterator[Entry]:
    try:
        yield from entries
    except PluginError as exc:
        raise PluginError(exc.plugin, f"{exc.reason} (source {_describe(source)!r})") from exc


def collect_entries(pm: pluggy.PluginManager, sources: Mapping[str, object], *,
                    options: LayerOptions | None = None) -> list[Entry]:
    """Ask the ``cib_layer_source`` plugins for every ``{target: source}`` item and list them.

    Returns entries whose names (and hard-link names) are full paths in the layer, without a
    leading ``/``, in the order the sources were given. Every source gets the same
    ``options``; a source no plugin claims raises ``LayerSourceError``.
    """
    out: list[Entry] = []
    for base, what, entries in _ask_all(pm, sources, options or LayerOptions()):
        for info, fileobj in _named(what, entries):
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
                  mtime: int | None = None, platform: str | None = None) -> LayerBuilder:
    """The :class:`LayerBuilder` of ``{target: source}``, every source claimed by a plugin
    and nothing listed yet: ``fingerprint()`` it, then ``write(sink)`` or ``build()``.
    ``platform`` tells the sources the one platform the layer is for (``None``: every
    platform)."""
    builder = LayerBuilder(compression=compression, level=level, docker_flavour=docker_flavour,
                           mtime=mtime)
    builder.ask(pm, sources, LayerOptions(tuple(ignores), tuple(ignore_files), follow_symlinks,
                                          platform))
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
    return prepare_layer(pm, sources, compression=compression, docker_flavour=docker_flavour,
                         ignores=ignores, ignore_files=ignore_files,
                         follow_symlinks=follow_symlinks, level=level, mtime=mtime).build(dir)


def write_layer(pm: pluggy.PluginManager, sources: Mapping[str, object], sink: Sink, *,
                compression: str = "gzip", docker_flavour: bool = False,
                ignores: Iterable[str] = (), ignore_files: Iterable[str] = (),
                follow_symlinks: bool = True, level: int | None = None,
                mtime: int | None = None) -> LayerInfo:
    """Like :func:`build_layer`, but stream the blob to ``sink`` (called with each chunk, from
    a worker thread, in order) -- for a chunked upload that needs no temporary file."""
    return prepare_layer(pm, sources, compression=compression, docker_flavour=docker_flavour,
                         ignores=ignores, ignore_files=ignore_files,
                         follow_symlinks=follow_symlinks, level=level, mtime=mtime).write(sink)
