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

import errno
import hashlib
import os
import stat
import struct
import sys
import tarfile
from collections.abc import Iterator

import cib_core
from cib_core import LayerSourceError
from cib_core.plugin_api import Entry, LayerOptions, LazyFile, SortedEntries, dir_entry, file_entry

# What keeps a symlink as a link instead of following it, as add_files spells it; the command
# line puts its own flag in its place.
_KEEP_SYMLINKS = "follow_symlinks=False"
_IDENTITY_VERSION = b"cib local-dir 2\0"


@cib_core.hookimpl(tryfirst=True)
def cib_layer_source(source: object, options: LayerOptions) -> SortedEntries | None:
    if not (isinstance(source, os.PathLike)
            or (isinstance(source, str) and source and os.path.lexists(source))):
        return None
    walk = _Walk(os.fsdecode(os.fspath(source)), options)
    return SortedEntries(walk.entries(), identity=walk.identity)


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
    return _compiled(root, lines)


def _compiled(root: str, lines: list[str]) -> _Ignores:
    try:
        return _Ignores(lines)
    except Exception as exc:  # noqa: BLE001 - pathspec raises several types for bad patterns
        raise LayerSourceError(root, f"invalid ignore pattern: {exc}") from None


_FS_ENCODING, _FS_ERRORS = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()
_STATS = struct.Struct("<IQQQqq")  # mode, size, device, inode, mtime and ctime in ns


def _fs_bytes(name: str) -> bytes:
    return name.encode(_FS_ENCODING, _FS_ERRORS)  # os.fsencode without its Python-level call


def _sorted_names(dir_path: str) -> list[str]:
    try:
        names = os.listdir(dir_path)
    except OSError as exc:
        raise LayerSourceError(dir_path, f"cannot list directory: {exc.strerror or exc}") from None
    names.sort()
    if not all(map(str.isascii, names)):
        # a name's file-system bytes decide its place; for ASCII names their str order is it
        names.sort(key=_fs_bytes)
    return names


