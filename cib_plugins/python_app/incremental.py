"""The project's wheel made from its last one when only verbatim-copied modules changed.

A rebuild after a one-line change would otherwise spend most of its time in the project's
PEP 517 build: a process that imports the backend (setuptools alone takes ~0.5 s) to copy
the same files again. After each backend build cib remembers, in its cache and per project
directory, the wheel it got, the project's files as the backend saw them (each one's hash and
executable bit, and the directories) and which wheel members are byte-identical copies of
which project files. The next build reuses that wheel, with the changed members replaced and
their ``RECORD`` lines updated, only when all of these hold:

- the build inputs are the same: the backend and its requirements, what is installed where
  the build finds it (every distribution's name and version, so a backend plugin too), this
  Python, and the environment variables backends read (``SETUPTOOLS_*``,
  ``HATCH_*``, ``FLIT_*``, ``PDM_*``, ``POETRY_*``, ``DISTUTILS_*``, ``SOURCE_DATE_EPOCH``);
- ``[project]`` names a static ``version`` and declares nothing ``dynamic`` (a dynamic field
  may be read from a module, and the wheel's metadata would change with it);
- the project has no build code of its own (``setup.py``, ``hatch_build.py``,
  ``pdm_build.py``, Poetry's ``build.py``, ``cmdclass``, Hatch build hooks): such code may
  read a module or a file outside the project and decide what the wheel holds from it;
- the project holds the same files and directories, with the same executable bits, and no
  symbolic link or special file (a link may lead to files outside the project);
- every changed file is a verbatim-copied module of the last wheel: a file whose bytes were
  those of exactly one wheel member (outside ``.dist-info`` and ``.data``), whose path ends
  with that member's, whose bytes no other project file and no other member had, and which no
  configuration file (``pyproject.toml``, ``setup.cfg``, ``MANIFEST.in``, ``hatch.toml``)
  names. Every other file, these included, counts as configuration: a change
  to it runs the backend.

Anything else runs the backend, as does a record that cannot be read.
"""

from __future__ import annotations

import base64
import collections
import copy
import csv
import hashlib
import io
import json
import logging
import os
import shutil
import stat
import sys
import tempfile
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .install import file_sha256

log = logging.getLogger(__name__)

FORMAT = "cib-python-incremental-1"
CONFIG_FILES = ("pyproject.toml", "setup.py", "setup.cfg", "MANIFEST.in", "hatch.toml")
"""Files at the project's root that configure a build: never taken for copied modules, and
a file they name is not either."""
ENV_PREFIXES = ("SETUPTOOLS_", "HATCH_", "FLIT_", "PDM_", "POETRY_", "DISTUTILS_")
ENV_NAMES = ("SOURCE_DATE_EPOCH",)


@dataclass(frozen=True)
class Snapshot:
    """A project's files (``relpath: (sha256, executable)``) and directories."""

    files: Mapping[str, tuple[str, bool]]
    dirs: frozenset[str]


class NotSnapshotted(Exception):
    """The project holds something a snapshot cannot vouch for (the reason is the message)."""


def snapshot(root: Path, ignored: Callable[[str, bool], bool]) -> Snapshot:
    """The files and directories of ``root`` that a build copies (``ignored(name, at_root)``
    leaves the rest out); ``NotSnapshotted`` for a symbolic link or a special file."""
    files: dict[str, tuple[str, bool]] = {}
    dirs: set[str] = set()

    def walk(directory: str, rel: str) -> None:
        with os.scandir(directory) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                if ignored(entry.name, not rel):
                    continue
                path = f"{rel}{entry.name}"
                mode = entry.stat(follow_symlinks=False).st_mode
                if stat.S_ISDIR(mode):
                    dirs.add(path)
                    walk(entry.path, path + "/")
                elif stat.S_ISREG(mode):
                    files[path] = (file_sha256(entry.path), bool(mode & 0o111))
                elif stat.S_ISLNK(mode):
                    raise NotSnapshotted(f"{path} is a symbolic link")
                else:
                    raise NotSnapshotted(f"{path} is not a regular file")

    walk(str(root), "")
    return Snapshot(files, frozenset(dirs))


