"""Multi-platform indexes assembled from single-platform images: ``create_index`` and
``append_to_index``.

Each source's platform comes from its config (``os``, ``architecture``, ``variant``,
``os.version``, ``os.features``), never from the user, so an entry cannot lie about its image.
A platform may appear once. The index is a Docker manifest list when every image in it is a
Docker schema 2 manifest, else an OCI index. Sources living elsewhere (another repository,
another registry, an OCI layout) are copied into the target first, blobs mounted where the
registry allows it; the index is written last. Everything is read and checked before the
first write, so a bad source leaves the target as it was.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cib_core import mediatypes as mt
from cib_core.callbacks import Progress
from cib_core.copy import copy_tree
from cib_core.digest import sha256_digest
from cib_core.documents import canonical_json
from cib_core.errors import ConfigurationError, ManifestError
from cib_core.models import Index, Platform, config_platform, parse_manifest
from cib_core.reference import LocalReference, Reference, parse_image_spec
from cib_core.stores import (
    BlobStore,
    check_local_target,
    open_store,
    read_config,
    wants_oci_types,
)

if TYPE_CHECKING:
    from cib_core.plugins import CibPluginManager
    from cib_core.remote.transport import TransportPool

log = logging.getLogger(__name__)

__all__ = ["IndexEntry", "IndexResult", "append_to_index", "create_index"]


@dataclass(frozen=True)
class IndexEntry:
    """One image of a written index: its ``platform``, ``digest`` and ``media_type`` there, and
    the ``source`` it came from (``None`` for an entry the index had before)."""

    platform: Platform | None
    digest: str
    media_type: str
    source: str | None = None


@dataclass(frozen=True)
class IndexResult:
    """A written index: its ``digest``, ``reference`` (``REGISTRY/REPO@sha256:…`` or
    ``oci:PATH@sha256:…``), ``media_type``, the ``tags`` it was written under, its ``entries``
    and how the sources' blobs got there (``"copied"``, ``"mounted"``, ``"present"``, ...)."""

    digest: str
    reference: str
    media_type: str
    tags: tuple[str, ...]
    entries: tuple[IndexEntry, ...]
    blobs: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class _Source:
    spec: str
    store: BlobStore
    raw: bytes
    media_type: str
    digest: str
    platform: Platform


def _platform_key(platform: Platform) -> tuple[str, str, str, str]:
    """What makes two platforms the same slot of an index (``arm64`` is ``arm64/v8``)."""
    norm = platform.normalized()
    return norm.os, norm.architecture, norm.variant or "", norm.os_version or ""


class _Stores:
    """Opens the stores of one run over one transport pool."""

    def __init__(self, auth: Mapping[str, Mapping[str, str]] | None, insecure: Iterable[str],
                 pm: CibPluginManager | None, progress: Progress | None) -> None:
        from cib_core.remote.transport import TransportPool

        self.auth = auth
        self.insecure = tuple(insecure)
        self.pm = pm
        self.progress = progress
        self.pool: TransportPool = TransportPool(pm=pm, insecure=self.insecure)

    def open(self, ref: Reference | LocalReference, *, write: bool) -> BlobStore:
        return open_store(ref, write=write, auth=self.auth, insecure=self.insecure, pm=self.pm,
                          progress=self.progress, pool=self.pool)

    def close(self) -> None:
        self.pool.close()


def _identifier(ref: Reference | LocalReference) -> str:
    return ref.identifier if isinstance(ref, Reference) else ref.ref or ""


def _check_target(spec: str, ref: Reference | LocalReference, role: str) -> None:
    if isinstance(ref, LocalReference) and ref.transport != "oci":
        raise ConfigurationError(
            f"{role} {spec!r}: an index lives in a registry repository or an OCI layout "
            f"(oci:PATH:TAG), not a {ref.transport}")
    check_local_target(ref)


