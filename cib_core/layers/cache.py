"""The rebuild cache: a layer whose inputs have not changed is not tarred, compressed or hashed
again.

A key is the sha256 of everything that decides a layer's bytes (``LayerBuilder.fingerprint``):
the compressor and its level, the media type, the layer time, and either each source's own
identity (a local directory's is its walk with ``stat``: paths, types, modes, sizes, and each
file's device, inode, mtime and ctime in nanoseconds, as git's index keeps them) or, for other
sources, the normalized tar headers in order with the identity of each local file read. The
value is the ``LayerInfo`` the build produced. A hit is used only when the target already has
the blob, so a wrong entry could at worst name a blob that exists; a key is never stored for a
layer with a file changed within :data:`RACY_SECONDS` of the build (its next change might keep
the same timestamps), nor for content that is not a plain local file (``CustomFile``, tarball
members, plugin sources), which is always built.

Beside the keys, the cache notes each *recipe* it has stored a layer for (the sources as
named, the options, the compressor: ``LayerBuilder.recipe``). Only a layer whose recipe it
has seen is checked before it is built; any other starts building (and uploading) at once.

The cache lives in ``$CIB_CACHE_DIR/layers`` (default ``$XDG_CACHE_HOME/cib`` or
``~/.cache/cib``); ``CIB_CACHE_DIR=""`` turns it off. Entries are a few hundred bytes each;
failures to read or write it are logged at debug level and ignored.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from cib_core.caches import cache_root
from cib_core.errors import LocalWriteError
from cib_core.fileio import write_atomically
from cib_core.layers.pipeline import LayerInfo

log = logging.getLogger(__name__)

RACY_SECONDS = 2.0
"""Files changed this recently are not trusted to show their next change in their timestamps."""


def cache_dir() -> Path | None:
    """Where entries live, or ``None`` when the cache is off."""
    root = cache_root()
    return None if root is None else Path(root) / "layers"


def _entry(key: str) -> Path | None:
    root = cache_dir()
    return None if root is None else root / key[:2] / f"{key}.json"


def load(key: str) -> LayerInfo | None:
    """The cached ``LayerInfo`` for ``key``, or ``None``."""
    path = _entry(key)
    if path is None:
        return None
    try:
        data = json.loads(path.read_text())
        info = LayerInfo(digest=str(data["digest"]), diff_id=str(data["diff_id"]),
                         size=int(data["size"]), media_type=str(data["media_type"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.debug("ignoring unreadable layer cache entry %s: %s", path, exc)
        return None
    log.debug("layer cache hit %s -> %s", key, info.digest)
    return info


def _recipe_entry(recipe: str) -> Path | None:
    root = cache_dir()
    return None if root is None else root / "recipes" / recipe[:2] / recipe


def seen(recipe: str) -> bool:
    """Whether a layer of this recipe (``LayerBuilder.recipe``) was cached before: only then
    is it worth checking for an unchanged one before building."""
    path = _recipe_entry(recipe)
    return path is not None and path.exists()


def remember(recipe: str) -> None:
    """Note that a layer of this recipe is cached (errors are only logged)."""
    path = _recipe_entry(recipe)
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    except OSError as exc:
        log.debug("cannot write the layer cache entry %s: %s", path, exc)


def store(key: str, info: LayerInfo) -> None:
    """Remember ``info`` under ``key`` (atomically; errors are only logged)."""
    path = _entry(key)
    if path is None:
        return
    payload = json.dumps({"digest": info.digest, "diff_id": info.diff_id, "size": info.size,
                          "media_type": info.media_type}).encode()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, payload, mode=0o600, fsync=False)
    except (OSError, LocalWriteError) as exc:
        log.debug("cannot write the layer cache entry %s: %s", path, exc)