def build_inputs(backend: str, requires: Sequence[str], backend_path: object,
                 installed: Sequence[str], environ: Mapping[str, str]) -> str:
    """A hash of what a backend build depends on besides the project's files."""
    env = sorted((k, v) for k, v in environ.items()
                 if k.startswith(ENV_PREFIXES) or k in ENV_NAMES)
    text = json.dumps([FORMAT, sys.executable, sys.version, backend, sorted(requires),
                       repr(backend_path), list(installed), env])
    return hashlib.sha256(text.encode()).hexdigest()


BUILD_SCRIPTS = ("setup.py", "hatch_build.py", "pdm_build.py", "build.py")
"""Build code of the project's own at its root (``build.py`` is Poetry's build script)."""


def own_build_code(root: Path, pyproject: Mapping[str, Any] | None) -> str | None:
    """Why the project may run code of its own in its build, or ``None``. Such code may read
    a module, or a file outside the project, and decide what the wheel holds from it."""
    for name in BUILD_SCRIPTS:
        if (root / name).exists():
            return f"the project has a {name} (build code of its own)"
    tool = (pyproject or {}).get("tool")
    tool = tool if isinstance(tool, dict) else {}
    setuptools = tool.get("setuptools")
    if isinstance(setuptools, dict) and setuptools.get("cmdclass"):
        return "[tool.setuptools] names build commands of the project's own (cmdclass)"
    poetry = tool.get("poetry")
    if isinstance(poetry, dict) and (poetry.get("build") or poetry.get("build-script")):
        return "[tool.poetry] names a build script"
    hatch = tool.get("hatch")
    hatch_toml = root / "hatch.toml"
    if _has_key(hatch, "hooks") or (hatch_toml.is_file() and "hooks" in hatch_toml.read_text(
            encoding="utf-8", errors="replace")):
        return "the project configures Hatch build hooks"
    return None


def _has_key(value: object, key: str) -> bool:
    if isinstance(value, dict):
        return key in value or any(_has_key(v, key) for v in value.values())
    if isinstance(value, list):
        return any(_has_key(v, key) for v in value)
    return False


def static_version(pyproject: Mapping[str, Any] | None) -> str | None:
    """Why the project's metadata may depend on its modules, or ``None`` when it cannot."""
    table = (pyproject or {}).get("project")
    if not isinstance(table, dict):
        return "pyproject.toml has no [project] table (its metadata comes from the backend)"
    if table.get("dynamic"):
        return f"[project] declares dynamic fields ({', '.join(map(str, table['dynamic']))})"
    if not isinstance(table.get("version"), str):
        return "[project] has no static version"
    return None


# --------------------------------------------------------------------------------------------
# the record of the last backend build
# --------------------------------------------------------------------------------------------
def _record_paths(cache_dir: str, root: Path) -> tuple[Path, str]:
    key = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:32]
    return Path(cache_dir) / "incremental", key


def copied_modules(wheel: Path, snap: Snapshot, root: Path) -> dict[str, str]:
    """``{member: relpath}``: the wheel's members that are verbatim copies of project files
    (see the module's docstring for the rule)."""
    by_hash: dict[str, list[str]] = {}
    for rel, (digest, _) in snap.files.items():
        by_hash.setdefault(digest, []).append(rel)
    config_text = ""
    for name in CONFIG_FILES:
        try:
            config_text += (root / name).read_text(encoding="utf-8", errors="replace") + "\n"
        except OSError:
            pass
    copies: dict[str, str] = {}
    with zipfile.ZipFile(wheel) as archive:
        members = {i.filename: hashlib.sha256(archive.read(i)).hexdigest()
                   for i in archive.infolist() if not i.is_dir()}
    times = collections.Counter(members.values())
    for member, digest in members.items():
        top = member.split("/", 1)[0]
        if top.endswith((".dist-info", ".data")) or times[digest] > 1:
            continue  # metadata, or bytes the wheel holds twice (a license file also in the package)
        candidates = by_hash.get(digest, [])
        if len(candidates) != 1:
            continue  # no project file has these bytes, or several do: which one is unknown
        rel = candidates[0]
        if not (rel == member or rel.endswith("/" + member)):
            continue
        if rel in CONFIG_FILES or rel in config_text or rel.rsplit("/", 1)[-1] in config_text:
            continue
        copies[member] = rel
    sources = list(copies.values())
    return {m: rel for m, rel in copies.items() if sources.count(rel) == 1}