def _read_source(spec: str, stores: _Stores) -> _Source:
    ref = parse_image_spec(spec)
    if isinstance(ref, LocalReference) and ref.transport == "scratch":
        raise ConfigurationError("scratch has no manifest; an index is made of images")
    store = stores.open(ref, write=False)
    raw, media_type, digest = store.get_manifest(_identifier(ref))
    doc = parse_manifest(raw, media_type)
    if isinstance(doc, Index):
        raise ConfigurationError(
            f"{spec} is already a multi-platform index ({len(doc.manifests)} entries); name one "
            "of its images by digest (cib manifest shows them), or use it as the INDEX of "
            "cib index append")
    _config_raw, config = read_config(store, doc.config.digest, doc.config.size, spec)
    try:
        platform = config_platform(config)
    except ManifestError:
        raise ManifestError(f"the config of {spec} names no platform (it needs 'os' and "
                            "'architecture'); is it an image?") from None
    return _Source(spec, store, raw, doc.media_type, digest, platform)


def _check_duplicates(sources: Sequence[_Source], taken: Mapping[tuple[str, str, str, str], str],
                      index_name: str | None) -> None:
    seen: dict[tuple[str, str, str, str], _Source] = {}
    for source in sources:
        key = _platform_key(source.platform)
        if key in taken:
            raise ConfigurationError(
                f"{index_name} already has a {source.platform} image ({taken[key]}), so "
                f"{source.spec} cannot be added; an index holds one image per platform")
        if key in seen:
            raise ConfigurationError(
                f"{seen[key].spec} and {source.spec} are both {source.platform} images; an index "
                "holds one image per platform")
        seen[key] = source


def _copy_sources(sources: Sequence[_Source], dst: BlobStore, jobs: int,
                  counts: dict[str, int]) -> list[tuple[_Source, dict[str, Any]]]:
    """Make each source's manifest and blobs present in ``dst``; their index entries."""
    entries = []
    for source in sources:
        written, written_type, how = copy_tree(source.store, dst, source.raw, source.media_type,
                                               None, jobs=jobs)
        for kind, n in how.items():
            counts[kind] = counts.get(kind, 0) + n
        entries.append((source, {"mediaType": written_type, "digest": sha256_digest(written),
                                 "size": len(written), "platform": source.platform.to_dict()}))
    return entries


def _where(ref: Reference | LocalReference) -> str:
    return ref.name if isinstance(ref, Reference) else f"oci:{ref.path}"


def _index_media_type(member_types: Iterable[str], dst: BlobStore) -> str:
    types = list(member_types)
    docker = bool(types) and all(t == mt.DOCKER_MANIFEST for t in types)
    return mt.DOCKER_MANIFEST_LIST if docker and not wants_oci_types(dst) else mt.OCI_INDEX


def create_index(
    target: str,
    sources: Sequence[str],
    *,
    auth: Mapping[str, Mapping[str, str]] | None = None,
    insecure: Iterable[str] = (),
    pm: CibPluginManager | None = None,
    jobs: int = 4,
    progress: Progress | None = None,
) -> IndexResult:
    """Write an index over the single-platform images ``sources`` to ``target`` (a registry
    reference, tagged ``latest`` unless it names a tag, or ``oci:PATH[:TAG]``).

    Each source's platform is read from its config; two sources of one platform are refused.
    Sources elsewhere are copied (or mounted) into the target's repository first.
    """
    if not sources:
        raise ConfigurationError(f"name at least one image to put into the index {target}")
    target_ref = parse_image_spec(target)
    _check_target(target, target_ref, "target")
    if isinstance(target_ref, Reference) and target_ref.digest:
        raise ConfigurationError(
            f"target {target!r}: an index's digest is known once it is made; name the target "
            "with a tag, or without one for latest")
    tag = (target_ref.tag if isinstance(target_ref, Reference) else target_ref.ref) or "latest"
    stores = _Stores(auth, insecure, pm, progress)
    try:
        read = [_read_source(spec, stores) for spec in sources]
        _check_duplicates(read, {}, None)
        dst = stores.open(target_ref, write=True)
        counts: dict[str, int] = {}
        copied = _copy_sources(read, dst, jobs, counts)
        media_type = _index_media_type((e["mediaType"] for _s, e in copied), dst)
        document = {"schemaVersion": 2, "mediaType": media_type,
                    "manifests": [entry for _source, entry in copied]}
        raw = canonical_json(document)
        digest = dst.put_manifest(raw, media_type, tag)
        dst.close()
    finally:
        stores.close()
    log.info("wrote index %s with %d images to %s", digest, len(copied), target)
    entries = tuple(IndexEntry(source.platform, e["digest"], e["mediaType"], source.spec)
                    for source, e in copied)
    return IndexResult(digest=digest, reference=f"{_where(target_ref)}@{digest}",
                       media_type=media_type, tags=(tag,), entries=entries, blobs=counts)


