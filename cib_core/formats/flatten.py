"""The flattened filesystem of an image (``cib export``): its layers merged into one tarball.

Layers are read top first. A path an upper layer already wrote, deleted (``.wh.NAME``) or hid
(an opaque directory, ``.wh..wh..opq``, or a non-directory where a lower layer has a directory)
is skipped in every lower layer, so each surviving entry is written exactly once, streaming:
file contents never sit in memory, only the set of paths seen.

Entry names that are absolute or contain ``..`` are refused, as are hard links whose target
does; a non-directory never gets children in the output, so extracting the result never
writes through a symlink.

Written to a file path, the tarball goes to a temporary name and is renamed only when complete:
a failed export (an escaping entry, a read-only or full file system) leaves no file behind. A
failure to write the output is a ``LocalWriteError`` naming it.
"""

from __future__ import annotations

import copy
import logging
import os
import tarfile
from collections.abc import Callable, Iterable
from typing import IO, BinaryIO, cast

from cib_core.compression import decompressed
from cib_core.errors import LayerSourceError
from cib_core.fileio import GuardedWriter, replacing

log = logging.getLogger(__name__)

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
CHUNK = 1 << 16

def clean_name(name: str, where: str) -> str:
    """A member name relative to the root ("" for the root itself); refuses escapes."""
    if name.startswith("/"):
        raise LayerSourceError(name, f"escapes the root: absolute path in {where}")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise LayerSourceError(name, f"escapes the root: '..' in a path in {where}")
    return "/".join(parts)


def _ancestors(path: str) -> list[str]:
    """Strict ancestors of ``path``, the root ("") first."""
    parts = path.split("/")
    return [""] + ["/".join(parts[:i]) for i in range(1, len(parts))]


LayerInput = BinaryIO | Callable[[], BinaryIO]


