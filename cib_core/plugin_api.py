"""What a ``cib_layer_source`` plugin may use besides ``cib_core``'s top-level names.

A layer source turns one source the user named into entries ``(TarInfo, fileobj)``:

* ``TarInfo.name`` is a relative path placed under the target (``""`` is the target itself).
  For a hard link (``LNKTYPE``) ``linkname`` is relative to the same target, like names; a
  symlink's ``linkname`` is its content and is kept as given.
* ``fileobj`` is ``None`` except for regular files, where it is anything with ``read(n)`` and
  ``close()`` (:class:`Readable`) giving exactly ``TarInfo.size`` bytes. cib reads the files
  only after every source has been listed and in path order, so yield :class:`LazyFile` (opens
  on first read) or :class:`FileSlice` objects rather than open files: a source can then list
  thousands of files without holding thousands of descriptors. cib closes each one after use.
* A source that can list its entries in layer order returns them wrapped in
  :class:`SortedEntries`: cib then writes each entry as it comes (the upload starts while the
  source is still being listed, and nothing is kept per entry) and reads each file right
  after it is yielded. The builtin *local-dir* and *custom-files* sources do.
* cib sorts the entries by path, adds missing parent directories (mode 0755), clears user and
  group names, sets uid/gid to 0 and mtime to ``SOURCE_DATE_EPOCH`` (or 0) -- unless the
  plugin marks fields to keep with :func:`keep_fields` (``CustomFile`` does this for its
  explicit uid/gid/mtime, the tarball source for the members' owners and times). Of the PAX
  headers only extended attributes (``SCHILY.xattr.*``) are kept.
* When two entries (from one source or from several in one layer) have the same path, the
  one listed last wins.

Options
-------
Every source of one ``add_files`` call (or one ``cib build``) gets the same
:class:`LayerOptions`: the ignore patterns and files, whether to follow symlinks, and the
platform the layer is for. A plugin uses the ones that make sense for its sources. The
builtin *local-dir* plugin claims ``os.PathLike`` objects and strings naming an existing path,
and is asked before every other layer source, so an existing path always means that path and
a plugin's prefix (``"acme:…"``) never shadows a file.

Tarballs
--------
``add_files({"/app": "x.tar"})`` puts the *file* ``x.tar`` at ``/app``, as for any local file.
To unpack a tarball's members under a target, name it explicitly: a :class:`TarballSource`
object, or the string ``"tar:PATH"`` (``cib build --add tar:layer.tar.gz:/``); the builtin
*tarball* plugin claims only those. A tarball added "as it is", as a layer of its own, is
``cib_core.layers.tarball.layer_from_tarball``. A source that reads compressed files uses
:func:`decompressed`, which recognizes gzip, zstd, xz and bzip2 from the content and refuses
a file cut off inside a frame.

App packagers
-------------
A ``cib_app_packager`` plugin turns a project directory into layers and config for every
platform of a build (``Image.add_app``; the builtin *python-app* packager serves
``add_python_app`` and ``cib build --python-app``). It is given one :class:`BaseImage` per
platform, a read-only view of the base's files and config that fetches layers only when a
file is first asked for, and :class:`AppOptions`. It returns one :class:`AppImage` per base:
the :class:`AppLayer` list (least-changing first), and the entrypoint, environment and
working directory of that platform. A layer's ``key`` names its content: layers with equal
keys are built once and shared by the platforms, and one whose key cib has built before (and
whose blob the target has) is neither built nor uploaded again.
"""

from __future__ import annotations

import os
import stat
import tarfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from cib_core.callbacks import Progress, report_step
from cib_core.errors import LayerSourceError, PackagingError
from cib_core.fileio import FileSlice

if TYPE_CHECKING:
    from typing import BinaryIO

__all__ = [
    "KEEP_ATTRIBUTE",
    "AppImage",
    "AppLayer",
    "AppOptions",
    "BaseImage",
    "Entry",
    "FileInfo",
    "FileSlice",
    "LayerOptions",
    "LayerSourceError",
    "LazyFile",
    "PackagingError",
    "Progress",
    "Readable",
    "SortedEntries",
    "SourceIdentity",
    "TarballSource",
    "decompressed",
    "dir_entry",
    "file_entry",
    "keep_fields",
    "kept_fields",
    "report_step",
    "symlink_entry",
]


