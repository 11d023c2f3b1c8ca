"""Rebase: put an image's own layers on another base, as ``crane rebase`` does.

An image built ``FROM OLD`` starts with OLD's layers. Rebasing it onto NEW gives an image of
NEW's layers followed by the image's own, with the image's config (its ``Env``, ``Cmd``,
labels, ...), NEW's platform fields, and ``rootfs.diff_ids`` and ``history`` rebuilt in step
(see :mod:`cib_core.mutate`). Nothing is rebuilt or recompressed: the own layers' blobs are
reused as they are. For an index, every image is rebased onto NEW's image of its platform.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from cib_core.callbacks import Progress
from cib_core.documents import canonical_json
from cib_core.models import Descriptor, Index
from cib_core.mutate import (
    BASE_DIGEST_ANNOTATION,
    BASE_NAME_ANNOTATION,
    check_based_on,
    rebase_config,
    rebase_manifest,
)
from cib_core.reference import Reference, parse_image_spec
from cib_core.rewrite import (
    ImageSource,
    NewImage,
    RewriteResult,
    SourceImage,
    new_config_descriptor,
    resolve_target,
    write_images,
)
from cib_core.stores import check_local_target

if TYPE_CHECKING:
    from cib_core.plugins import CibPluginManager

log = logging.getLogger(__name__)

__all__ = ["RewriteResult", "rebase_image"]


def _base_annotations(new: ImageSource) -> dict[str, str]:
    """Where the rebased image now stands, for the next rebase: a registry reference only
    (a local path means nothing elsewhere)."""
    if not isinstance(new.ref, Reference) or new.digest is None:
        return {}
    named = new.ref.name + (f":{new.ref.tag}" if new.ref.tag else "")
    return {BASE_NAME_ANNOTATION: named, BASE_DIGEST_ANNOTATION: new.digest}


def _rebase_one(image: SourceImage, old: SourceImage, new: SourceImage, entry: Descriptor | None,
                annotations: Mapping[str, str]) -> NewImage:
    check_based_on([str(d.get("digest")) for d in image.layers],
                   [str(d.get("digest")) for d in old.layers], image.what, old.what)
    config = rebase_config(image.config, old.config, new.config, what=image.what,
                           old_what=old.what, new_what=new.what)
    config_raw = canonical_json(config)
    config_descriptor = new_config_descriptor(image.manifest["config"], config_raw)
    manifest = rebase_manifest(image.manifest, old.manifest, new.manifest, config_descriptor,
                               what=image.what, old_what=old.what, new_what=new.what,
                               base_annotations=annotations)
    sources = {}
    for layer in image.layers[len(old.layers):]:
        assert image.store is not None
        sources[layer["digest"]] = image.store
    for layer in new.layers:
        assert new.store is not None
        sources.setdefault(layer["digest"], new.store)
    return NewImage(manifest=manifest, media_type=image.media_type, config_raw=config_raw,
                    sources=sources, replaces=entry.digest if entry is not None else None)


def rebase_image(
    ref: str,
    old_base: str,
    new_base: str,
    *,
    to: str | None = None,
    auth: Mapping[str, Mapping[str, str]] | None = None,
    insecure: Iterable[str] = (),
    pm: CibPluginManager | None = None,
    jobs: int = 4,
    progress: Progress | None = None,
) -> RewriteResult:
    """Rebase the image ``ref`` from ``old_base`` onto ``new_base`` and write it to ``to``.

    Any of them may be a registry reference, ``oci:PATH[:TAG]`` or
    ``docker-archive:PATH[:NAME:TAG]``; ``old_base`` and ``new_base`` may be ``scratch``
    (an image built from nothing gets a base; a base is taken away). ``to`` defaults to
    ``ref``'s own repository and tag (by digest only when ``ref`` names a digest). For an
    index, each image is rebased onto the image of its platform in ``new_base`` (and checked
    against that of ``old_base``); attestation entries, which describe the old images, are
    left out.

    Every manifest and config is read and every edit checked before anything is written: an
    image whose first layers are not ``old_base``'s, a ``new_base`` without the image's
    platform, or a target that cannot take the result raise ``ConfigurationError`` or
    ``NotFound`` and leave the target untouched. Blobs reach the target by cross-repository
    mount when they are in the same registry, by streamed copy otherwise. Returns the new
    manifest's (or index's) digest and reference.
    """
    from cib_core.remote.transport import TransportPool

    insecure = tuple(insecure)
    pool = TransportPool(pm=pm, insecure=insecure)
    opened: list[ImageSource] = []

    def open_source(spec: str, role: str, allow_scratch: bool) -> ImageSource:
        # no progress for reading: the renderer counts what reaches the target
        source = ImageSource.open(spec, auth=auth, insecure=insecure, pm=pm, pool=pool,
                                  allow_scratch=allow_scratch, role=role)
        opened.append(source)
        return source

    if to is not None:
        check_local_target(parse_image_spec(to))  # before any image is read
    try:
        source = open_source(ref, "image to rebase", False)
        old = open_source(old_base, "old base", True)
        new = open_source(new_base, "new base", True)
        target = resolve_target(source, to)
        annotations = _base_annotations(new)
        plans = []
        platforms = []
        for entry, image in source.images():
            platform = image.platform or (entry.platform if entry is not None else None)
            plans.append(_rebase_one(image, old.image_for(platform, "old base"),
                                     new.image_for(platform, "new base"), entry, annotations))
            platforms.append(str(platform) if platform is not None else "")
        dropped: list[str] = []
        index = source.doc if isinstance(source.doc, Index) else None
        if index is not None:
            dropped = [d.digest for d in source.entries()[1]]
            if dropped:
                log.warning("left out %d attestation manifest(s) of %s: they describe the images "
                            "before the rebase", len(dropped), ref)
        result = write_images(target, plans, index=index, dropped=dropped, auth=auth,
                              insecure=insecure, pm=pm, pool=pool, progress=progress, jobs=jobs,
                              platforms=platforms)
    finally:
        for opened_source in opened:
            opened_source.close()
        pool.close()
    if result.digest == source.digest:
        log.warning("rebasing %s changed nothing: %s has the same layers as %s", ref, new_base,
                    old_base)
    return result
