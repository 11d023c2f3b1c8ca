"""Locks: which distributions, at which versions, with which hashes, for one target.

Three formats are read. ``pylock.toml`` (PEP 751) through ``packaging.pylock``, which also
picks each package's wheel by the target's tags. ``uv.lock``, a resolution graph: walked from
the project (its ``editable`` or ``virtual`` package) along the dependencies whose markers hold
for the target. A ``requirements.txt`` in pip's hash-checking form (every line ``name==version``
with ``--hash``es), whose files are found on the index. Markers are evaluated with the target's
values (its Python version, ``platform_machine``, ``sys_platform``), never the host's.
"""

from __future__ import annotations

import posixpath
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from packaging.markers import InvalidMarker, Marker
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.tags import Tag
from packaging.utils import (
    InvalidWheelFilename,
    NormalizedName,
    canonicalize_name,
    parse_wheel_filename,
)
from packaging.version import InvalidVersion

from cib_core.plugin_api import PackagingError

from .target import PythonTarget

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]

LOCK_NAMES = ("pylock.toml", "uv.lock", "requirements.txt")
"""Looked for in the project, in this order, when no lock is named."""


@dataclass(frozen=True)
class DistFile:
    """A file the lock allows: a wheel (or an sdist, which cib never builds)."""

    filename: str
    url: str | None = None
    path: str | None = None  # a local file, absolute
    sha256: str | None = None  # hex
    size: int | None = None


@dataclass(frozen=True)
class Locked:
    """One package the target needs.

    ``files`` are the lock's own files (empty for a ``requirements.txt``, whose files are
    found on the index); ``hashes`` the sha256 values any file of it must have.
    """

    name: NormalizedName
    version: str
    files: tuple[DistFile, ...] = ()
    hashes: frozenset[str] = frozenset()
    sdist: DistFile | None = None
    chosen: DistFile | None = None  # picked by the lock reader (pylock)


@dataclass
class Lock:
    """A lock file, parsed once; ``packages(target)`` selects for one target."""

    path: Path
    kind: str  # "pylock", "uv", "requirements"
    data: Any = None
    # a requirements.txt may name indexes and find-links of its own, as pip honours them
    index_urls: list[str] = field(default_factory=list)
    find_links: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(self.path)

    def packages(self, target: PythonTarget, project: str | None) -> list[Locked]:
        """The packages ``target`` needs, sorted by name; the project itself left out."""
        if self.kind == "pylock":
            found = _pylock_packages(self, target, project)
        elif self.kind == "uv":
            found = _uv_packages(self, target, project)
        else:
            found = _requirements_packages(self, target)
        return sorted(found, key=lambda p: p.name)


# --------------------------------------------------------------------------------------------
# Finding and reading
# --------------------------------------------------------------------------------------------
def find_lock(project: Path, named: str | None) -> Path | None:
    """The lock to use: ``named`` (relative to the current directory), else the first of
    :data:`LOCK_NAMES` in the project, else ``None``."""
    if named is not None:
        path = Path(named)
        if not path.is_file():
            what = "does not exist" if not path.exists() else "is not a file"
            raise PackagingError(named, f"{what}; name a pylock.toml, uv.lock or requirements.txt")
        return path
    for name in LOCK_NAMES:
        if (project / name).is_file():
            return project / name
    return None


def read_lock(path: Path) -> Lock:
    name = path.name
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PackagingError(path, f"cannot be read: {exc}") from exc
    if name.endswith(".toml") and name.startswith("pylock"):
        from packaging.pylock import Pylock, PylockValidationError

        try:
            return Lock(path, "pylock", Pylock.from_dict(tomllib.loads(text)))
        except (tomllib.TOMLDecodeError, PylockValidationError) as exc:
            raise PackagingError(path, f"is not a valid pylock.toml: {exc}") from exc
    if name.endswith(".lock"):
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise PackagingError(path, f"is not a valid uv.lock: {exc}") from exc
        if not isinstance(data.get("package"), list):
            raise PackagingError(path, "is not a uv.lock: it has no [[package]] tables")
        return Lock(path, "uv", data)
    return _read_requirements(path, text)


