"""Builtin layer source *local-dir*: local directories and files.

Claims ``os.PathLike`` objects and strings naming an existing path, and reads the layer's
``LayerOptions`` (ignores, ignore files, whether to follow symlinks). It is asked before every
other layer source (``tryfirst``), so an existing path always means that path. A string that
is not an existing path is not ours: the core then reports that no source claims it.

* A directory's contents go under the target (the target directory itself gets mode 0755,
  not the source directory's mode, so building from a private temporary directory does not
  make the directory in the image private); a file goes at the target path.
* Ignores follow gitignore semantics as ``pathspec.GitIgnoreSpec`` gives them, relative to
  the directory: ``!`` negation, ``dir/`` for directories only, ``**``; a pattern without a
  slash matches at any depth (unlike ``.dockerignore``'s root-anchored patterns). Lines of
  each file in ``ignore_files`` found at the directory's root come first, then ``ignores``.
  An ignored directory is not descended unless some pattern is a negation. Where pathspec
  and git differ, pathspec wins: a negation re-includes a file below an excluded directory
  (``build`` + ``!build/keep.txt`` keeps ``build/keep.txt``; git would not), and ``docs/**``
  also leaves out the entry of ``docs`` itself (it is re-added as a parent, mode 0755, when
  something below it stays).
* Symlinks inside the directory are replaced by what they point to (directories walked)
  unless ``follow_symlinks=False`` keeps them as links; the source path itself is always
  resolved. A symlink loop (a link to an ancestor directory, or a cycle of links) and a
  dangling link raise ``LayerSourceError`` naming the path.
* FIFOs, sockets and device files raise ``LayerSourceError`` naming the path.
* Files with several hard links on disk become one file and hard links to it.
* File names that are not UTF-8 keep their bytes (PAX ``hdrcharset=BINARY``).
"""

from __future__ import annotations

import errno
import os
import stat
import tarfile
from collections.abc import Iterator

import cib_core
from cib_core import LayerSourceError
from cib_core.plugin_api import Entry, LayerOptions, LazyFile, dir_entry, file_entry, symlink_entry

# What keeps a symlink as a link instead of following it, as add_files spells it; the command
# line puts its own flag in its place.
_KEEP_SYMLINKS = "follow_symlinks=False"


@cib_core.hookimpl(tryfirst=True)
def cib_layer_source(source: object, options: LayerOptions) -> Iterator[Entry] | None:
    if not (isinstance(source, os.PathLike)
            or (isinstance(source, str) and source and os.path.lexists(source))):
        return None
    return _entries(os.fsdecode(os.fspath(source)), options)


def _stat_source(path: str) -> os.stat_result:
    try:
        return os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise LayerSourceError(path, "is a dangling symlink (its target does not exist)") from None
        raise LayerSourceError(path, "does not exist") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise LayerSourceError(path, "is a symlink loop") from None
        raise LayerSourceError(path, f"cannot be read: {exc.strerror or exc}") from None


def _refuse_special(path: str, mode: int) -> None:
    if stat.S_ISFIFO(mode):
        raise LayerSourceError(path, "is a named pipe (FIFO); cib does not read FIFOs into "
                               "layers: remove it or add it to the ignores")
    if stat.S_ISSOCK(mode):
        raise LayerSourceError(path, "is a socket, which cannot go into a layer: remove it or "
                               "add it to the ignores")
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        raise LayerSourceError(path, "is a device file; cib does not copy device files from "
                               "disk: remove it or add it to the ignores")
    raise LayerSourceError(path, f"has an unsupported file type ({stat.filemode(mode)})")


def _entries(root: str, options: LayerOptions) -> Iterator[Entry]:
    st = _stat_source(root)
    if stat.S_ISREG(st.st_mode):
        yield file_entry("", st.st_size, LazyFile(root, st), st.st_mode)
        return
    if not stat.S_ISDIR(st.st_mode):
        _refuse_special(root, st.st_mode)
    spec = _ignore_spec(root, options)
    yield dir_entry("", 0o755)
    yield from _walk(root, spec, options.follow_symlinks, (st.st_dev, st.st_ino))


class _Ignores:
    """gitignore patterns as ``pathspec.GitIgnoreSpec`` judges them, plus pruning.

    A file is left out when pathspec matches its path. A directory that pathspec matches is
    not entered at all when no pattern is a negation (then nothing below it could come
    back); with negations present it is walked, its own entry left out, and each path below
    it judged by pathspec (so ``build`` + ``!build/keep.txt`` keeps ``build/keep.txt``, where
    git, which never enters an excluded directory, would not).
    """

    def __init__(self, lines: list[str]) -> None:
        import pathspec  # only a source with ignore patterns pays for importing it

        self._spec = pathspec.GitIgnoreSpec.from_lines(lines)
        self.has_negation = any(p.include is False for p in self._spec.patterns)

    def excluded(self, rel: str, is_dir: bool) -> bool:
        return bool(self._spec.match_file(rel + "/" if is_dir else rel))


