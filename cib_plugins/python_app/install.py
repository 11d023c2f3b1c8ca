"""Wheels installed into layer entries, as pip installs them, with pypa's ``installer``.

The destination is a virtual environment at ``/opt/venv`` made without running Python: a
``pyvenv.cfg`` naming the base's interpreter and a ``bin/python`` link to it, so the base's own
packages stay untouched and nothing shadows the standard library. ``installer`` does what pip
does with a wheel (the ``.data`` schemes, console scripts with ``#!/opt/venv/bin/python``, the
``RECORD`` with every file's hash, ``INSTALLER``); the files go into one anonymous spool file
instead of a directory, so the layer gets the modes cib chooses (0755 for executables, 0644
otherwise) whatever the umask, and no ``.pyc`` is compiled (the host's Python is not the
image's). A wheel's ``RECORD`` is checked against its files before anything is installed.
"""

from __future__ import annotations

import hashlib
import io
import os
import posixpath
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, cast

from installer import install
from installer.destinations import SchemeDictionaryDestination
from installer.records import Hash, RecordEntry
from installer.scripts import Script
from installer.sources import WheelFile
from installer.utils import Scheme, copyfileobj_with_hashing

from cib_core.plugin_api import (
    Entry,
    FileSlice,
    PackagingError,
    dir_entry,
    file_entry,
    symlink_entry,
)

from .target import VENV, PythonTarget

if TYPE_CHECKING:
    from installer.scripts import ScriptSection

INSTALLER = b"cib\n"
"""The ``INSTALLER`` file of every distribution cib installs."""


@dataclass(frozen=True)
class Wheel:
    """A wheel pinned by its lock hash: downloaded (``source`` a path, checked against the
    hash), or to be downloaded when first installed (``source`` a callable that fetches and
    checks it), so that a layer a cache holds needs no download."""

    name: str
    version: str
    source: Path | Callable[[], Path]
    sha256: str
    filename: str
    unpacked: int  # bytes of its files, uncompressed

    @property
    def path(self) -> Path:
        return self.source if isinstance(self.source, Path) else self.source()


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The sha256 of a local file's bytes, in hex."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def open_wheel(name: str, version: str, path: Path, sha256: str, filename: str) -> Wheel:
    """``path`` as a :class:`Wheel`; a file that is not a zip archive is refused here."""
    try:
        with zipfile.ZipFile(path) as archive:
            unpacked = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, OSError) as exc:
        raise PackagingError(f"{filename} ({name} {version})", f"is not a wheel: {exc}; the "
                             "index served something else, or the file is damaged") from exc
    return Wheel(name, version, path, sha256, filename, unpacked)


def scheme_dict(target: PythonTarget, name: str) -> dict[str, str]:
    site = target.site_packages
    return {"purelib": site, "platlib": site, "scripts": f"{VENV}/bin", "data": VENV,
            "headers": f"{VENV}/include/site/python{target.short_version}/{name}"}


@dataclass
class _Spooled(SchemeDictionaryDestination):
    """An installer destination that collects layer entries instead of writing files."""

    spool: BinaryIO | None = None
    files: dict[str, tuple[int, int, bool]] = field(default_factory=dict)  # path: offset, size, x

    def write_to_fs(self, scheme: Scheme, path: str, stream: BinaryIO,
                    is_executable: bool) -> RecordEntry:
        root = posixpath.normpath(self.scheme_dict[scheme])
        target = posixpath.normpath(posixpath.join(root, path))
        if not (target + "/").startswith(root.rstrip("/") + "/"):
            raise PackagingError(path, f"would be installed outside {root}")
        assert self.spool is not None  # noqa: S101 - set by install_entries
        offset = self.spool.seek(0, io.SEEK_END)
        digest, size = copyfileobj_with_hashing(stream, self.spool, self.hash_algorithm)
        self.files[target.lstrip("/")] = (offset, size, is_executable)
        return RecordEntry(path, Hash(self.hash_algorithm, digest), size)

    def write_script(self, name: str, module: str, attr: str, section: ScriptSection) -> RecordEntry:
        script_name, data = Script(name, module, attr, section).generate(
            self.interpreter, self.script_kind)
        return self.write_to_fs(Scheme("scripts"), script_name, io.BytesIO(data), True)


