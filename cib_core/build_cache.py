"""The build cache: find a layer made before instead of making and uploading it again.

For each new layer ``Image.add_files`` asks, cheapest first:

1. the local rebuild cache by the inode fingerprint (``LayerBuilder.fingerprint``: one
   ``stat`` per file, nothing read);
2. the local rebuild cache by the content key (``cib_core.layers.keys``: every file read and
   hashed with the tar headers, nothing compressed or written), which finds the layer after a
   ``touch``, in a fresh checkout on this machine, or after a revert; skipped when this
   machine never made a layer of the same shape (paths, modes, sizes) and there is no cache
   repository, as then no cache can know it;
3. the cache repository (``cache_repo``), by the content key: one GET of the record's tag and
   one HEAD of its blob.

A hit is used only once the target has the blob: it is there already, mounted from the cache
repository within one registry, or copied from it. A miss is built and uploaded as ever; once
the layer is safely in the target, its keys go to the local cache and a record to the cache
repository. The content key of a built layer comes from its own diff_id, so a file changed
while the layer was made cannot leave a record naming the wrong layer. A record whose blob is
gone is a miss, and the build writes it again. With ``verify``, every hit is
built once more (hashed, not uploaded) and must give the same blob, or the build stops.

Trust: whoever can push to the cache repository chooses the layers of later builds that use
it, as whoever can push to the target can. See docs/cache.md.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import cib_core.layers.cache as local_cache
from cib_core.errors import CibError, ConfigurationError
from cib_core.layer_records import lookup, lookup_facts, write_facts, write_record
from cib_core.layers.build import LayerBuilder
from cib_core.layers.keys import key_for, settings_digest, shape_for
from cib_core.layers.pipeline import LayerInfo
from cib_core.stores import BlobStore, RegistryStore, transfer_blob

if TYPE_CHECKING:
    from cib_core.remote.client import RegistryClient

log = logging.getLogger(__name__)

CACHE_REPO_ENV = "CIB_CACHE_REPO"

Source = Literal["local", "registry"]


class CacheMismatch(CibError):
    """A cache hit verified by rebuilding the layer gave another blob."""


@dataclass(frozen=True)
class Hit:
    """A layer found in a cache: ``source`` "local" or "registry"; ``how`` the target got
    the blob: "present", "mounted" or "copied"."""

    info: LayerInfo
    source: Source
    how: str


@dataclass(frozen=True)
class Miss:
    """No cache knows the layer: build it, then ``remember`` it. ``settings``: what besides
    the tar goes into its content key (``None``: its content cannot be keyed)."""

    settings: bytes | None
    inputs: Mapping[str, str | bytes] | None = None


def _with_inputs(fingerprint: str | None,
                 inputs: Mapping[str, str | bytes] | None) -> str | None:
    """The inode fingerprint with a packager's inputs folded in (it knows only files)."""
    if fingerprint is None or not inputs:
        return fingerprint
    h = hashlib.sha256(b"cib-fingerprint-inputs-1\0" + fingerprint.encode())
    for name in sorted(inputs):
        value = inputs[name]
        raw = value.encode() if isinstance(value, str) else bytes(value)
        h.update(b"%d:%s%d:%s" % (len(name.encode()), name.encode(), len(raw), raw))
    return h.hexdigest()


def _matches(info: LayerInfo, builder: LayerBuilder) -> bool:
    return info.media_type == builder.media_type


