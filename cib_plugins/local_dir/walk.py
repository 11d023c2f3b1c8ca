"""The walk behind local-dir's no-change check, in the standard library only.

A tree's identity is a hash over its directories, each one's hash made of its entries' records
in byte order with a subdirectory's own hash after its record (``tree_identity``). cib's
process computes it; for a large tree on a machine with two or more processors it shares the
walk with one helper process, this module run on its own (``python -I -S``, importing it by
name from its directory, without the package or anything beyond the standard library): the
system calls of the walk are most of its time, and one process makes them one at a time.

The parent walks as alone. Once the walk has run for ``HELPER_AFTER`` seconds, each time it
enters a directory while the helper has nothing to do, it hands the helper the subdirectories
still to walk of the outermost directory that has two or more of them left (the largest share
it knows of, as a work-stealing scheduler takes from the bottom of a stack) as a task list.
The helper walks them from the last one, the parent from the first; each tells the other
which it starts (the parent's *claim* ``C n i`` before it walks item ``i`` of list ``n``, the
helper's ``S n i``), so they meet in the middle. At worst both walk one item, with the same
result. The helper reports ``D n i <digest>
<newest>`` for an item it walked, ``E n i`` for an item whose walk failed (the parent walks
that item itself, so the error it raises is the one a walk alone would raise, in the same
order), and ``F n`` when it has stopped on list ``n``. Anything else, or no helper at all, and
the parent walks what is left itself: the helper can make the check faster, never different.

Lines to the helper: the ``sys.path`` to import from (hex, for pathspec), ``F`` or ``K``
(follow or keep symlinks) with the ignore lines (hex, ``-`` for none), then ``T n item...``
(``item`` = path hex, ``:``, relative path hex, ``:``, the ``dev.ino`` of the directories from
the root down to the item, comma separated) and ``C n i``.
"""

from __future__ import annotations

import bisect
import errno
import hashlib
import os
import stat
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator

TYPE_CHECKING = False  # typing is not imported at run time: the helper starts without it
if TYPE_CHECKING:
    from typing import IO, Any

IDENTITY_VERSION = b"cib local-dir 2\0"
# What keeps a symlink as a link instead of following it, as add_files spells it; the command
# line puts its own flag in its place.
KEEP_SYMLINKS = "follow_symlinks=False"
# A walk that has not finished after this many seconds gets the helper. It is ready ~20 ms
# later, and starting and ending it cost this process ~2-4 ms: a tree walked in 9 ms (2,000
# files) would lose that, a tree of 100,000 files gains ~20 ms over waiting 30 ms.
HELPER_AFTER = 0.01

FS_ENCODING, FS_ERRORS = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()
# A record's numbers after the 0 byte that ends its name: mode, size, device, inode, mtime
# and ctime in ns
RECORD_STATS = struct.Struct("<xIQQQqq")

Ancestors = frozenset[tuple[int, int]]
Child = tuple[str, str, str, os.stat_result, bool, bool]


class WalkError(Exception):
    """A path the walk cannot take, with why and, where one helps, the option that avoids it."""

    def __init__(self, path: str, reason: str, option: str | None = None) -> None:
        super().__init__(path, reason, option)
        self.path, self.reason, self.option = path, reason, option


def fs_bytes(name: str) -> bytes:
    return name.encode(FS_ENCODING, FS_ERRORS)  # os.fsencode without its Python-level call


def sorted_names(dir_path: str, fd: int | None = None) -> list[str]:
    """The names in a directory, in byte order; listed through ``fd`` where it is open."""
    try:
        names = os.listdir(dir_path if fd is None else fd)
    except OSError as exc:
        raise WalkError(dir_path, f"cannot list directory: {exc.strerror or exc}") from None
    names.sort()
    if not all(map(str.isascii, names)):
        # a name's file-system bytes decide its place; for ASCII names their str order is it
        names.sort(key=fs_bytes)
    return names


