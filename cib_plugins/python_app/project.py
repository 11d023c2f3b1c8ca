"""The project itself: its ``pyproject.toml`` read, and its wheel built on this machine.

The wheel is built through the project's PEP 517 backend (``pyproject_hooks``, as ``python
-m build`` and pip do), from a copy of the project without version-control data, virtual
environments or earlier build output, so nothing is written into the user's checkout and no
stale ``build/`` directory leaks into the wheel. When the running Python already has what the
backend requires, the build uses it (as ``python -m build --no-isolation``); otherwise the
requirements are installed once with pip into a build environment kept in cib's cache. Only
pure wheels are accepted: compiled code built here would be for this machine, not the image.
When only modules the last wheel holds verbatim changed, the wheel is made from that one
without the backend (``incremental`` says when).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyproject_hooks
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import InvalidWheelFilename, parse_wheel_filename

from cib_core.plugin_api import PackagingError

from . import incremental
from .index import Sources

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]

log = logging.getLogger(__name__)

DEFAULT_BACKEND = "setuptools.build_meta:__legacy__"
DEFAULT_REQUIRES = ("setuptools>=40.8.0",)
BUILD_TIMEOUT = 900.0
OUTPUT_LINES = 12
"""How many of a failed build's last output lines its error message quotes."""

# never copied for a build: version control, environments, caches, earlier build output
_SKIP_ANYWHERE = {".git", ".hg", ".svn", ".tox", ".nox", "__pycache__", ".mypy_cache",
                  ".pytest_cache", ".ruff_cache", "node_modules", ".venv"}
_SKIP_AT_ROOT = {"build", "dist", "venv"}
APP_DIR_IGNORES = (".git/", ".hg/", ".svn/", "__pycache__/", "*.pyc", ".venv/", ".tox/",
                   ".mypy_cache/", ".pytest_cache/", ".ruff_cache/")
"""What a plain project directory copied to the app directory leaves out."""


@dataclass(frozen=True)
class Project:
    root: Path
    pyproject: Mapping[str, Any] | None
    name: str | None = None
    scripts: Mapping[str, str] = field(default_factory=dict)
    dependencies: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return self.name or self.root.name


def read_project(root: Path) -> Project:
    path = root / "pyproject.toml"
    if not path.is_file():
        return Project(root, None)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise PackagingError(path, f"cannot be read: {exc}") from exc
    table: dict[str, Any] = data["project"] if isinstance(data.get("project"), dict) else {}
    scripts: dict[str, Any] = table["scripts"] if isinstance(table.get("scripts"), dict) else {}
    dependencies: list[Any] = (table["dependencies"] if isinstance(table.get("dependencies"), list)
                               else [])
    return Project(root, data, str(table.get("name")) if table.get("name") else None,
                   {str(k): str(v) for k, v in scripts.items()},
                   tuple(str(d) for d in dependencies))


def is_pure(filename: str) -> bool:
    try:
        tags = parse_wheel_filename(filename)[3]
    except InvalidWheelFilename:
        return False
    return all(tag.abi == "none" and tag.platform == "any" for tag in tags)


def ignored(name: str, at_root: bool) -> bool:
    """Whether a file or directory of the project is left out of the copy its build gets."""
    return name in _SKIP_ANYWHERE or name.endswith(".egg-info") or (at_root and name in _SKIP_AT_ROOT)


def copy_source(root: Path, destination: Path) -> None:
    def ignore(directory: str, names: list[str]) -> set[str]:
        at_root = Path(directory) == root
        return {n for n in names if ignored(n, at_root)}

    try:
        shutil.copytree(root, destination, ignore=ignore, symlinks=True)
    except (OSError, shutil.Error) as exc:
        raise PackagingError(root, f"cannot be copied for its build: {exc}") from exc


class _BuildFailed(Exception):
    def __init__(self, output: str, returncode: int) -> None:
        super().__init__(f"exit status {returncode}")
        self.output = output
        self.returncode = returncode


