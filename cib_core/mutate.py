"""Pure edits of image data: manifests, configs and indexes in, new ones out.

Nothing here reads or writes a store; every function takes parsed documents (dicts) and
returns new ones, leaving its arguments untouched, so each edit is unit-tested without a
registry. ``cib_core.rebase`` and ``cib_core.squash`` fetch the documents, call these, and
write the results.

An image config keeps ``rootfs.diff_ids`` and ``history`` in step: the history entries that
are not ``empty_layer`` describe the layers, in order, one each. Every edit here keeps that
true, making up a plain entry for layers whose history is missing or does not add up.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from cib_core import mediatypes as mt
from cib_core.errors import ConfigurationError, ManifestError
from cib_core.models import config_platform, diff_ids

log = logging.getLogger(__name__)

BASE_NAME_ANNOTATION = "org.opencontainers.image.base.name"
BASE_DIGEST_ANNOTATION = "org.opencontainers.image.base.digest"

PLATFORM_KEYS = ("os", "architecture", "variant", "os.version", "os.features")
"""The fields of an image config that say which platform it runs on."""

_OCI_TO_DOCKER_LAYER = {mt.to_oci(t): t for t in mt.DOCKER_LAYERS}


# --- history ---------------------------------------------------------------------------------
def history_of(config: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The config's ``history`` entries (a copy; empty when it has none)."""
    history = config.get("history")
    if history is None:
        return []
    if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
        raise ManifestError("the image config's history is not a list of objects")
    return copy.deepcopy(history)


def layer_entries(history: Sequence[Mapping[str, Any]]) -> int:
    """How many entries of ``history`` describe a layer (are not ``empty_layer``)."""
    return sum(1 for entry in history if not entry.get("empty_layer"))


def placeholder_history(count: int, comment: str, created: str | None = None) -> list[dict[str, Any]]:
    """``count`` plain entries for layers that come with no usable history."""
    entry: dict[str, Any] = {"created_by": "cib", "comment": comment}
    if created:
        entry = {"created": created, **entry}
    return [dict(entry) for _ in range(count)]


def history_in_step(history: Sequence[Mapping[str, Any]], layers: int, comment: str,
                    created: str | None = None) -> list[dict[str, Any]]:
    """``history`` when it describes exactly ``layers`` layers; otherwise placeholder
    entries for them (an image may carry no history; a wrong count cannot be mended)."""
    if layer_entries(history) == layers:
        return [dict(entry) for entry in history]
    if history:
        log.warning("history with %d layer entries for %d layers is not usable (%s); replaced",
                    layer_entries(history), layers, comment)
    return placeholder_history(layers, comment, created)


def split_history(history: Sequence[Mapping[str, Any]], base_layers: int,
                  base_history: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]] | None:
    """Split an image's history into its base's part and its own part.

    The base's part is the leading entries that describe the base's ``base_layers`` layers,
    together with the base's own empty-layer entries (``ENV``, ``CMD``; at most
    ``base_history`` entries counted from the start, the length of the base's history).
    None when the history describes fewer than ``base_layers`` layers.
    """
    seen = 0
    cut = 0
    if base_layers:
        for i, entry in enumerate(history):
            if not entry.get("empty_layer"):
                seen += 1
                if seen == base_layers:
                    cut = i + 1
                    break
        else:
            return None
    while cut < len(history) and cut < base_history and history[cut].get("empty_layer"):
        cut += 1
    return [dict(e) for e in history[:cut]], [dict(e) for e in history[cut:]]


# --- rebase ----------------------------------------------------------------------------------
def _short(digest: str) -> str:
    return digest.split(":", 1)[-1][:12]


