"""The flattened filesystem of an image (``cib export``): its layers merged into one tarball.

The merge follows the OCI image-layer spec as ``umoci raw unpack`` applies it, layer after
layer, bottom first: an entry replaces what is at its path unless both are directories (then
the entry's metadata wins), so a directory replaced by a symlink or a file loses everything
below it; of two entries with one path in a layer the last wins; ``.wh.NAME`` deletes NAME
and ``.wh..wh..opq`` empties its directory, in lower layers only (what the same layer added
stays); a hard link shares the inode of its target as it is at that moment, so it keeps the
target's content when a later layer replaces the target.

cib departs from umoci where the spec is silent and umoci would write through a symlink: an
entry below a non-directory of a lower layer turns that path into a directory (as overlayfs,
and so Docker and containerd, show it), and an entry below a non-directory of its own layer
is refused as escaping the root. Entry names that are absolute or contain ``..``, and hard
links whose target does, are refused too. The output never has a child below a
non-directory, so extracting it never writes through a symlink.

Memory holds the merged tree's paths and a few numbers per path, never file contents nor a
tar header per entry. Each layer is read twice: once for its headers, spooled (compressed, as
it came) to an anonymous temporary file meanwhile, and once more from there for the contents
that survive; a layer from a registry is downloaded once. A sparse file is expanded in the
output; together, sparse files may add at most ``max_sparse_expansion`` bytes of holes, so a
small layer cannot make the export write terabytes.

Written to a file path, the tarball goes to a temporary name and is renamed only when complete:
a failed export leaves no file behind. A failure to write the output is a ``LocalWriteError``
naming it; a layer that is not a tar archive (or not valid gzip, zstd, ...) a
``LayerSourceError`` naming the layer.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import IO, Any, BinaryIO, cast

from cib_core.compression import decompressed
from cib_core.errors import LayerSourceError
from cib_core.fileio import GuardedWriter, check_output_path, replacing

log = logging.getLogger(__name__)

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
DEFAULT_MAX_SPARSE_EXPANSION = 1 << 30
"""How many bytes of holes the sparse files of one export may add, unless told otherwise."""
EXPORT_WHAT = "the exported filesystem"

LayerInput = BinaryIO | Callable[[], BinaryIO]

_CHUNK = 1 << 20
_REGULAR = frozenset({tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE, tarfile.GNUTYPE_SPARSE})
_OTHER = frozenset({tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE,
                    tarfile.BLKTYPE, tarfile.FIFOTYPE})
# header fields the output sets itself: an input's PAX record for them would override them
_OWN_PAX = frozenset(tarfile.PAX_FIELDS)
_IMPLICIT = -1


def clean_name(name: str, where: str) -> str:
    """A member name relative to the root ("" for the root itself); refuses escapes."""
    if name.startswith("/"):
        raise LayerSourceError(name, f"escapes the root: absolute path in {where}")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise LayerSourceError(name, f"escapes the root: '..' in a path in {where}")
    return "/".join(parts)


class _Node:
    """One path of the merged tree.

    ``kind`` is the tar type of what is there (a regular file is always ``REGTYPE``);
    ``source`` names the entry that made its inode, ``layer << 32 | ordinal`` (for a
    directory the last entry that set its metadata; ``_IMPLICIT`` for a parent no entry
    named); ``touched`` is the last layer that made this path or one below it (a whiteout
    spares those, as umoci's "upper paths"); ``children`` maps names to nodes in a directory.
    """

    __slots__ = ("children", "kind", "source", "touched")

    def __init__(self, kind: bytes, source: int, touched: int) -> None:
        self.kind = kind
        self.source = source
        self.touched = touched
        self.children: dict[str, _Node] | None = {} if kind == tarfile.DIRTYPE else None


def _source(layer: int, ordinal: int) -> int:
    return layer << 32 | ordinal


def _members(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    """The members of a tar stream, one after the other, without keeping them: tarfile keeps
    every header it read in ``members``, which for 300,000 entries is hundreds of MB."""
    while True:
        member = tar.next()
        _forget_headers(tar)
        if member is None:
            return
        yield member


def _forget_headers(tar: tarfile.TarFile) -> None:
    cast(Any, tar).members.clear()   # tarfile's list of every header it read or wrote


class _Tee:
    """A source stream whose bytes are also written to a spool as they are read."""

    def __init__(self, source: BinaryIO, spool: IO[bytes]) -> None:
        self._source = source
        self._spool = spool

    def read(self, size: int = -1, /) -> bytes:
        data = self._source.read(size)
        self._spool.write(data)
        return data


class _Merge:
    """The merged tree, built from the layers' headers, bottom layer first."""

    def __init__(self, max_sparse_expansion: int | None) -> None:
        self.root = _Node(tarfile.DIRTYPE, _IMPLICIT, -1)
        self.linked: set[int] = set()   # inodes that some hard link shares
        self._sparse_left = max_sparse_expansion

    # -- looking up ---------------------------------------------------------------------------
    def lookup(self, path: str) -> _Node | None:
        node = self.root
        for part in path.split("/"):
            if node.children is None:
                return None
            found = node.children.get(part)
            if found is None:
                return None
            node = found
        return node

    def _parent(self, path: str, layer: int, where: str) -> tuple[_Node, str]:
        """The directory ``path`` goes in, made where missing, every step marked as touched
        by ``layer``."""
        parts = path.split("/")
        node = self.root
        for depth, part in enumerate(parts[:-1]):
            assert node.children is not None
            child = node.children.get(part)
            if child is not None and child.children is None:
                if child.touched == layer:
                    parent = "/".join(parts[:depth + 1])
                    raise LayerSourceError(
                        path, f"escapes the root: it lies under the non-directory {parent!r} of "
                        f"the same layer ({where}); extracting it would write through it")
                child = None   # below a lower layer's non-directory: that path becomes a directory
            if child is None:
                child = _Node(tarfile.DIRTYPE, _IMPLICIT, layer)
                node.children[part] = child
            child.touched = layer
            node = child
        return node, parts[-1]

    # -- applying one entry ---------------------------------------------------------------------
    def apply(self, member: tarfile.TarInfo, layer: int, ordinal: int, where: str) -> None:
        path = clean_name(member.name, where)
        if not path:
            return   # the root directory itself: its metadata is the extractor's business
        directory, _, base = path.rpartition("/")
        if base.startswith(WHITEOUT_PREFIX):
            self._whiteout(member, directory, base, layer, where)
            return
        kind = tarfile.REGTYPE if member.type in _REGULAR else member.type
        if kind not in _OTHER and kind != tarfile.REGTYPE:
            log.warning("%s: %s has tar type %r, which cib does not export; left out",
                        where, member.name, kind)
            return
        if member.type == tarfile.GNUTYPE_SPARSE or member.sparse is not None:
            self._count_sparse(member, where)
        source = _source(layer, ordinal)
        if kind == tarfile.LNKTYPE:
            target_path = clean_name(member.linkname, f"the hard link {member.name} in {where}")
            if not target_path:
                raise LayerSourceError(member.name, f"is a hard link to the root directory in {where}")
            target = self.lookup(target_path)
            if target is None or target.children is not None:
                what = "which does not exist" if target is None else "which is a directory"
                log.warning("%s: %s is a hard link to %s, %s there; left out",
                            where, path, target_path, what)
                return
            kind, source = target.kind, target.source
            self.linked.add(source)
        parent, name = self._parent(path, layer, where)
        assert parent.children is not None
        existing = parent.children.get(name)
        if existing is not None and existing.children is not None and kind == tarfile.DIRTYPE:
            existing.source = source   # directory over directory: the new metadata, same contents
            existing.touched = layer
            return
        parent.children[name] = _Node(kind, source, layer)

    def _whiteout(self, member: tarfile.TarInfo, directory: str, base: str, layer: int,
                  where: str) -> None:
        parent = self.lookup(directory) if directory else self.root
        if base == OPAQUE_MARKER:
            if parent is not None and parent.children is not None:
                self._remove_untouched(parent, layer)
            return
        target = base[len(WHITEOUT_PREFIX):]
        if target in ("", ".", ".."):
            raise LayerSourceError(member.name, f"escapes the root: bad whiteout in {where}")
        if parent is None or parent.children is None:
            return
        node = parent.children.get(target)
        if node is None:
            return
        if node.touched != layer:
            del parent.children[target]
        elif node.children is not None:
            self._remove_untouched(node, layer)

    def _remove_untouched(self, directory: _Node, layer: int) -> None:
        """Remove what lower layers put in ``directory``; what ``layer`` put there stays."""
        assert directory.children is not None
        for name, child in list(directory.children.items()):
            if child.touched != layer:
                del directory.children[name]
            elif child.children is not None:
                self._remove_untouched(child, layer)

    def _count_sparse(self, member: tarfile.TarInfo, where: str) -> None:
        sparse: Any = member.sparse   # [(offset, size), ...] of the stored data
        stored = sum(size for _, size in sparse or ())
        holes = max(0, member.size - stored)
        if self._sparse_left is None:
            return
        self._sparse_left -= holes
        if self._sparse_left < 0:
            raise LayerSourceError(
                member.name, f"is a sparse file of {member.size} bytes in {where}, whose holes "
                "would exceed the limit on sparse expansion; raise the limit "
                "(cib export --max-sparse-expansion) if the image is trusted")

    # -- what survives ----------------------------------------------------------------------
    def linked_paths(self) -> dict[int, list[str]]:
        """For each inode a hard link shares, every path that has it in the merged tree."""
        found: dict[int, list[str]] = {}
        if not self.linked:
            return found
        stack: list[tuple[str, _Node]] = [("", self.root)]
        while stack:
            prefix, node = stack.pop()
            assert node.children is not None
            for name, child in node.children.items():
                path = f"{prefix}{name}"
                if child.children is not None:
                    stack.append((f"{path}/", child))
                elif child.source in self.linked:
                    found.setdefault(child.source, []).append(path)
        for paths in found.values():
            paths.sort()
        return found


def _output_header(member: tarfile.TarInfo, name: str) -> tarfile.TarInfo:
    """A clean header for ``member`` written as ``name``: one plain type, no stale PAX name,
    size or sparse records (an input's own records would override the new values)."""
    info = tarfile.TarInfo(name)
    info.type = tarfile.REGTYPE if member.type in _REGULAR else member.type
    info.mode = member.mode
    info.uid, info.gid = member.uid, member.gid
    info.uname, info.gname = member.uname, member.gname
    info.mtime = member.mtime
    info.linkname = member.linkname if info.type == tarfile.SYMTYPE else ""
    info.devmajor, info.devminor = member.devmajor, member.devminor
    info.size = member.size if info.type == tarfile.REGTYPE else 0
    info.pax_headers = {key: value for key, value in member.pax_headers.items()
                        if key not in _OWN_PAX and not key.startswith("GNU.sparse.")}
    return info


class _Layer:
    """One input layer: its name in messages, its spooled bytes once read."""

    def __init__(self, source: LayerInput, where: str) -> None:
        self.source = source
        self.where = where
        self.spool: IO[bytes] | None = None

    def _entries(self, stream: BinaryIO) -> Iterator[tuple[int, tarfile.TarInfo, tarfile.TarFile]]:
        """The members of the layer in ``stream`` with their ordinals; the stream is read to
        its end (so a digest-checking source is checked), and damage is a ``LayerSourceError``."""
        try:
            plain, _ = decompressed(stream, self.where)
            with plain:
                if plain.peek(1):   # an empty blob is an empty layer, as in Go's tar reader
                    with tarfile.open(fileobj=plain, mode="r|", encoding="utf-8",
                                      errors="surrogateescape") as tar:
                        for ordinal, member in enumerate(_members(tar)):
                            yield ordinal, member, tar
                while plain.read(_CHUNK):
                    pass   # what follows the end of the archive: padding, or junk umoci ignores too
        except (tarfile.TarError, EOFError) as exc:
            raise LayerSourceError(self.where, f"is not a valid tar archive ({exc})") from None

    def headers(self) -> Iterator[tuple[int, tarfile.TarInfo]]:
        """Pass one: the headers, read from the source while it is spooled."""
        self.spool = tempfile.TemporaryFile(prefix="cib-export-")  # noqa: SIM115 - closed in close()
        stream = self.source() if callable(self.source) else self.source
        try:
            for ordinal, member, _ in self._entries(cast(BinaryIO, _Tee(stream, self.spool))):
                yield ordinal, member
        finally:
            if callable(self.source):
                stream.close()

    def contents(self) -> Iterator[tuple[int, tarfile.TarInfo, tarfile.TarFile]]:
        """Pass two: the members again, from the spool, with the archive to read them from."""
        assert self.spool is not None
        self.spool.flush()
        self.spool.seek(0)
        yield from self._entries(cast(BinaryIO, self.spool))

    def close(self) -> None:
        if self.spool is not None:
            self.spool.close()
            self.spool = None


def export_filesystem(layers: Iterable[LayerInput], out: BinaryIO | str | os.PathLike[str],
                      *, mode: int = 0o644, names: Sequence[str] | None = None,
                      max_sparse_expansion: int | None = DEFAULT_MAX_SPARSE_EXPANSION) -> None:
    """Write the merged filesystem of ``layers`` (bottom layer first, as in a manifest) to ``out``.

    Each layer is a readable binary stream, compressed (gzip, zstd, xz, bzip2: sniffed) or
    plain, or a callable that opens one; callables are opened one at a time, bottom layer
    first, and each source is read once. ``names`` (the layers' digests) name them in errors.
    ``out`` is a writable binary stream (it may be unseekable, like stdout) or a file path:
    the file (permissions ``mode``) appears only once the tarball is complete, and an existing
    one is replaced then. ``max_sparse_expansion`` bounds the bytes of holes sparse files may
    add (``None``: no bound). Raises ``LayerSourceError`` for a damaged layer or an entry that
    would escape the root, ``LocalWriteError`` naming ``out`` when it cannot be written.
    """
    if isinstance(out, (str, os.PathLike)):
        # before any layer is read, which may be a long download
        check_output_path(out, what=EXPORT_WHAT)
    sources = list(layers)
    total = len(sources)
    wheres = [f"layer {n + 1} of {total}" + (f" ({names[n]})" if names and n < len(names) else "")
              for n in range(total)]
    staged = [_Layer(source, where) for source, where in zip(sources, wheres, strict=True)]
    try:
        merge = _Merge(max_sparse_expansion)
        for number, layer in enumerate(staged):
            log.debug("reading the headers of %s", layer.where)
            for ordinal, member in layer.headers():
                merge.apply(member, number, ordinal, layer.where)
        if isinstance(out, (str, os.PathLike)):
            with replacing(os.path.abspath(out), mode=mode, fsync=False, what=EXPORT_WHAT) as handle:
                _write(staged, merge, handle)
            return
        name = getattr(out, "name", None)
        target = "standard output" if name == "<stdout>" else name if isinstance(name, str) else "the output"
        writer = GuardedWriter(out, target)
        _write(staged, merge, cast(BinaryIO, writer))
        writer.flush()
    finally:
        for layer in staged:
            layer.close()


def _write(staged: list[_Layer], merge: _Merge, out: BinaryIO) -> None:
    """Pass two: every entry that survived the merge, read from its layer's spool."""
    linked = merge.linked_paths()
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for number, layer in enumerate(staged):
            for ordinal, member, archive in layer.contents():
                if member.type == tarfile.LNKTYPE:
                    continue   # written with the inode it shares
                source = _source(number, ordinal)
                paths = linked.get(source)
                if paths is None:
                    path = clean_name(member.name, layer.where)
                    node = merge.lookup(path) if path else None
                    if node is None or node.source != source:
                        continue
                    paths = [path]
                own = clean_name(member.name, layer.where)
                first = own if own in paths else paths[0]
                data = archive.extractfile(member) if member.type in _REGULAR else None
                with contextlib.closing(data) if data is not None else contextlib.nullcontext():
                    _add(tar, _output_header(member, first), data)
                for other in paths:
                    if other != first:
                        link = tarfile.TarInfo(other)
                        link.type, link.linkname = tarfile.LNKTYPE, first
                        link.mode, link.mtime = member.mode, member.mtime
                        link.uid, link.gid = member.uid, member.gid
                        _add(tar, link, None)
            layer.close()


def _add(tar: tarfile.TarFile, info: tarfile.TarInfo, data: IO[bytes] | None) -> None:
    try:
        tar.addfile(info, data)
    except (tarfile.TarError, EOFError) as exc:
        raise LayerSourceError(info.name, f"cannot be read from its layer ({exc})") from None
    _forget_headers(tar)