def _satisfied(requirements: Sequence[str]) -> bool:
    """Whether this Python has every requirement (markers evaluated for this machine)."""
    for text in requirements:
        try:
            requirement = Requirement(text)
        except InvalidRequirement:
            return False
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        try:
            version = importlib.metadata.version(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            return False
        if not requirement.specifier.contains(version, prereleases=True):
            return False
    return True


def _installed(paths: Sequence[str]) -> list[str]:
    """What a build finds installed (``paths`` first, then this Python's): the names of the
    distributions' metadata directories, which carry their versions, and of ``.pth`` files.
    Any install, upgrade or removal changes it, a plugin of the backend's included."""
    found = []
    for entry in [*paths, *sys.path]:
        try:
            with os.scandir(entry or ".") as names:
                found += sorted(f"{entry}/{n.name}" for n in names
                                if n.name.endswith((".dist-info", ".egg-info", ".egg-link", ".pth")))
        except OSError:  # a zip on sys.path, or a directory that is gone
            found.append(f"{entry}: not a directory")
    return found


def _pip_index_options(sources: Sources | None) -> list[str]:
    """The app's indexes and find-links for pip; with none named, pip's own configuration
    stays in force, as for a build that pip would isolate."""
    if sources is None:
        return []
    options: list[str] = []
    for i, url in enumerate(sources.index_urls):
        options += ["--index-url" if i == 0 else "--extra-index-url", url]
    for link in sources.find_links:
        options += ["--find-links", link]
    return options


def _build_env(requirements: Sequence[str], cache_dir: str | None, sources: Sources | None,
               scratch: Path) -> Path:
    """A directory with ``requirements`` installed (for ``PYTHONPATH``), made once per set of
    requirements and Python, kept in the cache."""
    key = hashlib.sha256(repr((sorted(requirements), sys.version, sys.executable)).encode()).hexdigest()
    final = (Path(cache_dir) / "build-envs" / key[:32]) if cache_dir else scratch / "build-env"
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=".tmp-"))
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-input",
               "--disable-pip-version-check", "--target", str(tmp), *_pip_index_options(sources),
               *requirements]
    log.info("installing the build requirements %s", ", ".join(requirements))
    done = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          timeout=BUILD_TIMEOUT, check=False)
    if done.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        output = (done.stdout + done.stderr).strip()
        raise PackagingError("the project's build requirements", f"{', '.join(requirements)} could "
                             f"not be installed by pip: {_tail(output)}", output=output)
    try:
        os.replace(tmp, final)
    except OSError:  # another build made it meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _tail(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    return " | ".join(lines[-OUTPUT_LINES:]) or "(no output)"


