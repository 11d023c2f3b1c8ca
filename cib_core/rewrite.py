"""Read an image (one manifest, or an index of them) and write an edited copy somewhere.

What ``rebase`` and ``flatten`` share: opening the source and finding its images and their
configs (:class:`ImageSource`), deciding where the result goes and under which tags
(:func:`resolve_target`), and writing the edited images (:func:`write_images`): every blob
a manifest names is made present in the target first (a cross-repository mount, a streamed
copy, or an upload of a freshly built layer), each image manifest goes before the index that
names it, and the tags go last. Callers compute every edit, and so find every bad input,
before they open the target for writing.
"""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Iterable, Mapping, Sequence
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
    check_local_target,
    manifest_to_oci,
    open_store,
    read_config,
    run_parallel,
    transfer_layer,
    wants_oci_types,
)

if TYPE_CHECKING:
    from cib_core.layers.pipeline import BuiltLayer
    from cib_core.plugins import CibPluginManager
    from cib_core.remote.transport import TransportPool

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SourceImage:
    """One image manifest with its config, as read from a store (``store`` is None for
    ``scratch``, which has no layers and an empty config)."""

    store: BlobStore | None
    manifest: dict[str, Any]
    media_type: str
    digest: str | None
    config: dict[str, Any]
    what: str

    @property
    def layers(self) -> list[dict[str, Any]]:
        return list(self.manifest.get("layers") or [])

    @property
    def platform(self) -> Platform | None:
        """The platform the config declares, or None (scratch, or a config without one)."""
        if not self.config.get("os") or not self.config.get("architecture"):
            return None
        return config_platform(self.config)


SCRATCH = SourceImage(store=None, manifest={"layers": []}, media_type=mt.OCI_MANIFEST, digest=None,
                      config={}, what="scratch")


def _platform_name(platform: Platform | None) -> str:
    return str(platform) if platform is not None else "unknown platform"


class ImageSource:
    """An image reference opened for reading: its top document (a manifest or an index) and
    a way to reach each image in it."""

    def __init__(self, spec: str, ref: Reference | LocalReference, store: BlobStore | None,
                 doc: Manifest | Index | None) -> None:
        self.spec = spec
        self.ref = ref
        self.store = store
        self.doc = doc

    @classmethod
    def open(cls, spec: str, *, auth: Mapping[str, Mapping[str, str]] | None = None,
             insecure: Iterable[str] = (), pm: CibPluginManager | None = None,
             pool: TransportPool | None = None, progress: Progress | None = None,
             allow_scratch: bool = False, role: str = "image") -> ImageSource:
        """Open ``spec`` (any reference or transport) and read its top document. ``scratch``
        is an empty image when ``allow_scratch``, else a ``ConfigurationError``."""
        ref = parse_image_spec(spec)
        if isinstance(ref, LocalReference) and ref.transport == "scratch":
            if not allow_scratch:
                raise ConfigurationError(f"scratch cannot be the {role}: it has no manifest")
            return cls(spec, ref, None, None)
        store = open_store(ref, write=False, auth=auth, insecure=insecure, pm=pm, progress=progress,
                           pool=pool)
        identifier = ref.identifier if isinstance(ref, Reference) else (ref.ref or "")
        try:
            raw, media_type, _digest = store.get_manifest(identifier)
        except NotFound as exc:
            store.close()
            raise NotFound(f"{role} {spec}: {exc}", status=exc.status, errors=exc.errors,
                           registry=exc.registry, repository=exc.repository) from exc
        except BaseException:
            store.close()
            raise
        return cls(spec, ref, store, parse_manifest(raw, media_type))

    @property
    def is_scratch(self) -> bool:
        return self.doc is None

    @property
    def digest(self) -> str | None:
        return self.doc.digest if self.doc is not None else None

    @property
    def is_index(self) -> bool:
        return isinstance(self.doc, Index)

    def close(self) -> None:
        if self.store is not None:
            self.store.close()

    def _load(self, manifest: Manifest, what: str) -> SourceImage:
        assert self.store is not None
        _raw, config = read_config(self.store, manifest.config.digest, manifest.config.size, what)
        return SourceImage(self.store, manifest.data, manifest.media_type, manifest.digest, config, what)

    def _child(self, entry: Descriptor) -> Manifest:
        assert self.store is not None
        raw, media_type, _ = self.store.get_manifest(entry.digest)
        child = parse_manifest(raw, media_type)
        if not isinstance(child, Manifest):
            raise ManifestError(f"{self.spec} names {entry.digest} as an image, but it is an index; "
                                "cib edits an index of images, not an index of indexes")
        return child

    def entries(self) -> tuple[list[Descriptor], list[Descriptor]]:
        """An index's image entries, and the entries that cannot follow an edit (attestations,
        which describe one image digest); ``ConfigurationError`` for other kinds of entries."""
        assert isinstance(self.doc, Index)
        images, dropped = [], []
        for entry in self.doc.manifests:
            if entry.is_attestation:
                dropped.append(entry)
            elif entry.media_type in mt.IMAGE_MANIFESTS:
                images.append(entry)
            else:
                raise ConfigurationError(
                    f"{self.spec} holds an entry of type {entry.media_type} ({entry.digest}); cib "
                    "edits indexes whose entries are image manifests")
        if not images:
            raise ConfigurationError(f"{self.spec} is an index without images")
        return images, dropped

    def images(self) -> list[tuple[Descriptor | None, SourceImage]]:
        """Every image: the single manifest (entry None), or each image entry of an index."""
        if self.doc is None:
            return [(None, SCRATCH)]
        if isinstance(self.doc, Manifest):
            return [(None, self._load(self.doc, self.spec))]
        images, _ = self.entries()
        return [(entry, self._load(self._child(entry), f"{self.spec} ({_platform_name(entry.platform)})"))
                for entry in images]

    def image_for(self, platform: Platform | None, role: str) -> SourceImage:
        """This source's image for ``platform`` (None: whatever the image is, if it is one);
        ``NotFound`` naming the platforms there are when it has none for it."""
        if self.doc is None:
            return SCRATCH
        if isinstance(self.doc, Manifest):
            image = self._load(self.doc, self.spec)
            have = image.platform
            if platform is not None and have is not None and not have.matches(platform):
                raise NotFound(f"{role} {self.spec} is a {have} image; the image to edit is "
                               f"{platform}: name that platform's {role}")
            return image
        if platform is None:
            raise ConfigurationError(f"{role} {self.spec} is a multi-platform index and the image's "
                                     "config names no platform to pick from it")
        candidates = [d for d in self.doc.select_all(platform) if not d.is_attestation]
        if not candidates:
            available = ", ".join(str(p) for p in self.doc.platforms()) or "none"
            raise NotFound(f"{role} {self.spec} has no {platform} image (it has: {available})")
        entry = candidates[0]
        return self._load(self._child(entry), f"{self.spec} ({_platform_name(entry.platform)})")


