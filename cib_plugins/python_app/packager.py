"""The Python packager's flow. For each platform of the build: read the target Python from
the base (``target``), pick the lock's wheels for it (``locks``), fetch them (``index``), and
return layers whose entries install them into ``/opt/venv`` (``install``): each distribution
over 64 MiB unpacked alone, then the other dependencies with the virtual environment itself,
then the project built as a wheel (``project``), or a plain directory copied to the app
directory. Every layer's key is made of what decides its bytes (wheel hashes, the target's
layout, the project wheel's files), so a code change rebuilds and uploads the project layer
only, and two platforms with the same Python share the layers that come out the same.
"""

from __future__ import annotations

import concurrent.futures
import functools
import hashlib
import importlib.metadata
import logging
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from packaging.utils import canonicalize_name

from cib_core.plugin_api import (
    AppImage,
    AppLayer,
    AppOptions,
    BaseImage,
    Entry,
    PackagingError,
    dir_entry,
)

from . import index, install, locks, project, target
from .locks import DistFile, Lock, Locked
from .target import VENV, PythonTarget

log = logging.getLogger(__name__)

BIG_DISTRIBUTION = 64 << 20
"""A distribution larger than this (unpacked) gets a layer of its own."""
LAYER_FORMAT = "cib-python-layer-1"


@dataclass(frozen=True)
class _Pick:
    package: Locked
    file: DistFile