def refuse_special(path: str, mode: int) -> None:
    if stat.S_ISFIFO(mode):
        raise WalkError(path, "is a named pipe (FIFO); cib does not read FIFOs into layers: "
                        "remove it or add it to the ignores")
    if stat.S_ISSOCK(mode):
        raise WalkError(path, "is a socket, which cannot go into a layer: remove it or add it "
                        "to the ignores")
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        raise WalkError(path, "is a device file; cib does not copy device files from disk: "
                        "remove it or add it to the ignores")
    raise WalkError(path, f"has an unsupported file type ({stat.filemode(mode)})")


def stat_link(path: str) -> os.stat_result:
    try:
        return os.stat(path)
    except FileNotFoundError:
        raise WalkError(path, "is a dangling symlink (its target does not exist); remove it or "
                        "ignore it", option=KEEP_SYMLINKS) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise WalkError(path, "is a symlink loop (a cycle of links); remove it or ignore it",
                            option=KEEP_SYMLINKS) from None
        raise WalkError(path, f"cannot be read: {exc.strerror or exc}") from None


class Ignores:
    """gitignore patterns as ``pathspec.GitIgnoreSpec`` judges them, plus pruning.

    A file is left out when pathspec matches its path. A directory that pathspec matches is
    not entered at all when no pattern is a negation (then nothing below it could come
    back); with negations present it is walked, its own entry left out, and each path below
    it judged by pathspec (so ``build`` + ``!build/keep.txt`` keeps ``build/keep.txt``, where
    git, which never enters an excluded directory, would not).
    """

    def __init__(self, lines: list[str]) -> None:
        import pathspec  # only a source with ignore patterns pays for importing it

        self.lines = lines
        self._spec = pathspec.GitIgnoreSpec.from_lines(lines)
        self.has_negation = any(p.include is False for p in self._spec.patterns)

    def excluded(self, rel: str, is_dir: bool) -> bool:
        return bool(self._spec.match_file(rel + "/" if is_dir else rel))


def compiled(root: str, lines: list[str]) -> Ignores:
    try:
        return Ignores(lines)
    except Exception as exc:  # noqa: BLE001 - pathspec raises several types for bad patterns
        raise WalkError(root, f"invalid ignore pattern: {exc}") from None


def children(prefix: str, rel: str, ancestors: Ancestors, spec: Ignores | None,
             follow: bool) -> Iterator[Child]:
    """``(name, path, rel, stat, followed, listed)`` of each name of one directory that the
    layer gets, in byte order: the stat is the link's own for a kept symlink and the target's
    for a followed one (``followed``); ``listed`` is False for an ignored directory walked
    only because a negation may bring back something below it. Refuses loops, dangling
    links and special files that are not ignored."""
    for name in sorted_names(prefix[:-1] if len(prefix) > 1 else prefix):
        path = prefix + name
        child = rel + name
        try:
            st = os.lstat(path)
        except OSError as exc:
            raise WalkError(path, f"cannot be read: {exc.strerror or exc}") from None
        if spec is None and st.st_mode & 0o170000 == 0o100000:
            yield name, path, child, st, False, True  # a plain file: judged() would keep it
            continue
        kept = judged(path, child, st, ancestors, spec, follow)
        if kept is not None:
            yield name, path, child, *kept


def judged(path: str, rel: str, st: os.stat_result, ancestors: Ancestors, spec: Ignores | None,
           follow: bool) -> tuple[os.stat_result, bool, bool] | None:
    """What the layer makes of one name, given its ``lstat``: ``(stat, followed, listed)`` as
    ``children`` yields them, or None when it is left out."""
    mode = st.st_mode
    followed = follow and stat.S_ISLNK(mode)
    if followed:
        try:
            st = stat_link(path)
        except WalkError:
            if spec is not None and spec.excluded(rel, False):
                return None  # an ignored dangling or looping link is no error
            raise
        mode = st.st_mode
    if stat.S_ISDIR(mode):
        ignored = spec is not None and spec.excluded(rel, True)
        if ignored and not spec.has_negation:  # type: ignore[union-attr]
            return None
        if (st.st_dev, st.st_ino) in ancestors:
            if ignored:
                return None
            raise WalkError(path, "is a symlink loop: it leads back to a directory that "
                            "contains it; remove it or ignore it", option=KEEP_SYMLINKS)
        return st, followed, not ignored
    if spec is not None and spec.excluded(rel, False):
        return None
    if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
        refuse_special(path, mode)
    return st, followed, True