# --------------------------------------------------------------------------------------------
# Picking a wheel by tags
# --------------------------------------------------------------------------------------------
def wheel_tags(filename: str) -> frozenset[Tag] | None:
    """The tags of a wheel's file name; ``None`` when it is not a wheel's name."""
    try:
        return parse_wheel_filename(filename)[3]
    except InvalidWheelFilename:
        return None


def best_wheel(files: Iterable[DistFile], tags: Sequence[Tag]) -> DistFile | None:
    """The file whose best tag ranks highest in ``tags`` (the target's, best first)."""
    rank = {tag: i for i, tag in enumerate(tags)}
    best: tuple[int, DistFile] | None = None
    for file in files:
        found = wheel_tags(file.filename)
        if not found:
            continue
        score = min((rank[t] for t in found if t in rank), default=None)
        if score is not None and (best is None or score < best[0]):
            best = (score, file)
    return None if best is None else best[1]


def no_wheel(package: str, version: str, target: PythonTarget, files: Sequence[DistFile],
             sdist: bool, where: str) -> PackagingError:
    """The error for a package without a wheel this target can use."""
    wheels = sorted({f.filename for f in files if wheel_tags(f.filename)})
    offered = (f"; {where} offers {', '.join(wheels[:6])}{' ...' if len(wheels) > 6 else ''}"
               if wheels else f"; {where} offers no wheel of it")
    sdist_note = (" (cib installs wheels only and never builds an sdist for an image)"
                  if sdist else "")
    return PackagingError(
        f"{package} {version}",
        f"has no wheel for {target.platform} (CPython {target.version}, {target.abi}, "
        f"{target.platform_tags()[0]}){sdist_note}{offered}")


def _sha256_of(hashes: Mapping[str, Any] | None) -> str | None:
    if not hashes:
        return None
    value = hashes.get("sha256")
    return str(value).lower() if value else None


def _url_filename(url: str) -> str:
    return unquote(posixpath.basename(urlsplit(url).path))


def _local(lock: Lock, path: str | None) -> str | None:
    if path is None:
        return None
    return str((lock.path.parent / path).resolve())


def _same_directory(lock: Lock, path: str | None, project: str | None) -> bool:
    if path is None or project is None:
        return False
    return (lock.path.parent / path).resolve() == Path(project).resolve()


# --------------------------------------------------------------------------------------------
# pylock.toml
# --------------------------------------------------------------------------------------------
def _pylock_packages(lock: Lock, target: PythonTarget, project: str | None) -> list[Locked]:
    from packaging.pylock import PackageDirectory, PackageSdist, PackageWheel, PylockSelectError

    pylock = lock.data
    out = []
    try:
        for package, dist in pylock.select(environment=target.environment(), tags=target.tags()):
            version = str(package.version) if package.version is not None else "?"
            if isinstance(dist, PackageDirectory) and _same_directory(lock, dist.path, project):
                continue  # the project itself: built from its source
            wheels = [DistFile(w.filename, w.url, _local(lock, w.path), _sha256_of(w.hashes), w.size)
                      for w in package.wheels or ()]
            if isinstance(dist, PackageSdist):
                raise no_wheel(package.name, version, target, wheels, True, lock.name)
            if not isinstance(dist, PackageWheel):
                raise PackagingError(f"{package.name} in {lock.name}", f"comes from a "
                                     f"{type(dist).__name__.removeprefix('Package').lower()}, "
                                     "not a wheel; cib installs wheels from an index only")
            chosen = DistFile(dist.filename, dist.url, _local(lock, dist.path),
                              _sha256_of(dist.hashes), dist.size)
            out.append(Locked(package.name, version, tuple(wheels),
                              frozenset({chosen.sha256} if chosen.sha256 else ()), chosen=chosen))
    except PylockSelectError as exc:
        message = str(exc)
        m = re.search(r"for package '([^']+)'", message)
        what = f"{m.group(1)} in {lock.name}" if m else lock.name
        if "No wheel found" in message and m:
            package = next(p for p in pylock.packages if p.name == m.group(1))
            wheels = [DistFile(w.filename) for w in package.wheels or ()]
            raise no_wheel(m.group(1), str(package.version or "?"), target, wheels,
                           package.sdist is not None, lock.name) from exc
        raise PackagingError(what, f"cannot be installed for {target.platform} "
                             f"(CPython {target.version}): {message}") from exc
    return out