def build_wheel(project: Project, out: Path, *, cache_dir: str | None,
                sources: Sources | None) -> Path:
    """Build the project's wheel into ``out``; a failed build's output is in the error."""
    system = (project.pyproject or {}).get("build-system") or {}
    backend = str(system.get("build-backend") or DEFAULT_BACKEND)
    requires = [str(r) for r in system.get("requires") or DEFAULT_REQUIRES]
    backend_path = system.get("backend-path")
    scratch = out / "scratch"
    source = scratch / "source"
    extra_paths: list[str] = []
    captured: list[str] = []

    def runner(cmd: Sequence[str], cwd: str | None = None,
               extra_environ: Mapping[str, str] | None = None) -> None:
        env = dict(os.environ)
        env.update(extra_environ or {})
        if extra_paths:
            env["PYTHONPATH"] = os.pathsep.join([*extra_paths, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        done = subprocess.run(list(cmd), cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              timeout=BUILD_TIMEOUT, check=False)
        captured.append(done.stdout.decode("utf-8", "replace"))
        if done.returncode != 0:
            raise _BuildFailed("".join(captured), done.returncode)

    what = f"the build of {project.label} ({project.root})"
    caller = pyproject_hooks.BuildBackendHookCaller(
        str(source), backend, backend_path=backend_path, python_executable=sys.executable,
        runner=runner)
    retried = False
    try:
        if not _satisfied(requires):
            extra_paths.append(str(_build_env(requires, cache_dir, sources, scratch)))
        inputs = incremental.build_inputs(backend, requires, backend_path,
                                          _installed(extra_paths), os.environ)
        if cache_dir is not None:
            try:
                reused = incremental.reuse(cache_dir, project.root, project.pyproject, inputs,
                                           ignored, out)
            except OSError as exc:
                reused = f"the last build cannot be used ({exc})"
            if isinstance(reused, incremental.Reused):
                changed = ", ".join(reused.replaced) or "nothing changed"
                log.info("made the wheel of %s from its last build, the backend not run: "
                         "only modules it copies verbatim changed (%s)", project.label, changed)
                _remember(cache_dir, project, inputs, reused.snapshot, reused.wheel, reused.copies)
                return reused.wheel
            log.info("building the wheel of %s with its backend %s: %s", project.label,
                     backend, reused)
        copy_source(project.root, source)
        try:
            seen: incremental.Snapshot | None = incremental.snapshot(source, ignored)
        except (incremental.NotSnapshotted, OSError) as exc:
            log.debug("%s: no record for an incremental build: %s", what, exc)
            seen = None
        try:
            # every hook call is a process of its own that imports the backend: ask what else
            # the build needs only when a build with what is at hand failed
            name = caller.build_wheel(str(out))
        except _BuildFailed:
            more = [r for r in caller.get_requires_for_build_wheel() if r not in requires]
            if not more or _satisfied(more):
                raise
            log.info("%s needs %s as well; building again with them", what, ", ".join(more))
            captured.clear()
            extra_paths.insert(0, str(_build_env([*requires, *more], cache_dir, sources, scratch)))
            retried = True
            name = caller.build_wheel(str(out))
    except _BuildFailed as exc:
        raise PackagingError(what, f"failed ({exc}); its output ends: {_tail(exc.output)}",
                             output=exc.output) from exc
    except pyproject_hooks.BackendUnavailable as exc:
        output = "".join(captured) + exc.traceback
        raise PackagingError(what, f"cannot import the build backend {backend!r}: "
                             f"{_tail(output)}", output=output) from exc
    except subprocess.TimeoutExpired as exc:
        raise PackagingError(what, f"did not finish within {BUILD_TIMEOUT:.0f} s") from exc
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    log.debug("%s:\n%s", what, "".join(captured))
    wheel = out / name
    if not is_pure(name):
        raise PackagingError(what, f"made {name}, a wheel for one platform; cib builds the "
                             "project as a pure wheel only (compiled code built here would be "
                             "for this machine, not the image): move compiled code into a "
                             "dependency whose wheels the lock names")
    if cache_dir is not None and seen is not None and not retried:
        # a build that needed more than its declared requirements is not remembered: the
        # inputs above do not describe it
        _remember(cache_dir, project, inputs, seen, wheel, None)
    return wheel


def _remember(cache_dir: str, project: Project, inputs: str, seen: incremental.Snapshot,
              wheel: Path, copies: Mapping[str, str] | None) -> None:
    """Keep ``wheel`` for the next build (``copies``: its verbatim-copied modules, found in
    it when ``None``)."""
    try:
        if copies is None:
            copies = incremental.copied_modules(wheel, seen, project.root)
        incremental.remember(cache_dir, project.root, inputs, seen, wheel, copies)
    except (OSError, zipfile.BadZipFile) as exc:  # the next build runs the backend
        log.warning("cannot remember the wheel of %s in the cache %s: %s", project.label,
                    cache_dir, exc)


def entrypoint_for(project: Project, given: tuple[str, ...] | None, venv_bin: str) -> tuple[str, ...] | None:
    """The image's entrypoint: ``given`` (a console script's name becomes its path), else the
    project's single ``[project.scripts]`` entry."""
    if given is not None:
        if len(given) == 1 and given[0] in project.scripts:
            return (f"{venv_bin}/{given[0]}",)
        return given
    if len(project.scripts) == 1:
        return (f"{venv_bin}/{next(iter(project.scripts))}",)
    if project.scripts:
        log.warning("%s has %d [project.scripts] entries (%s); set the entrypoint to one of them",
                    project.root / "pyproject.toml", len(project.scripts), ", ".join(sorted(project.scripts)))
    return None