def entry_record(name: str, st: os.stat_result) -> bytes:
    return fs_bytes(name) + RECORD_STATS.pack(st.st_mode, st.st_size, st.st_dev, st.st_ino,
                                              st.st_mtime_ns, st.st_ctime_ns)


def dir_record(name: str, mode: int, listed: bool) -> bytes:
    return fs_bytes(name) + (b"/\0%o\0" % mode if listed else b"/\0-\0")


def file_identity(st: os.stat_result) -> tuple[bytes, int]:
    digest = hashlib.sha256(IDENTITY_VERSION + entry_record("", st)).digest()
    return digest, max(st.st_mtime_ns, st.st_ctime_ns)


# A subdirectory handed over: its path and relative path, both ending in "/", and the
# directories from the root down to it.
Item = tuple[str, str, Ancestors]
# Called with the walk's stack of directories each time it enters one: it may hand over the
# subdirectories still to walk of one of them (setting that frame's ``listing``).
Offer = Callable[[list["_Frame"]], None]
# Called for item i of list n before walking it: its (digest, newest) if the helper walked it.
Take = Callable[[int, int], "tuple[bytes, int] | None"]


# One directory as the check sees it, in byte order: runs of consecutive records of files
# and kept links joined into one bytes object, a subdirectory as (name, path, rel, stat,
# listed), and a refusal, which ends the list where a lazy walk would meet it.
Kid = bytes | tuple[str, str, str, os.stat_result, bool] | WalkError
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)
# Names looked up in an open directory: the kernel resolves one name instead of the path.
_AT = (os.stat in os.supports_dir_fd and os.stat in os.supports_follow_symlinks
       and os.listdir in os.supports_fd)


def _open_listing(dir_path: str) -> tuple[int | None, list[str]]:
    """An open descriptor of the directory (None where lookups in one are not supported) and
    its names in byte order."""
    if not _AT:
        return None, sorted_names(dir_path)
    try:
        fd = os.open(dir_path, _DIR_FLAGS)
    except OSError as exc:
        raise WalkError(dir_path, f"cannot list directory: {exc.strerror or exc}") from None
    try:
        return fd, sorted_names(dir_path, fd)
    except WalkError:
        os.close(fd)
        raise


def listing(prefix: str, rel: str, ancestors: Ancestors, spec: Ignores | None, follow: bool,
            update: Callable[[bytes], object]) -> tuple[list[Kid], int]:
    """One directory's children as ``tree_identity`` hashes them, and the newest modification
    or change time of its files: what ``children`` yields, with the same refusals, made in one
    loop without a tuple or a path a file. The records before the first subdirectory go to
    ``update`` (the directory's hash) as they are made, so a directory of a million files and
    no subdirectory keeps no record."""
    fd, names = _open_listing(prefix[:-1] if len(prefix) > 1 else prefix)
    kids: list[Kid] = []
    run: list[bytes] = []
    ahead = True  # no subdirectory yet: records go straight to the hash
    newest = 0
    pack_record, lstat, at = RECORD_STATS.pack, os.lstat, os.stat
    encoding, errors = FS_ENCODING, FS_ERRORS
    try:
        for name in names:
            try:
                st = (at(name, dir_fd=fd, follow_symlinks=False) if fd is not None
                      else lstat(prefix + name))
            except OSError as exc:
                raise WalkError(prefix + name, f"cannot be read: {exc.strerror or exc}") from None
            mode = st.st_mode
            if mode & 0o170000 != 0o100000 or spec is not None:  # all but a plain file, unignored
                path, child = prefix + name, rel + name
                kept = judged(path, child, st, ancestors, spec, follow)
                if kept is None:
                    continue
                st, _, listed = kept
                mode = st.st_mode
                if stat.S_ISDIR(mode):
                    if run:
                        if ahead:
                            update(b"".join(run))
                        else:
                            kids.append(b"".join(run))
                        run = []
                    ahead = False
                    kids.append((name, path, child, st, listed))
                    continue
            mtime_ns, ctime_ns = st.st_mtime_ns, st.st_ctime_ns
            # entry_record's work, inlined: this runs once per file of the tree
            run.append(name.encode(encoding, errors) + pack_record(
                mode, st.st_size, st.st_dev, st.st_ino, mtime_ns, ctime_ns))
            if mtime_ns > newest:
                newest = mtime_ns
            if ctime_ns > newest:
                newest = ctime_ns
            if ahead and len(run) == 4096:
                update(b"".join(run))
                run = []
    except WalkError as exc:
        if run:
            kids.append(b"".join(run))
        kids.append(exc)
        return kids, newest
    finally:
        if fd is not None:
            os.close(fd)
    if run:
        kids.append(b"".join(run))
    return kids, newest