def new_config_descriptor(old: Mapping[str, Any], config_raw: bytes) -> dict[str, Any]:
    """The descriptor of a rewritten config: the old one's fields, in their order (so an
    unchanged config gives unchanged manifest bytes), with the new digest and size; embedded
    ``data`` of the old content is dropped."""
    out = {k: v for k, v in old.items() if k != "data"}
    out["digest"] = sha256_digest(config_raw)
    out["size"] = len(config_raw)
    return out


# --- where the result goes -------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    ref: Reference | LocalReference
    tags: tuple[str | None, ...]


def resolve_target(source: ImageSource, to: str | None, option: str = "--to") -> Target:
    """Where an edited image goes: ``to``, else back to the source's repository (or layout)
    under the source's tag; a source named by digest alone gets the result by digest alone,
    as crane does. Refuses a target that cannot be written before anything is."""
    from cib_core.copy import destination_tags

    src = source.ref
    if to is None:
        if isinstance(src, LocalReference) and src.transport == "docker-archive":
            raise ConfigurationError(
                f"{source.spec} is a docker-archive; say where the result goes with {option} "
                "(rewriting the archive being read is not supported)")
        if isinstance(src, Reference) and src.digest:
            return Target(src.without_identifier(), (None,))
        return Target(src, tuple(destination_tags(src, src)))
    dst = parse_image_spec(to)
    check_local_target(dst)
    if isinstance(dst, LocalReference) and dst.transport == "scratch":
        raise ConfigurationError(f"{option} scratch: scratch is an empty base, not a place to write")
    if isinstance(dst, Reference) and dst.digest:
        raise ConfigurationError(
            f"{option} {to}: a target cannot name a digest (the result's digest is known only "
            "once it is made); give a tag, or the repository alone")
    if isinstance(dst, LocalReference) and dst.transport == "docker-archive" and source.is_index:
        raise ConfigurationError(
            f"{source.spec} is a multi-platform index and a docker-archive holds single images; "
            f"write it to a registry or an oci: layout")
    return Target(dst, tuple(destination_tags(src, dst)))


# --- writing ---------------------------------------------------------------------------------
@dataclass
class NewImage:
    """An edited image, ready to write: its manifest, its config's bytes, the store each
    layer blob comes from (by digest) and blobs built locally (by digest)."""

    manifest: dict[str, Any]
    media_type: str
    config_raw: bytes
    sources: dict[str, BlobStore] = field(default_factory=dict)
    built: dict[str, BuiltLayer] = field(default_factory=dict)
    replaces: str | None = None  # the digest of the index entry this image takes the place of


@dataclass(frozen=True)
class RewriteResult:
    """What an edit wrote: the digest and ``reference`` (``NAME@sha256:…``) of the new manifest
    or index, its media type, the tags set, and how many blobs got to the target how
    (``copied``, ``mounted``, ``present``, ``uploaded``, ``compressed``)."""

    digest: str
    reference: str
    media_type: str
    tags: tuple[str, ...]
    platforms: tuple[str, ...] = ()
    blobs: Mapping[str, int] = field(default_factory=dict)