def install_entries(wheels: Sequence[Wheel], target: PythonTarget) -> list[Entry]:
    """Layer entries of ``wheels`` installed into the target's virtual environment."""
    spool = cast(BinaryIO, tempfile.TemporaryFile(prefix="cib-install-"))  # noqa: SIM115 - kept by the slices
    files: dict[str, tuple[int, int, bool]] = {}
    for wheel in wheels:
        destination = _Spooled(scheme_dict=scheme_dict(target, wheel.name),
                               interpreter=f"{VENV}/bin/python", script_kind="posix",
                               spool=spool, files=files)
        what = f"{wheel.filename} ({wheel.name} {wheel.version})"
        try:
            with WheelFile.open(wheel.path) as source:
                try:
                    source.validate_record()
                except ValueError as exc:
                    issues = "; ".join(getattr(exc, "issues", None) or [str(exc)])
                    raise PackagingError(what, f"has a RECORD that does not match its files "
                                         f"({issues[:400]}); the wheel is broken or was altered") from exc
                install(source, destination, {"INSTALLER": INSTALLER})
        except PackagingError:
            raise
        except (zipfile.BadZipFile, OSError) as exc:
            raise PackagingError(what, f"cannot be installed: {exc}") from exc
        except Exception as exc:  # noqa: BLE001 - installer's own errors (InstallerError, ...)
            raise PackagingError(what, f"cannot be installed: {type(exc).__name__}: {exc}") from exc
    spool.flush()
    return [file_entry(path, size, FileSlice(spool, offset, size, name=path),
                       0o755 if executable else 0o644)
            for path, (offset, size, executable) in files.items()]


def pyvenv_cfg(target: PythonTarget) -> bytes:
    home = posixpath.dirname(target.interpreter)
    return (f"home = {home}\ninclude-system-site-packages = false\nversion = {target.version}\n"
            f"executable = {target.interpreter}\n").encode()


def venv_entries(target: PythonTarget) -> list[Entry]:
    """The virtual environment itself: ``pyvenv.cfg``, ``bin/python`` links to the base's
    interpreter, an empty ``site-packages`` (and ``lib64``, as ``python -m venv`` makes)."""
    root = VENV.lstrip("/")
    cfg = pyvenv_cfg(target)
    return [
        file_entry(f"{root}/pyvenv.cfg", len(cfg), io.BytesIO(cfg)),
        dir_entry(f"{root}/bin"),
        symlink_entry(f"{root}/bin/python", target.interpreter),
        symlink_entry(f"{root}/bin/python3", "python"),
        symlink_entry(f"{root}/bin/python{target.short_version}", "python"),
        dir_entry(f"{root}/include"),
        dir_entry(target.site_packages.lstrip("/")),
        symlink_entry(f"{root}/lib64", "lib"),
    ]


def group_wheels(wheels: Iterable[Wheel], big: int) -> tuple[list[Wheel], list[Wheel]]:
    """``(large, rest)``: each wheel over ``big`` bytes unpacked gets a layer of its own."""
    large: list[Wheel] = []
    rest: list[Wheel] = []
    for wheel in sorted(wheels, key=lambda w: (w.name, w.filename)):
        (large if wheel.unpacked > big else rest).append(wheel)
    return large, rest


def content_sha256(path: Path) -> str:
    """A hash of a wheel's members (names and bytes), not of the zip: a wheel rebuilt from
    the same files with new timestamps hashes the same."""
    h = hashlib.sha256(b"cib-wheel-content-1\0")
    with zipfile.ZipFile(path) as archive:
        for info in sorted(archive.infolist(), key=lambda i: i.filename):
            if info.is_dir():
                continue
            h.update(info.filename.encode() + b"\0" + str(info.file_size).encode() + b"\0")
            h.update(str((info.external_attr >> 16) & 0o111).encode())
            with archive.open(info) as member:
                while chunk := member.read(1 << 20):
                    h.update(chunk)
    return h.hexdigest()

