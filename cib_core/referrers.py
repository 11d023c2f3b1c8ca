"""Artifacts attached to an image (OCI 1.1 ``subject``), and the list of them.

``attach`` pushes an artifact manifest whose ``subject`` is an image; ``list_referrers`` lists
what refers to an image; ``copy_referrers`` carries an image's referrers to a copy of it.

A registry with the referrers API answers a manifest push with ``OCI-Subject`` and keeps the
list itself. Elsewhere (distribution 2.8, OCI layouts) the list is an OCI index under the tag
``sha256-<hex>`` that writers keep up to date, as the distribution spec describes. Those
registries offer no conditional write, so ``add_referrers`` writes the merged index, then
watches the tag for a while and merges again if another writer replaced it with a list that
lacks our entries (see ``add_referrers`` for the bounds of that guarantee).
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import os
import random
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cib_core import mediatypes as mt
from cib_core.callbacks import Progress
from cib_core.digest import sha256_digest
from cib_core.documents import canonical_json, json_object
from cib_core.errors import ConfigurationError, LayerSourceError, ManifestError, NotFound, RegistryError
from cib_core.reference import LocalReference, Reference, parse_image_spec
from cib_core.remote.client import referrers_tag
from cib_core.stores import BlobStore, RegistryStore, open_store, transfer_blob

if TYPE_CHECKING:
    from cib_core.plugins import CibPluginManager

log = logging.getLogger(__name__)

TITLE_ANNOTATION = "org.opencontainers.image.title"
DEFAULT_FILE_MEDIA_TYPE = "application/octet-stream"

EMPTY_JSON = b"{}"
EMPTY_DESCRIPTOR: Mapping[str, Any] = {
    "mediaType": mt.OCI_EMPTY,
    "digest": sha256_digest(EMPTY_JSON),
    "size": len(EMPTY_JSON),
    "data": base64.b64encode(EMPTY_JSON).decode("ascii"),
}
"""The image spec's empty descriptor: the config of an artifact that has none."""

DEFAULT_SETTLE = 0.5
"""Seconds (at least) that ``add_referrers`` watches the tag after its write."""
MERGE_ATTEMPTS = 10
"""How often ``add_referrers`` merges again before it gives up."""
MERGE_BACKOFF = 0.1
"""Seconds (times 0.5-1, doubling, capped at 2 s) between two merges."""
MAX_REFERRERS = 10_000
"""How many referrers ``copy_referrers`` follows at most (referrers of referrers included)."""

_MEDIA_TYPE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}")
_READ = 1 << 20


@dataclass(frozen=True)
class Referrer:
    """One entry of a referrers list: a manifest whose ``subject`` names the image."""

    digest: str
    media_type: str
    size: int
    artifact_type: str | None = None
    annotations: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_descriptor(cls, desc: Mapping[str, Any]) -> Referrer:
        annotations = desc.get("annotations")
        artifact_type = desc.get("artifactType")
        size = desc.get("size")
        return cls(digest=str(desc.get("digest", "")), media_type=str(desc.get("mediaType", "")),
                   size=size if isinstance(size, int) else 0,
                   artifact_type=artifact_type if isinstance(artifact_type, str) else None,
                   annotations={str(k): str(v) for k, v in annotations.items()}
                   if isinstance(annotations, Mapping) else {})

    def to_descriptor(self) -> dict[str, Any]:
        """The descriptor as a referrers index holds it."""
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out


@dataclass(frozen=True)
class AttachResult:
    """What ``attach`` pushed: the artifact manifest (``digest``, ``reference``, ``manifest``),
    the ``subject`` digest it names, and the referrers tag cib kept (``None`` when the registry
    indexed the artifact itself through its referrers API)."""

    digest: str
    reference: str
    subject: str
    manifest: Mapping[str, Any]
    fallback_tag: str | None


@dataclass(frozen=True)
class ReferrerCopyResult:
    """What ``copy_referrers`` did: the referrer manifests now in the destination, and the
    referrers of the source image that could not follow because the copy has another digest."""

    copied: tuple[Referrer, ...] = ()
    left_behind: tuple[Referrer, ...] = ()


