"""Layer-cache records kept in a registry repository (the ``cache_repo``).

A record says "the layer made from these inputs is this blob". It is an OCI artifact manifest:

- ``artifactType`` ``application/vnd.cib.layer-cache.v1+json``, ``config`` the empty
  descriptor, ``layers`` the one cached layer's descriptor (the blob is in the cache
  repository too, so any machine can mount or copy it from there);
- annotations ``dev.cib.cache.key`` (the content key: the sha256 hex digest of the layer's
  inputs), ``dev.cib.cache.diff-id`` (the layer's uncompressed digest, for the config's
  ``rootfs.diff_ids``), ``dev.cib.cache.repository`` (the repository it was built for) and
  ``org.opencontainers.image.created`` (RFC 3339, UTC);
- tagged ``cib-cache-<key>``, so a lookup is one GET of a known tag.

Writers of one key replace each other's tag, which is harmless: every record for a key names
a layer made from the same inputs.

Beside the layer records, the cache repository keeps what app packagers learned about a base
(the Python a base runs, found by reading its layers), so that a machine new to the base need
not read its layers again: an artifact with ``artifactType``
``application/vnd.cib.base-facts.v1+json``, the empty config and no layer, the facts as JSON
text in the annotation ``dev.cib.facts``, tagged ``cib-facts-<key>`` (the key: a digest of the
base's layers, its platform and the packager's name for the facts). ``cib cache ls|prune``
leave them alone: there is one per base and packager setting, each a few hundred bytes.
"""

from __future__ import annotations

import io
import logging
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Protocol

from cib_core import mediatypes as mt
from cib_core.digest import sha256_digest
from cib_core.documents import canonical_json, json_object
from cib_core.errors import ConfigurationError, ManifestError, NotFound
from cib_core.referrers import EMPTY_DESCRIPTOR, EMPTY_JSON, artifact_manifest
from cib_core.stores import run_parallel

if TYPE_CHECKING:
    from cib_core.remote.client import RegistryClient

log = logging.getLogger(__name__)

ARTIFACT_TYPE = "application/vnd.cib.layer-cache.v1+json"
KEY_ANNOTATION = "dev.cib.cache.key"
DIFF_ID_ANNOTATION = "dev.cib.cache.diff-id"
REPOSITORY_ANNOTATION = "dev.cib.cache.repository"
CREATED_ANNOTATION = "org.opencontainers.image.created"
TAG_PREFIX = "cib-cache-"
FACTS_ARTIFACT_TYPE = "application/vnd.cib.base-facts.v1+json"
FACTS_ANNOTATION = "dev.cib.facts"
FACTS_TAG_PREFIX = "cib-facts-"

