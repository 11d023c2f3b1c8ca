"""Copy an image, index and all, from any store to any other, keeping its digest.

Blobs move several at a time; each manifest is written only after every blob it names is in
the destination, children before the index that names them.
"""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cib_core import mediatypes as mt
from cib_core.callbacks import Progress
from cib_core.digest import sha256_digest
from cib_core.documents import canonical_json
from cib_core.errors import ConfigurationError, RegistryError
from cib_core.models import (
    Descriptor,
    Index,
    Manifest,
    Platform,
    parse_manifest,
)
from cib_core.reference import LocalReference, Reference, parse_image_spec
from cib_core.stores import (
    BlobStore,
    manifest_to_oci,
    open_store,
    run_parallel,
    transfer_blob,
    transfer_layer,
    wants_oci_types,
)

if TYPE_CHECKING:
    from cib_core.plugins import CibPluginManager

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CopyResult:
    digest: str
    reference: str
    media_type: str
    tags: tuple[str, ...]
    blobs: Mapping[str, int] = field(default_factory=dict)  # "copied"/"mounted"/"present" -> count


def source_identifier(ref: Reference | LocalReference) -> str:
    if isinstance(ref, Reference):
        return ref.identifier
    return ref.ref or ""


def destination_tags(src: Reference | LocalReference, dst: Reference | LocalReference) -> list[str | None]:
    """The tags to write at the destination: its own, else the source's tag, else ``latest``."""
    if isinstance(dst, Reference):
        if dst.digest and not dst.tag:
            return [None]
        if dst.tag:
            return [dst.tag]
    elif dst.ref:
        return [dst.ref]
    if isinstance(src, Reference) and src.tag:
        return [src.tag]
    if isinstance(dst, LocalReference) and dst.transport == "docker-archive":
        return [None]
    return ["latest"]


class _Copier:
    def __init__(self, src: BlobStore, dst: BlobStore, jobs: int) -> None:
        self.src = src
        self.dst = dst
        self.to_oci = wants_oci_types(dst)
        self._replaced: dict[str, dict[str, Any]] = {}  # layers that changed on the way
        self.jobs = max(1, jobs)
        self.counts: dict[str, int] = {}
        self._lock = threading.Lock()
        self._done: set[str] = set()

    def _run(self, fn: Callable[[Any], None], items: list[Any]) -> None:
        run_parallel(fn, items, self.jobs)

    def blobs(self, descriptors: Iterable[tuple[str, int | None]]) -> None:
        todo = []
        with self._lock:
            for digest, size in descriptors:
                if digest not in self._done:
                    self._done.add(digest)
                    todo.append((digest, size))

        def one(item: tuple[str, int | None]) -> None:
            how = transfer_blob(self.src, self.dst, item[0], item[1])
            with self._lock:
                self.counts[how] = self.counts.get(how, 0) + 1

        self._run(one, todo)

    def image(self, manifest: Manifest) -> dict[str, Any] | None:
        """Copy an image's blobs; returns its manifest rewritten when a layer had to change."""
        self.blobs([(manifest.config.digest, manifest.config.size)])
        layers = [d for d in manifest.layers if not d.urls]
        for layer in manifest.layers:
            if layer.urls:
                log.info("leaving non-distributable layer %s as a reference", layer.digest)
        docker_flavour = mt.is_docker_flavour(manifest.media_type)
        replaced = self._replaced

        def one(layer: Descriptor) -> None:
            with self._lock:
                if layer.digest in self._done:
                    return
                self._done.add(layer.digest)
            descriptor, how = transfer_layer(self.src, self.dst, layer.to_dict(),
                                             docker_flavour=docker_flavour)
            with self._lock:
                self.counts[how] = self.counts.get(how, 0) + 1
                if descriptor["digest"] != layer.digest:
                    replaced[layer.digest] = descriptor

        self._run(one, layers)
        needed = [manifest.config.digest] + [replaced.get(d.digest, d.to_dict())["digest"] for d in layers]
        missing = [d for d in needed if not self.dst.has_blob(d)]
        if missing:
            raise RegistryError(f"not writing manifest {manifest.digest}: {self.dst.name} still "
                                f"lacks {', '.join(missing)}")
        if not any(d.digest in replaced for d in layers):
            return None
        data = copy.deepcopy(manifest.data)
        data["layers"] = [replaced.get(d["digest"], d) for d in data.get("layers", [])]
        return data

    def manifest_tree(self, raw: bytes, media_type: str, tag: str | None) -> tuple[bytes, str]:
        """Copy a manifest or index and everything below it, writing ``raw`` last.

        Returns what was written: the same bytes, unless the destination needed OCI media types
        (an OCI layout) or compressed layers (a registry, from a ``docker save`` archive).
        """
        doc = parse_manifest(raw, media_type)
        rewritten: dict[str, Any] | None = None
        if isinstance(doc, Index):
            entries = []
            for child in doc.manifests:
                child_raw, child_type, _ = self.src.get_manifest(child.digest)
                new_raw, new_type = self.manifest_tree(child_raw, child_type, None)
                entry = child.to_dict()
                if new_raw != child_raw:
                    entry = dict(entry, mediaType=new_type, digest=sha256_digest(new_raw),
                                 size=len(new_raw))
                entries.append(entry)
            if entries != [c.to_dict() for c in doc.manifests]:
                rewritten = dict(copy.deepcopy(doc.data), manifests=entries)
        else:
            rewritten = self.image(doc)
        if self.to_oci and mt.is_docker_flavour(doc.media_type):
            rewritten = manifest_to_oci(rewritten if rewritten is not None else doc.data)
        if rewritten is not None:
            raw = canonical_json(rewritten)
            media_type = rewritten.get("mediaType") or doc.media_type
        else:
            media_type = doc.media_type
        self.dst.put_manifest(raw, media_type, tag)
        return raw, media_type


