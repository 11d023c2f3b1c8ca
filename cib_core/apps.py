"""Apps packaged by ``cib_app_packager`` plugins: the base's files as they see them, and what
their answers change in an image.

``Image.add_app`` (and ``add_python_app``) gives the packager one :class:`BaseFiles` per
platform of the build: a read-only view of the base's merged filesystem that fetches the
base's layers only when a file is first asked for (the Python packager caches what it learns
under the view's ``key``, so a rebuild fetches nothing). Each layer is decompressed once into
a temporary tar file and indexed; reads are ``pread``s of the members. Whiteouts and opaque
directories of upper layers hide what lower layers hold, as a container runtime would.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import shutil
import tarfile
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

from cib_core.compression import decompressed
from cib_core.errors import PackagingError
from cib_core.formats.flatten import OPAQUE_MARKER, WHITEOUT_PREFIX
from cib_core.image_config import merge_env
from cib_core.plugin_api import AppImage, AppOptions, FileInfo

if TYPE_CHECKING:
    import pluggy

log = logging.getLogger(__name__)

MAX_SYMLINK_HOPS = 40
"""As Linux's ``MAXSYMLINKS``: more links than this on one path is a loop."""

_KINDS = {tarfile.REGTYPE: "file", tarfile.AREGTYPE: "file", tarfile.CONTTYPE: "file",
          tarfile.DIRTYPE: "dir", tarfile.SYMTYPE: "symlink", tarfile.LNKTYPE: "hardlink"}


@dataclass(frozen=True)
class _Member:
    info: FileInfo
    layer: int  # which layer put it there (lowest is 0)
    blob: str  # the decompressed layer file holding its data
    offset: int


def _clean(name: str) -> str:
    """A tar member name as an absolute, normalized path ("/" for the root)."""
    path = posixpath.normpath("/" + name.lstrip("/"))
    return "/" if path in ("/", "//") else path


class FactKeeper(Protocol):
    """Where ``BaseFiles`` keeps what packagers learn about a base: ``BuildCache`` is one
    (the cache repository)."""

    def recall(self, key: str, label: str) -> Mapping[str, Any] | None: ...

    def note(self, key: str, facts: Mapping[str, Any], label: str) -> None: ...


