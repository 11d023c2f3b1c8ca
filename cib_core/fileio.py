"""Local files: written whole or not at all, opened only when they are regular files, read
in regions and in chunks.

A file is written to a temporary name beside its final one and renamed at the end, so readers
see the old file or the complete new one, and a failed write leaves nothing that looks
finished. Operating-system errors met while writing become a ``LocalWriteError`` that names
the target the user asked for (an OCI layout, an archive, an exported tarball) in plain words,
through :func:`write_failure`, the one place that reads error numbers.

Reading, :func:`open_regular` never opens a FIFO, a socket, a device or a directory where a
file is expected (a FIFO would block forever); :class:`FileSlice` reads a region of a file
(a member of a tarball) and :func:`chunks` cuts any source into pieces of one size.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import stat
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, BinaryIO, cast

from cib_core.errors import ConfigurationError, LocalWriteError

_FREE_SPACE = "free some space there, or write elsewhere"


def _first_non_directory(path: Path) -> Path | None:
    """The first existing ancestor of ``path`` (or ``path`` itself) that is not a directory."""
    for candidate in [*reversed(path.parents), path]:
        try:
            if not candidate.is_dir() and candidate.exists():
                return candidate
        except OSError:
            return None
    return None


def _first_missing(directory: Path) -> Path | None:
    """The outermost directory on the way to ``directory`` that does not exist."""
    for candidate in [*reversed(directory.parents), directory]:
        if not os.path.lexists(candidate):
            return candidate
    return None


def write_failure(target: str | os.PathLike[str], exc: OSError, *, what: str = "") -> LocalWriteError:
    """The ``LocalWriteError`` for ``exc``, met while writing ``target`` (``what`` says what
    ``target`` is, e.g. "the OCI image layout"): the reason in plain words and what to do."""
    code = exc.errno
    failed = Path(exc.filename) if isinstance(exc.filename, (str, os.PathLike)) else Path(target)
    if code == errno.EROFS:
        reason, hint = ("it is on a read-only file system",
                        "write it to a writable place, or remount that file system read-write")
    elif code in (errno.EACCES, errno.EPERM):
        reason, hint = ("permission denied",
                        "write it where you may create files, or change the permissions")
    elif code == errno.ENOSPC:
        reason, hint = "no space left on the device", _FREE_SPACE
    elif code == errno.EDQUOT:
        reason, hint = "the disk quota is used up", _FREE_SPACE
    elif code == errno.EFBIG:
        reason, hint = "the file is too large for that file system", "write it elsewhere"
    elif code == errno.ENOTDIR:
        blocker = _first_non_directory(failed) or _first_non_directory(Path(target))
        reason = "a part of the path is not a directory"
        if blocker is not None:
            reason += f" ({blocker} is a file)"
        hint = "pick a path whose parents are directories"
    elif code == errno.ENOENT:
        directory = failed.parent
        missing = _first_missing(directory)
        if missing is not None:
            reason, hint = (f"the directory {missing} does not exist",
                            "create it first, or pick another path")
        else:
            reason, hint = (f"{directory} does not take new files",
                            "write it to a directory on an ordinary file system")
    elif code == errno.EISDIR:
        reason, hint = "it is a directory", "name a file, not a directory"
    elif code == errno.EEXIST:
        reason, hint = "something else is in the way at that path", "remove it, or pick another path"
    elif code == errno.ENAMETOOLONG:
        reason, hint = "a name in the path is too long", "pick a shorter path"
    elif code == errno.EIO:
        reason, hint = "input/output error on the device", "check the disk, or write elsewhere"
    else:
        reason = (exc.strerror or type(exc).__name__).lower()
        hint = ""
    return LocalWriteError(target, reason, hint, what=what, errno=code)


def check_output_path(path: str | os.PathLike[str], *, what: str = "") -> None:
    """Refuse a file path that cannot be written, before any work toward it: a NUL byte
    (``ConfigurationError``), a directory at the path, a parent that is missing or not a
    directory (``LocalWriteError`` naming the path). A later failure is still possible (no
    permission, a full disk); this catches the mistakes in the name itself."""
    text = os.fsdecode(path)
    if "\0" in text:
        raise ConfigurationError(f"the output path {text!r} holds a NUL byte; a path cannot "
                                 "contain one")
    final = Path(os.path.abspath(text))
    parent = final.parent
    code = None
    if final.is_dir():
        code = errno.EISDIR
    elif parent.exists() and not parent.is_dir():
        code = errno.ENOTDIR
    elif not parent.exists():
        code = errno.ENOTDIR if _first_non_directory(parent) is not None else errno.ENOENT
    if code is not None:
        raise write_failure(text, OSError(code, os.strerror(code), str(final)), what=what)


@contextlib.contextmanager
def writing_to(target: str | os.PathLike[str], what: str = "") -> Iterator[None]:
    """Treat an ``OSError`` raised in the block as a failure to write ``target``.

    Only wrap operations that write: an error reading a source is not the target's fault.
    A broken pipe (the reader of a stream went away) is left as it is.
    """
    try:
        yield
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise write_failure(target, exc, what=what) from exc


class GuardedWriter:
    """The write side of a binary stream, whose ``OSError`` becomes a ``LocalWriteError``
    naming ``target``; for streams cib does not own (standard output)."""

    def __init__(self, handle: BinaryIO, target: str | os.PathLike[str], what: str = "") -> None:
        self._handle = handle
        self._target = target
        self._what = what

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:
        with writing_to(self._target, self._what):
            return self._handle.write(data)

    def flush(self) -> None:
        with writing_to(self._target, self._what):
            self._handle.flush()


class AtomicFile:
    """A temporary file in ``directory`` that becomes a named file on :meth:`commit`, or is
    removed: leaving the ``with`` block without committing (an error) discards it.

    Creating, writing, syncing and renaming it raise ``LocalWriteError`` naming ``target`` (what
    the user asked to write, which may be a directory holding this file). ``mode`` is set before
    anything is written, so a 0600 file is never readable by others, even half-written.
    """

    def __init__(self, directory: str | os.PathLike[str], *, target: str | os.PathLike[str],
                 what: str = "", mode: int = 0o644, fsync: bool = True, prefix: str = ".cib-") -> None:
        self._target = target
        self._what = what
        self._fsync = fsync
        self._done = False
        with writing_to(target, what):
            fd, temp = tempfile.mkstemp(dir=directory, prefix=prefix, suffix=".tmp")
        self.temp_path = Path(temp)
        try:
            with writing_to(target, what):
                os.fchmod(fd, mode)
            self._handle = os.fdopen(fd, "wb")
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise

    def __enter__(self) -> AtomicFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:
        with writing_to(self._target, self._what):
            return self._handle.write(data)

    def flush(self) -> None:
        with writing_to(self._target, self._what):
            self._handle.flush()

    def commit(self, final: str | os.PathLike[str]) -> None:
        """Flush, sync (unless turned off) and rename the file to ``final``."""
        if self._done:
            raise ValueError("this temporary file was already committed or discarded")
        with writing_to(self._target, self._what):
            self._handle.flush()
            if self._fsync:
                os.fsync(self._handle.fileno())
            self._handle.close()
            os.replace(self.temp_path, final)
        self._done = True

    def discard(self) -> None:
        """Close and remove the temporary file, unless it was committed."""
        if self._done:
            return
        self._done = True
        # a buffer that cannot be flushed (a full disk) is dropped with the file
        with contextlib.suppress(OSError):
            self._handle.close()
        with contextlib.suppress(OSError):
            os.unlink(self.temp_path)


@contextlib.contextmanager
def replacing(path: str | os.PathLike[str], *, mode: int = 0o644, fsync: bool = True,
              target: str | os.PathLike[str] | None = None, what: str = "") -> Iterator[BinaryIO]:
    """A temporary file beside ``path`` that replaces it when the block ends without an error,
    and is removed when it ends with one; ``mode`` is set before anything is written.

    A failure to write raises ``LocalWriteError`` naming ``target`` (default: ``path``) as
    ``what``; errors of the block's own making pass through unchanged.
    """
    final = Path(path)
    with AtomicFile(final.parent, target=final if target is None else target, what=what,
                    mode=mode, fsync=fsync, prefix=f".{final.name}.") as out:
        yield cast(BinaryIO, out)
        out.commit(final)


def write_atomically(path: str | os.PathLike[str], data: bytes, *, mode: int = 0o644,
                     fsync: bool = True, target: str | os.PathLike[str] | None = None,
                     what: str = "") -> None:
    """Replace ``path`` with ``data`` through a temporary file beside it (permissions ``mode``
    from the start); a failure is a ``LocalWriteError`` naming ``target`` (default: ``path``)."""
    with replacing(path, mode=mode, fsync=fsync, target=target, what=what) as out:
        out.write(data)


# -- reading ------------------------------------------------------------------------------------
_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
          (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISLNK, "a symbolic link"))


def file_kind(mode: int) -> str:
    """What a ``st_mode`` is, in words: "a regular file", "a FIFO (named pipe)", ..."""
    if stat.S_ISREG(mode):
        return "a regular file"
    return next((kind for test, kind in _KINDS if test(mode)), "not a regular file")


class NotRegularFile(OSError):
    """A path that was to be read as a file is something else; ``kind`` says what."""

    def __init__(self, path: str | os.PathLike[str], kind: str) -> None:
        super().__init__(errno.EINVAL, f"it is {kind}, not a regular file", os.fspath(path))
        self.kind = kind


def open_regular(path: str | os.PathLike[str]) -> BinaryIO:
    """``path`` opened for reading, only if it is a regular file (or a symlink to one).

    A FIFO, socket, device or directory raises ``NotRegularFile`` without being opened for
    real: the type is checked before opening, the file is opened non-blocking (a FIFO swapped
    in meanwhile cannot block) and checked again on the open descriptor. Other failures are
    the usual ``OSError`` (``FileNotFoundError``, ``PermissionError``).
    """
    before = os.stat(path)
    if not stat.S_ISREG(before.st_mode):
        raise NotRegularFile(path, file_kind(before.st_mode))
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        after = os.fstat(fd)
        if not stat.S_ISREG(after.st_mode) or (after.st_dev, after.st_ino) != (before.st_dev, before.st_ino):
            raise NotRegularFile(path, file_kind(after.st_mode) if not stat.S_ISREG(after.st_mode)
                                 else "a file that was replaced while being opened")
        os.set_blocking(fd, True)
        return open(fd, "rb", closefd=True)  # noqa: SIM115 - the caller closes it
    except BaseException:
        os.close(fd)
        raise


class FileSlice:
    """``length`` bytes of an open binary file from ``offset``.

    Many slices may share one file (the members of an unpacked tarball, the blobs of an
    archive); closing a slice leaves the shared file open. A read-only file is read with
    ``os.pread``, so slices may be read from several threads at once; any other seekable file
    (a ``BytesIO``, a spooled temporary file) with a seek before each read, one reader at a time.
    """

    __slots__ = ("_end", "_file", "_pos", "_positional", "name")

    def __init__(self, file: IO[bytes], offset: int, length: int, name: str | None = None) -> None:
        self._file = file
        self._pos = offset
        self._end = offset + length
        self._positional = isinstance(file, (io.FileIO, io.BufferedReader))
        self.name = name if name is not None else str(getattr(file, "name", "<slice>"))

    def _read_at(self, size: int, position: int) -> bytes:
        if self._positional:
            return os.pread(self._file.fileno(), size, position)
        self._file.seek(position)
        return self._file.read(size)

    def read(self, size: int | None = -1, /) -> bytes:
        remaining = self._end - self._pos
        if size is None or size < 0 or size > remaining:
            size = remaining
        parts: list[bytes] = []
        while size > 0:
            chunk = self._read_at(size, self._pos)
            if not chunk:
                break
            parts.append(chunk)
            self._pos += len(chunk)
            size -= len(chunk)
        if len(parts) == 1:
            return parts[0]
        return b"".join(parts)

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._pos = self._end

    def __enter__(self) -> FileSlice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FileSlice({self.name!r})"


def chunks(source: BinaryIO | Iterable[bytes] | bytes | bytearray | memoryview,
           size: int) -> Iterator[bytes | bytearray]:
    """``source`` (bytes, a binary file object or an iterable of bytes) cut into pieces of
    exactly ``size`` bytes, the last one shorter.

    A piece from a file or an iterable is a fresh ``bytearray`` filled in place (no joins, no
    slices of joins), so at most one piece is being built while the caller uses the previous
    one; the caller drops its reference before asking for the next.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        view = memoryview(source)
        for i in range(0, len(view), size):
            yield bytes(view[i:i + size])
        return
    if hasattr(source, "read"):
        yield from _file_chunks(cast(BinaryIO, source), size)
        return
    buf = bytearray(size)
    have = 0
    for piece in source:
        if not isinstance(piece, (bytes, bytearray, memoryview)):
            raise ConfigurationError(f"a blob's iterable must yield bytes, not {type(piece).__name__}")
        if not piece:
            continue
        with memoryview(piece) as view:
            start = 0
            while len(view) - start >= size - have:
                take = size - have
                buf[have:] = view[start:start + take]
                start += take
                yield buf
                del buf  # the caller's now: dropped before the next one is allocated
                buf = bytearray(size)
                have = 0
            rest = len(view) - start
            if rest:
                buf[have:have + rest] = view[start:]
                have += rest
    if have:
        del buf[have:]
        yield buf


def _file_chunks(source: BinaryIO, size: int) -> Iterator[bytearray]:
    readinto = getattr(source, "readinto", None)
    while True:
        buf = bytearray(size)
        have = 0
        if readinto is not None:
            with memoryview(buf) as out:
                while have < size:
                    n = readinto(out[have:])
                    if not n:
                        break
                    have += n
        else:
            while have < size:
                piece = source.read(size - have)
                if not piece:
                    break
                buf[have:have + len(piece)] = piece
                have += len(piece)
        if not have:
            return
        if have < size:
            del buf[have:]
        yield buf
        del buf
        if have < size:
            return