def remember(cache_dir: str, root: Path, inputs: str, snap: Snapshot, wheel: Path,
             copies: Mapping[str, str]) -> None:
    """Keep ``wheel`` and what it was made from for the next build of ``root``."""
    directory, key = _record_paths(cache_dir, root)
    directory.mkdir(parents=True, exist_ok=True)
    data = wheel.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    stored = directory / f"{key}-{digest[:16]}.whl"
    _write_atomically(stored, data)
    record = {"format": FORMAT, "root": str(root.resolve()), "inputs": inputs,
              "wheel": wheel.name, "stored": stored.name, "sha256": digest,
              "files": {rel: list(v) for rel, v in sorted(snap.files.items())},
              "dirs": sorted(snap.dirs), "copies": dict(sorted(copies.items()))}
    _write_atomically(directory / f"{key}.json", json.dumps(record, indent=0).encode())
    for old in directory.glob(f"{key}-*.whl"):
        if old != stored:  # a build reading it meanwhile falls back to the backend
            old.unlink(missing_ok=True)


def _write_atomically(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class Reused:
    wheel: Path
    replaced: tuple[str, ...]  # the project files whose members were replaced
    snapshot: Snapshot
    copies: Mapping[str, str]


def reuse(cache_dir: str, root: Path, pyproject: Mapping[str, Any] | None, inputs: str,
          ignored: Callable[[str, bool], bool], out: Path) -> Reused | str:
    """The project's wheel made in ``out`` from the last one, or why the backend must run."""
    why = static_version(pyproject) or own_build_code(root, pyproject)
    if why is not None:
        return why
    directory, key = _record_paths(cache_dir, root)
    try:
        record = json.loads((directory / f"{key}.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "no earlier build of this project in the cache"
    except (OSError, ValueError) as exc:
        return f"the record of the last build cannot be read ({exc})"
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        return "the record of the last build is of another format"
    if record.get("inputs") != inputs:
        return ("the build inputs changed (the backend, its requirements or their installed "
                "versions, Python, or the environment variables backends read)")
    try:
        snap = snapshot(root, ignored)
    except NotSnapshotted as exc:
        return str(exc)
    except OSError as exc:
        return f"the project cannot be read ({exc})"
    try:
        old_files = {str(k): (str(v[0]), bool(v[1])) for k, v in record["files"].items()}
        old_dirs = frozenset(str(d) for d in record["dirs"])
        copies = {str(k): str(v) for k, v in record["copies"].items()}
        stored = directory / str(record["stored"])
        name = str(record["wheel"])
        digest = str(record["sha256"])
    except (KeyError, TypeError, AttributeError, IndexError):
        return "the record of the last build is damaged"
    changed = _differences(old_files, old_dirs, snap, copies)
    if isinstance(changed, str):
        return changed
    try:
        data = stored.read_bytes()
    except OSError as exc:
        return f"the last wheel is not in the cache ({exc})"
    if hashlib.sha256(data).hexdigest() != digest or "/" in name or name in ("", ".", ".."):
        return "the last wheel in the cache does not match its record"
    members = {m: rel for m, rel in copies.items() if rel in changed}
    new: dict[str, bytes] = {}
    for member, rel in members.items():
        content = (root / rel).read_bytes()
        if hashlib.sha256(content).hexdigest() != snap.files[rel][0]:
            return f"{rel} changed while it was read"
        new[member] = content
    wheel = out / name
    try:
        _replace_members(data, new, wheel)
    except (zipfile.BadZipFile, ValueError, KeyError) as exc:
        wheel.unlink(missing_ok=True)
        return f"the last wheel cannot be updated ({exc})"
    return Reused(wheel, tuple(sorted(changed)), snap, copies)


def _differences(old_files: Mapping[str, tuple[str, bool]], old_dirs: frozenset[str],
                 snap: Snapshot, copies: Mapping[str, str]) -> set[str] | str:
    """The changed files, all verbatim-copied modules; else why the backend must run."""
    added = sorted(set(snap.files) - set(old_files))
    if added:
        return f"{added[0]} is new" + (f" (and {len(added) - 1} more)" if len(added) > 1 else "")
    removed = sorted(set(old_files) - set(snap.files))
    if removed:
        return f"{removed[0]} was removed" + (f" (and {len(removed) - 1} more)" if len(removed) > 1 else "")
    if snap.dirs != old_dirs:
        first = sorted(snap.dirs ^ old_dirs)[0]
        return f"the directory {first} is {'new' if first in snap.dirs else 'gone'}"
    copied = set(copies.values())
    changed = set()
    for rel, (digest, executable) in sorted(snap.files.items()):
        old_digest, old_executable = old_files[rel]
        if executable != old_executable:
            return f"the executable bit of {rel} changed"
        if digest == old_digest:
            continue
        if rel not in copied:
            return f"{rel} changed and is not a module the last wheel holds verbatim"
        changed.add(rel)
    return changed


def _record_hash(algorithm: str, data: bytes) -> str:
    digest = hashlib.new(algorithm, data).digest()
    return f"{algorithm}=" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _replace_members(old: bytes, new: Mapping[str, bytes], path: Path) -> None:
    """Write ``old`` (a wheel) to ``path`` with ``new``'s members replaced and their lines of
    ``RECORD`` given the new hashes and sizes; every other line stays as it was."""
    with zipfile.ZipFile(io.BytesIO(old)) as source:
        infos = source.infolist()
        records = [i.filename for i in infos if i.filename.count("/") == 1
                   and i.filename.split("/")[0].endswith(".dist-info")
                   and i.filename.endswith("/RECORD")]
        if len(records) != 1:
            raise ValueError(f"{len(records)} RECORD files")
        record_text = source.read(records[0]).decode("utf-8")
        lines = []
        pending = set(new)
        for line in record_text.splitlines(keepends=True):
            body = line.rstrip("\r\n")
            rows = list(csv.reader([body])) if body else []
            if rows and rows[0] and rows[0][0] in pending:
                row = rows[0]
                algorithm = row[1].split("=", 1)[0] if len(row) > 1 else ""
                if algorithm not in hashlib.algorithms_guaranteed:
                    raise ValueError(f"RECORD names {row[0]} with the hash {row[1]!r}")
                data = new[row[0]]
                text = io.StringIO()
                csv.writer(text, lineterminator="").writerow(
                    [row[0], _record_hash(algorithm, data), str(len(data)), *row[3:]])
                line = text.getvalue() + line[len(body):]
                pending.discard(row[0])
            lines.append(line)
        if pending:
            raise ValueError(f"RECORD does not name {sorted(pending)[0]}")
        replaced = {**new, records[0]: "".join(lines).encode("utf-8")}
        with open(path, "wb") as f, zipfile.ZipFile(f, "w") as target:
            for info in infos:
                # a copy of each entry: writing one sets its offsets, which reading needs
                if info.filename in replaced or info.is_dir():
                    target.writestr(copy.copy(info), replaced.get(info.filename, b""))
                else:
                    with source.open(info) as member, target.open(copy.copy(info), "w") as out:
                        shutil.copyfileobj(member, out, 1 << 20)