class Packager:
    """One packaging of one project. Its scratch directory (downloads when the cache is off,
    the project's wheel) is removed when the packager is, and every layer it returns keeps
    it alive until the layer is dropped."""

    def __init__(self, root: Path, options: AppOptions) -> None:
        self.root = root
        self.options = options
        self.cache = str(Path(options.cache_dir) / "python") if options.cache_dir else None
        self._scratch = tempfile.TemporaryDirectory(prefix="cib-python-")
        self.scratch = Path(self._scratch.name)

    # -- the whole flow --------------------------------------------------------------------
    def package(self, bases: Sequence[BaseImage]) -> list[AppImage]:
        override = self.options.settings.get("python_target") or {}
        if not isinstance(override, dict):
            raise PackagingError("python_target", "must be a mapping like "
                                 '{"interpreter": "/usr/bin/python3.11"}')
        targets = [target.detect(base, override, self.cache) for base in bases]
        proj = project.read_project(self.root)
        lock_path = locks.find_lock(self.root, self.options.lock)
        lock = locks.read_lock(lock_path) if lock_path is not None else None
        if lock is None and proj.dependencies:
            raise PackagingError(self.root, f"declares {len(proj.dependencies)} dependencies "
                                 "but has no lock (pylock.toml, uv.lock, or a requirements.txt with "
                                 "--hash); write one with `uv lock`, `pip lock` or `pip-compile "
                                 "--generate-hashes`, or name it with --lock")
        if proj.pyproject is None and lock is None:
            raise PackagingError(self.root, "has neither a pyproject.toml nor a lock; cib "
                                 "packages a Python project or a directory with a requirements.txt")
        finder = index.Finder(self._sources(lock), self.cache, self.scratch,
                              self.options.progress, self.options.jobs)
        try:
            picks = [self._pick(lock, t, finder) if lock else [] for t in targets]
            if self.options.dry_run:
                return [self._plan(t, p, proj, lock) for t, p in zip(targets, picks, strict=True)]
            return self._build(bases, targets, picks, proj, lock, finder)
        finally:
            finder.close()

    def _sources(self, lock: Lock | None) -> index.Sources:
        extra_index = tuple(lock.index_urls) if lock else ()
        extra_links = tuple(lock.find_links) if lock else ()
        if self.options.index_url or self.options.find_links:
            indexes = ((self.options.index_url,) if self.options.index_url else ()) + extra_index
            return index.Sources(indexes, tuple(self.options.find_links) + extra_links)
        configured = index.pip_configuration()
        return index.Sources(configured.index_urls + extra_index, configured.find_links + extra_links)

    def _pick(self, lock: Lock, t: PythonTarget, finder: index.Finder) -> list[_Pick]:
        picks = []
        accepted = t.tags()  # ~1000 tags: made once, not once per package
        for package in lock.packages(t, str(self.root)):
            if package.chosen is not None:
                picks.append(_Pick(package, package.chosen))
                continue
            links = [link for link in finder.project_links(package.name) if not link.yanked]
            files = []
            sdist = False
            for link in links:
                tags = locks.wheel_tags(link.filename)
                if tags is None:
                    sdist = sdist or _version_of(link.filename) == package.version
                    continue
                if (_version_of(link.filename) == package.version
                        and (link.sha256 is None or link.sha256 in package.hashes)):
                    files.append(DistFile(link.filename, link.url, None, link.sha256))
            best = locks.best_wheel(files, accepted)
            if best is None:
                raise locks.no_wheel(package.name, package.version, t, files, sdist,
                                     finder.sources.describe())
            picks.append(_Pick(package, best))
        return picks

    # -- a dry run -------------------------------------------------------------------------
    def _plan(self, t: PythonTarget, picks: list[_Pick], proj: project.Project,
              lock: Lock | None) -> AppImage:
        lines = [f"{t.platform}: {t.describe()}",
                 f"  lock: {lock.name if lock else 'none'}"]
        lines += [f"  {p.package.name} {p.package.version}: {p.file.filename}" for p in picks]
        if proj.pyproject is not None:
            lines.append(f"  project {proj.label}: built as a wheel from {self.root / 'pyproject.toml'}")
        else:
            lines.append(f"  project: {self.root} copied to {self.options.app_dir}")
        details = {"platform": t.platform, "python": {
            "interpreter": t.interpreter, "version": t.version, "abi": t.abi,
            "libc": f"{t.libc} {t.libc_version[0]}.{t.libc_version[1]}", "machine": t.machine},
            "lock": lock.name if lock else None,
            "wheels": [{"name": p.package.name, "version": p.package.version,
                        "file": p.file.filename, "sha256": p.file.sha256} for p in picks]}
        return AppImage(summary=tuple(lines), details=details,
                        entrypoint=project.entrypoint_for(proj, self.options.entrypoint, f"{VENV}/bin"))

    # -- the real thing --------------------------------------------------------------------
    def _build(self, bases: Sequence[BaseImage], targets: list[PythonTarget], picks: list[list[_Pick]],
               proj: project.Project, lock: Lock | None, finder: index.Finder) -> list[AppImage]:
        wanted = [(p.package.name, p.file, p.package.hashes, lock.name if lock else "")
                  for platform_picks in picks for p in platform_picks]
        out = self.scratch / "project"
        out.mkdir()
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="cib-project") as pool:
            # the project builds in its own process while the dependencies download
            building = (pool.submit(project.build_wheel, proj, out, cache_dir=self.cache,
                                    sources=finder.sources)
                        if proj.pyproject is not None else None)
            try:
                # the sizes decide the layers; the wheels are downloaded when a layer that
                # needs them is built, so layers a cache holds download nothing
                sizes = finder.unpacked_sizes(wanted)
            finally:
                built = building.result() if building is not None else None
        project_wheel = None
        if built is not None:
            name, version = built.name.split("-")[:2]
            project_wheel = install.open_wheel(canonicalize_name(name), version, built,
                                               install.content_sha256(built), built.name)
        wheels: dict[str, install.Wheel] = {}
        for p in (p for platform_picks in picks for p in platform_picks):
            if p.file.filename not in wheels:
                wheels[p.file.filename] = self._wheel(p, sizes.get(p.file.filename), finder,
                                                      lock.name if lock else "")
        images = []
        for base, t, platform_picks in zip(bases, targets, picks, strict=True):
            chosen = [wheels[p.file.filename] for p in platform_picks]
            images.append(self._image(base, t, chosen, proj, project_wheel))
        return images

    @staticmethod
    def _wheel(pick: _Pick, size: int | None, finder: index.Finder, where: str) -> install.Wheel:
        """The wheel of ``pick``, downloaded now only when its size or hash (for the layer
        keys) is not known without it."""
        item = (pick.package.name, pick.file, pick.package.hashes, where)
        allowed = pick.package.hashes
        sha = pick.file.sha256 or (next(iter(allowed)) if len(allowed) == 1 else None)
        if sha is None or size is None:
            path = finder.fetch(*item)
            return install.open_wheel(pick.package.name, pick.package.version, path,
                                      sha or install.file_sha256(path), pick.file.filename)
        return install.Wheel(pick.package.name, pick.package.version,
                             functools.partial(finder.fetch, *item), sha, pick.file.filename, size)

    def _producer(self, make: Callable[[], list[Entry]],
                  wheels: Sequence[install.Wheel] = ()) -> Callable[[], list[Entry]]:
        def produce() -> list[Entry]:
            # referring to the packager keeps its scratch directory (the wheels) alive
            log.debug("installing into a layer from %s", self.scratch)
            fetch = [w.source for w in wheels if not isinstance(w.source, Path)]
            if fetch:
                index.parallel(lambda get: get(), fetch, self.options.jobs)  # side by side
            return make()

        return produce

    def _image(self, base: BaseImage, t: PythonTarget, wheels: list[install.Wheel],
               proj: project.Project, project_wheel: install.Wheel | None) -> AppImage:
        layout = (LAYER_FORMAT, _installer_version(), t.interpreter, t.version, t.abi,
                  t.site_packages, VENV)
        large, rest = install.group_wheels(wheels, BIG_DISTRIBUTION)
        layers = [AppLayer(f"python {w.name} {w.version}", _key("dist", layout, w.sha256),
                           self._producer(functools.partial(install.install_entries, [w], t), [w]))
                  for w in large]
        noun = "wheel" if len(rest) == 1 else "wheels"
        layers.append(AppLayer(
            f"python dependencies: {len(rest)} {noun}",
            _key("deps", layout, install.pyvenv_cfg(t).decode(), *sorted(w.sha256 for w in rest)),
            self._producer(lambda: [*install.venv_entries(t), *install.install_entries(rest, t)],
                           rest)))
        app_dir = self.options.app_dir
        if project_wheel is not None:
            layers.append(AppLayer(
                f"python project {project_wheel.name} {project_wheel.version}",
                _key("project", layout, project_wheel.sha256, app_dir),
                self._producer(lambda: [dir_entry(app_dir.strip("/")),
                                   *install.install_entries([project_wheel], t)])))
        else:
            layers.append(AppLayer(f"app directory {self.root.name}",
                                   files={app_dir: str(self.root)},
                                   ignores=project.APP_DIR_IGNORES))
        path = dict(e.split("=", 1) for e in base.config.get("Env") or [] if "=" in e).get(
            "PATH", target.DEFAULT_PATH)
        return AppImage(
            layers=tuple(layers),
            env={"VIRTUAL_ENV": VENV, "PATH": f"{VENV}/bin:{path}"},
            entrypoint=project.entrypoint_for(proj, self.options.entrypoint, f"{VENV}/bin"),
            working_dir=app_dir,
            summary=(f"{t.platform}: {t.describe()}",))


def _version_of(filename: str) -> str | None:
    parts = filename.split("-")
    return parts[1] if len(parts) > 1 else None


def _key(kind: str, layout: tuple[str, ...], *parts: str) -> str:
    h = hashlib.sha256()
    for part in (kind, *layout, *parts):
        h.update(part.encode() + b"\0")
    return f"python-{kind}-{h.hexdigest()}"


def _installer_version() -> str:
    try:
        return importlib.metadata.version("installer")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover
        return "unknown"