def decompressed(stream: BinaryIO, name: str, *, chunk: int = 1 << 16) -> tuple[BinaryIO, str | None]:
    """``stream`` decompressed as its first bytes say (gzip, zstd, xz, bzip2; each frame or
    member in turn, a stream cut off inside one refused), and the compression found (``None``:
    it was not compressed and passes through as it is). Reading the result to its end checks
    that the stream was complete; the result does not close ``stream``. ``name`` says what is
    read, in errors."""
    # the decompressors load when a source reads a compressed file, not with every plugin
    from cib_core.compression import decompressed as decompress

    return decompress(stream, name, chunk=chunk)


@runtime_checkable
class Readable(Protocol):
    """The file object of a regular-file entry: ``read`` and ``close`` are all cib uses."""

    def read(self, size: int = -1, /) -> bytes: ...

    def close(self) -> None: ...


Entry = tuple[tarfile.TarInfo, "Readable | None"]
"""One layer entry as a ``cib_layer_source`` plugin yields it."""


@dataclass(frozen=True)
class LayerOptions:
    """The options of one new layer, given to every ``cib_layer_source`` call for it.

    ``ignores`` are gitignore-style patterns relative to each local directory;
    ``ignore_files`` names files at a directory's root (like ``.dockerignore``) whose lines are
    read as more patterns, before ``ignores`` (so an explicit pattern has the last word, as
    later lines do in a gitignore file). ``follow_symlinks`` replaces symlinks found inside a
    directory by what they point to; a source path itself is always resolved. ``platform`` is
    ``None`` for a layer of every platform, or the one platform (``"linux/arm64"``) it is for.
    """

    ignores: tuple[str, ...] = ()
    ignore_files: tuple[str, ...] = ()
    follow_symlinks: bool = True
    platform: str | None = None


@dataclass(frozen=True)
class TarballSource:
    """A tarball (plain, gzip, zstd, xz or bzip2) whose members go under the target."""

    path: str | os.PathLike[str]