class BaseFiles:
    """One platform of a base image as a ``cib_core.plugin_api.BaseImage``.

    ``layers`` are ``(digest, open)`` pairs, lowest first; ``open()`` gives the layer blob as
    stored (any compression). ``close()`` removes the temporary files.
    """

    def __init__(self, name: str, platform: str, config: Mapping[str, Any],
                 layers: Sequence[tuple[str, Callable[[], BinaryIO]]],
                 facts: FactKeeper | None = None) -> None:
        self._name = name
        self._facts = facts
        self._platform = platform
        inner = config.get("config")
        self._config: Mapping[str, Any] = dict(inner) if isinstance(inner, Mapping) else {}
        self._layers = list(layers)
        h = hashlib.sha256(b"cib-base-files-1\0")
        h.update(platform.encode())
        for digest, _ in self._layers:
            h.update(b"\0" + digest.encode())
        self._key = "sha256:" + h.hexdigest()
        self._lock = threading.Lock()
        self._members: dict[str, _Member] | None = None
        self._children: dict[str, set[str]] = {}
        self._tmp: str | None = None

    # -- the BaseImage protocol ------------------------------------------------------------
    @property
    def platform(self) -> str:
        return self._platform

    @property
    def config(self) -> Mapping[str, Any]:
        return self._config

    @property
    def key(self) -> str:
        return self._key

    @property
    def name(self) -> str:
        return f"{self._name} ({self._platform})"

    def recall(self, name: str) -> Mapping[str, Any] | None:
        if self._facts is None:
            return None
        return self._facts.recall(self._fact_key(name), f"facts {name!r} of {self.name}")

    def remember(self, name: str, facts: Mapping[str, Any]) -> None:
        try:
            json.dumps(dict(facts), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise PackagingError(f"facts {name!r} of {self.name}",
                                 f"are not a JSON object: {exc}") from None
        if self._facts is not None:
            self._facts.note(self._fact_key(name), facts, f"facts {name!r} of {self.name}")

    def _fact_key(self, name: str) -> str:
        if not isinstance(name, str) or not name:
            raise PackagingError(f"facts of {self.name}", "need a name (a non-empty string)")
        h = hashlib.sha256(b"cib-base-facts-1\0" + self._key.encode() + b"\0")
        h.update(name.encode())
        return h.hexdigest()

    def stat(self, path: str) -> FileInfo | None:
        members = self._index()
        path = _clean(path)
        member = members.get(path)
        if member is not None:
            return member.info
        if path == "/" or path in self._children:  # a directory only implied by its contents
            return FileInfo(path, "dir", 0o755, 0)
        return None

    def realpath(self, path: str) -> str | None:
        members = self._index()
        parts = [p for p in _clean(path).split("/") if p]
        resolved: list[str] = []
        hops = 0
        while parts:
            part = parts.pop(0)
            if part == "..":
                if resolved:
                    resolved.pop()
                continue
            candidate = "/" + "/".join([*resolved, part])
            member = members.get(candidate)
            if member is None:
                if candidate not in self._children:
                    return None
                resolved.append(part)
                continue
            if member.info.kind == "symlink":
                hops += 1
                if hops > MAX_SYMLINK_HOPS:
                    return None
                target = member.info.linkname
                if target.startswith("/"):
                    resolved = []
                parts = [p for p in target.split("/") if p and p != "."] + parts
                continue
            resolved.append(part)
        return "/" + "/".join(resolved)

    def listdir(self, path: str) -> list[str]:
        self._index()
        real = self.realpath(path)
        if real is None:
            return []
        return sorted(self._children.get(real, ()))

    def read(self, path: str, limit: int = 64 << 20) -> bytes:
        members = self._index()
        real = self.realpath(path)
        member = members.get(real) if real is not None else None
        if member is None or member.info.kind not in ("file", "hardlink"):
            what = "is not a file" if member is not None else "does not exist"
            raise PackagingError(f"{path} in the base {self.name}", what)
        with open(member.blob, "rb") as f:
            f.seek(member.offset)
            return f.read(min(member.info.size, limit))

    # -- reading the layers ----------------------------------------------------------------
    def _index(self) -> dict[str, _Member]:
        with self._lock:
            if self._members is None:
                self._members = self._read_layers()
                for path in self._members:
                    parent, _, leaf = path.rpartition("/")
                    while leaf:
                        self._children.setdefault(parent or "/", set()).add(leaf)
                        parent, _, leaf = parent.rpartition("/")
            return self._members

    def _read_layers(self) -> dict[str, _Member]:
        self._tmp = tempfile.mkdtemp(prefix="cib-base-files-")
        members: dict[str, _Member] = {}
        for number, (digest, opener) in enumerate(self._layers):
            blob = os.path.join(self._tmp, f"layer-{number}.tar")
            log.debug("reading layer %s of %s for its files", digest, self.name)
            with opener() as raw, open(blob, "wb") as out:
                stream, _kind = decompressed(raw, f"layer {digest}")
                shutil.copyfileobj(stream, out, 1 << 20)
            try:
                with tarfile.open(blob, "r:") as tar:
                    for info in tar:
                        self._apply(members, number, blob, info)
            except tarfile.TarError as exc:
                raise PackagingError(f"layer {digest} of the base {self.name}",
                                     f"is not a readable tar archive ({exc})") from exc
        return members

    @staticmethod
    def _drop_below(members: dict[str, _Member], path: str, layer: int, *, itself: bool) -> None:
        prefix = path.rstrip("/") + "/"
        for name in [n for n, m in members.items() if m.layer < layer
                     and (n.startswith(prefix) or (itself and n == path))]:
            del members[name]

    def _apply(self, members: dict[str, _Member], layer: int, blob: str,
               info: tarfile.TarInfo) -> None:
        path = _clean(info.name)
        if path == "/":
            return
        parent, _, leaf = path.rpartition("/")
        parent = parent or "/"
        if leaf == OPAQUE_MARKER:
            self._drop_below(members, parent, layer, itself=False)
            return
        if leaf.startswith(WHITEOUT_PREFIX):
            hidden = posixpath.join(parent, leaf[len(WHITEOUT_PREFIX):])
            self._drop_below(members, hidden, layer, itself=True)
            return
        kind = _KINDS.get(info.type, "other")
        old = members.get(path)
        if old is not None and old.info.kind == "dir" and kind != "dir":
            self._drop_below(members, path, layer, itself=False)
        linkname = info.linkname
        offset, size = info.offset_data, info.size
        if kind == "hardlink":
            linkname = _clean(linkname)
            target = members.get(linkname)
            if target is not None:
                blob, offset, size = target.blob, target.offset, target.info.size
        members[path] = _Member(FileInfo(path, kind, info.mode, size if kind != "dir" else 0,
                                         linkname), layer, blob, offset)

    def close(self) -> None:
        with self._lock:
            if self._tmp is not None:
                shutil.rmtree(self._tmp, ignore_errors=True)
                self._tmp = None
            self._members = None
            self._children = {}


# --------------------------------------------------------------------------------------------
# The packager's answer
# --------------------------------------------------------------------------------------------
def package(pm: pluggy.PluginManager, project: str, bases: Sequence[BaseFiles],
            options: AppOptions) -> list[AppImage]:
    """Ask the ``cib_app_packager`` plugins for ``project``; one ``AppImage`` per base."""
    if not os.path.isdir(project):
        what = "does not exist" if not os.path.exists(project) else "is not a directory"
        raise PackagingError(project, f"{what}; name the directory of the app's project")
    result = pm.hook.cib_app_packager(project=project, bases=list(bases), options=options)
    if result is None:
        if options.kind is not None:
            raise PackagingError(project, f"no app packager for the kind {options.kind!r} is "
                                 "installed (see `cib plugins`)")
        raise PackagingError(project, "no app packager recognizes this project (see `cib plugins` "
                             "for the packagers installed)")
    images = list(result)
    if len(images) != len(bases):
        raise PackagingError(project, f"the app packager answered for {len(images)} platform(s) "
                             f"of the {len(bases)} of this build")
    return images


def apply_config(config: dict[str, Any], app: AppImage) -> None:
    """Write an ``AppImage``'s entrypoint, cmd, env and working directory into an image
    config (the base's values, which the ``Image`` attributes still override at save)."""
    inner = config.get("config")
    if not isinstance(inner, dict):
        inner = config["config"] = {}
    if app.env:
        inner["Env"] = merge_env(list(inner.get("Env") or []),
                                 [f"{name}={value}" for name, value in app.env.items()])
    if app.entrypoint is not None:
        inner["Entrypoint"] = list(app.entrypoint)
        if app.cmd is None:
            # as a Dockerfile's ENTRYPOINT: the base's CMD was arguments for its own entrypoint
            inner.pop("Cmd", None)
    if app.cmd is not None:
        inner["Cmd"] = list(app.cmd)
    if app.working_dir is not None:
        inner["WorkingDir"] = app.working_dir


def layer_cache_key(content_key: str, *parts: object) -> str:
    """The rebuild cache's key of an app layer: the packager's name for the content and every
    setting that changes the blob's bytes (compression, media type, layer time)."""
    h = hashlib.sha256(b"cib-app-layer-1\0")
    h.update(content_key.encode())
    h.update(repr(parts).encode())
    return h.hexdigest()