class _Flattener:
    def __init__(self, out: tarfile.TarFile) -> None:
        self.out = out
        self.claimed: dict[str, bool] = {}     # path -> is a directory; written by an upper layer
        self.implicit_dirs: set[str] = set()   # ancestors of claimed paths
        self.removed: set[str] = set()         # whited out by an upper layer
        self.opaque: set[str] = set()          # opaque in an upper layer
        # hard links whose target lives in a lower layer: target -> link entries
        self.pending_links: dict[str, list[tarfile.TarInfo]] = {}

    def _claim(self, path: str, is_dir: bool) -> None:
        self.claimed[path] = is_dir
        self.implicit_dirs.update(_ancestors(path))

    def _visible(self, path: str, is_dir: bool, layer_nondirs: set[str], where: str) -> bool:
        if path in self.claimed or path in self.removed:
            return False
        for parent in _ancestors(path):
            if parent in self.removed or parent in self.opaque:
                return False
            if parent and self.claimed.get(parent) is False:
                if parent in layer_nondirs:
                    raise LayerSourceError(
                        path, f"escapes the root: it lies under the non-directory {parent!r} "
                        f"of the same layer ({where}); extracting it would write through it")
                return False
        if not is_dir and path in self.implicit_dirs:
            return False   # an upper layer has entries below this path, so it is a directory there
        return True

    def layer(self, stream: BinaryIO, where: str) -> None:
        plain, kind = decompressed(stream, where)
        log.debug("exporting %s (%s)", where, kind or "uncompressed")
        new_removed: set[str] = set()
        new_opaque: set[str] = set()
        layer_nondirs: set[str] = set()
        layer_files: dict[str, bool] = {}   # regular files of this layer -> written?
        with tarfile.open(fileobj=plain, mode="r|") as tar:
            for member in tar:
                path = clean_name(member.name, where)
                if not path:
                    continue   # the root directory itself
                parent, _, base = path.rpartition("/")
                if base == OPAQUE_MARKER:
                    new_opaque.add(parent)
                    continue
                if base.startswith(WHITEOUT_PREFIX):
                    target = base[len(WHITEOUT_PREFIX):]
                    if target in ("", ".", ".."):
                        raise LayerSourceError(member.name, f"escapes the root: bad whiteout in {where}")
                    new_removed.add(f"{parent}/{target}" if parent else target)
                    continue
                if path in self.pending_links:
                    self._resolve_links(path, member, tar, where, layer_nondirs, layer_files)
                    continue
                is_dir = member.isdir()
                if not self._visible(path, is_dir, layer_nondirs, where):
                    if member.isreg():
                        layer_files[path] = False
                    continue
                if member.islnk():
                    self._hard_link(path, member, where, layer_files)
                    layer_nondirs.add(path)
                    continue
                self._write(member, path, tar.extractfile(member) if member.isreg() else None)
                self._claim(path, is_dir)
                if not is_dir:
                    layer_nondirs.add(path)
                if member.isreg():
                    layer_files[path] = True
        for path in new_removed:
            if self.pending_links.pop(path, None):
                log.warning("%s: hard links to %s, which a layer above deletes; left out", where, path)
        self.removed |= new_removed
        self.opaque |= new_opaque

    def _write(self, member: tarfile.TarInfo, path: str, data: IO[bytes] | None,
               *, linkname: str | None = None) -> None:
        info = copy.copy(member)
        info.name = path
        if linkname is not None:
            info.linkname = linkname
        self.out.addfile(info, data)

    def _hard_link(self, path: str, member: tarfile.TarInfo, where: str,
                   layer_files: dict[str, bool]) -> None:
        target = clean_name(member.linkname, f"the hard link {member.name} in {where}")
        if not target:
            raise LayerSourceError(member.name, f"is a hard link to the root directory in {where}")
        self._claim(path, False)
        written = layer_files.get(target)
        if written:
            self._write(member, path, None, linkname=target)
        elif written is False:
            log.warning("%s: %s is a hard link to %s, which a layer above replaces; left out",
                        where, path, target)
        else:
            link = copy.copy(member)
            link.name = path
            self.pending_links.setdefault(target, []).append(link)

    def _resolve_links(self, path: str, member: tarfile.TarInfo, tar: tarfile.TarFile, where: str,
                       layer_nondirs: set[str], layer_files: dict[str, bool]) -> None:
        """``path`` is the target of hard links from layers above: write them with its content."""
        links = self.pending_links.pop(path)
        visible = self._visible(path, member.isdir(), layer_nondirs, where)
        if member.isreg():
            data = tar.extractfile(member)
            if visible:
                self._write(member, path, data)
                self._claim(path, False)
                layer_files[path] = True
                layer_nondirs.add(path)
                anchor = path
            else:
                first = copy.copy(member)
                first.mode = links[0].mode
                self._write(first, links[0].name, data)
                anchor = links[0].name
                links = links[1:]
                layer_files[path] = False
            for link in links:
                self._write(link, link.name, None, linkname=anchor)
        elif member.issym():
            for link in links:
                symlink = copy.copy(member)
                self._write(symlink, link.name, None)
            if visible:
                self._write(member, path, None)
                self._claim(path, False)
                layer_nondirs.add(path)
        elif member.islnk():
            target = clean_name(member.linkname, f"the hard link {member.name} in {where}")
            if layer_files.get(target):
                for link in links:
                    self._write(link, link.name, None, linkname=target)
            else:
                self.pending_links.setdefault(target, []).extend(links)
            if visible:
                self._hard_link(path, member, where, layer_files)
                layer_nondirs.add(path)
        else:
            log.warning("%s: hard links to %s, which is not a file; left out", where, path)

    def finish(self) -> None:
        for target, links in self.pending_links.items():
            log.warning("hard links %s point to %s, which no layer has; left out",
                        ", ".join(link.name for link in links), target)


EXPORT_WHAT = "the exported filesystem"


def export_filesystem(layers: Iterable[LayerInput], out: BinaryIO | str | os.PathLike[str],
                      *, mode: int = 0o644) -> None:
    """Write the merged filesystem of ``layers`` (bottom layer first, as in a manifest) to ``out``.

    Each layer is a readable binary stream, gzip/zstd-compressed or plain (sniffed), or a
    callable that opens one; callables are opened one at a time, top layer first, so only one
    layer stream is open at once. ``out`` is a writable binary stream (it may be unseekable,
    like stdout) or a file path: the file (permissions ``mode``) appears only once the tarball
    is complete, and an existing one is replaced then. Raises ``LayerSourceError`` for an entry
    that would escape the root, ``LocalWriteError`` naming ``out`` when it cannot be written.
    """
    if isinstance(out, (str, os.PathLike)):
        with replacing(os.path.abspath(out), mode=mode, fsync=False, what=EXPORT_WHAT) as handle:
            _export(list(layers), handle)
        return
    name = getattr(out, "name", None)
    target = "standard output" if name == "<stdout>" else name if isinstance(name, str) else "the output"
    writer = GuardedWriter(out, target)
    _export(list(layers), cast(BinaryIO, writer))
    writer.flush()


def _export(sources: list[LayerInput], out: BinaryIO) -> None:
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        flattener = _Flattener(tar)
        for number in range(len(sources), 0, -1):
            source = sources[number - 1]
            stream = source() if callable(source) else source
            try:
                flattener.layer(stream, f"layer {number} of {len(sources)}")
            finally:
                if callable(source):
                    stream.close()
        flattener.finish()
