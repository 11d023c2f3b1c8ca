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
* Entries come in layer order (``SortedEntries``): depth first, each directory's names in
  byte order, so cib writes them as the walk goes.
* File names that are not UTF-8 keep their bytes (PAX ``hdrcharset=BINARY``).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
import tarfile
from collections.abc import Iterator

import cib_core
from cib_core import LayerSourceError
from cib_core.plugin_api import Entry, LayerOptions, LazyFile, SortedEntries, dir_entry, file_entry

from .walk import (
    FS_ENCODING,
    FS_ERRORS,
    IDENTITY_VERSION,
    RECORD_STATS,
    Ignores,
    TreeCheck,
    WalkError,
    children,
    compiled,
    dir_record,
    file_identity,
    refuse_special,
)


@cib_core.hookimpl(tryfirst=True)
def cib_layer_source(source: object, options: LayerOptions) -> SortedEntries | None:
    if not (isinstance(source, os.PathLike)
            or (isinstance(source, str) and source and os.path.lexists(source))):
        return None
    walk = _Walk(os.fsdecode(os.fspath(source)), options)
    return SortedEntries(walk.entries(), identity=walk.identity)


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    """The walk's refusals as the layer-source error the core reports."""
    try:
        yield
    except WalkError as exc:
        raise LayerSourceError(exc.path, exc.reason, option=exc.option) from None


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


def _ignore_spec(root: str, options: LayerOptions) -> Ignores | None:
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
    with _errors():
        return compiled(root, lines)


class _Walk:
    """One source path, walked in layer order: depth first, each directory's names in byte
    order, descending into a directory as soon as it is met, so cib writes each entry as it
    comes.

    Every walk hashes what the entries depend on: each name with its type, mode and size
    and, for files and kept links, device, inode and modification and change times (as
    git's index does; the content is never read), a directory's hash going into its
    parent's. ``identity()`` is the root's hash and the newest change time of a file: the
    one a finished ``entries()`` computed, or, for cib's no-change check, a walk of its own
    that makes no entries at all and that a large tree shares with a helper process
    (``walk.py``; threads were tried first: on two cores the lock Python's threads share made
    them slower than one).
    """

    def __init__(self, root: str, options: LayerOptions) -> None:
        self.root = root
        self.options = options
        self._identity: tuple[bytes, int] | None = None
        self.helped = 0  # subdirectories the no-change check's helper walked
        if options.ignores:
            # a bad pattern is refused when the source is claimed, before the build writes
            # anything; the walk reads the ignore files and compiles them all again
            with _errors():
                compiled(root, list(options.ignores))

    def identity(self) -> tuple[bytes, int]:
        if self._identity is None:
            root, st, spec = self._start()
            if stat.S_ISREG(st.st_mode):
                self._identity = file_identity(st)
            else:
                check = TreeCheck(spec, self.options.follow_symlinks)
                with _errors():
                    self._identity = check.run(root, frozenset({(st.st_dev, st.st_ino)}))
                self.helped = check.helped
        return self._identity

    def _start(self) -> tuple[str, os.stat_result, Ignores | None]:
        root = self.root
        st = _stat_source(root)
        if stat.S_ISREG(st.st_mode):
            return root, st, None
        if not stat.S_ISDIR(st.st_mode):
            with _errors():
                refuse_special(root, st.st_mode)
        return root if root.endswith("/") else root + "/", st, _ignore_spec(root, self.options)

    def entries(self) -> Iterator[Entry]:
        # the walk's refusals as the core's error: a block around the body, not a generator
        # wrapping this one, which would cost every entry a frame
        with _errors():
            root, st, spec = self._start()
            if stat.S_ISREG(st.st_mode):
                yield file_entry("", st.st_size, LazyFile(root, st), st.st_mode)
                self._identity = file_identity(st)
                return
            yield dir_entry("", 0o755)
            follow = self.options.follow_symlinks
            seen_inodes: dict[tuple[int, int], str] = {}
            regular, directory, symlink = tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE
            pack, tar_info, lazy_file = RECORD_STATS.pack, tarfile.TarInfo, LazyFile
            newest = 0
            # one frame a directory, the root first: its hash, its children still to walk, and
            # the (dev, ino) of the directories from the root down (loops, when following links)
            hasher = hashlib.sha256(IDENTITY_VERSION)
            ancestors = frozenset({(st.st_dev, st.st_ino)})
            stack = [(hasher, children(root, "", ancestors, spec, follow), ancestors)]
            while stack:
                hasher, kids, ancestors = stack[-1]
                for name, path, rel, st, followed, listed in kids:
                    mode = st.st_mode
                    if stat.S_ISDIR(mode):
                        hasher.update(dir_record(name, mode, listed))
                        if listed:
                            info = tarfile.TarInfo(rel)
                            info.type = directory
                            info.mode = mode & 0o7777
                            yield info, None
                        below = ancestors | {(st.st_dev, st.st_ino)}
                        stack.append((hashlib.sha256(IDENTITY_VERSION),
                                      children(path + "/", rel + "/", below, spec, follow), below))
                        break  # into it now; this directory's other names come after its contents
                    mtime_ns, ctime_ns = st.st_mtime_ns, st.st_ctime_ns
                    # _entry_record's work, inlined: this runs once per file of the tree
                    hasher.update(name.encode(FS_ENCODING, FS_ERRORS) + pack(
                        mode, st.st_size, st.st_dev, st.st_ino, mtime_ns, ctime_ns))
                    if mtime_ns > newest:
                        newest = mtime_ns
                    if ctime_ns > newest:
                        newest = ctime_ns
                    if mode & 0o170000 == 0o100000:  # S_ISREG
                        if st.st_nlink > 1 and not followed:
                            ident = (st.st_dev, st.st_ino)
                            first = seen_inodes.get(ident)
                            if first is not None:
                                info = tarfile.TarInfo(rel)
                                info.type = tarfile.LNKTYPE
                                info.linkname = first
                                info.mode = mode & 0o7777
                                yield info, None
                                continue
                            seen_inodes[ident] = rel
                        # file_entry's work, inlined
                        info = tar_info(rel)
                        info.type = regular
                        info.size = st.st_size
                        info.mode = mode & 0o7777
                        yield info, lazy_file(path, st)
                    else:  # a kept symlink: _children refused every other type
                        try:
                            target = os.readlink(path)
                        except OSError as exc:
                            raise LayerSourceError(
                                path, f"cannot read symlink: {exc.strerror or exc}") from None
                        info = tarfile.TarInfo(rel)
                        info.type = symlink
                        info.linkname = target
                        info.mode = 0o777
                        yield info, None
                else:
                    stack.pop()
                    if stack:
                        stack[-1][0].update(hasher.digest())  # after the directory's own record
            self._identity = hasher.digest(), newest