def check_based_on(layers: Sequence[str], base_layers: Sequence[str], what: str,
                   base_what: str, kind: str = "layer") -> None:
    """Refuse unless ``base_layers`` are the first of ``layers`` (digests or diff_ids)."""
    if len(base_layers) > len(layers):
        raise ConfigurationError(
            f"{what} is not based on {base_what}: the base has {len(base_layers)} {kind}s, the "
            f"image only {len(layers)}; check --old-base (the image the build started FROM)")
    for i, (mine, theirs) in enumerate(zip(layers[:len(base_layers)], base_layers, strict=True)):
        if mine != theirs:
            raise ConfigurationError(
                f"{what} is not based on {base_what}: its {kind} {i + 1} is {_short(mine)}, the "
                f"base's is {_short(theirs)}; check --old-base (the image the build started FROM)")


def _same_platform(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    if not (a.get("os") or a.get("architecture")) or not (b.get("os") or b.get("architecture")):
        return True  # one side is scratch or names no platform: nothing to contradict
    pa, pb = config_platform(a).normalized(), config_platform(b).normalized()
    return (pa.os, pa.architecture) == (pb.os, pb.architecture)


def rebase_config(config: Mapping[str, Any], old_base: Mapping[str, Any],
                  new_base: Mapping[str, Any], *, what: str = "the image",
                  old_what: str = "the old base", new_what: str = "the new base") -> dict[str, Any]:
    """The image config of ``config`` moved from ``old_base`` onto ``new_base``.

    As crane's rebase does: the image's own config (``Env``, ``Cmd``, labels, ...) and
    ``created`` stay; the platform fields come from the new base; ``rootfs.diff_ids`` are the
    new base's followed by the image's own; the history is the new base's followed by the
    image's own entries, in step with those layers. ``ConfigurationError`` when the old
    base's diff_ids are not the image's first ones, or when the new base is another platform.
    """
    ids, old_ids, new_ids = diff_ids(config), diff_ids(old_base), diff_ids(new_base)
    check_based_on(ids, old_ids, what, old_what, "layer (diff_id)")
    if not _same_platform(config, new_base):
        raise ConfigurationError(
            f"{new_what} is {config_platform(new_base)} but {what} is {config_platform(config)}; "
            "pick the new base's image for that platform")
    own_layers = len(ids) - len(old_ids)
    created = config.get("created") if isinstance(config.get("created"), str) else None
    history = history_of(config)
    split = split_history(history, len(old_ids), len(history_of(old_base)))
    own = split[1] if split is not None else []
    own = history_in_step(own, own_layers, "a layer of the image, rebased by cib", created)
    base_history = history_in_step(history_of(new_base), len(new_ids),
                                   "a layer of the new base, which records no history",
                                   new_base.get("created") if isinstance(new_base.get("created"), str)
                                   else None)
    out = copy.deepcopy(dict(config))
    if new_base.get("os") or new_base.get("architecture"):  # scratch names no platform
        for key in PLATFORM_KEYS:  # in place: a key keeps its position, so do the bytes
            if key in new_base:
                out[key] = copy.deepcopy(new_base[key])
            else:
                out.pop(key, None)
    rootfs = dict(out.get("rootfs") or {})
    rootfs["type"] = "layers"
    rootfs["diff_ids"] = [*new_ids, *ids[len(old_ids):]]
    out["rootfs"] = rootfs
    if history or history_of(new_base):
        out["history"] = base_history + own
    else:
        out.pop("history", None)  # no history anywhere: none is made up
    return out


def descriptor_in_flavour(descriptor: Mapping[str, Any], docker_flavour: bool,
                          what: str = "a layer") -> dict[str, Any]:
    """A layer descriptor with the media type of the manifest flavour it goes into; the blob
    is the same either way. Docker schema 2 has no zstd layers: ``ConfigurationError``."""
    out = copy.deepcopy(dict(descriptor))
    media_type = str(out.get("mediaType", ""))
    if docker_flavour and not mt.is_docker_flavour(media_type):
        converted = _OCI_TO_DOCKER_LAYER.get(media_type)
        if converted is None:
            raise ConfigurationError(
                f"{what} has media type {media_type}, which a Docker schema 2 image cannot "
                "carry; rebase an OCI image onto it, or use a gzip base")
        out["mediaType"] = converted
    elif not docker_flavour and mt.is_docker_flavour(media_type):
        out["mediaType"] = mt.to_oci(media_type)
    return out


def rebase_manifest(manifest: Mapping[str, Any], old_base: Mapping[str, Any],
                    new_base: Mapping[str, Any], config: Mapping[str, Any], *,
                    what: str = "the image", old_what: str = "the old base",
                    new_what: str = "the new base",
                    base_annotations: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The image manifest of ``manifest`` moved from ``old_base`` onto ``new_base`` (manifests
    as dicts), naming the config descriptor ``config``.

    Layers: the new base's (in the image's media type flavour) followed by the image's own.
    ``base_annotations`` (``org.opencontainers.image.base.name``/``.digest``) are set on an
    OCI manifest, as crane does, so the next rebase knows where the image stands.
    ``ConfigurationError`` when the old base's layers are not the image's first ones.
    """
    layers = list(manifest.get("layers") or [])
    old_layers = list(old_base.get("layers") or [])
    check_based_on([str(d.get("digest")) for d in layers], [str(d.get("digest")) for d in old_layers],
                   what, old_what)
    docker_flavour = mt.is_docker_flavour(str(manifest.get("mediaType", "")))
    new_layers = [descriptor_in_flavour(d, docker_flavour, f"layer {i + 1} of {new_what}")
                  for i, d in enumerate(new_base.get("layers") or [])]
    out = copy.deepcopy(dict(manifest))
    out["config"] = copy.deepcopy(dict(config))
    out["layers"] = new_layers + copy.deepcopy(layers[len(old_layers):])
    if base_annotations and not docker_flavour:
        out["annotations"] = {**dict(out.get("annotations") or {}), **base_annotations}
    return out


# --- flatten ---------------------------------------------------------------------------------
def flatten_config(config: Mapping[str, Any], diff_id: str, source: str) -> dict[str, Any]:
    """The config of an image squashed into one layer (``diff_id``): everything kept but
    ``rootfs.diff_ids`` (the one layer) and ``history`` (one entry naming ``source``, the
    flattened manifest's digest, and how many layers it had)."""
    out = copy.deepcopy(dict(config))
    before = len(diff_ids(config))
    rootfs = dict(out.get("rootfs") or {})
    rootfs["type"] = "layers"
    rootfs["diff_ids"] = [diff_id]
    out["rootfs"] = rootfs
    entry: dict[str, Any] = {}
    if isinstance(config.get("created"), str):
        entry["created"] = config["created"]
    entry["created_by"] = f"cib flatten {source}"
    entry["comment"] = f"{before} layer{'' if before == 1 else 's'} merged into one"
    out["history"] = [entry]
    return out


def flatten_manifest(manifest: Mapping[str, Any], config: Mapping[str, Any],
                     layer: Mapping[str, Any]) -> dict[str, Any]:
    """``manifest`` with the config descriptor ``config`` and the one layer ``layer``; its
    media type, annotations and other fields stay."""
    out = copy.deepcopy(dict(manifest))
    out["config"] = copy.deepcopy(dict(config))
    out["layers"] = [copy.deepcopy(dict(layer))]
    return out


# --- indexes ---------------------------------------------------------------------------------
def replace_index_entries(index: Mapping[str, Any],
                          replacements: Mapping[str, Mapping[str, Any] | None]) -> dict[str, Any]:
    """``index`` with entries replaced by digest: ``replacements[old digest]`` gives the new
    ``mediaType``/``digest``/``size`` (the entry's platform and annotations stay), or None
    to drop the entry. Entries not named stay as they are."""
    out = copy.deepcopy(dict(index))
    entries = []
    for entry in index.get("manifests") or []:
        digest = entry.get("digest")
        if digest not in replacements:
            entries.append(copy.deepcopy(dict(entry)))
            continue
        new = replacements[digest]
        if new is None:
            continue
        updated = copy.deepcopy(dict(entry))
        for key in ("mediaType", "digest", "size"):
            updated[key] = new[key]
        entries.append(updated)
    out["manifests"] = entries
    return out