class _Frame:
    """A directory being walked: its hash so far, its children and the position of the next
    one, and, once its remaining subdirectories were handed over as task list ``listing``,
    how many of them the walk has met since (``sub``)."""

    __slots__ = ("hasher", "kids", "at", "ancestors", "newest", "listing", "sub", "subdirs")

    def __init__(self, prefix: str, rel: str, ancestors: Ancestors, spec: Ignores | None,
                 follow: bool) -> None:
        self.hasher = hashlib.sha256(IDENTITY_VERSION)
        self.ancestors = ancestors
        self.at = self.sub = 0
        self.listing: int | None = None
        self.kids, self.newest = listing(prefix, rel, ancestors, spec, follow, self.hasher.update)
        self.subdirs: list[int] | None = None  # positions of the subdirectories, when asked

    def remaining(self) -> list[Item]:
        """The subdirectories not yet met, as items to hand over, if there are two or more."""
        if self.subdirs is None:
            self.subdirs = [i for i, kid in enumerate(self.kids) if type(kid) is tuple]
        first = bisect.bisect_left(self.subdirs, self.at)
        if len(self.subdirs) - first < 2:
            return []
        items = []
        for i in self.subdirs[first:]:
            kid = self.kids[i]
            assert isinstance(kid, tuple)
            _, path, rel, st, _ = kid
            items.append((path + "/", rel + "/", self.ancestors | {(st.st_dev, st.st_ino)}))
        return items


def tree_identity(prefix: str, rel: str, ancestors: Ancestors, spec: Ignores | None, follow: bool,
                  offer: Offer | None = None, take: Take | None = None) -> tuple[bytes, int]:
    """The hash of the directory ``prefix`` (ending in "/") and the newest modification or
    change time of a file below it. With ``offer`` and ``take``, subdirectories may be handed
    to someone else who returns the same hash."""
    stack = [_Frame(prefix, rel, ancestors, spec, follow)]
    if offer is not None:
        offer(stack)
    while True:
        frame = stack[-1]
        kids, at, newest = frame.kids, frame.at, frame.newest
        update = frame.hasher.update
        below = None
        while at < len(kids):
            kid = kids[at]
            at += 1
            if isinstance(kid, bytes):
                update(kid)
                continue
            if isinstance(kid, WalkError):
                raise kid
            name, _, _, st, listed = kid
            update(dir_record(name, st.st_mode, listed))
            done = None
            if frame.listing is not None:
                done = take(frame.listing, frame.sub)  # type: ignore[misc]
                frame.sub += 1
            if done is None:
                below = kid
                break
            update(done[0])
            if done[1] > newest:
                newest = done[1]
        frame.at, frame.newest = at, newest
        if below is not None:
            _, path, child_rel, st, _ = below
            stack.append(_Frame(path + "/", child_rel + "/",
                                frame.ancestors | {(st.st_dev, st.st_ino)}, spec, follow))
            if offer is not None:
                offer(stack)
            continue
        stack.pop()
        digest = frame.hasher.digest()
        if not stack:
            return digest, newest
        parent = stack[-1]
        parent.hasher.update(digest)
        if newest > parent.newest:
            parent.newest = newest


_HELPER_MAIN = ("import sys; sys.path.insert(0, sys.argv[1]); "
                "__import__(sys.argv[2])._serve(sys.stdin, sys.stdout)")


