"""Copy an image, index and all, from any store to any other, keeping its digest.

Blobs move several at a time; each manifest is written only after every blob it names is in
the destination, children before the index that names them.
"""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cib_core import mediatypes as mt
from cib_core.callbacks import Progress
from cib_core.digest import sha256_digest
from cib_core.documents import canonical_json
from cib_core.errors import ConfigurationError, ManifestError, NotFound, RegistryError
from cib_core.models import (
    Descriptor,
    Index,
    Manifest,
    Platform,
    config_platform,
    parse_manifest,
)
from cib_core.reference import LocalReference, Reference, parse_image_spec
from cib_core.stores import (
    BlobStore,
    RegistryStore,
    check_local_target,
    manifest_to_oci,
    open_store,
    read_config,
    ready_for_threads,
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
        ready_for_threads(self.src, self.dst)
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


def copy_tree(src: BlobStore, dst: BlobStore, raw: bytes, media_type: str, tag: str | None, *,
              jobs: int = 4) -> tuple[bytes, str, dict[str, int]]:
    """Copy the manifest or index ``raw`` and everything it names from ``src`` to ``dst``, writing
    it under ``tag`` (``None``: by digest only) after all it names is there.

    Returns the bytes and media type written (the same, unless ``dst`` needed OCI media types or
    compressed layers) and how many blobs were "copied", "mounted", "present" or "compressed".
    """
    copier = _Copier(src, dst, jobs)
    written, written_type = copier.manifest_tree(raw, media_type, tag)
    return written, written_type, dict(copier.counts)


def wanted_platforms(platform: str | Sequence[str] | None) -> list[Platform] | None:
    """The platforms a copy keeps: ``None`` (or ``"all"``) for every one, else the parsed list of
    ``"linux/amd64,linux/arm64"`` or ``["linux/amd64", "linux/arm64"]``, each once."""
    if platform is None:
        return None
    items = [platform] if isinstance(platform, str) else list(platform)
    names = [name.strip() for item in items for name in str(item).split(",")]
    if names == ["all"]:
        return None
    if "all" in names:
        raise ConfigurationError(f"platform {','.join(names)!r}: 'all' cannot be combined with "
                                 "named platforms")
    if not names or not all(names):
        raise ConfigurationError(f"platform {','.join(names)!r}: name platforms as OS/ARCH[/VARIANT] "
                                 "separated by commas, for example linux/amd64,linux/arm64")
    parsed: list[Platform] = []
    for name in names:
        one = Platform.parse(name)
        if one not in parsed:
            parsed.append(one)
    return parsed


def _attests(entry: Descriptor) -> str | None:
    """The digest of the image an attestation entry of a BuildKit index is about, else None."""
    if not entry.is_attestation:
        return None
    return (entry.annotations or {}).get("vnd.docker.reference.digest")


def select_platforms(store: BlobStore, raw: bytes, media_type: str, wanted: list[Platform] | None,
                     what: str) -> tuple[bytes, str]:
    """The part of the manifest or index ``raw`` to copy for ``wanted`` platforms.

    ``None`` keeps all of it. One platform out of an index gives that platform's own manifest;
    several give an index of just those entries, in the source's order, keeping the entries'
    descriptors (so the kept manifests keep their digests) and the attestations about them.
    A platform the source lacks is a ``NotFound`` naming it and what the source has.
    """
    if wanted is None:
        return raw, media_type
    doc = parse_manifest(raw, media_type)
    if isinstance(doc, Manifest):
        _config_raw, config = read_config(store, doc.config.digest, doc.config.size, what)
        try:
            have = config_platform(config)
        except ManifestError:
            raise ManifestError(f"{what} names no platform in its config (no 'os' and "
                                "'architecture'); copy it without --platform") from None
        lacking = [str(w) for w in wanted if not have.matches(w)]
        if lacking:
            raise NotFound(f"{what} is a single {have} image; it has no {', '.join(lacking)} image")
        return raw, media_type
    chosen: list[Descriptor] = []
    missing: list[str] = []
    for platform in wanted:
        found = [d for d in doc.select_all(platform) if not d.is_attestation]
        if not found:
            missing.append(str(platform))
        elif found[0] not in chosen:
            chosen.append(found[0])
    if missing:
        listed = ", ".join(str(d.platform) for d in doc.manifests
                           if d.platform is not None and not d.is_attestation) or "none"
        raise NotFound(f"{what} has no {', '.join(missing)} image; it has: {listed}")
    if len(wanted) == 1:
        child_raw, child_type, _ = store.get_manifest(chosen[0].digest)
        return child_raw, child_type
    kept_digests = {d.digest for d in chosen}
    kept = [d for d in doc.manifests if d in chosen or _attests(d) in kept_digests]
    if len(kept) == len(doc.manifests):
        return raw, media_type
    data = copy.deepcopy(doc.data)
    data["manifests"] = [d.to_dict() for d in kept]
    return canonical_json(data), doc.media_type


def _open_pair(src: str, dst: str) -> tuple[Reference | LocalReference, Reference | LocalReference]:
    src_ref = parse_image_spec(src)
    dst_ref = parse_image_spec(dst)
    for ref, role in ((src_ref, "source"), (dst_ref, "destination")):
        if isinstance(ref, LocalReference) and ref.transport == "scratch":
            raise ConfigurationError(f"scratch cannot be a copy {role}: it has no manifest")
    check_local_target(dst_ref)
    return src_ref, dst_ref


def _where(ref: Reference | LocalReference) -> str:
    if isinstance(ref, Reference):
        return ref.name
    return f"{ref.transport}:{ref.path}"


def copy_image(
    src: str,
    dst: str,
    *,
    platform: str | Sequence[str] | None = None,
    auth: Mapping[str, Mapping[str, str]] | None = None,
    insecure: Iterable[str] = (),
    pm: CibPluginManager | None = None,
    jobs: int = 4,
    progress: Progress | None = None,
) -> CopyResult:
    """Copy ``src`` to ``dst`` (any reference or transport), all platforms unless ``platform``
    names some: one (``"linux/arm64"``) copies that platform's image, several (a list, or
    ``"linux/amd64,linux/arm64"``) an index of just those. Nothing is written when the source
    lacks a platform named."""
    src_ref, dst_ref = _open_pair(src, dst)
    wanted = wanted_platforms(platform)
    from cib_core.remote.transport import TransportPool

    insecure = tuple(insecure)
    pool = TransportPool(pm=pm, insecure=insecure)
    src_store = open_store(src_ref, write=False, auth=auth, insecure=insecure, pm=pm,
                           progress=progress, pool=pool)
    raw, media_type, _digest = src_store.get_manifest(source_identifier(src_ref))
    raw, media_type = select_platforms(src_store, raw, media_type, wanted, src)
    if isinstance(dst_ref, LocalReference) and dst_ref.transport == "docker-archive" \
            and isinstance(parse_manifest(raw, media_type), Index):
        raise ConfigurationError(
            f"{src} is a multi-platform index and a docker-archive holds single images; "
            "pick one with --platform (for example --platform linux/amd64)")
    dst_store = open_store(dst_ref, write=True, auth=auth, insecure=insecure, pm=pm,
                           progress=progress, pool=pool)
    copier = _Copier(src_store, dst_store, jobs)
    tags = destination_tags(src_ref, dst_ref)
    first, rest = tags[0], tags[1:]
    raw, media_type = copier.manifest_tree(raw, media_type, first)
    digest = sha256_digest(raw)
    for tag in rest:
        dst_store.put_manifest(raw, media_type, tag)
    dst_store.close()
    return CopyResult(digest=digest, reference=f"{_where(dst_ref)}@{digest}", media_type=media_type,
                      tags=tuple(t for t in tags if t), blobs=dict(copier.counts))


def copy_all_tags(
    src: str,
    dst: str,
    *,
    platform: str | Sequence[str] | None = None,
    auth: Mapping[str, Mapping[str, str]] | None = None,
    insecure: Iterable[str] = (),
    pm: CibPluginManager | None = None,
    jobs: int = 4,
    progress: Progress | None = None,
) -> list[CopyResult]:
    """Copy every tag of the registry repository ``src`` to the same tag in ``dst`` (a registry
    repository or an OCI layout, named without a tag), one ``CopyResult`` per tag, in order of
    the tags' names. ``platform`` applies to each tag as in ``copy_image``; every tag is read
    and checked before the first write."""
    src_ref, dst_ref = _open_pair(src, dst)
    if not isinstance(src_ref, Reference):
        raise ConfigurationError(f"--all-tags copies the tags of a registry repository, not {src!r}")
    if src_ref.tag or src_ref.digest:
        raise ConfigurationError(f"--all-tags copies every tag of a repository; name it without a "
                                 f"tag or digest: {src_ref.name}")
    if isinstance(dst_ref, Reference) and (dst_ref.tag or dst_ref.digest):
        raise ConfigurationError(f"--all-tags keeps each tag's name; name the destination without a "
                                 f"tag or digest: {dst_ref.name}")
    if isinstance(dst_ref, LocalReference) and (dst_ref.transport != "oci" or dst_ref.ref):
        raise ConfigurationError(f"--all-tags writes into a registry repository or an OCI layout "
                                 f"named without a tag (oci:PATH), not {dst!r}")
    wanted = wanted_platforms(platform)
    from cib_core.remote.transport import TransportPool

    insecure = tuple(insecure)
    pool = TransportPool(pm=pm, insecure=insecure)
    src_store = open_store(src_ref, write=False, auth=auth, insecure=insecure, pm=pm,
                           progress=progress, pool=pool)
    assert isinstance(src_store, RegistryStore)
    tags = sorted(set(src_store.client.tags()))
    if not tags:
        raise NotFound(f"{src_ref.name} has no tags; there is nothing to copy")
    plans = []
    for tag in tags:
        raw, media_type, _digest = src_store.get_manifest(tag)
        plans.append((tag, *select_platforms(src_store, raw, media_type, wanted,
                                             f"{src_ref.name}:{tag}")))
    dst_store = open_store(dst_ref, write=True, auth=auth, insecure=insecure, pm=pm,
                           progress=progress, pool=pool)
    copier = _Copier(src_store, dst_store, jobs)
    results = []
    for tag, raw, media_type in plans:
        before = dict(copier.counts)
        written, written_type = copier.manifest_tree(raw, media_type, tag)
        digest = sha256_digest(written)
        counts = {k: v - before.get(k, 0) for k, v in copier.counts.items() if v != before.get(k, 0)}
        results.append(CopyResult(digest=digest, reference=f"{_where(dst_ref)}@{digest}",
                                  media_type=written_type, tags=(tag,), blobs=counts))
    dst_store.close()
    return results