class _Walk:
    """One source path, walked in layer order: depth first, each directory's names in byte
    order, descending into a directory as soon as it is met, so cib writes each entry as it
    comes.

    Every walk hashes what the entries depend on: each name with its type, mode and size
    and, for files and kept links, device, inode and modification and change times (as
    git's index does; the content is never read), a directory's hash going into its
    parent's. ``identity()`` is the root's hash and the newest change time of a file: the
    one a finished ``entries()`` computed, or a walk of its own that makes no entries at
    all, for cib's no-change check. (Walking on several threads was tried: on two cores the
    lock Python's threads share made it slower than one, with twice the processor time.)
    """

    def __init__(self, root: str, options: LayerOptions) -> None:
        self.root = root
        self.options = options
        self._identity: tuple[bytes, int] | None = None
        if options.ignores:
            # a bad pattern is refused when the source is claimed, before the build writes
            # anything; the walk reads the ignore files and compiles them all again
            _compiled(root, list(options.ignores))

    def identity(self) -> tuple[bytes, int]:
        if self._identity is None:
            root, st, spec = self._start()
            if stat.S_ISREG(st.st_mode):
                self._identity = _file_identity(st)
            else:
                self._identity = self._tree_identity(
                    root, "", frozenset({(st.st_dev, st.st_ino)}), spec)
        return self._identity

    def _start(self) -> tuple[str, os.stat_result, _Ignores | None]:
        root = self.root
        st = _stat_source(root)
        if stat.S_ISREG(st.st_mode):
            return root, st, None
        if not stat.S_ISDIR(st.st_mode):
            _refuse_special(root, st.st_mode)
        return root if root.endswith("/") else root + "/", st, _ignore_spec(root, self.options)

    def _tree_identity(self, prefix: str, rel: str, ancestors: frozenset[tuple[int, int]],
                       spec: _Ignores | None) -> tuple[bytes, int]:
        """The hash of one directory and the newest change time of a file below it."""
        hasher = hashlib.sha256(_IDENTITY_VERSION)
        update = hasher.update
        newest = 0
        for name, path, child_rel, st, _, listed in _children(prefix, rel, ancestors, spec,
                                                              self.options.follow_symlinks):
            mode = st.st_mode
            if stat.S_ISDIR(mode):
                update(_dir_record(name, mode, listed))
                digest, below = self._tree_identity(path + "/", child_rel + "/",
                                                    ancestors | {(st.st_dev, st.st_ino)}, spec)
                update(digest)
                if below > newest:
                    newest = below
            else:
                update(_entry_record(name, st))
                if st.st_mtime_ns > newest:
                    newest = st.st_mtime_ns
                if st.st_ctime_ns > newest:
                    newest = st.st_ctime_ns
        return hasher.digest(), newest

    def entries(self) -> Iterator[Entry]:
        root, st, spec = self._start()
        if stat.S_ISREG(st.st_mode):
            yield file_entry("", st.st_size, LazyFile(root, st), st.st_mode)
            self._identity = _file_identity(st)
            return
        yield dir_entry("", 0o755)
        follow = self.options.follow_symlinks
        seen_inodes: dict[tuple[int, int], str] = {}
        regular, directory, symlink = tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE
        pack, tar_info, lazy_file = _STATS.pack, tarfile.TarInfo, LazyFile
        newest = 0
        # one frame a directory, the root first: its hash, its children still to walk, and
        # the (dev, ino) of the directories from the root down (loops, when following links)
        hasher = hashlib.sha256(_IDENTITY_VERSION)
        ancestors = frozenset({(st.st_dev, st.st_ino)})
        stack = [(hasher, _children(root, "", ancestors, spec, follow), ancestors)]
        while stack:
            hasher, children, ancestors = stack[-1]
            for name, path, rel, st, followed, listed in children:
                mode = st.st_mode
                if stat.S_ISDIR(mode):
                    hasher.update(_dir_record(name, mode, listed))
                    if listed:
                        info = tarfile.TarInfo(rel)
                        info.type = directory
                        info.mode = mode & 0o7777
                        yield info, None
                    below = ancestors | {(st.st_dev, st.st_ino)}
                    stack.append((hashlib.sha256(_IDENTITY_VERSION),
                                  _children(path + "/", rel + "/", below, spec, follow), below))
                    break  # into it now; this directory's other names come after its contents
                mtime_ns, ctime_ns = st.st_mtime_ns, st.st_ctime_ns
                # _entry_record's work, inlined: this runs once per file of the tree
                hasher.update(name.encode(_FS_ENCODING, _FS_ERRORS) + b"\0" + pack(
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
                        raise LayerSourceError(path, f"cannot read symlink: {exc.strerror or exc}") from None
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


def _children(prefix: str, rel: str, ancestors: frozenset[tuple[int, int]], spec: _Ignores | None,
              follow: bool) -> Iterator[tuple[str, str, str, os.stat_result, bool, bool]]:
    """``(name, path, rel, stat, followed, listed)`` of each name of one directory that the
    layer gets, in byte order: the stat is the link's own for a kept symlink and the target's
    for a followed one (``followed``); ``listed`` is False for an ignored directory walked
    only because a negation may bring back something below it. Refuses loops, dangling
    links and special files that are not ignored."""
    for name in _sorted_names(prefix[:-1] if len(prefix) > 1 else prefix):
        path = prefix + name
        child = rel + name
        try:
            st = os.lstat(path)
        except OSError as exc:
            raise LayerSourceError(path, f"cannot be read: {exc.strerror or exc}") from None
        mode = st.st_mode
        followed = follow and stat.S_ISLNK(mode)
        if followed:
            try:
                st = _stat_link(path)
            except LayerSourceError:
                if spec is not None and spec.excluded(child, False):
                    continue  # an ignored dangling or looping link is no error
                raise
            mode = st.st_mode
        if stat.S_ISDIR(mode):
            ignored = spec is not None and spec.excluded(child, True)
            if ignored and not spec.has_negation:  # type: ignore[union-attr]
                continue
            if (st.st_dev, st.st_ino) in ancestors:
                if ignored:
                    continue
                raise LayerSourceError(path, "is a symlink loop: it leads back to a directory "
                                       "that contains it; remove it or ignore it",
                                       option=_KEEP_SYMLINKS)
            yield name, path, child, st, followed, not ignored
            continue
        if spec is not None and spec.excluded(child, False):
            continue
        if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
            _refuse_special(path, mode)
        yield name, path, child, st, followed, True


def _entry_record(name: str, st: os.stat_result) -> bytes:
    return _fs_bytes(name) + b"\0" + _STATS.pack(st.st_mode, st.st_size, st.st_dev, st.st_ino,
                                                 st.st_mtime_ns, st.st_ctime_ns)


def _dir_record(name: str, mode: int, listed: bool) -> bytes:
    return _fs_bytes(name) + (b"/\0%o\0" % mode if listed else b"/\0-\0")


def _file_identity(st: os.stat_result) -> tuple[bytes, int]:
    digest = hashlib.sha256(_IDENTITY_VERSION + _entry_record("", st)).digest()
    return digest, max(st.st_mtime_ns, st.st_ctime_ns)


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