def copy_image(
    src: str,
    dst: str,
    *,
    platform: str | None = None,
    auth: Mapping[str, Mapping[str, str]] | None = None,
    insecure: Iterable[str] = (),
    pm: CibPluginManager | None = None,
    jobs: int = 4,
    progress: Progress | None = None,
) -> CopyResult:
    """Copy ``src`` to ``dst`` (any reference or transport). All platforms unless ``platform``."""
    src_ref = parse_image_spec(src)
    dst_ref = parse_image_spec(dst)
    for ref, role in ((src_ref, "source"), (dst_ref, "destination")):
        if isinstance(ref, LocalReference) and ref.transport == "scratch":
            raise ConfigurationError(f"scratch cannot be a copy {role}: it has no manifest")
    from cib_core.remote.transport import TransportPool

    pool = TransportPool(pm=pm, insecure=insecure)
    src_store = open_store(src_ref, write=False, auth=auth, insecure=insecure, pm=pm,
                           progress=progress, pool=pool)
    dst_store = open_store(dst_ref, write=True, auth=auth, insecure=insecure, pm=pm,
                           progress=progress, pool=pool)
    copier = _Copier(src_store, dst_store, jobs)
    raw, media_type, digest = src_store.get_manifest(source_identifier(src_ref))
    doc = parse_manifest(raw, media_type)
    if platform not in (None, "all") and isinstance(doc, Index):
        wanted = Platform.parse(str(platform))
        chosen = doc.select(wanted)
        raw, media_type, digest = src_store.get_manifest(chosen.digest)
        doc = parse_manifest(raw, media_type)
    if isinstance(doc, Index) and isinstance(dst_ref, LocalReference) \
            and dst_ref.transport == "docker-archive":
        raise ConfigurationError(
            f"{src} is a multi-platform index and a docker-archive holds single images; "
            "pick one with --platform (for example --platform linux/amd64)")
    tags = destination_tags(src_ref, dst_ref)
    first, rest = tags[0], tags[1:]
    raw, media_type = copier.manifest_tree(raw, media_type, first)
    digest = sha256_digest(raw)
    for tag in rest:
        dst_store.put_manifest(raw, media_type, tag)
    dst_store.close()
    if isinstance(dst_ref, Reference):
        where = f"{dst_ref.name}@{digest}"
    else:
        where = f"{dst_ref.transport}:{dst_ref.path}@{digest}"
    return CopyResult(digest=digest, reference=where, media_type=media_type,
                      tags=tuple(t for t in tags if t), blobs=dict(copier.counts))