# --------------------------------------------------------------------------------------------
# uv.lock
# --------------------------------------------------------------------------------------------
def _marker_holds(text: str | None, env: Mapping[str, str], extras: Iterable[str], where: str) -> bool:
    if not text:
        return True
    try:
        marker = Marker(text)
    except InvalidMarker as exc:
        raise PackagingError(where, f"has an invalid marker {text!r}: {exc}") from exc
    extra_list = list(extras) or [""]
    return any(marker.evaluate({**env, "extra": extra}) for extra in extra_list)


def _uv_packages(lock: Lock, target: PythonTarget, project: str | None) -> list[Locked]:
    data = lock.data
    env = target.environment()
    requires = data.get("requires-python")
    if requires:
        try:
            if not SpecifierSet(requires).contains(target.version, prereleases=True):
                raise PackagingError(lock.name, f"requires Python {requires}, but the base "
                                     f"{target.platform} has CPython {target.version}")
        except (InvalidSpecifier, InvalidVersion):
            pass
    packages: list[dict[str, Any]] = [p for p in data["package"] if isinstance(p, dict)]
    by_name: dict[str, list[dict[str, Any]]] = {}
    for package in packages:
        by_name.setdefault(canonicalize_name(str(package.get("name", ""))), []).append(package)

    def source_kind(package: Mapping[str, Any]) -> str:
        source = package.get("source") or {}
        return next(iter(source), "") if isinstance(source, dict) else ""

    roots = [p for p in packages if source_kind(p) in ("editable", "virtual")]
    if not roots:
        raise PackagingError(lock.name, "names no project (no package with an editable or virtual "
                             "source); lock the project with `uv lock`")

    def resolve(dep: Mapping[str, Any], where: str) -> dict[str, Any]:
        name = canonicalize_name(str(dep.get("name", "")))
        candidates = by_name.get(name, [])
        if "version" in dep:
            candidates = [p for p in candidates if p.get("version") == dep["version"]]
        if "source" in dep:
            candidates = [p for p in candidates if p.get("source") == dep["source"]]
        if len(candidates) != 1:
            raise PackagingError(where, f"depends on {name}, which the lock has "
                                 f"{len(candidates)} matching entries for")
        return candidates[0]

    chosen: dict[tuple[str, str], dict[str, Any]] = {}
    todo: list[tuple[dict[str, Any], tuple[str, ...]]] = [(root, ()) for root in roots]
    seen: set[tuple[int, tuple[str, ...]]] = set()
    while todo:
        package, extras = todo.pop()
        if (id(package), extras) in seen:
            continue
        seen.add((id(package), extras))
        where = f"{package.get('name')} in {lock.name}"
        edges = list(package.get("dependencies") or [])
        optional = package.get("optional-dependencies") or {}
        for extra in extras:
            edges += list(optional.get(extra) or [])
        for dep in edges:
            if not isinstance(dep, dict) or not _marker_holds(dep.get("marker"), env, (), where):
                continue
            found = resolve(dep, where)
            if source_kind(found) not in ("editable", "virtual"):
                chosen[(str(found["name"]), str(found.get("version")))] = found
            todo.append((found, tuple(sorted(dep.get("extra") or ()))))
    out = []
    tags = target.tags()  # ~1000 tags: made once, not once per package
    for package in chosen.values():
        name = canonicalize_name(str(package["name"]))
        version = str(package.get("version", "?"))
        kind = source_kind(package)
        if kind not in ("registry", "url", "path") and kind:
            raise PackagingError(f"{name} in {lock.name}", f"comes from a {kind} source; cib "
                                 "installs wheels only")
        wheels = tuple(DistFile(_url_filename(str(w.get("url") or w.get("path"))),
                                str(w["url"]) if w.get("url") else None,
                                _local(lock, w.get("path")),
                                str(w.get("hash", "")).removeprefix("sha256:").lower() or None,
                                w.get("size"))
                       for w in package.get("wheels") or () if isinstance(w, dict)
                       and (w.get("url") or w.get("path")))
        sdist = package.get("sdist")
        sdist_file = (DistFile(_url_filename(str(sdist.get("url") or sdist.get("path") or "sdist")))
                      if isinstance(sdist, dict) else None)
        best = best_wheel(wheels, tags)
        if best is None:
            raise no_wheel(name, version, target, wheels, sdist_file is not None, lock.name)
        out.append(Locked(name, version, wheels,
                          frozenset({best.sha256} if best.sha256 else ()), sdist_file, best))
    return out


