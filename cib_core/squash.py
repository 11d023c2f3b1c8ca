"""Flatten: squash an image's layers into one, as ``crane flatten`` does.

The one layer is the merged filesystem of the image (``cib export``'s tar: each path once,
whiteouts and opaque directories applied), streamed through the layer pipeline into a gzip
blob on disk: a layer is never held in memory. The config stays (``Env``, ``Cmd``,
``created``, labels, ...) but for ``rootfs.diff_ids``, now the one layer, and ``history``,
now one entry naming the flattened manifest. For an index, every image is flattened.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, BinaryIO

from cib_core import mediatypes as mt
from cib_core.callbacks import Progress
from cib_core.documents import canonical_json
from cib_core.errors import ConfigurationError
from cib_core.models import Descriptor, Index
from cib_core.mutate import flatten_config, flatten_manifest
from cib_core.reference import parse_image_spec
from cib_core.rewrite import (
    ImageSource,
    NewImage,
    RewriteResult,
    SourceImage,
    new_config_descriptor,
    resolve_target,
    write_images,
)
from cib_core.stores import BlobStore, check_local_target

if TYPE_CHECKING:
    from cib_core.layers.pipeline import BuiltLayer
    from cib_core.plugins import CibPluginManager

log = logging.getLogger(__name__)

__all__ = ["RewriteResult", "flatten_image"]


def _opener(store: BlobStore, digest: str) -> Callable[[], BinaryIO]:
    return lambda: store.open_blob(digest)


def _check_flattenable(image: SourceImage) -> None:
    for i, layer in enumerate(image.layers):
        if layer.get("urls"):
            raise ConfigurationError(
                f"{image.what}: layer {i + 1} ({layer.get('digest')}) is non-distributable (it names "
                "urls); flattening would copy its content into a layer that is distributed")


def _flatten_one(image: SourceImage, entry: Descriptor | None, temp_dir: str | None,
                 built: list[BuiltLayer]) -> NewImage:
    from cib_core.formats.flatten import export_filesystem
    from cib_core.layers.tarball import layer_from_writer

    assert image.store is not None and image.digest is not None
    store = image.store
    openers = [_opener(store, str(layer["digest"])) for layer in image.layers]
    names = [str(layer["digest"]) for layer in image.layers]
    layer = layer_from_writer(lambda out: export_filesystem(openers, out, names=names),
                              docker_flavour=mt.is_docker_flavour(image.media_type), dir=temp_dir)
    built.append(layer)
    info = layer.info
    log.info("flattened %s: %d layers into %s (%d bytes)", image.what, len(openers), info.digest,
             info.size)
    config = flatten_config(image.config, info.diff_id, image.digest)
    config_raw = canonical_json(config)
    config_descriptor = new_config_descriptor(image.manifest["config"], config_raw)
    layer_descriptor = {"mediaType": info.media_type, "digest": info.digest, "size": info.size}
    manifest = flatten_manifest(image.manifest, config_descriptor, layer_descriptor)
    return NewImage(manifest=manifest, media_type=image.media_type, config_raw=config_raw,
                    built={info.digest: layer}, replaces=entry.digest if entry is not None else None)


def flatten_image(
    ref: str,
    *,
    to: str | None = None,
    auth: Mapping[str, Mapping[str, str]] | None = None,
    insecure: Iterable[str] = (),
    pm: CibPluginManager | None = None,
    jobs: int = 4,
    progress: Progress | None = None,
    temp_dir: str | None = None,
) -> RewriteResult:
    """Squash every layer of ``ref`` into one and write the image to ``to``.

    ``ref`` and ``to`` may be registry references, ``oci:PATH[:TAG]`` or
    ``docker-archive:PATH[:NAME:TAG]``; ``to`` defaults to ``ref``'s own repository and tag
    (by digest only when ``ref`` names a digest). The new layer holds the merged filesystem
    (whiteouts applied), is gzip-compressed in the image's media type flavour, and is built in
    ``temp_dir`` (default: the system's) before anything is written to the target: a layer
    that cannot be merged (an entry escaping the root) leaves the target untouched. For an
    index, every image is flattened and the index rewritten over them; attestation entries,
    which describe the old images, are left out. Returns the new manifest's (or index's)
    digest and reference.
    """
    from cib_core.remote.transport import TransportPool

    insecure = tuple(insecure)
    pool = TransportPool(pm=pm, insecure=insecure)
    built: list[BuiltLayer] = []
    source: ImageSource | None = None
    if to is not None:
        check_local_target(parse_image_spec(to))  # before the image is read
    try:
        # no progress for reading: the renderer counts what reaches the target
        source = ImageSource.open(ref, auth=auth, insecure=insecure, pm=pm, pool=pool,
                                  role="image to flatten")
        target = resolve_target(source, to)
        images = source.images()
        for _entry, image in images:
            _check_flattenable(image)
        plans = [_flatten_one(image, entry, temp_dir, built) for entry, image in images]
        platforms = [str(image.platform) if image.platform is not None else "" for _, image in images]
        index = source.doc if isinstance(source.doc, Index) else None
        dropped: list[str] = []
        if index is not None:
            dropped = [d.digest for d in source.entries()[1]]
            if dropped:
                log.warning("left out %d attestation manifest(s) of %s: they describe the images "
                            "before flattening", len(dropped), ref)
        return write_images(target, plans, index=index, dropped=dropped, auth=auth,
                            insecure=insecure, pm=pm, pool=pool, progress=progress, jobs=jobs,
                            platforms=platforms)
    finally:
        for layer in built:
            layer.close()
        if source is not None:
            source.close()
        pool.close()