def _processors() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _python() -> str | None:
    """The interpreter that can run this module as the helper, or None: a frozen cib, this
    module loaded from somewhere that is not a file, or a program embedding Python whose
    ``sys.executable`` is not a Python (a server such as uWSGI names itself there)."""
    if getattr(sys, "frozen", False) or not sys.executable or not os.path.isfile(__file__):
        return None
    if not os.path.basename(sys.executable).lower().startswith(("python", "pypy")):
        return None
    return sys.executable


def _ancestors_text(ancestors: Ancestors) -> str:
    return ",".join(f"{dev}.{ino}" for dev, ino in ancestors)


class TreeCheck:
    """One no-change check of a tree, shared with a helper process when it pays."""

    def __init__(self, spec: Ignores | None, follow: bool, share: bool = True) -> None:
        self.spec, self.follow = spec, follow
        self._share = share
        self._helper: _Helper | None = None
        self._started = 0.0
        self.helped = 0  # items the helper's results were used for

    def run(self, prefix: str, ancestors: Ancestors) -> tuple[bytes, int]:
        self._started = time.monotonic()
        share = self._share and _processors() > 1 and _python() is not None
        try:
            if not share:
                return tree_identity(prefix, "", ancestors, self.spec, self.follow)
            return tree_identity(prefix, "", ancestors, self.spec, self.follow,
                                 self._offer, self._take)
        finally:
            if self._helper is not None:
                self._helper.close()

    def _offer(self, stack: list[_Frame]) -> None:
        """Hands an idle helper the remaining subdirectories of the outermost directory that
        has two or more left, the largest share of work the walk knows of."""
        helper = self._helper
        if helper is None:
            if time.monotonic() - self._started < HELPER_AFTER:
                return
        elif not helper.idle():
            return
        for frame in stack:
            if frame.listing is not None:
                continue  # handed over before: the helper and the walk have shared it out
            items = frame.remaining()
            if items:
                if helper is None:
                    helper = self._helper = _Helper(self.spec, self.follow)
                frame.listing, frame.sub = helper.post(items), 0
                return

    def _take(self, listing: int, index: int) -> tuple[bytes, int] | None:
        assert self._helper is not None
        done = self._helper.take(listing, index)
        if done is not None:
            self.helped += 1
        return done