class BuildCache:
    """The cache policy of one ``Image``. ``repo`` is a client of the cache repository (with
    write access) or ``None``; ``verify`` rebuilds every hit to check it."""

    def __init__(self, repo: RegistryClient | None = None, *, verify: bool = False) -> None:
        self.repo = repo
        self.verify = verify

    def find(self, builder: LayerBuilder, target: BlobStore, label: str,
             inputs: Mapping[str, str | bytes] | None = None) -> Hit | Miss:
        """A cached layer ``builder`` would make, already present in ``target``; else a
        ``Miss`` to ``remember`` the layer by once it is built."""
        fingerprint = _with_inputs(builder.fingerprint(local_cache.RACY_SECONDS), inputs)
        if fingerprint is not None:
            cached = local_cache.load(fingerprint)
            if cached is not None and _matches(cached, builder) and target.has_blob(cached.digest):
                return self._hit(builder, cached, "local", "present", label)
        settings = settings_digest(builder, inputs)
        headers = builder.headers_digest()
        if headers is None:
            log.info("%s: no content key (content that is not a local file or bytes); building",
                     label)
            return Miss(None)
        if self.repo is None and local_cache.load(shape_for(settings, headers)) is None:
            # no layer of these paths, modes and sizes was made here: not a touch, a clone or a
            # revert of a known tree, so no cache can know it. Its key comes from the build.
            log.info("%s: cache miss (a layer of new paths or sizes); building", label)
            return Miss(settings, inputs)
        key = key_for(settings, builder.tar_digest())
        cached = local_cache.load(key)
        if cached is not None and _matches(cached, builder) and target.has_blob(cached.digest):
            if fingerprint is not None:
                local_cache.store(fingerprint, cached)
            return self._hit(builder, cached, "local", "present", label)
        if self.repo is not None:
            hit = self._from_repo(builder, target, key, label)
            if hit is not None:
                local_cache.store(key, hit.info)
                if fingerprint is not None:
                    local_cache.store(fingerprint, hit.info)
                return hit
        log.info("%s: cache miss (key %s); building", label, key[:12])
        return Miss(settings, inputs)

    def first(self, builder: LayerBuilder,
              inputs: Mapping[str, str | bytes] | None = None) -> Miss:
        """The ``Miss`` of a layer built without looking first (its local sources never built
        here, and no cache repository): remembered all the same, for the next build."""
        return Miss(settings_digest(builder, inputs), inputs)

    def find_keyed(self, key: str, media_type: str, target: BlobStore, label: str,
                   make: Callable[[], LayerBuilder]) -> Hit | None:
        """A cached layer a packager names by its own key of the inputs (``key``: 64 hex
        digits), for entries costly to produce (an installed environment): looked up locally,
        then in the cache repository, without producing them. ``make`` produces them only to
        verify a hit. ``None``: build the layer, then ``remember_keyed`` it."""
        cached = local_cache.load(key)
        if cached is not None and cached.media_type == media_type \
                and target.has_blob(cached.digest):
            if self.verify:
                self._check(make(), cached, "the local layer cache", label)
            log.info("%s: local cache hit %s (present in the target)", label, cached.digest)
            return Hit(cached, "local", "present")
        if self.repo is None:
            return None
        hit = self._from_repo(None, target, key, label, media_type=media_type, make=make)
        if hit is not None:
            local_cache.store(key, hit.info)
        else:
            log.info("%s: cache miss (key %s); building", label, key[:12])
        return hit

    def remember_keyed(self, key: str, info: LayerInfo, target: BlobStore, label: str) -> None:
        """Record a layer ``find_keyed`` missed, once it is in ``target``."""
        local_cache.store(key, info)
        self._record(key, info, target, label)

    def _from_repo(self, builder: LayerBuilder | None, target: BlobStore, key: str,
                   label: str, *, media_type: str | None = None,
                   make: Callable[[], LayerBuilder] | None = None) -> Hit | None:
        assert self.repo is not None
        try:
            record = lookup(self.repo, key)
        except CibError as exc:
            log.warning("%s: cannot read the cache repository %s (%s); building the layer",
                        label, self.repo.name, exc)
            return None
        if record is None:
            return None
        info = LayerInfo(digest=record.layer_digest, diff_id=record.diff_id,
                         size=record.layer_size, media_type=record.layer_media_type)
        wanted = builder.media_type if builder is not None else media_type
        if info.media_type != wanted:
            log.warning("%s: ignoring %s in %s: it names a %s layer, this build makes %s",
                        label, record.tag, self.repo.name, info.media_type, wanted)
            return None
        if self.verify:  # before any blob moves: a bad record must not reach the target
            if builder is None:
                assert make is not None
                builder = make()
            self._check(builder, info, f"{self.repo.name}:{record.tag}", label)
        how = transfer_blob(RegistryStore(self.repo), target, info.digest, info.size)
        log.info("%s: registry cache hit %s (%s)", label, info.digest, how)
        return Hit(info, "registry", how)

    def _hit(self, builder: LayerBuilder, info: LayerInfo, source: Source, how: str,
             label: str) -> Hit:
        if self.verify:
            self._check(builder, info, "the local layer cache", label)
        log.info("%s: local cache hit %s (%s in the target)", label, info.digest, how)
        return Hit(info, source, how)

    @staticmethod
    def _check(builder: LayerBuilder, info: LayerInfo, where: str, label: str) -> None:
        """Build the layer again (hashed only) and compare it with the cached one."""
        blob = hashlib.sha256()
        built = builder.write(blob.update)
        digest = built.digest or f"sha256:{blob.hexdigest()}"
        if (digest, built.diff_id) != (info.digest, info.diff_id):
            raise CacheMismatch(
                f"{label}: the cache entry in {where} names the layer {info.digest} (diff_id "
                f"{info.diff_id}) but the same inputs build {digest} (diff_id {built.diff_id}); "
                "someone who can write the cache may have planted it, or the build is not "
                "reproducible here: remove the entry (cib cache prune, or delete the local "
                "cache directory) and build again")
        log.info("%s: verified the cached layer %s by building it again", label, info.digest)

    def remember(self, miss: Miss, builder: LayerBuilder, info: LayerInfo, target: BlobStore,
                 label: str) -> None:
        """Record a layer ``builder`` wrote after ``miss`` once it is in ``target``: locally by
        its inode fingerprint, shape and content key, and in the cache repository by the
        content key."""
        fingerprint = _with_inputs(builder.fingerprint(local_cache.RACY_SECONDS), miss.inputs)
        if fingerprint is not None:
            local_cache.store(fingerprint, info)
        if miss.settings is None:
            return
        if builder.shape is not None:
            local_cache.store(shape_for(miss.settings, builder.shape), info)
        key = key_for(miss.settings, info.diff_id)
        local_cache.store(key, info)
        self._record(key, info, target, label)

    def recall(self, key: str, label: str) -> dict[str, Any] | None:
        """Facts kept under ``key`` (64 hex digits) in the cache repository, or ``None``. With
        ``verify`` none are trusted: the caller learns them again."""
        if self.repo is None or self.verify:
            return None
        try:
            facts = lookup_facts(self.repo, key)
        except CibError as exc:
            log.warning("%s: cannot read the cache repository %s (%s)", label, self.repo.name, exc)
            return None
        log.info("%s: %s in %s", label, "found" if facts is not None else "not kept",
                 self.repo.name)
        return facts

    def note(self, key: str, facts: Mapping[str, Any], label: str) -> None:
        """Keep ``facts`` under ``key`` in the cache repository, if there is one."""
        if self.repo is None:
            return
        try:
            write_facts(self.repo, key, facts)
        except CibError as exc:
            log.warning("%s: could not keep them in the cache repository %s: %s",
                        label, self.repo.name, exc)
            return
        log.info("%s: kept in %s", label, self.repo.name)

    def _record(self, key: str, info: LayerInfo, target: BlobStore, label: str) -> None:
        """Write the record of ``key`` (and its blob) to the cache repository, if any."""
        if self.repo is None:
            return
        try:
            how = transfer_blob(target, RegistryStore(self.repo), info.digest, info.size)
            write_record(self.repo, key, info, repository=target.name)
        except CibError as exc:
            # the image is fine without a record; a later build only misses it
            log.warning("%s: could not record the layer in the cache repository %s: %s",
                        label, self.repo.name, exc)
            return
        log.info("%s: recorded in %s (blob %s)", label, self.repo.name, how)


def cache_repo_setting(value: str | None, environ: Mapping[str, str]) -> str | None:
    """``cache_repo=`` or, when it is ``None``, ``CIB_CACHE_REPO`` (empty means none)."""
    if value is None:
        value = environ.get(CACHE_REPO_ENV)
    if value is None or not value.strip():
        return None
    if not isinstance(value, str):
        raise ConfigurationError(f"cache_repo={value!r}: use a repository like "
                                 "registry.example.com/team/cib-cache")
    return value.strip()


__all__ = ["CACHE_REPO_ENV", "BuildCache", "CacheMismatch", "Hit", "Miss", "cache_repo_setting"]