class _Writer:
    def __init__(self, dst: BlobStore, jobs: int) -> None:
        self.dst = dst
        self.jobs = max(1, jobs)
        self.to_oci = wants_oci_types(dst)
        self.counts: dict[str, int] = {}
        self._lock = threading.Lock()
        self._done: dict[str, dict[str, Any]] = {}  # digest -> its descriptor in the target

    def _count(self, how: str) -> None:
        with self._lock:
            self.counts[how] = self.counts.get(how, 0) + 1

    def layers(self, image: NewImage) -> None:
        docker_flavour = mt.is_docker_flavour(image.media_type)
        todo = []
        with self._lock:
            for layer in image.manifest.get("layers") or []:
                if layer.get("urls"):
                    log.info("leaving non-distributable layer %s as a reference", layer["digest"])
                    continue
                if layer["digest"] not in self._done:
                    self._done[layer["digest"]] = layer
                    todo.append(layer)

        def one(layer: dict[str, Any]) -> None:
            digest = layer["digest"]
            built = image.built.get(digest)
            if built is not None:
                if self.dst.has_blob(digest):
                    self._count("present")
                    return
                with built.open() as blob:
                    self.dst.put_blob(blob, digest=digest, size=built.info.size)
                self._count("uploaded")
                return
            source = image.sources.get(digest)
            if source is None:  # pragma: no cover - every caller names a source for each layer
                raise AssertionError(f"no source for layer {digest}")
            descriptor, how = transfer_layer(source, self.dst, layer, docker_flavour=docker_flavour)
            with self._lock:
                self._done[digest] = descriptor
            self._count(how)

        run_parallel(one, todo, self.jobs)

    def image(self, image: NewImage, tag: str | None) -> tuple[bytes, str]:
        config = image.manifest["config"]
        if not self.dst.has_blob(config["digest"]):
            self.dst.put_blob(io.BytesIO(image.config_raw), digest=config["digest"],
                              size=len(image.config_raw))
            self._count("uploaded")
        else:
            self._count("present")
        manifest = dict(image.manifest)
        manifest["layers"] = [self._done.get(d["digest"], d) if not d.get("urls") else d
                              for d in manifest.get("layers") or []]
        missing = [d["digest"] for d in [config, *manifest["layers"]]
                   if not d.get("urls") and not self.dst.has_blob(d["digest"])]
        if missing:
            raise RegistryError(f"not writing the manifest: {self.dst.name} still lacks "
                                f"{', '.join(missing)}")
        media_type = image.media_type
        if self.to_oci and mt.is_docker_flavour(media_type):
            manifest = manifest_to_oci(manifest)
            media_type = mt.to_oci(media_type)
        raw = canonical_json(manifest)
        self.dst.put_manifest(raw, media_type, tag)
        return raw, media_type


def write_images(target: Target, images: Sequence[NewImage], *, index: Index | None = None,
                 dropped: Sequence[str] = (), auth: Mapping[str, Mapping[str, str]] | None = None,
                 insecure: Iterable[str] = (), pm: CibPluginManager | None = None,
                 pool: TransportPool | None = None, progress: Progress | None = None,
                 jobs: int = 4, platforms: Sequence[str] = ()) -> RewriteResult:
    """Write ``images`` to ``target``: one image, or (with ``index``, the source index) each
    image and then the index with their entries replaced and the ``dropped`` digests left
    out. The first tag goes with the top manifest, the others after it."""
    from cib_core.mutate import replace_index_entries

    dst = open_store(target.ref, write=True, auth=auth, insecure=insecure, pm=pm, progress=progress,
                     pool=pool)
    writer = _Writer(dst, jobs)
    first, rest = target.tags[0], target.tags[1:]
    try:
        for image in images:
            writer.layers(image)
        if index is None:
            (image,) = images
            raw, media_type = writer.image(image, first)
        else:
            replacements: dict[str, Mapping[str, Any] | None] = {d: None for d in dropped}
            for image in images:
                child_raw, child_type = writer.image(image, None)
                assert image.replaces is not None
                replacements[image.replaces] = {"mediaType": child_type,
                                                "digest": sha256_digest(child_raw),
                                                "size": len(child_raw)}
            data = replace_index_entries(index.data, replacements)
            media_type = index.media_type
            if writer.to_oci and mt.is_docker_flavour(media_type):
                data = manifest_to_oci(data)
                media_type = mt.to_oci(media_type)
            raw = canonical_json(data)
            dst.put_manifest(raw, media_type, first)
        for tag in rest:
            dst.put_manifest(raw, media_type, tag)
    except BaseException:
        # a docker-archive writer would write what it has so far on close()
        discard = getattr(dst, "discard", None)
        if callable(discard):
            discard()
        else:
            dst.close()
        raise
    dst.close()
    digest = sha256_digest(raw)
    ref = target.ref
    where = (f"{ref.name}@{digest}" if isinstance(ref, Reference)
             else f"{ref.transport}:{ref.path}@{digest}")
    return RewriteResult(digest=digest, reference=where, media_type=media_type,
                         tags=tuple(t for t in target.tags if t), platforms=tuple(platforms),
                         blobs=dict(writer.counts))
