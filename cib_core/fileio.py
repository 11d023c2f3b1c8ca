"""Writing local files: whole or not at all, and every failure a ``LocalWriteError``.

A file is written to a temporary name beside its final one and renamed at the end, so readers
see the old file or the complete new one, and a failed write leaves nothing that looks
finished. Operating-system errors met while writing become a ``LocalWriteError`` that names
the target the user asked for (an OCI layout, an archive, an exported tarball) in plain words,
through :func:`write_failure`, the one place that reads error numbers.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, cast

from cib_core.errors import LocalWriteError

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

    def write(self, data: bytes) -> int:
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