# -- documents ----------------------------------------------------------------------------------

def check_media_type(value: str, what: str) -> str:
    """``value`` if it is a media type (``type/subtype``), else a ``ConfigurationError``."""
    if not isinstance(value, str) or not _MEDIA_TYPE_RE.fullmatch(value):
        raise ConfigurationError(f"{what} {value!r} is not a media type; write it as type/subtype, "
                                 "for example application/vnd.example.sbom.v1+json")
    return value


def artifact_manifest(artifact_type: str, layers: Sequence[Mapping[str, Any]],
                      subject: Mapping[str, Any] | None = None,
                      annotations: Mapping[str, str] | None = None) -> dict[str, Any]:
    """An OCI 1.1 artifact: an image manifest with ``artifactType``, the empty config, the
    given ``layers`` and, when given, ``subject`` and ``annotations``."""
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": dict(EMPTY_DESCRIPTOR),
        "layers": [dict(layer) for layer in layers] or [dict(EMPTY_DESCRIPTOR)],
    }
    if subject is not None:
        doc["subject"] = dict(subject)
    if annotations:
        doc["annotations"] = dict(annotations)
    return doc


def referrer_of(raw: bytes, media_type: str, what: str) -> Referrer:
    """The referrers-list entry for a manifest, as the spec fills it: ``artifactType`` from the
    manifest, else its config's media type (image manifests only); its annotations copied."""
    doc = json_object(raw, what)
    artifact_type = doc.get("artifactType")
    if not isinstance(artifact_type, str) or not artifact_type:
        config = doc.get("config")
        artifact_type = (config.get("mediaType") if isinstance(config, Mapping)
                         and media_type in mt.IMAGE_MANIFESTS else None)
    annotations = doc.get("annotations")
    return Referrer(digest=sha256_digest(raw), media_type=media_type, size=len(raw),
                    artifact_type=artifact_type if isinstance(artifact_type, str) else None,
                    annotations={str(k): str(v) for k, v in annotations.items()}
                    if isinstance(annotations, Mapping) else {})