_KEY_RE = re.compile(r"(?:sha256:)?([0-9a-f]{64})")
_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
_DURATION_RE = re.compile(r"(\d+)([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class LayerDescription(Protocol):
    """What a record names: ``LayerInfo`` of ``cib_core.layers.build`` is one."""

    @property
    def digest(self) -> str: ...

    @property
    def diff_id(self) -> str: ...

    @property
    def size(self) -> int: ...

    @property
    def media_type(self) -> str: ...


@dataclass(frozen=True)
class LayerRecord:
    """One record: the content ``key``, the cached layer (``layer_digest``, ``layer_size``,
    ``layer_media_type``, ``diff_id``), when it was ``created``, the ``repository`` it was
    built for, and the record manifest's ``tag`` and ``digest`` in the cache repository."""

    key: str
    layer_digest: str
    layer_size: int
    layer_media_type: str
    diff_id: str
    created: datetime
    repository: str | None
    tag: str
    digest: str

    def age(self, now: datetime | None = None) -> timedelta:
        return (now or datetime.now(timezone.utc)) - self.created

    def to_dict(self, now: datetime | None = None) -> dict[str, Any]:
        return {
            "key": self.key,
            "tag": self.tag,
            "digest": self.digest,
            "layer": {"mediaType": self.layer_media_type, "digest": self.layer_digest,
                      "size": self.layer_size},
            "diffId": self.diff_id,
            "repository": self.repository,
            "created": format_time(self.created),
            "ageSeconds": int(self.age(now).total_seconds()),
        }


# -- values ---------------------------------------------------------------------------------------

def normalize_key(key: str) -> str:
    """The 64 lowercase hex digits of a content key (``sha256:`` in front is accepted)."""
    m = _KEY_RE.fullmatch(key) if isinstance(key, str) else None
    if m is None:
        raise ConfigurationError(f"layer cache key {key!r} is not a sha256 hex digest "
                                 "(64 lowercase hex digits)")
    return m.group(1)


def record_tag(key: str) -> str:
    """``cib-cache-<key>``: where the record for ``key`` is tagged."""
    return TAG_PREFIX + normalize_key(key)


def format_time(when: datetime) -> str:
    """RFC 3339 in UTC, to the second: ``2025-01-31T12:00:00Z``."""
    if when.tzinfo is None:
        raise ConfigurationError(f"{when!r} has no time zone; pass an aware datetime "
                                 "(datetime.now(timezone.utc))")
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> datetime:
    """An RFC 3339 time (``Z`` or an offset, optional fractions) as an aware datetime."""
    value = text.strip()
    if value[-1:] in ("Z", "z"):
        value = value[:-1] + "+00:00"
    m = re.fullmatch(r"(.*T\d\d:\d\d:\d\d)(\.\d+)?([+-]\d\d:\d\d)", value)
    if m is None:
        raise ValueError(f"not an RFC 3339 time: {text!r}")
    # fromisoformat before 3.11 takes at most 6 fraction digits
    fraction = (m.group(2) or "")[:7]
    when = datetime.fromisoformat(m.group(1) + fraction + m.group(3))
    return when.astimezone(timezone.utc)


_MAX_DURATION_SECONDS = 100 * 366 * 86400
"""A century: records are younger than that, and timedelta overflows not far above it."""


def parse_duration(text: str) -> timedelta:
    """``7d``, ``12h``, ``30m``, ``45s``, ``2w`` or a sum of them (``1d12h``)."""
    value = text.strip().lower()
    parts = _DURATION_RE.findall(value)
    if not value or "".join(n + u for n, u in parts) != value:
        raise ConfigurationError(f"{text!r} is not a duration; write a number and a unit "
                                 "(s, m, h, d, w), like 7d, 12h, 30m or 1d12h")
    seconds = sum(int(n) * _UNIT_SECONDS[u] for n, u in parts)
    if seconds > _MAX_DURATION_SECONDS:
        raise ConfigurationError(f"{text!r} is longer than any record can be old; write at most "
                                 f"{_MAX_DURATION_SECONDS // 86400}d")
    return timedelta(seconds=seconds)


def format_age(age: timedelta) -> str:
    """``3d4h``, ``5h12m``, ``7m3s``, ``12s``: the two largest units."""
    seconds = max(0, int(age.total_seconds()))
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, seconds = divmod(seconds, size)
        if count or (parts and len(parts) < 2):
            parts.append(f"{count}{unit}")
        if len(parts) == 2:
            break
    return "".join(parts) or "0s"


# -- documents ------------------------------------------------------------------------------------

def record_manifest(key: str, info: LayerDescription, *, created: datetime,
                    repository: str | None = None) -> dict[str, Any]:
    """The record for ``key`` naming the layer ``info``."""
    hexkey = normalize_key(key)
    for value, what in ((info.digest, "layer digest"), (info.diff_id, "diff_id")):
        if not isinstance(value, str) or not _DIGEST_RE.fullmatch(value):
            raise ConfigurationError(f"a layer cache record needs a sha256 {what}, got {value!r}")
    if not isinstance(info.size, int) or info.size < 0:
        raise ConfigurationError(f"a layer cache record needs the layer's size, got {info.size!r}")
    annotations = {KEY_ANNOTATION: hexkey, DIFF_ID_ANNOTATION: info.diff_id}
    if repository:
        annotations[REPOSITORY_ANNOTATION] = repository
    annotations[CREATED_ANNOTATION] = format_time(created)
    layer = {"mediaType": info.media_type, "digest": info.digest, "size": info.size}
    return artifact_manifest(ARTIFACT_TYPE, [layer], annotations=annotations)


def parse_record(raw: bytes, tag: str, what: str) -> LayerRecord:
    """A record from its manifest bytes; ``ManifestError`` when it is not a valid one."""
    doc = json_object(raw, what)
    if doc.get("artifactType") != ARTIFACT_TYPE:
        raise ManifestError(f"{what} is not a layer cache record (artifactType "
                            f"{doc.get('artifactType')!r})")
    notes = doc.get("annotations")
    layers = doc.get("layers")
    if not isinstance(notes, Mapping) or not isinstance(layers, list) or len(layers) != 1 \
            or not isinstance(layers[0], Mapping):
        raise ManifestError(f"{what} needs annotations and exactly one layer")
    layer = layers[0]
    key = notes.get(KEY_ANNOTATION)
    diff_id = notes.get(DIFF_ID_ANNOTATION)
    created = notes.get(CREATED_ANNOTATION)
    repository = notes.get(REPOSITORY_ANNOTATION)
    digest, size, media_type = layer.get("digest"), layer.get("size"), layer.get("mediaType")
    if not (isinstance(key, str) and _KEY_RE.fullmatch(key) and isinstance(diff_id, str)
            and _DIGEST_RE.fullmatch(diff_id) and isinstance(digest, str)
            and _DIGEST_RE.fullmatch(digest) and isinstance(size, int) and size >= 0
            and isinstance(media_type, str) and isinstance(created, str)):
        raise ManifestError(f"{what} lacks a valid key, diff-id, created time or layer")
    try:
        when = parse_time(created)
    except ValueError as exc:
        raise ManifestError(f"{what}: {exc}") from exc
    return LayerRecord(key=normalize_key(key), layer_digest=digest, layer_size=size,
                       layer_media_type=media_type, diff_id=diff_id, created=when,
                       repository=repository if isinstance(repository, str) else None,
                       tag=tag, digest=sha256_digest(raw))


# -- the registry ---------------------------------------------------------------------------------

def write_record(client: RegistryClient, key: str, info: LayerDescription, *,
                 created: datetime | None = None, repository: str | None = None,
                 source: RegistryClient | None = None) -> LayerRecord:
    """Record in ``client``'s repository (the cache repository) that ``key`` made the layer
    ``info``; returns the record.

    The cache repository must hold the layer blob (a registry checks that a manifest's blobs
    exist): when it does not, it is mounted from ``source`` (the repository the layer was
    pushed to) within one registry, or copied from it. ``repository`` (default ``source``'s
    name) says which repository the layer was built for; ``created`` defaults to now.
    """
    when = created or datetime.now(timezone.utc)
    if repository is None and source is not None:
        repository = source.name
    manifest = record_manifest(key, info, created=when, repository=repository)
    if not client.blob_exists(info.digest):
        if source is None:
            raise NotFound(f"the cache repository {client.name} lacks the layer {info.digest}; "
                           "push it there first or pass source= the repository that has it")
        if not (source.registry == client.registry and client.mount(info.digest, source.repository)):
            source.copy_blob_to(client, info.digest, info.size)
    _ensure_empty_blob(client)
    raw = canonical_json(manifest)
    tag = record_tag(key)
    client.manifest_upload(tag, raw, mt.OCI_MANIFEST)
    log.debug("recorded layer %s for key %s in %s", info.digest, tag, client.name)
    return parse_record(raw, tag, f"record {tag}")


def lookup(client: RegistryClient, key: str, *, check_blob: bool = True) -> LayerRecord | None:
    """The record for ``key`` in the cache repository, or ``None``: no record, a tag holding
    something else, or (with ``check_blob``) a record whose layer blob is gone."""
    tag = record_tag(key)
    try:
        raw, _media_type, _digest = client.manifest_raw(tag)
    except NotFound:
        return None
    try:
        record = parse_record(raw, tag, f"{client.name}:{tag}")
    except ManifestError as exc:
        log.warning("ignoring %s: %s", tag, exc)
        return None
    if record.key != normalize_key(key):
        log.warning("ignoring %s in %s: it names the key %s", tag, client.name, record.key)
        return None
    if check_blob and not client.blob_exists(record.layer_digest):
        log.info("ignoring %s in %s: its layer %s is gone", tag, client.name, record.layer_digest)
        return None
    return record


def _ensure_empty_blob(client: RegistryClient) -> None:
    """The empty JSON blob every record's config names (a registry checks a manifest's blobs)."""
    if not client.blob_exists(EMPTY_DESCRIPTOR["digest"]):
        client.upload(io.BytesIO(EMPTY_JSON), len(EMPTY_JSON), EMPTY_DESCRIPTOR["digest"])


def write_facts(client: RegistryClient, key: str, facts: Mapping[str, Any], *,
                created: datetime | None = None) -> None:
    """Keep ``facts`` (a JSON object) under ``key`` in the cache repository."""
    hexkey = normalize_key(key)
    annotations = {KEY_ANNOTATION: hexkey,
                   FACTS_ANNOTATION: canonical_json(dict(facts)).decode(),
                   CREATED_ANNOTATION: format_time(created or datetime.now(timezone.utc))}
    _ensure_empty_blob(client)
    raw = canonical_json(artifact_manifest(FACTS_ARTIFACT_TYPE, [], annotations=annotations))
    client.manifest_upload(FACTS_TAG_PREFIX + hexkey, raw, mt.OCI_MANIFEST)
    log.debug("kept facts %s%s in %s", FACTS_TAG_PREFIX, hexkey, client.name)


def lookup_facts(client: RegistryClient, key: str) -> dict[str, Any] | None:
    """The facts kept under ``key`` in the cache repository, or ``None``: none kept, or a tag
    holding anything but a facts record for this key (ignored with a warning)."""
    hexkey = normalize_key(key)
    tag = FACTS_TAG_PREFIX + hexkey
    try:
        raw, _media_type, _digest = client.manifest_raw(tag)
    except NotFound:
        return None
    what = f"{client.name}:{tag}"
    try:
        doc = json_object(raw, what)
        notes = doc.get("annotations")
        if doc.get("artifactType") != FACTS_ARTIFACT_TYPE or not isinstance(notes, Mapping):
            raise ManifestError(f"{what} is not a facts record")
        if notes.get(KEY_ANNOTATION) != hexkey:
            raise ManifestError(f"{what} names another key")
        text = notes.get(FACTS_ANNOTATION)
        facts = json_object(text.encode() if isinstance(text, str) else b"", f"{what}'s facts")
    except ManifestError as exc:
        log.warning("ignoring %s: %s", tag, exc)
        return None
    return facts


def list_records(client: RegistryClient, *, jobs: int = 4) -> list[LayerRecord]:
    """Every record in the cache repository, oldest first. Tags with the record prefix that
    hold something else are skipped with a warning."""
    tags = [t for t in client.tags() if t.startswith(TAG_PREFIX)]
    found: list[LayerRecord] = []
    lock = threading.Lock()

    def read(tag: str) -> None:
        try:
            raw, _media_type, _digest = client.manifest_raw(tag)
        except NotFound:
            return  # pruned or replaced since the tag list was read
        try:
            record = parse_record(raw, tag, f"{client.name}:{tag}")
        except ManifestError as exc:
            log.warning("skipping %s: %s", tag, exc)
            return
        with lock:
            found.append(record)

    run_parallel(read, tags, jobs)
    return sorted(found, key=lambda r: (r.created, r.key))


def prune(client: RegistryClient, older_than: timedelta, *, now: datetime | None = None,
          dry_run: bool = False) -> list[LayerRecord]:
    """Delete the records created more than ``older_than`` ago (their manifests, by digest,
    which removes their tags); returns them. The layer blobs are left to the registry's
    garbage collection. ``dry_run`` only returns what would go."""
    if older_than < timedelta(0):
        raise ConfigurationError(f"older_than must not be negative, got {older_than}")
    moment = now or datetime.now(timezone.utc)
    old = [r for r in list_records(client) if r.age(moment) > older_than]
    if not dry_run:
        for record in old:
            client.delete_manifest(record.digest)
            log.debug("pruned %s (%s, %s old)", record.tag, record.digest,
                      format_age(record.age(moment)))
    return old


__all__ = [
    "ARTIFACT_TYPE",
    "CREATED_ANNOTATION",
    "DIFF_ID_ANNOTATION",
    "FACTS_ANNOTATION",
    "FACTS_ARTIFACT_TYPE",
    "FACTS_TAG_PREFIX",
    "KEY_ANNOTATION",
    "REPOSITORY_ANNOTATION",
    "TAG_PREFIX",
    "LayerDescription",
    "LayerRecord",
    "format_age",
    "list_records",
    "lookup",
    "lookup_facts",
    "normalize_key",
    "parse_duration",
    "parse_record",
    "prune",
    "record_manifest",
    "record_tag",
    "write_facts",
    "write_record",
]
