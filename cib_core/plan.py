"""Dry runs: what a build would write to its target, found by doing everything else.

A build with ``Image(..., dry_run=True)`` runs its whole flow -- the base is read, new layers
are tarred, compressed and hashed, configs and manifests are made -- against a
:class:`PlanningStore` in place of the target. The planning store answers "is this blob there?"
from the real target (a ``HEAD`` to a registry, a look into an existing layout) and from what it
was given, and records every write instead of making it: nothing is uploaded, mounted, tagged
or created. The digests are the ones a real build of the same inputs gets, because they are
computed by the same code. ``save()`` then returns the record as a :class:`BuildPlan`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Literal

from cib_core import mediatypes as mt
from cib_core.digest import new_hasher
from cib_core.errors import ConfigurationError, ManifestError
from cib_core.reference import LocalReference, Reference
from cib_core.stores import BlobStore, RegistryStore

log = logging.getLogger(__name__)

Action = Literal["upload", "write", "mount", "copy"]
CHUNK = 1 << 20


@dataclass(frozen=True)
class PlannedBlob:
    """A blob the build would send: ``action`` is ``upload`` (new, into a registry), ``write``
    (new, into a local target), ``mount`` (from ``source``, a repository of the same registry)
    or ``copy`` (from ``source``, another registry, a local base or a URL). ``kind`` is
    ``layer`` or ``config``."""

    digest: str
    size: int | None
    action: Action
    kind: str = "layer"
    source: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"digest": self.digest, "size": self.size, "action": self.action,
                               "kind": self.kind}
        if self.source is not None:
            out["source"] = self.source
        return out


@dataclass(frozen=True)
class PlannedManifest:
    """A manifest or index the build would put, by digest only (``tag`` ``None``) or tagged."""

    digest: str
    media_type: str
    size: int
    tag: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"digest": self.digest, "mediaType": self.media_type, "size": self.size,
                "tag": self.tag}


@dataclass(frozen=True)
class PlannedLayer:
    """One layer of a platform's image: from the base, or ``new`` in this build (``created_by``
    from its history entry); ``present`` when the target has it already."""

    digest: str
    size: int | None
    media_type: str
    new: bool
    present: bool
    created_by: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"digest": self.digest, "size": self.size,
                               "mediaType": self.media_type, "new": self.new,
                               "present": self.present}
        if self.created_by is not None:
            out["createdBy"] = self.created_by
        return out


@dataclass(frozen=True)
class PlannedImage:
    """The image of one platform: its manifest, config and layers."""

    platform: str
    manifest_digest: str
    config_digest: str
    config_size: int
    layers: tuple[PlannedLayer, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"platform": self.platform, "manifest": self.manifest_digest,
                "config": {"digest": self.config_digest, "size": self.config_size},
                "layers": [layer.to_dict() for layer in self.layers]}


@dataclass(frozen=True)
class BuildPlan:
    """What a dry run found: the images per platform, the blobs to send and the manifests to put.
    ``digest`` is that of the manifest (or index) the build would push."""

    target: str
    digest: str
    media_type: str
    images: tuple[PlannedImage, ...]
    blobs: tuple[PlannedBlob, ...]
    manifests: tuple[PlannedManifest, ...]
    target_kind: str = "registry"  # or "oci", "docker-archive"

    @property
    def bytes_to_send(self) -> int:
        return sum(blob.size or 0 for blob in self.blobs)

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "targetKind": self.target_kind,
                "digest": self.digest, "mediaType": self.media_type,
                "images": [image.to_dict() for image in self.images],
                "blobs": [blob.to_dict() for blob in self.blobs],
                "bytesToSend": self.bytes_to_send,
                "manifests": [manifest.to_dict() for manifest in self.manifests]}


def _hash_stream(pieces: Iterable[bytes]) -> tuple[str, int]:
    hasher = new_hasher("sha256")
    size = 0
    for piece in pieces:
        hasher.update(piece)
        size += len(piece)
    return f"sha256:{hasher.hexdigest()}", size


def _chunks(data: BinaryIO | Iterable[bytes]) -> Iterable[bytes]:
    read = getattr(data, "read", None)
    if read is None:
        yield from data
        return
    while True:
        chunk = read(CHUNK)
        if not chunk:
            return
        yield chunk


@dataclass
class _Records:
    blobs: dict[str, PlannedBlob] = field(default_factory=dict)
    manifests: list[PlannedManifest] = field(default_factory=list)


class PlanningStore:
    """A build target that records writes instead of making them.

    ``target`` is the reference of the real target; ``existing`` a read-only view of it
    (``None`` when it does not exist yet, or is a file that a build replaces whole). Reads of
    blobs are answered from ``existing`` only.
    """

    def __init__(self, target: Reference | LocalReference, existing: BlobStore | None) -> None:
        self.target = target
        self.kind: Literal["registry", "oci", "docker-archive"]
        if isinstance(target, Reference):
            self.kind, self.name = "registry", f"{target.registry}/{target.repository}"
        elif target.transport in ("oci", "docker-archive"):
            self.kind = "oci" if target.transport == "oci" else "docker-archive"
            self.name = f"{target.transport}:{target.path}"
        else:
            raise ConfigurationError(f"{target} cannot be a build target")
        # an archive is written whole, whatever the file held before
        self.existing = existing if self.kind != "docker-archive" else None
        self._records = _Records()
        self._lock = threading.Lock()  # base blobs are planned from several threads at once

    @property
    def oci_types_only(self) -> bool:
        """An OCI layout takes OCI media types only, as when it is written for real."""
        return self.kind == "oci"

    @property
    def blobs(self) -> tuple[PlannedBlob, ...]:
        return tuple(self._records.blobs.values())

    @property
    def manifests(self) -> tuple[PlannedManifest, ...]:
        return tuple(self._records.manifests)

    def planned(self, digest: str) -> bool:
        return digest in self._records.blobs

    def _new_action(self) -> Action:
        return "upload" if self.kind == "registry" else "write"

    def _record(self, blob: PlannedBlob) -> None:
        with self._lock:
            if blob.digest in self._records.blobs:
                return
            self._records.blobs[blob.digest] = blob
        log.debug("dry run: %s would %s %s%s", self.name, blob.action, blob.digest,
                  f" from {blob.source}" if blob.source else "")

    # -- the BlobStore interface -------------------------------------------------------------
    def has_blob(self, digest: str) -> bool:
        if digest in self._records.blobs:
            return True
        return self.existing is not None and self.existing.has_blob(digest)

    def open_blob(self, digest: str) -> BinaryIO:
        if self.existing is None or digest in self._records.blobs:
            raise ConfigurationError(f"a dry run cannot read {digest} back from {self.name}: "
                                     "it was never written")
        return self.existing.open_blob(digest)

    def put_blob(self, data: BinaryIO | Iterable[bytes], digest: str | None = None,
                 size: int | None = None) -> tuple[str, int]:
        if digest is None or size is None:  # a blob whose digest only its bytes tell
            digest, size = _hash_stream(_chunks(data))
        self._record(PlannedBlob(digest, size, self._new_action()))
        return digest, size

    def put_stream(self, pieces: Iterable[bytes], label: str = "new blob") -> tuple[str, int]:
        digest, size = _hash_stream(pieces)
        self._record(PlannedBlob(digest, size, self._new_action()))
        return digest, size

    def get_manifest(self, ref: str) -> tuple[bytes, str, str]:
        if self.existing is None:
            raise ConfigurationError(f"a dry run cannot read manifests of {self.name}: "
                                     "it does not exist yet")
        return self.existing.get_manifest(ref)

    def put_manifest(self, raw: bytes, media_type: str, tag: str | None) -> str:
        from cib_core.digest import sha256_digest

        if tag is not None and isinstance(self.target, Reference):
            self.target.with_tag(tag)  # the registry would refuse it: InvalidReference
        if self.kind == "docker-archive" and media_type in mt.INDEXES:
            # as the archive writer refuses it when the build is real
            raise ManifestError(
                f"{self.name}: a docker-archive holds single-platform images, not an index; "
                "pick one platform (for example --platform linux/amd64)")
        digest = sha256_digest(raw)
        with self._lock:
            self._records.manifests.append(PlannedManifest(digest, media_type, len(raw), tag))
        return digest

    def close(self) -> None:
        if self.existing is not None:
            self.existing.close()

    # -- what a real build would do with a blob of the base ---------------------------------------
    def plan_transfer(self, src: BlobStore, descriptor: dict[str, Any], *,
                      docker_flavour: bool, force: bool = False) -> tuple[dict[str, Any], str]:
        """Record how ``stores.transfer_layer`` would bring a base layer here, without reading
        it, except an uncompressed Docker layer bound for a registry, which is compressed here
        to learn the digest it would get. Returns its descriptor here and how."""
        digest = descriptor["digest"]
        size = descriptor.get("size")
        if descriptor.get("mediaType") == mt.DOCKER_LAYER and self.kind == "registry":
            from cib_core.layers.tarball import compress_layer

            with src.open_blob(digest) as stream, \
                    compress_layer(stream, f"{src.name}@{digest}",
                                   docker_flavour=docker_flavour) as built:
                info = built.info
            new = dict(descriptor)
            new.update({"mediaType": info.media_type, "digest": info.digest, "size": info.size})
            if not force and self.has_blob(info.digest):
                return new, "present"
            self._record(PlannedBlob(info.digest, info.size, "upload", source=src.name))
            return new, "compressed"
        if not force and self.has_blob(digest):
            return descriptor, "present"
        existing = self.existing
        if (isinstance(src, RegistryStore) and isinstance(existing, RegistryStore)
                and src.registry == existing.registry and src.repository != existing.repository):
            self._record(PlannedBlob(digest, size, "mount", source=src.repository))
            return descriptor, "mounted"
        self._record(PlannedBlob(digest, size, "copy", source=src.name))
        return descriptor, "copied"

    def plan_foreign(self, layer: dict[str, Any], force: bool) -> None:
        """Record a non-distributable layer that would be fetched from its first URL."""
        digest = layer["digest"]
        if not force and self.has_blob(digest):
            return
        urls = layer.get("urls") or []
        self._record(PlannedBlob(digest, layer.get("size"), "copy",
                                 source=urls[0] if urls else None))

    def mark_configs(self, digests: Iterable[str]) -> None:
        """Label the recorded blobs that are image configs."""
        for digest in digests:
            blob = self._records.blobs.get(digest)
            if blob is not None and blob.kind != "config":
                self._records.blobs[digest] = PlannedBlob(blob.digest, blob.size, blob.action,
                                                          "config", blob.source)