class _Helper:
    """The parent's side of the helper process: it posts task lists and claims, and a reader
    thread files the helper's answers. Any failure marks it dead: the parent then walks
    everything left itself."""

    def __init__(self, spec: Ignores | None, follow: bool) -> None:
        import subprocess  # only a check that shares its walk pays for importing it

        self._cond = threading.Condition()
        self._started: set[tuple[int, int]] = set()
        self._done: dict[tuple[int, int], tuple[bytes, int] | None] = {}
        self._finished: set[int] = set()
        self._lists = 0
        self.dead = False
        self._proc: Any = None
        python = _python()
        try:
            if python is None:
                raise OSError("no interpreter for the helper")
            # imported by name from its directory, the helper runs from the compiled file pip
            # wrote beside this one instead of compiling this file as a script
            self._proc = subprocess.Popen(
                [python, "-I", "-S", "-c", _HELPER_MAIN, os.path.dirname(__file__),
                 os.path.splitext(os.path.basename(__file__))[0]],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL, text=True, encoding="ascii", close_fds=True)
            lines = spec.lines if spec is not None else []
            self._send(" ".join(os.fsencode(p).hex() for p in sys.path if p) + "\n"
                       + ("F" if follow else "K") + " "
                       + (" ".join(line.encode("utf-8", "surrogateescape").hex() for line in lines)
                          or "-") + "\n")
        except (OSError, ValueError):
            self.dead = True
            return
        threading.Thread(target=self._read, args=(self._proc.stdout,), daemon=True,
                         name="cib-walk-helper").start()

    def _send(self, text: str) -> None:
        self._proc.stdin.write(text)
        self._proc.stdin.flush()

    def idle(self) -> bool:
        """Alive and done with every list posted so far (a read without the lock: a stale
        answer only makes ``post`` decide again)."""
        return not self.dead and len(self._finished) == self._lists

    def post(self, items: list[Item]) -> int | None:
        with self._cond:
            if self.dead or len(self._finished) < self._lists:
                return None  # the helper is still busy with an earlier list
            n = self._lists
            self._lists += 1
        tasks = " ".join(f"{os.fsencode(p).hex()}:{os.fsencode(r).hex()}:{_ancestors_text(a)}"
                         for p, r, a in items)
        try:
            self._send(f"T {n} {tasks}\n")
        except (OSError, ValueError):
            self._die()
        return n

    def take(self, n: int, i: int) -> tuple[bytes, int] | None:
        key = (n, i)
        with self._cond:
            claim = key not in self._started and not self.dead
            if claim and n in self._finished:
                return None
        if claim:
            # the helper may start it as the claim goes out: then both walk it, and the
            # walk here is the one used
            try:
                self._send(f"C {n} {i}\n")
            except (OSError, ValueError):
                self._die()
            return None
        with self._cond:
            while key not in self._done and not self.dead:
                self._cond.wait()
            return self._done.get(key)

    def _read(self, stream: IO[str]) -> None:
        try:
            for line in stream:
                kind, *fields = line.split()
                with self._cond:
                    if kind == "S":
                        self._started.add((int(fields[0]), int(fields[1])))
                    elif kind == "D":
                        newest = int(fields[3])
                        self._done[int(fields[0]), int(fields[1])] = (bytes.fromhex(fields[2]), newest)
                    elif kind == "E":
                        self._done[int(fields[0]), int(fields[1])] = None
                    elif kind == "F":
                        self._finished.add(int(fields[0]))
                    else:
                        raise ValueError(line)
                    self._cond.notify_all()
        except (ValueError, IndexError, OSError):
            pass
        self._die()

    def _die(self) -> None:
        with self._cond:
            self.dead = True
            self._cond.notify_all()

    def close(self) -> None:
        self._die()
        proc = self._proc
        if proc is None:
            return
        proc.kill()
        proc.wait()
        for stream in (proc.stdin, proc.stdout):
            try:
                stream.close()
            except (OSError, ValueError):
                pass


def _serve(stdin: IO[str], stdout: IO[str]) -> None:
    """The helper: walk the items of each task list from the last, until one is claimed."""
    sys.path[:] = [os.fsdecode(bytes.fromhex(p)) for p in stdin.readline().split()]
    mode, *hex_lines = stdin.readline().split()
    lines = [] if hex_lines == ["-"] else [bytes.fromhex(h).decode("utf-8", "surrogateescape")
                                           for h in hex_lines]
    spec = Ignores(lines) if lines else None
    follow = mode == "F"
    cond = threading.Condition()
    lists: list[tuple[int, list[Item]] | None] = []
    claimed: set[tuple[int, int]] = set()

    def read() -> None:
        for line in stdin:
            kind, n, *rest = line.split()
            with cond:
                if kind == "C":
                    claimed.add((int(n), int(rest[0])))
                else:
                    items = []
                    for task in rest:
                        path, rel, ancestors = task.split(":")
                        items.append((os.fsdecode(bytes.fromhex(path)), os.fsdecode(bytes.fromhex(rel)),
                                      frozenset((int(d), int(i)) for d, i in
                                                (a.split(".") for a in ancestors.split(",")))))
                    lists.append((int(n), items))
                cond.notify()
        with cond:
            lists.append(None)
            cond.notify()

    threading.Thread(target=read, daemon=True).start()
    while True:
        with cond:
            while not lists:
                cond.wait()
            task = lists.pop(0)
        if task is None:
            return
        n, items = task
        for i in range(len(items) - 1, -1, -1):
            with cond:
                if (n, i) in claimed:
                    break
            stdout.write(f"S {n} {i}\n")
            stdout.flush()
            path, rel, ancestors = items[i]
            try:
                digest, newest = tree_identity(path, rel, ancestors, spec, follow)
            except WalkError:
                stdout.write(f"E {n} {i}\n")
            else:
                stdout.write(f"D {n} {i} {digest.hex()} {newest}\n")
            stdout.flush()
        stdout.write(f"F {n}\n")
        stdout.flush()