def _ignore_spec(root: str, options: LayerOptions) -> _Ignores | None:
    lines: list[str] = []
    for name in options.ignore_files:
        path = os.path.join(root, name)
        try:
            with open(path, encoding="utf-8", errors="surrogateescape") as f:
                lines.extend(f.read().splitlines())
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise LayerSourceError(path, f"ignore file cannot be read: {exc.strerror or exc}") from None
    lines.extend(options.ignores)
    if not any(line.strip() and not line.lstrip().startswith("#") for line in lines):
        return None
    try:
        return _Ignores(lines)
    except Exception as exc:  # noqa: BLE001 - pathspec raises several types for bad patterns
        raise LayerSourceError(root, f"invalid ignore pattern: {exc}") from None


def _walk(root: str, spec: _Ignores | None, follow: bool,
          root_id: tuple[int, int]) -> Iterator[Entry]:
    # Depth first, each directory's names in byte order; `ancestors` are the (dev, ino) of
    # the directories from the root down, for loop detection when following symlinks.
    seen_inodes: dict[tuple[int, int], str] = {}
    stack: list[tuple[str, str, frozenset[tuple[int, int]]]] = [
        (root, "", frozenset({root_id}))]
    while stack:
        dir_path, dir_rel, ancestors = stack.pop()
        try:
            with os.scandir(dir_path) as it:
                children = sorted(it, key=lambda e: os.fsencode(e.name))
        except OSError as exc:
            raise LayerSourceError(dir_path, f"cannot list directory: {exc.strerror or exc}") from None
        subdirs: list[tuple[str, str, frozenset[tuple[int, int]]]] = []
        for child in children:
            path = child.path
            rel = f"{dir_rel}/{child.name}" if dir_rel else child.name
            try:
                lst = child.stat(follow_symlinks=False)
            except OSError as exc:
                raise LayerSourceError(path, f"cannot be read: {exc.strerror or exc}") from None
            is_link = stat.S_ISLNK(lst.st_mode)
            if is_link and follow:
                try:
                    st = _stat_link(path)
                except LayerSourceError:
                    if spec is not None and spec.excluded(rel, False):
                        continue  # an ignored dangling or looping link is no error
                    raise
            else:
                st = lst
            is_dir = stat.S_ISDIR(st.st_mode)
            ignored = spec is not None and spec.excluded(rel, is_dir)
            if ignored and not (is_dir and spec is not None and spec.has_negation):
                continue
            if is_dir:
                ident = (st.st_dev, st.st_ino)
                if ident in ancestors:
                    if ignored:
                        continue
                    raise LayerSourceError(path, "is a symlink loop: it leads back to a directory "
                                           "that contains it; remove it or ignore it",
                                           option=_KEEP_SYMLINKS)
                if not ignored:
                    yield dir_entry(rel, st.st_mode)
                subdirs.append((path, rel, ancestors | {ident}))
            elif stat.S_ISREG(st.st_mode):
                if not is_link and st.st_nlink > 1:
                    ident = (st.st_dev, st.st_ino)
                    first = seen_inodes.get(ident)
                    if first is not None:
                        info = tarfile.TarInfo(rel)
                        info.type = tarfile.LNKTYPE
                        info.linkname = first
                        info.mode = stat.S_IMODE(st.st_mode)
                        yield info, None
                        continue
                    seen_inodes[ident] = rel
                yield file_entry(rel, st.st_size, LazyFile(path, st), st.st_mode)
            elif stat.S_ISLNK(st.st_mode):
                try:
                    yield symlink_entry(rel, os.readlink(path))
                except OSError as exc:
                    raise LayerSourceError(path, f"cannot read symlink: {exc.strerror or exc}") from None
            else:
                _refuse_special(path, st.st_mode)
        stack.extend(reversed(subdirs))


def _stat_link(path: str) -> os.stat_result:
    try:
        return os.stat(path)
    except FileNotFoundError:
        raise LayerSourceError(path, "is a dangling symlink (its target does not exist); "
                               "remove it or ignore it", option=_KEEP_SYMLINKS) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise LayerSourceError(path, "is a symlink loop (a cycle of links); remove it or "
                                   "ignore it", option=_KEEP_SYMLINKS) from None
        raise LayerSourceError(path, f"cannot be read: {exc.strerror or exc}") from None
