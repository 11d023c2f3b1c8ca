"""Validate an image where it is stored: every manifest and blob present and as described.

:func:`validate_image` walks an image (an index and each of its images, or one image) and
reads everything it names: each manifest's bytes against the digest, size and media type its
index gives; each config against its descriptor, the OCI config schema and the platform
the index claims; each layer blob against its digest and size, then decompressed (streaming,
a chunk at a time) and hashed against the config's ``rootfs.diff_ids``; and every media type
against the manifest's flavour (Docker schema 2 or OCI). It collects every fault it finds,
never stopping at the first; only a top-level reference that cannot be read at all is an
error. A layer shared by several images is read once.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import logging
import threading
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO, cast

from cib_core import mediatypes as mt
from cib_core.digest import sha256_digest
from cib_core.documents import json_object
from cib_core.errors import CibError, DigestMismatch, ManifestError, NotFound
from cib_core.models import (
    Descriptor,
    Index,
    Manifest,
    Platform,
    config_platform,
    diff_ids,
    parse_manifest,
)
from cib_core.reference import LocalReference, Reference, parse_image_spec
from cib_core.stores import MAX_CONFIG_SIZE, BlobStore, open_store
from cib_core.validate import validate_config

if TYPE_CHECKING:
    from cib_core.plugins import CibPluginManager

log = logging.getLogger(__name__)

__all__ = ["Fault", "Validation", "check_image", "validate_image"]

CHUNK = 1 << 20
IMAGE_CONFIGS = frozenset({mt.OCI_CONFIG, mt.DOCKER_CONFIG})
TAR_LAYERS = mt.DOCKER_LAYERS | mt.OCI_LAYERS


@dataclass(frozen=True)
class Fault:
    """One thing wrong with an image: ``where`` it is (``linux/amd64 layer 2 sha256:…``)
    and what the ``problem`` is."""

    where: str
    problem: str

    def __str__(self) -> str:
        return f"{self.where}: {self.problem}"


@dataclass(frozen=True)
class Validation:
    """The outcome of :func:`check_image`: the faults found (empty when the image is valid)
    and what was read to find them."""

    reference: str
    digest: str
    media_type: str
    faults: tuple[Fault, ...]
    platforms: tuple[str, ...] = ()
    manifests: int = 0
    configs: int = 0
    layers: int = 0
    bytes_read: int = 0
    skipped: tuple[str, ...] = ()  # non-distributable layers that are not in the store

    @property
    def ok(self) -> bool:
        return not self.faults


def _layer_compression(media_type: str) -> str | None:
    if media_type.endswith(("+gzip", ".gzip")):
        return "gzip"
    if media_type.endswith("+zstd"):
        return "zstd"
    return None


def _describe_compression(kind: str | None) -> str:
    return kind or "uncompressed"


class _Counting(io.RawIOBase):
    """Reads through ``source``, hashing and counting every byte that passes."""

    def __init__(self, source: BinaryIO) -> None:
        super().__init__()
        self._source = source
        self.hash = hashlib.sha256()
        self.size = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._source.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        self.hash.update(data)
        self.size += n
        return n

    def drain(self) -> None:
        while self.read(CHUNK):
            pass


@dataclass
class _BlobFacts:
    """What reading one blob showed."""

    missing: bool = False
    problem: str | None = None  # unreadable, or content not matching its digest
    size: int = 0
    compression: str | None = None
    uncompressed: str | None = None  # sha256 of the decompressed content
    decompress_problem: str | None = None


def _read_blob(store: BlobStore, digest: str, decompress: bool) -> _BlobFacts:
    from cib_core.compression import decompressed

    try:
        stream = store.open_blob(digest)
    except NotFound:
        return _BlobFacts(missing=True)
    except CibError as exc:
        return _BlobFacts(problem=f"cannot be read: {exc}")
    facts = _BlobFacts()
    counting = _Counting(stream)
    try:
        with stream:
            if decompress:
                plain, facts.compression = decompressed(cast(BinaryIO, counting), f"blob {digest}")
                try:
                    content = hashlib.sha256()
                    while True:
                        chunk = plain.read(CHUNK)
                        if not chunk:
                            break
                        content.update(chunk)
                    facts.uncompressed = f"sha256:{content.hexdigest()}"
                except DigestMismatch:
                    raise
                except Exception as exc:  # noqa: BLE001 - gzip, zstd and xz raise many types
                    facts.decompress_problem = (f"is not valid {_describe_compression(facts.compression)} "
                                                f"data: {exc or type(exc).__name__}")
            counting.drain()
    except DigestMismatch as exc:
        return _BlobFacts(problem=f"content does not match its digest (it hashes to {exc.actual})")
    except NotFound:
        return _BlobFacts(missing=True)
    except CibError as exc:
        return _BlobFacts(problem=f"cannot be read: {exc}")
    actual = f"sha256:{counting.hash.hexdigest()}"
    if digest.startswith("sha256:") and actual != digest:
        return _BlobFacts(problem=f"content does not match its digest (it hashes to {actual})")
    facts.size = counting.size
    return facts


@dataclass
class _LayerUse:
    """One place a layer blob is named: checked against what was read, once read."""

    seq: int
    where: str
    descriptor: Descriptor
    diff_id: str | None  # what the config expects, None when not a tar layer of an image
    check_compression: bool


@dataclass
class _Walk:
    store: BlobStore
    jobs: int
    faults: list[tuple[int, Fault]] = field(default_factory=list)
    uses: list[_LayerUse] = field(default_factory=list)
    platforms: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    manifests: int = 0
    configs: int = 0
    bytes_read: int = 0
    _seq: itertools.count[int] = field(default_factory=itertools.count)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def fault(self, where: str, problem: str, seq: int | None = None) -> None:
        with self._lock:
            self.faults.append((next(self._seq) if seq is None else seq, Fault(where, problem)))

    def next_seq(self) -> int:
        return next(self._seq)

    # -- manifests ------------------------------------------------------------------------
    def document(self, raw: bytes, served_type: str, where: str, *,
                 expected: Descriptor | None) -> Manifest | Index | None:
        self.manifests += 1
        if expected is not None:
            actual = sha256_digest(raw)
            if expected.digest.startswith("sha256:") and actual != expected.digest:
                self.fault(where, f"content does not match its digest (it hashes to {actual})")
            if len(raw) != expected.size:
                self.fault(where, f"is {len(raw)} bytes; the index says {expected.size}")
        try:
            doc = parse_manifest(raw, served_type or None)
        except ManifestError as exc:
            self.fault(where, str(exc))
            return None
        declared = doc.data.get("mediaType")
        if declared and served_type in mt.ALL_MANIFESTS and declared != served_type:
            self.fault(where, f"declares media type {declared} but is served as {served_type}")
        if expected is not None and doc.media_type != expected.media_type:
            self.fault(where, f"is a {doc.media_type}; the index entry says {expected.media_type}")
        return doc

    def index(self, index: Index) -> None:
        docker_list = index.media_type == mt.DOCKER_MANIFEST_LIST
        for i, entry in enumerate(index.manifests):
            platform = entry.platform
            label = f"index entry {i + 1}" + (f" ({platform})" if platform is not None else "")
            child_where = f"{label} {entry.digest}"
            if docker_list and entry.media_type not in mt.ALL_MANIFESTS:
                self.fault(child_where, f"media type {entry.media_type} cannot be in a Docker "
                           "manifest list")
            try:
                raw, served, _digest = self.store.get_manifest(entry.digest)
            except NotFound:
                self.fault(child_where, "is missing: the manifest is not in the store")
                continue
            except DigestMismatch as exc:
                self.fault(child_where, f"content does not match its digest (it hashes to {exc.actual})")
                continue
            except CibError as exc:
                self.fault(child_where, f"cannot be read: {exc}")
                continue
            doc = self.document(raw, served, child_where, expected=entry)
            if isinstance(doc, Index):
                self.index(doc)
            elif isinstance(doc, Manifest):
                self.image(doc, str(platform) if platform is not None else f"entry {i + 1}",
                           platform=platform, artifact=entry.is_attestation)

    def image(self, manifest: Manifest, label: str, *, platform: Platform | None = None,
              artifact: bool = False) -> None:
        prefix = f"{label} " if label else ""
        docker_flavour = mt.is_docker_flavour(manifest.media_type)
        flavour = "a Docker schema 2 manifest" if docker_flavour else "an OCI manifest"
        config_desc = manifest.config
        config_where = f"{prefix}config {config_desc.digest}"
        if config_desc.media_type not in IMAGE_CONFIGS:
            if docker_flavour:
                self.fault(config_where, f"media type {config_desc.media_type} is not an image config "
                           f"type of {flavour} ({mt.DOCKER_CONFIG})")
            artifact = True
        elif (config_desc.media_type == mt.DOCKER_CONFIG) != docker_flavour:
            self.fault(config_where, f"media type {config_desc.media_type} does not belong in "
                       f"{flavour} ({mt.config_media_type(docker_flavour)})")
        if not artifact and platform is not None:
            self.platforms.append(str(platform))
        config = self.config(config_desc, config_where, image=not artifact)
        ids: list[str] | None = None
        if config is not None and not artifact:
            have = config_platform(config) if config.get("os") and config.get("architecture") else None
            if not label and have is not None:
                self.platforms.append(str(have))
            if platform is not None and have is not None and not have.matches(platform):
                self.fault(config_where, f"is a {have} config; the index entry says {platform}")
            try:
                ids = diff_ids(config)
            except ManifestError as exc:
                self.fault(config_where, str(exc))
            if ids is not None and len(ids) != len(manifest.layers):
                self.fault(config_where, f"lists {len(ids)} diff_ids for the manifest's "
                           f"{len(manifest.layers)} layers")
        allowed = mt.DOCKER_LAYERS if docker_flavour else mt.OCI_LAYERS
        for i, layer in enumerate(manifest.layers):
            where = f"{prefix}layer {i + 1} {layer.digest}"
            seq = self.next_seq()
            if not artifact and layer.media_type not in allowed:
                self.fault(where, f"media type {layer.media_type} is not a layer type of {flavour}",
                           seq)
            tar = not artifact and layer.media_type in TAR_LAYERS
            expected = ids[i] if tar and ids is not None and i < len(ids) else None
            self.uses.append(_LayerUse(seq, where, layer, expected, check_compression=tar))

    def config(self, descriptor: Descriptor, where: str, *, image: bool) -> dict[str, Any] | None:
        self.configs += 1
        if descriptor.size > MAX_CONFIG_SIZE:
            self.fault(where, f"is {descriptor.size} bytes; cib reads configs up to {MAX_CONFIG_SIZE}")
            return None
        try:
            with self.store.open_blob(descriptor.digest) as stream:
                raw = stream.read(MAX_CONFIG_SIZE + 1)
        except NotFound:
            self.fault(where, "is missing: the blob is not in the store")
            return None
        except DigestMismatch as exc:
            self.fault(where, f"content does not match its digest (it hashes to {exc.actual})")
            return None
        except CibError as exc:
            self.fault(where, f"cannot be read: {exc}")
            return None
        self.bytes_read += len(raw)
        actual = sha256_digest(raw)
        if descriptor.digest.startswith("sha256:") and actual != descriptor.digest:
            self.fault(where, f"content does not match its digest (it hashes to {actual})")
            return None
        if len(raw) != descriptor.size:
            self.fault(where, f"is {len(raw)} bytes; the manifest says {descriptor.size}")
        if not image:
            return None
        try:
            config = json_object(raw, "the config")
            validate_config(raw)
        except ManifestError as exc:
            self.fault(where, str(exc))
            return None
        return config

    # -- layers ---------------------------------------------------------------------------
    def read_layers(self) -> int:
        """Read each named layer blob once (several at a time); returns how many were read."""
        todo: dict[str, bool] = {}
        for use in self.uses:
            digest = use.descriptor.digest
            todo[digest] = todo.get(digest, False) or use.check_compression
        nondistributable = {u.descriptor.digest for u in self.uses if u.descriptor.urls}
        skip = {d for d in nondistributable if not self.store.has_blob(d)}
        self.skipped = sorted(skip)
        work = [(d, decompress) for d, decompress in todo.items() if d not in skip]
        with ThreadPoolExecutor(max_workers=max(1, self.jobs), thread_name_prefix="cib-validate") as pool:
            results = dict(zip([d for d, _ in work],
                               pool.map(lambda item: _read_blob(self.store, *item), work), strict=True))
        for use in self.uses:
            facts = results.get(use.descriptor.digest)
            if facts is None:
                continue
            self._judge(use, facts)
        self.bytes_read += sum(f.size for f in results.values())
        return len(results)

    def _judge(self, use: _LayerUse, facts: _BlobFacts) -> None:
        where, layer = use.where, use.descriptor
        if facts.missing:
            self.fault(where, "is missing: the blob is not in the store", use.seq)
            return
        if facts.problem is not None:
            self.fault(where, facts.problem, use.seq)
            return
        if facts.size != layer.size:
            self.fault(where, f"is {facts.size} bytes; the manifest says {layer.size}", use.seq)
        if not use.check_compression:
            return
        wanted = _layer_compression(layer.media_type)
        if facts.compression != wanted:
            self.fault(where, f"media type {layer.media_type} says "
                       f"{_describe_compression(wanted)} but the blob is "
                       f"{_describe_compression(facts.compression)}", use.seq)
        if facts.decompress_problem is not None:
            self.fault(where, facts.decompress_problem, use.seq)
            return
        if use.diff_id is not None and facts.uncompressed != use.diff_id:
            self.fault(where, f"uncompressed content hashes to {facts.uncompressed}; the config's "
                       f"diff_id is {use.diff_id}", use.seq)


def check_image(
    ref: str,
    *,
    auth: Mapping[str, Mapping[str, str]] | None = None,
    insecure: Iterable[str] = (),
    pm: CibPluginManager | None = None,
    jobs: int = 4,
) -> Validation:
    """Validate ``ref`` (a registry reference, ``oci:PATH[:TAG]`` or
    ``docker-archive:PATH[:NAME:TAG]``), every platform of an index, and return what was
    found. Faults are collected, never raised; a reference whose top manifest cannot be read
    raises as any read would (``NotFound``, ``AuthenticationError``, ...)."""
    from cib_core.remote.transport import TransportPool

    parsed = parse_image_spec(ref)
    if isinstance(parsed, LocalReference) and parsed.transport == "scratch":
        raise NotFound("scratch is the empty base; it has no manifest to validate")
    insecure = tuple(insecure)
    pool = TransportPool(pm=pm, insecure=insecure)
    store = open_store(parsed, auth=auth, insecure=insecure, pm=pm, pool=pool)
    try:
        identifier = parsed.identifier if isinstance(parsed, Reference) else (parsed.ref or "")
        raw, served, digest = store.get_manifest(identifier)
        walk = _Walk(store, jobs)
        if isinstance(parsed, Reference) and parsed.digest and sha256_digest(raw) != parsed.digest:
            walk.fault(ref, f"content hashes to {sha256_digest(raw)}, not the digest it was asked by")
        doc = walk.document(raw, served, ref, expected=None)
        if isinstance(doc, Index):
            walk.index(doc)
        elif isinstance(doc, Manifest):
            walk.image(doc, "")
        layers = walk.read_layers()
    finally:
        store.close()
        pool.close()
    faults = tuple(fault for _, fault in sorted(walk.faults, key=lambda item: item[0]))
    return Validation(reference=ref, digest=digest, media_type=doc.media_type if doc else served,
                      faults=faults, platforms=tuple(walk.platforms), manifests=walk.manifests,
                      configs=walk.configs, layers=layers, bytes_read=walk.bytes_read,
                      skipped=tuple(walk.skipped))


def validate_image(
    ref: str,
    *,
    auth: Mapping[str, Mapping[str, str]] | None = None,
    insecure: Iterable[str] = (),
    pm: CibPluginManager | None = None,
    jobs: int = 4,
) -> list[Fault]:
    """Every fault of the image ``ref`` (empty when it is valid): missing manifests and blobs,
    digests, sizes, diff_ids and media types that do not match, for every platform of an
    index. See :func:`check_image` for what was read along the way."""
    return list(check_image(ref, auth=auth, insecure=insecure, pm=pm, jobs=jobs).faults)