def referrers_index(entries: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    return {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": [dict(e) for e in entries]}


# -- stores ---------------------------------------------------------------------------------------

def _check_store_kind(ref: Reference | LocalReference, text: str, what: str) -> None:
    if isinstance(ref, LocalReference) and ref.transport != "oci":
        raise ConfigurationError(f"{what}: {text!r} cannot hold artifacts; name a registry "
                                 "reference or an OCI layout (oci:PATH[:TAG])")


def _identifier(ref: Reference | LocalReference) -> str:
    if isinstance(ref, Reference):
        return ref.identifier
    return ref.ref or ""


def _where(ref: Reference | LocalReference, digest: str) -> str:
    if isinstance(ref, Reference):
        return f"{ref.name}@{digest}"
    return f"oci:{ref.path}@{digest}"


def read_referrers_tag(store: BlobStore, subject: str) -> list[dict[str, Any]] | None:
    """The entries of the referrers index under ``subject``'s tag, or ``None`` when there is
    no such tag. A tag holding anything but an OCI index is a ``ManifestError``: that is not
    a list cib may rewrite."""
    tag = referrers_tag(subject)
    try:
        raw, media_type, _digest = store.get_manifest(tag)
    except NotFound:
        return None
    what = f"the referrers tag {tag} in {store.name}"
    doc = json_object(raw, what)
    manifests = doc.get("manifests")
    if media_type != mt.OCI_INDEX or not isinstance(manifests, list):
        raise ManifestError(f"{what} holds a {media_type or 'document'}, not an OCI index of "
                            "referrers; cib leaves it alone (delete or rename that tag to let "
                            "cib keep the list there)")
    return [m for m in manifests if isinstance(m, dict)]


def referrers_in(store: BlobStore, digest: str, artifact_type: str | None = None) -> list[Referrer]:
    """What refers to ``digest`` in ``store``: the registry's referrers API or its tag scheme,
    or an OCI layout's referrers tag; filtered by ``artifact_type`` when given."""
    if isinstance(store, RegistryStore):
        entries = store.client.referrers(digest, artifact_type)["manifests"]
    else:
        entries = read_referrers_tag(store, digest) or []
        if artifact_type:
            entries = [e for e in entries if e.get("artifactType") == artifact_type]
    return [Referrer.from_descriptor(e) for e in entries if isinstance(e, Mapping)]


def _backoff(attempt: int) -> float:
    return random.uniform(0.5, 1.0) * min(2.0, MERGE_BACKOFF * 2.0 ** attempt)  # noqa: S311


def add_referrers(store: BlobStore, subject: str, referrers: Sequence[Referrer], *,
                  settle: float = DEFAULT_SETTLE, attempts: int = MERGE_ATTEMPTS,
                  sleep: Callable[[float], None] = time.sleep,
                  clock: Callable[[], float] = time.monotonic) -> str:
    """Add ``referrers`` to the referrers index under ``subject``'s tag; returns the tag.

    Read the index (none yet: an empty one), add the entries it lacks, write it, then read it
    again for ``settle`` seconds (or four times our slowest read-to-write round, if longer).
    Another writer that read the index before our write and wrote after it replaces our
    entries; we see that within the window and merge again, after a jittered backoff, at most
    ``attempts`` times. Every writer does the same, so all entries end up in the index as long
    as no writer takes longer than the window between its read and its write. A registry with
    conditional writes or the referrers API needs none of this.
    """
    tag = referrers_tag(subject)
    wanted = {r.digest: r.to_descriptor() for r in referrers}
    slowest = 0.0
    for attempt in range(max(1, attempts)):
        started = clock()
        current = read_referrers_tag(store, subject) or []
        have = {e.get("digest") for e in current}
        missing = [d for digest, d in wanted.items() if digest not in have]
        if missing:
            _write_list(store, tag, current, missing)
            slowest = max(slowest, clock() - started)
            log.debug("wrote %s in %s with %d new of %d entries", tag, store.name, len(missing),
                      len(current) + len(missing))
        window = max(settle, 4 * slowest)
        lost = _watch(store, subject, set(wanted), window, sleep, clock)
        if not lost:
            return tag
        delay = _backoff(attempt)
        log.debug("another writer replaced %s in %s without %d of our entries; merging again in "
                  "%.2fs", tag, store.name, len(lost), delay)
        sleep(delay)
    raise RegistryError(
        f"could not keep the referrers list {tag} in {store.name} up to date: other writers "
        f"replaced it {attempts} times; the artifacts themselves are there, so run the same "
        "command again to add them to the list", temporary=True)


def _write_list(store: BlobStore, tag: str, current: list[dict[str, Any]],
                new: list[dict[str, Any]]) -> None:
    """Write the list; entries whose manifests were deleted are dropped when the registry
    refuses the list for naming them (distribution checks that an index's manifests exist,
    so one deleted artifact would otherwise block every later write)."""
    try:
        store.put_manifest(canonical_json(referrers_index([*current, *new])), mt.OCI_INDEX, tag)
        return
    except RegistryError as exc:
        if "MANIFEST_BLOB_UNKNOWN" not in exc.codes:
            raise
        kept = [e for e in current if _manifest_exists(store, str(e.get("digest", "")))]
        if len(kept) == len(current):
            raise
        log.info("dropping %d entries of %s in %s whose manifests are gone",
                 len(current) - len(kept), tag, store.name)
    store.put_manifest(canonical_json(referrers_index([*kept, *new])), mt.OCI_INDEX, tag)


def _manifest_exists(store: BlobStore, digest: str) -> bool:
    if isinstance(store, RegistryStore):
        return store.client.manifest_exists(digest)
    try:
        store.get_manifest(digest)
    except NotFound:
        return False
    return True


def _watch(store: BlobStore, subject: str, digests: set[str], window: float,
           sleep: Callable[[float], None], clock: Callable[[], float]) -> set[str]:
    """Read the referrers tag until ``window`` has passed; the first read that lacks one of
    ``digests`` ends it. Returns the digests missing from the last read (empty: all there)."""
    deadline = clock() + window
    while True:
        entries = read_referrers_tag(store, subject) or []
        missing = digests - {e.get("digest") for e in entries}
        if missing:
            return missing
        left = deadline - clock()
        if left <= 0:
            return set()
        sleep(min(left, random.uniform(0.5, 1.0) * window / 4))  # noqa: S311


# -- attach ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _FileLayer:
    path: Path
    descriptor: dict[str, Any]


def _describe_file(path: Path, media_type: str) -> _FileLayer:
    try:
        if not path.is_file():
            reason = "is a directory; attach files (pack a directory into a tarball first)" \
                if path.is_dir() else "does not exist or is not a regular file"
            raise LayerSourceError(path, reason)
        hasher = hashlib.sha256()
        size = 0
        with path.open("rb") as handle:
            while True:
                block = handle.read(_READ)
                if not block:
                    break
                hasher.update(block)
                size += len(block)
    except OSError as exc:
        raise LayerSourceError(path, f"cannot be read: {exc.strerror or exc}") from exc
    descriptor = {"mediaType": media_type, "digest": "sha256:" + hasher.hexdigest(), "size": size,
                  "annotations": {TITLE_ANNOTATION: path.name}}
    return _FileLayer(path, descriptor)


def _subject_of(store: BlobStore, ref: Reference | LocalReference, text: str) -> dict[str, Any]:
    raw, media_type, digest = store.get_manifest(_identifier(ref))
    if media_type not in mt.ALL_MANIFESTS:
        raise ManifestError(f"{text} is a {media_type}, not an image manifest or index; "
                            "an artifact's subject must be one")
    return {"mediaType": media_type, "digest": digest, "size": len(raw)}


def _push_manifest(store: BlobStore, raw: bytes, media_type: str) -> bool:
    """Push a manifest by digest; True when the registry says it indexed its subject."""
    if isinstance(store, RegistryStore):
        result = store.client.manifest_upload(None, raw, media_type)
        return result.subject is not None
    store.put_manifest(raw, media_type, None)
    return False


def attach(
    ref: str,
    files: Sequence[str | os.PathLike[str]],
    *,
    artifact_type: str,
    media_type: str = DEFAULT_FILE_MEDIA_TYPE,
    annotations: Mapping[str, str] | None = None,
    auth: Mapping[str, Mapping[str, str]] | None = None,
    insecure: Iterable[str] = (),
    pm: CibPluginManager | None = None,
    settle: float = DEFAULT_SETTLE,
) -> AttachResult:
    """Push an artifact of ``artifact_type`` whose ``subject`` is the image ``ref`` names
    (a registry reference or ``oci:PATH[:TAG]``), one layer per file (``media_type``, titled
    with the file's name), and add it to the image's referrers list (the registry's, or the
    ``sha256-<hex>`` tag cib keeps where the registry has no referrers API).

    Everything is checked before the first write: the types, the files (readable regular
    files with distinct names) and the subject (it must exist). The same files, types and
    annotations give the same artifact digest, so attaching twice lists it once.
    """
    check_media_type(artifact_type, "the artifact type")
    check_media_type(media_type, "the file media type")
    notes = dict(annotations or {})
    for key, value in notes.items():
        if not isinstance(key, str) or not key or not isinstance(value, str):
            raise ConfigurationError(f"annotation {key!r}={value!r}: keys and values are strings, "
                                     "keys not empty")
    if not files:
        raise ConfigurationError("attach needs at least one file")
    layers = [_describe_file(Path(f), media_type) for f in files]
    names: dict[str, Path] = {}
    for layer in layers:
        other = names.setdefault(layer.path.name, layer.path)
        if other != layer.path:
            raise ConfigurationError(f"{other} and {layer.path} have the same name "
                                     f"{layer.path.name!r}; an artifact's files are told apart "
                                     "by name, so rename one")
    parsed = parse_image_spec(ref)
    _check_store_kind(parsed, ref, "cib attach")
    store = open_store(parsed, write=False, auth=auth, insecure=insecure, pm=pm)
    try:
        subject = _subject_of(store, parsed, ref)
        read_referrers_tag(store, subject["digest"])  # a tag cib must not rewrite: fail now
        manifest = artifact_manifest(artifact_type, [la.descriptor for la in layers], subject, notes)
        raw = canonical_json(manifest)
        # the writes: blobs first, the manifest once every blob it names is there
        if not store.has_blob(EMPTY_DESCRIPTOR["digest"]):
            store.put_blob(io.BytesIO(EMPTY_JSON), EMPTY_DESCRIPTOR["digest"], len(EMPTY_JSON))
        for layer in layers:
            digest, size = layer.descriptor["digest"], layer.descriptor["size"]
            if store.has_blob(digest):
                continue
            with layer.path.open("rb") as handle:
                store.put_blob(handle, digest, size)
        indexed = _push_manifest(store, raw, mt.OCI_MANIFEST)
        digest = sha256_digest(raw)
        tag = None
        if not indexed:
            entry = referrer_of(raw, mt.OCI_MANIFEST, f"artifact {digest}")
            tag = add_referrers(store, subject["digest"], [entry], settle=settle)
    finally:
        store.close()
    log.info("attached %s to %s%s", digest, subject["digest"],
             f" (referrers tag {tag})" if tag else " (the registry's referrers API)")
    return AttachResult(digest=digest, reference=_where(parsed, digest), subject=subject["digest"],
                        manifest=manifest, fallback_tag=tag)


def list_referrers(
    ref: str,
    artifact_type: str | None = None,
    *,
    auth: Mapping[str, Mapping[str, str]] | None = None,
    insecure: Iterable[str] = (),
    pm: CibPluginManager | None = None,
) -> list[Referrer]:
    """The manifests whose ``subject`` is the image ``ref`` names (a registry reference or
    ``oci:PATH[:TAG]``), of ``artifact_type`` when given: the registry's referrers API, else
    the ``sha256-<hex>`` tag. A missing image is ``NotFound``."""
    if artifact_type is not None:
        check_media_type(artifact_type, "the artifact type")
    parsed = parse_image_spec(ref)
    _check_store_kind(parsed, ref, "cib referrers")
    store = open_store(parsed, write=False, auth=auth, insecure=insecure, pm=pm)
    try:
        _raw, _media_type, digest = store.get_manifest(_identifier(parsed))
        return referrers_in(store, digest, artifact_type)
    finally:
        store.close()


# -- copy -----------------------------------------------------------------------------------------

def check_copy_referrers(src: str, dst: str) -> None:
    """Refuse, before anything is copied, a source or destination that cannot hold referrers
    (a docker-archive)."""
    for text, role in ((src, "source"), (dst, "destination")):
        ref = parse_image_spec(text)
        if isinstance(ref, LocalReference) and ref.transport != "oci":
            raise ConfigurationError(f"--referrers: the {role} {text!r} cannot hold artifacts; "
                                     "copy referrers between registries and OCI layouts")


def _copy_tree(src: BlobStore, dst: BlobStore, digest: str, depth: int = 0) -> bool:
    """Copy the manifest ``digest`` (an index with its children) and its blobs, untagged;
    True when the destination registry indexed its subject itself."""
    if depth > 8:
        raise ManifestError(f"{digest} in {src.name}: indexes nested deeper than 8 levels")
    raw, media_type, _ = src.get_manifest(digest)
    doc = json_object(raw, f"manifest {digest} in {src.name}")
    if media_type in mt.INDEXES:
        for child in doc.get("manifests") or []:
            if isinstance(child, Mapping) and isinstance(child.get("digest"), str):
                _copy_tree(src, dst, child["digest"], depth + 1)
    else:
        blobs = [doc.get("config"), *(doc.get("layers") or [])]
        for desc in blobs:
            if not isinstance(desc, Mapping) or desc.get("urls") or not isinstance(desc.get("digest"), str):
                continue
            size = desc.get("size")
            transfer_blob(src, dst, desc["digest"], size if isinstance(size, int) else None)
    return _push_manifest(dst, raw, media_type)


def copy_referrers(
    src: str,
    dst: str,
    digest: str | None = None,
    *,
    auth: Mapping[str, Mapping[str, str]] | None = None,
    insecure: Iterable[str] = (),
    pm: CibPluginManager | None = None,
    progress: Progress | None = None,
    settle: float = DEFAULT_SETTLE,
) -> ReferrerCopyResult:
    """Copy the referrers of an image already copied from ``src`` to ``dst`` (both registry
    references or OCI layouts): those of ``digest`` (the image in ``dst``; default what
    ``dst`` names) and, for an index, of each of its manifests, with their referrers in turn.
    Each lands in ``dst`` with its blobs and is added to ``dst``'s referrers list.

    Referrers name a digest, so those of a source whose copy got another digest (a platform
    picked out of an index, Docker types turned into OCI ones) cannot follow: they are
    returned as ``left_behind``.
    """
    check_copy_referrers(src, dst)
    src_ref, dst_ref = parse_image_spec(src), parse_image_spec(dst)
    from cib_core.remote.transport import TransportPool

    pool = TransportPool(pm=pm, insecure=insecure)
    src_store = open_store(src_ref, write=False, auth=auth, insecure=insecure, pm=pm,
                           progress=progress, pool=pool)
    dst_store = open_store(dst_ref, write=True, auth=auth, insecure=insecure, pm=pm,
                           progress=progress, pool=pool)
    try:
        raw, media_type, top = dst_store.get_manifest(digest or _identifier(dst_ref))
        subjects = [top]
        if media_type in mt.INDEXES:
            doc = json_object(raw, f"{dst} ({top})")
            subjects += [c["digest"] for c in doc.get("manifests") or []
                         if isinstance(c, Mapping) and isinstance(c.get("digest"), str)]
        queue = deque(subjects)
        seen: set[str] = set(subjects)
        pending: dict[str, list[Referrer]] = {}
        copied: list[Referrer] = []
        while queue:
            subject = queue.popleft()
            for entry in referrers_in(src_store, subject):
                if entry.digest in seen:
                    continue
                if len(seen) >= MAX_REFERRERS:
                    raise ConfigurationError(f"{src} has more than {MAX_REFERRERS} referrers; "
                                             "not copying them all")
                seen.add(entry.digest)
                if not _copy_tree(src_store, dst_store, entry.digest):
                    pending.setdefault(subject, []).append(entry)
                copied.append(entry)
                queue.append(entry.digest)
        for subject, entries in pending.items():
            add_referrers(dst_store, subject, entries, settle=settle)
        left: list[Referrer] = []
        _raw, _mt, source_digest = src_store.get_manifest(_identifier(src_ref))
        if source_digest not in subjects:
            left = referrers_in(src_store, source_digest)
            if left:
                log.warning("%d referrers of %s (%s) stay behind: its copy in %s has another "
                            "digest (%s)", len(left), src, source_digest, dst, top)
    finally:
        src_store.close()
        dst_store.close()
    return ReferrerCopyResult(copied=tuple(copied), left_behind=tuple(left))


__all__ = [
    "DEFAULT_FILE_MEDIA_TYPE",
    "EMPTY_DESCRIPTOR",
    "AttachResult",
    "Referrer",
    "ReferrerCopyResult",
    "add_referrers",
    "artifact_manifest",
    "attach",
    "check_copy_referrers",
    "check_media_type",
    "copy_referrers",
    "list_referrers",
    "read_referrers_tag",
    "referrer_of",
    "referrers_in",
    "referrers_index",
]