class LazyFile:
    """A read-only binary file that opens ``path`` on its first ``read``.

    Open failures raise ``LayerSourceError`` naming the path. ``stat_result``, the file's
    ``os.stat`` when it was listed, spares the rebuild cache a second ``stat`` of it (cib keeps
    only the few numbers it needs once the entry is taken).
    """

    __slots__ = ("_fd", "closed", "name", "stat_result")

    def __init__(self, path: str | os.PathLike[str], stat_result: os.stat_result | None = None) -> None:
        self.name = os.fspath(path)
        self.stat_result = stat_result
        self._fd: int | None = None
        self.closed = False

    @property
    def opened(self) -> bool:
        """Whether the file was opened (read from) already."""
        return self._fd is not None

    def _open(self) -> int:
        if self._fd is None:
            if self.closed:
                raise ValueError(f"read from closed LazyFile {self.name!r}")
            try:
                # a descriptor and os.read: a third of the cost of a file object for the
                # small files that trees are mostly made of
                self._fd = os.open(self.name, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as exc:
                raise LayerSourceError(self.name, f"cannot be read: {exc.strerror or exc}") from exc
        return self._fd

    def read(self, size: int = -1, /) -> bytes:
        fd = self._fd if self._fd is not None else self._open()
        if size is None or size < 0:
            parts = []
            while chunk := os.read(fd, 1 << 20):
                parts.append(chunk)
            return b"".join(parts)
        chunk = os.read(fd, size)
        if len(chunk) == size or not chunk:
            return chunk
        parts = [chunk]  # a short read: give callers full ones, up to the end of the file
        size -= len(chunk)
        while size > 0:
            chunk = os.read(fd, size)
            if not chunk:
                break
            parts.append(chunk)
            size -= len(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def read1(self, size: int, /) -> bytes:
        """Up to ``size`` bytes with at most one read of the file (as ``BufferedReader.read1``)."""
        return os.read(self._fd if self._fd is not None else self._open(), size)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def close(self) -> None:
        self.closed = True
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def __enter__(self) -> LazyFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"LazyFile({self.name!r})"


SourceIdentity = tuple[bytes, int]
"""What :attr:`SortedEntries.identity` returns: a digest and the newest change time (ns)."""


class SortedEntries:
    """Entries a layer source promises in layer order, so that cib writes (and uploads) each
    one as it comes instead of listing the whole source first.

    The promise: names in the order of their paths compared component by component, each
    component's UTF-8 (or file-system) bytes in byte order (``"a/z"`` before ``"a.d"``),
    which puts a directory right before its contents; every name once; a hard link after
    the regular file it names. cib checks the order as it goes and stops the build with a
    ``LayerSourceError`` when it is broken. Such entries are read while the source is being
    listed (each right after it is yielded), not once every source is listed.

    ``identity``, when given, makes the rebuild cache's no-change check as cheap as the
    source can make it: a callable returning ``(digest, newest)``, where ``digest`` changes
    whenever the entries would (their names, types, modes, sizes, link targets, and each
    file's content, judged without reading it: device, inode, size, modification and change
    times, as git's index does) and ``newest`` is the newest change time among the files,
    in nanoseconds since the epoch (a layer with a file changed within the last seconds is
    not cached). cib calls it either instead of iterating the entries (the check) or after
    iterating them to the end, when the source may return what it computed on the way.
    """

    __slots__ = ("_entries", "identity")

    def __init__(self, entries: Iterable[Entry], *,
                 identity: Callable[[], SourceIdentity] | None = None) -> None:
        self._entries = entries
        self.identity = identity

    def __iter__(self) -> Iterator[Entry]:
        return iter(self._entries)


KEEP_ATTRIBUTE = "_cib_keep"
_KEEPABLE = frozenset({"uid", "gid", "mtime"})


class _KeptTarInfo(tarfile.TarInfo):
    """A TarInfo that remembers which of its fields cib must not normalize."""

    _cib_keep: frozenset[str] = frozenset()


def keep_fields(info: tarfile.TarInfo, *fields: str) -> tarfile.TarInfo:
    """Return ``info`` marked so cib keeps the named fields (``uid``, ``gid``, ``mtime``)."""
    unknown = set(fields) - _KEEPABLE
    if unknown:
        raise ValueError(f"cannot keep {sorted(unknown)}; only {sorted(_KEEPABLE)}")
    if not isinstance(info, _KeptTarInfo):
        kept = _KeptTarInfo(info.name)
        for slot in tarfile.TarInfo.__slots__:
            try:
                setattr(kept, slot, getattr(info, slot))
            except AttributeError:  # a slot the original never set
                pass
        kept.pax_headers = dict(info.pax_headers)
        info = kept
    assert isinstance(info, _KeptTarInfo)
    info._cib_keep = info._cib_keep | frozenset(fields)
    return info


def kept_fields(info: tarfile.TarInfo) -> frozenset[str]:
    """The fields of ``info`` marked with :func:`keep_fields`."""
    kept: Any = getattr(info, KEEP_ATTRIBUTE, frozenset())
    return frozenset(kept)


def file_entry(name: str, size: int, fileobj: Readable, mode: int = 0o644) -> Entry:
    """A regular-file entry of ``size`` bytes read from ``fileobj``."""
    info = tarfile.TarInfo(name)
    info.type = tarfile.REGTYPE
    info.size = size
    info.mode = stat.S_IMODE(mode)
    return info, fileobj


def dir_entry(name: str, mode: int = 0o755) -> Entry:
    """A directory entry."""
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = stat.S_IMODE(mode)
    return info, None


def symlink_entry(name: str, linkname: str) -> Entry:
    """A symbolic link whose content is ``linkname``."""
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = linkname
    info.mode = 0o777
    return info, None


# --------------------------------------------------------------------------------------------
# App packagers
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FileInfo:
    """One path of a base image's merged filesystem, as :meth:`BaseImage.stat` gives it.

    ``kind`` is ``"file"``, ``"dir"``, ``"symlink"``, ``"hardlink"`` or ``"other"``;
    ``linkname`` is a symlink's content or a hard link's target (an absolute path).
    """

    path: str
    kind: str
    mode: int
    size: int
    linkname: str = ""


class BaseImage(Protocol):
    """One platform of the base image, read-only: its config and its files, layers merged
    (whiteouts applied). Paths are absolute paths in the image.

    Nothing is fetched until a file is asked for; then every layer of the base is read once.
    ``key`` stands for the files: two views with equal keys hold the same files, so a
    packager may cache what it learned from them under it. ``config`` is the image config's
    ``config`` object (``Env``, ``Entrypoint``, ``Cmd``, ``WorkingDir``, ...).
    """

    @property
    def platform(self) -> str:
        """``"linux/amd64"``, ``"linux/arm64/v8"``."""
        ...

    @property
    def config(self) -> Mapping[str, Any]: ...

    @property
    def key(self) -> str: ...

    @property
    def name(self) -> str:
        """How messages name this base: its reference and platform."""
        ...

    def stat(self, path: str) -> FileInfo | None:
        """The entry at ``path`` (a final symlink is not followed), or ``None``."""
        ...

    def realpath(self, path: str) -> str | None:
        """``path`` with every symlink resolved inside the image, or ``None`` if it does not
        exist."""
        ...

    def listdir(self, path: str) -> list[str]:
        """The sorted names in the directory ``path`` (symlinks followed); ``[]`` for anything
        that is not a directory."""
        ...

    def read(self, path: str, limit: int = 64 << 20) -> bytes:
        """The content of the file at ``path`` (symlinks followed), at most ``limit`` bytes.
        A missing path or a directory raises ``PackagingError``."""
        ...

    def recall(self, name: str) -> Mapping[str, Any] | None:
        """What a packager :meth:`remember`-ed about this base under ``name``, on any machine
        sharing the build's cache repository (``cache_repo``); ``None`` when the build has
        none, it holds nothing under ``name`` for this base's files, or ``verify_cache`` is
        set (then the packager learns it again). Whoever can push to the cache repository
        can choose what is recalled, as they can choose cached layers: keep to facts the
        packager could learn from the files, and check their shape before use."""
        ...

    def remember(self, name: str, facts: Mapping[str, Any]) -> None:
        """Keep ``facts`` (a JSON object) learned from this base's files under ``name`` (the
        packager's own, with a version: ``"python-target/1/..."``), for :meth:`recall` on
        later builds of any machine sharing the cache repository. Nothing is kept without
        one; failing to write is logged, not raised."""
        ...


@dataclass(frozen=True)
class AppOptions:
    """What the caller of ``Image.add_app`` asked for, given to every packager alike.

    ``kind`` names the packager the caller wants (``"python"``); ``None`` lets any packager
    that recognizes the project claim it. ``settings`` holds a packager's own options
    (``python_target`` for the Python packager). ``cache_dir`` is a directory the packager may
    keep files in between builds (downloads, facts learned from a base), ``None`` when caching
    is off. ``dry_run``: pick what would go into the image and describe it in
    ``AppImage.summary``, without fetching or building anything large. ``progress`` is the
    caller's progress callback; report long work with :func:`report_step`.
    """

    kind: str | None = None
    lock: str | None = None
    index_url: str | None = None
    find_links: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] | None = None
    app_dir: str = "/app"
    settings: Mapping[str, Any] = field(default_factory=dict)
    dry_run: bool = False
    cache_dir: str | None = None
    jobs: int = 4
    progress: Progress | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class AppLayer:
    """One layer of a packaged app.

    ``name`` says what it holds (``"python dependencies: 12 wheels"``), for the image history
    and progress. ``key`` names its content, including everything that decides its bytes
    (file contents, paths, modes, the target's layout): equal keys, equal layers. ``""`` means
    the content has no such name and is always built (or recognized by the rebuild cache from
    its local files). The content comes from ``entries`` (called only when the layer is
    built, perhaps more than once; names are paths in the image, relative to ``/``) or from
    ``files``, a mapping like ``add_files``' (``{"/app": "./project"}``) read through the
    layer-source plugins with ``ignores``.
    """

    name: str
    key: str = ""
    entries: Callable[[], Iterable[Entry]] | None = field(default=None, compare=False)
    files: Mapping[str, object] | None = None
    ignores: tuple[str, ...] = ()


@dataclass(frozen=True)
class AppImage:
    """What a packager made of one platform of the base.

    ``layers`` go on top of the base in order. ``env`` entries are set in the platform's
    config, replacing a variable of the same name in place; ``entrypoint``, ``cmd`` and
    ``working_dir`` replace the base's when not ``None`` (a new entrypoint also drops the
    base's ``cmd``, as a Dockerfile's ``ENTRYPOINT`` does). The caller's own ``image.env``,
    ``image.entrypoint``, ... still have the last word at ``save``. ``summary`` is a few lines
    describing what was picked (shown by ``--dry-run``); ``details`` the same as data (JSON
    types only) for ``--json``.
    """

    layers: tuple[AppLayer, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    entrypoint: tuple[str, ...] | None = None
    cmd: tuple[str, ...] | None = None
    working_dir: str | None = None
    summary: tuple[str, ...] = ()
    details: Mapping[str, Any] = field(default_factory=dict)