# --------------------------------------------------------------------------------------------
# requirements.txt with hashes
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Requirement:
    requirement: Requirement
    hashes: frozenset[str]
    line: int


def _logical_lines(text: str) -> Iterable[tuple[int, str]]:
    number, buffer, start = 0, "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = re.sub(r"(^|\s)#.*$", "", raw)
        if not buffer:
            start = number
        if line.endswith("\\"):
            buffer += line[:-1] + " "
            continue
        buffer += line
        if buffer.strip():
            yield start, buffer.strip()
        buffer = ""
    if buffer.strip():
        yield start, buffer.strip()


def _read_requirements(path: Path, text: str) -> Lock:
    lock = Lock(path, "requirements")
    entries: list[_Requirement] = []
    for number, line in _logical_lines(text):
        where = f"{path}:{number}"
        words = line.split()
        if words[0].startswith("-"):
            option, _, value = words[0].partition("=")
            value = value or (words[1] if len(words) > 1 else "")
            if option in ("-i", "--index-url", "--extra-index-url"):
                lock.index_urls.append(value)
            elif option in ("-f", "--find-links"):
                lock.find_links.append(value if "://" in value else str(path.parent / value))
            elif option in ("--no-binary", "--only-binary", "--prefer-binary", "--pre",
                            "--trusted-host", "--require-hashes", "--no-index"):
                pass
            else:
                raise PackagingError(where, f"has the option {option}, which cib does not take in a "
                                     "lock: name every package as name==version with --hash")
            continue
        hashes = frozenset(m.group(1).lower()
                           for m in re.finditer(r"--hash[=\s]+sha256:([0-9a-fA-F]{64})", line))
        spec = re.split(r"\s--hash", " " + line, maxsplit=1)[0].strip()
        try:
            requirement = Requirement(spec)
        except InvalidRequirement as exc:
            raise PackagingError(where, f"{spec!r} is not a requirement cib can lock: {exc}") from exc
        pins = [s for s in requirement.specifier if s.operator in ("==", "===") and "*" not in s.version]
        if requirement.url or len(pins) != 1:
            raise PackagingError(where, f"{spec!r} is not pinned; a lock names one version "
                                 "(name==1.2.3) with --hash=sha256:... (pip-compile "
                                 "--generate-hashes or uv export write such files)")
        if not hashes:
            raise PackagingError(where, f"{requirement.name} has no --hash=sha256:...; cib checks "
                                 "every file against the lock (pip-compile --generate-hashes)")
        entries.append(_Requirement(requirement, hashes, number))
    lock.data = entries
    return lock


def _requirements_packages(lock: Lock, target: PythonTarget) -> list[Locked]:
    env = target.environment()
    out = []
    for entry in lock.data:
        requirement = entry.requirement
        marker = requirement.marker
        if marker is not None and not marker.evaluate({**env, "extra": ""}):
            continue
        version = next(iter(requirement.specifier)).version
        out.append(Locked(canonicalize_name(requirement.name), version, hashes=entry.hashes))
    return out