def append_to_index(
    index: str,
    sources: Sequence[str],
    *,
    auth: Mapping[str, Mapping[str, str]] | None = None,
    insecure: Iterable[str] = (),
    pm: CibPluginManager | None = None,
    jobs: int = 4,
    progress: Progress | None = None,
) -> IndexResult:
    """Add the single-platform images ``sources`` to the existing index ``index`` and write the
    result back under the same tag (by digest only when ``index`` names a digest).

    The entries the index had stay as they were; a source whose platform the index already
    has, or two sources of one platform, are refused. A Docker manifest list becomes an OCI
    index when an OCI image joins it.
    """
    if not sources:
        raise ConfigurationError(f"name at least one image to add to the index {index}")
    index_ref = parse_image_spec(index)
    _check_target(index, index_ref, "index")
    if isinstance(index_ref, LocalReference) and not index_ref.ref:
        raise ConfigurationError(f"index {index!r}: name the index's tag in the layout "
                                 "(oci:PATH:TAG); the new index is written under it")
    stores = _Stores(auth, insecure, pm, progress)
    try:
        index_store = stores.open(index_ref, write=False)
        raw, media_type, _digest = index_store.get_manifest(_identifier(index_ref))
        existing = parse_manifest(raw, media_type)
        if not isinstance(existing, Index):
            raise ConfigurationError(
                f"{index} is a single image, not an index; make one with "
                f"cib index create TARGET {index} SRC...")
        taken = {_platform_key(d.platform): d.digest for d in existing.manifests
                 if d.platform is not None and not d.is_attestation}
        read = [_read_source(spec, stores) for spec in sources]
        _check_duplicates(read, taken, index)
        dst = stores.open(index_ref, write=True)
        counts: dict[str, int] = {}
        copied = _copy_sources(read, dst, jobs, counts)
        kept_types = [d.media_type for d in existing.manifests if not d.is_attestation]
        new_type = existing.media_type
        if existing.media_type == mt.DOCKER_MANIFEST_LIST:
            new_type = _index_media_type([*kept_types, *(e["mediaType"] for _s, e in copied)], dst)
        document = copy.deepcopy(existing.data)
        if "mediaType" in document or new_type != existing.media_type:
            document["mediaType"] = new_type
        document["manifests"] = [*document.get("manifests", []),
                                 *(entry for _source, entry in copied)]
        new_raw = canonical_json(document)
        if isinstance(index_ref, LocalReference):
            tag = index_ref.ref
        else:
            tag = None if index_ref.digest and not index_ref.tag else index_ref.tag or "latest"
        digest = dst.put_manifest(new_raw, new_type, tag)
        dst.close()
    finally:
        stores.close()
    log.info("appended %d images to %s: now %s", len(copied), index, digest)
    entries = tuple(IndexEntry(d.platform, d.digest, d.media_type) for d in existing.manifests) \
        + tuple(IndexEntry(source.platform, e["digest"], e["mediaType"], source.spec)
                for source, e in copied)
    return IndexResult(digest=digest, reference=f"{_where(index_ref)}@{digest}",
                       media_type=new_type, tags=(tag,) if tag else (), entries=entries,
                       blobs=counts)
