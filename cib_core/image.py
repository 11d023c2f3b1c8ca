"""The image builder: take a base, add layers, change the config, save to a target.

``Image`` is the seed's Image class in Python form. It reads the base lazily (a registry image
of either flavour, an index or manifest list, an ``oci:`` layout, a ``docker-archive:``
tarball or ``scratch``), uploads each new layer to the target as soon as it is built, copies
or mounts the base's blobs the target lacks (``sync``), and at ``save`` writes the configs,
then the manifests, then (for a multi-platform base) the index, each only after every blob
it names is confirmed present in the target.
"""

from __future__ import annotations

import concurrent.futures
import copy
import dataclasses
import datetime
import inspect
import io
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO, cast
from urllib.parse import urlsplit

from cib_core import image_config
from cib_core import mediatypes as mt
from cib_core.authn.resolve import options_for_registry
from cib_core.build_cache import BuildCache, Hit, cache_repo_setting
from cib_core.callbacks import Progress, report_step
from cib_core.digest import sha256_digest
from cib_core.documents import canonical_json
from cib_core.errors import CibError, ConfigurationError, NotFound, RegistryError
from cib_core.image_config import ConfigAttribute
from cib_core.layers.build import LayerBuilder, prepare_layer
from cib_core.layers.pipeline import BuiltLayer, LayerInfo, gzip_implementation
from cib_core.layers.tar import source_date_epoch
from cib_core.layers.tarball import layer_from_tarball
from cib_core.models import Index, Manifest, Platform, parse_manifest
from cib_core.plan import BuildPlan, PlannedImage, PlannedLayer, PlanningStore
from cib_core.plugin_api import AppImage, AppLayer, AppOptions
from cib_core.plugins import get_plugin_manager
from cib_core.reference import (
    LocalReference,
    Reference,
    check_target_tag,
    parse_image_spec,
    parse_repository,
)
from cib_core.remote.client import RegistryClient, fetch_url
from cib_core.remote.transport import TransportPool
from cib_core.seed_forms import (
    check_mapping_order,
    refuse_options_object,
    unknown_attribute,
)
from cib_core.stores import (
    BlobStore,
    RegistryStore,
    StreamingStore,
    check_local_target,
    manifest_to_oci,
    open_store,
    read_config,
    ready_for_threads,
    run_parallel,
    transfer_layer,
    wants_oci_types,
)

if TYPE_CHECKING:
    from cib_core.plugins import CibPluginManager

log = logging.getLogger(__name__)

DEFAULT_JOBS = 4


@dataclass
class ImageData:
    """The manifest and config of one platform's image; both are mutable and saved by ``save``."""

    manifest: dict[str, Any]
    config: dict[str, Any]


@dataclass(frozen=True)
class SaveResult:
    """What ``Image.save`` pushed: the digest of the manifest (or index) and where it lives."""

    digest: str
    reference: str
    tags: tuple[str, ...]
    manifest: dict[str, Any]
    media_type: str
    plan: BuildPlan | None = None  # what a dry run would have sent


@dataclass
class _PlatformImage:
    data: ImageData
    descriptor: dict[str, Any] | None  # the entry in the base index, kept for its annotations
    base_config_raw: bytes | None  # the base's config bytes, reused when nothing changed
    base_config: dict[str, Any] | None = None
    base_blobs: dict[str, int | None] = field(default_factory=dict)  # digest -> size

    @property
    def platform(self) -> Platform:
        cfg = self.data.config
        return Platform(os=str(cfg.get("os", "linux")), architecture=str(cfg.get("architecture", "")),
                        variant=cfg.get("variant"))


def source_date() -> datetime.datetime:
    """The reproducible build time: ``SOURCE_DATE_EPOCH`` when set, else the Unix epoch."""
    return datetime.datetime.fromtimestamp(source_date_epoch(), tz=datetime.timezone.utc)


def _rfc3339(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _in_background(fn: Callable[[], Any], name: str) -> concurrent.futures.Future[Any]:
    """Run ``fn`` in a thread of its own; its result or exception comes from ``result()``."""
    future: concurrent.futures.Future[Any] = concurrent.futures.Future()

    def run() -> None:
        if future.set_running_or_notify_cancel():
            try:
                future.set_result(fn())
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                future.set_exception(exc)

    threading.Thread(target=run, name=name, daemon=True).start()
    return future


def _public_names(cls: type) -> dict[str, bool]:
    """The public names of ``cls`` (methods, properties, config attributes and the
    attributes declared by annotation), each mapped to whether it is a method."""
    names = {name: inspect.isfunction(getattr(cls, name, None))
             for name in dir(cls) if not name.startswith("_")}
    for klass in cls.__mro__:
        for name in inspect.get_annotations(klass):
            names.setdefault(name, False)
    return names


def _files_key(layer: AppLayer) -> str | None:
    """Within one ``add_app``, the layers of two platforms that name the same local paths
    (and ignores) are the same layer; other sources may not be."""
    if layer.files is None:
        return None
    items = []
    for target, source in layer.files.items():
        if not isinstance(source, (str, os.PathLike)):
            return None
        items.append((target, os.path.abspath(os.fspath(source))))
    return repr(("files", sorted(items), layer.ignores))


def _scratch_config(platform: Platform | None) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "architecture": platform.architecture if platform else "amd64",
        "os": platform.os if platform else "linux",
    }
    if platform and platform.variant:
        cfg["variant"] = platform.variant
    cfg.update({"config": {}, "rootfs": {"type": "layers", "diff_ids": []}, "history": []})
    return cfg


def _cache_settings(cache_repo: object, verify: object) -> tuple[Reference | None, bool]:
    """``Image(cache_repo=..., verify_cache=...)``, with ``CIB_CACHE_REPO`` as the default."""
    if cache_repo is not None and not isinstance(cache_repo, str):
        raise ConfigurationError(f"cache_repo must be a str naming a registry repository like "
                                 f"registry.example.com/team/cib-cache, not {type(cache_repo).__name__}")
    if not isinstance(verify, bool):
        raise ConfigurationError(f"verify_cache must be True or False, not {verify!r}")
    repo = cache_repo_setting(cache_repo, os.environ)
    return (None if repo is None else parse_repository(repo)), verify


MANIFEST_ATTEMPTS = 4


def _check_no_nul(source: object, target: str) -> None:
    """A source path with a NUL byte names no file; say so before any plugin is asked."""
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if isinstance(source, (str, bytes)) and ("\0" in source if isinstance(source, str)
                                              else b"\0" in source):
        raise ConfigurationError(f"add_files source {source!r} for {target!r} holds a NUL byte; "
                                 "a path cannot contain one")


def _put_manifest(target: BlobStore, raw: bytes, media_type: str, tag: str | None) -> None:
    """Push a manifest whose blobs were all confirmed present, again if the registry briefly
    cannot see one: distribution's filesystem storage rewrites a repository's blob link in
    place (truncate, then write) each time the same blob is uploaded or mounted there, so a
    manifest pushed meanwhile reads an empty link (DIGEST_INVALID, MANIFEST_BLOB_UNKNOWN);
    seen with eight processes pushing one layer into one repository at once."""
    for attempt in range(MANIFEST_ATTEMPTS):
        try:
            target.put_manifest(raw, media_type, tag)
            return
        except RegistryError as exc:
            if attempt + 1 >= MANIFEST_ATTEMPTS or "MANIFEST_BLOB_UNKNOWN" not in exc.codes:
                raise
            log.debug("%s did not see a blob of the manifest yet (%s); pushing it again",
                      target.name, exc)
            time.sleep(0.1 * 2 ** attempt)


def _insecure_hosts(insecure: object, refs: Iterable[Reference | LocalReference]) -> tuple[str, ...]:
    """The hosts ``Image(insecure=...)`` names: ``True`` means those of the base and target."""
    if insecure is True:
        return tuple(dict.fromkeys(ref.registry for ref in refs if isinstance(ref, Reference)))
    if insecure is False or insecure is None:
        return ()
    if isinstance(insecure, str):
        return (insecure,)
    if not isinstance(insecure, Iterable) or isinstance(insecure, (bytes, Mapping)):
        raise ConfigurationError(
            f"insecure={insecure!r}: use True (the base's and the target's hosts) or a list "
            'of registry hosts like ["registry.internal:5000"]')
    hosts = tuple(insecure)
    for host in hosts:
        if not isinstance(host, str):
            raise ConfigurationError(f"insecure names {host!r}; every host must be a str "
                                     'like "registry.internal:5000"')
    return hosts


class Image:
    """An image being built: a base, new layers and config changes, saved to a target.

    ``base`` is a registry reference (``python:3.12-slim``, ``localhost:5000/app@sha256:...``),
    ``oci:PATH[:TAG]``, ``docker-archive:PATH[:NAME:TAG]`` or ``scratch``; ``target`` is a
    registry reference with an optional tag, ``oci:PATH[:TAG]`` or ``docker-archive:PATH``. The
    base is read lazily, when the first layer is added or the config is asked for; a
    multi-platform base gives a multi-platform image, each new layer added to every platform
    unless ``platform`` picks one.

    Keyword options: ``auth`` maps registry hosts to credentials (``{"Username", "Secret"}`` or
    ``{"token"}``; without it the credential plugins are asked); ``insecure`` names hosts that
    may be reached over plain HTTP or unverified TLS (``True``: the base's and the target's);
    ``created="now"`` stamps the current time instead of ``SOURCE_DATE_EPOCH`` or the epoch;
    ``progress`` is called as blobs move (``cib_core.callbacks.Progress``); ``pm`` is the
    plugin manager to use; ``pool`` shares registry sessions and tokens between images.

    Typical use: ``add_files`` (each call one layer, uploaded at once), set the config
    attributes, then ``save``. The config attributes (``cmd``, ``env``, ...) check every value
    assigned to them, and assigning any other public name is an ``AttributeError`` (the npm
    library's ``image.Cmd`` would otherwise be kept and ignored). A subclass declares
    attributes of its own with class-level annotations.
    """

    base_ref: Reference | LocalReference
    target_ref: Reference | LocalReference
    sync_counts: dict[str, int]

    working_dir = ConfigAttribute(image_config.check_working_dir)
    cmd = ConfigAttribute(image_config.check_command)
    entrypoint = ConfigAttribute(image_config.check_command)
    user = ConfigAttribute(image_config.check_user)
    env = ConfigAttribute(image_config.check_env)
    unset_env = ConfigAttribute(image_config.check_unset_env)
    labels = ConfigAttribute(image_config.check_labels)
    exposed_ports = ConfigAttribute(image_config.check_ports)
    volumes = ConfigAttribute(image_config.check_volumes)
    annotations = ConfigAttribute(image_config.check_annotations)

    @refuse_options_object(1, "Image")
    def __init__(
        self,
        base: str,
        target: str,
        *,
        auth: Mapping[str, Mapping[str, str]] | None = None,
        platform: str | None = None,
        insecure: bool | Iterable[str] = (),
        created: str | None = None,
        pm: CibPluginManager | None = None,
        compression: str = "gzip",
        jobs: int = DEFAULT_JOBS,
        progress: Progress | None = None,
        pool: TransportPool | None = None,
        dry_run: bool = False,
        cache_repo: str | None = None,
        verify_cache: bool = False,
    ) -> None:
        for what, spec in (("base", base), ("target", target)):
            if not isinstance(spec, str):
                raise ConfigurationError(
                    f"Image's {what} must be a str naming an image (a registry reference, "
                    f"oci:PATH[:TAG], docker-archive:PATH{'' if what == 'target' else ' or scratch'}"
                    f"), not {type(spec).__name__}")
        self.base_ref = parse_image_spec(base)
        self.target_ref = parse_image_spec(target)
        if isinstance(self.target_ref, LocalReference) and self.target_ref.transport == "scratch":
            raise ConfigurationError("scratch can only be a base; name a registry reference, "
                                     "oci:DIR or docker-archive:FILE as the target")
        if isinstance(self.target_ref, Reference) and self.target_ref.digest:
            raise ConfigurationError(
                f"target {target!r} names a digest; a target takes a tag (or none) so the "
                "new image can be tagged")
        check_local_target(self.target_ref)
        if created not in (None, "now"):
            raise ConfigurationError(f"created={created!r}: use None (reproducible) or 'now'")
        if compression not in ("gzip", "zstd", "none"):
            raise ConfigurationError(f"compression={compression!r}: use gzip, zstd or none")
        self._auth = auth
        self._cache = _cache_settings(cache_repo, verify_cache)
        cache_ref = self._cache[0]
        self._insecure = _insecure_hosts(insecure, (self.base_ref, self.target_ref) + (
            (cache_ref,) if cache_ref is not None else ()))
        if platform is not None and (not isinstance(platform, str) or not platform.strip()):
            raise ConfigurationError(f"platform={platform!r} names no platform; write one like "
                                     "'linux/arm64', 'all', or None for every platform of the base")
        self._platform = Platform.parse(platform) if platform and platform != "all" else None
        self._created = created
        self._pm = pm
        self._compression = compression
        self._jobs = max(1, jobs)
        self._progress = progress
        self._dry_run = bool(dry_run)
        # the layers this build added, with their history's created_by (for a dry run's plan)
        self._added: dict[str, str | None] = {}

        self.working_dir = None
        self.cmd = None
        self.entrypoint = None
        self.user = None
        self.env = []
        self.unset_env = []
        self.labels = {}
        self.exposed_ports = []
        self.volumes = []
        self.annotations = {}
        self.sync_counts = {}

        self._images: list[_PlatformImage] | None = None
        self._index: dict[str, Any] | None = None  # the base index, when it had one and we keep it
        self._docker_flavour = False
        self._synced = False
        # blobs this Image uploaded to, mounted into or found in its target: the check before a
        # manifest goes up asks the registry only about the others
        self._present: set[str] = set()
        self._lock = threading.Lock()
        self._clients: dict[tuple[str, str, bool], RegistryClient] = {}
        # one session, ping and token cache per registry; several Images may share one pool
        self._pool: TransportPool | None = pool
        self._base_store: BlobStore | None = None
        self._target_store: BlobStore | None = None
        self._build_cache: BuildCache | None = None

    if not TYPE_CHECKING:  # for mypy, attribute names stay checked statically
        def __setattr__(self, name: str, value: object) -> None:
            known = _public_names(type(self))
            if name.startswith("_") or name in known:
                object.__setattr__(self, name, value)
            else:
                raise unknown_attribute(self, name, known, setting=True)

        def __getattr__(self, name: str) -> object:
            # only called for a name that normal lookup did not find
            if name.startswith("__"):
                raise AttributeError(name)
            raise unknown_attribute(self, name, _public_names(type(self)), setting=False)

    # -- where things live ---------------------------------------------------------------
    @property
    def _plugin_manager(self) -> CibPluginManager:
        if self._pm is None:
            self._pm = get_plugin_manager()
        return self._pm

    def client(self, spec: str | None = None, write: bool = False) -> RegistryClient:
        """An authenticated client for ``spec`` (default: the base), cached per repository and access."""
        ref = self.base_ref if spec is None else parse_image_spec(spec)
        if not isinstance(ref, Reference):
            raise ConfigurationError(f"{spec or 'the base'!s} is not a registry reference; "
                                     "only registry images have a client")
        key = (ref.registry, ref.repository, write)
        with self._lock:
            if key not in self._clients:
                if self._pool is None:
                    self._pool = TransportPool(pm=self._plugin_manager, insecure=self._insecure)
                self._clients[key] = RegistryClient(
                    ref.registry, ref.repository, options_for_registry(ref.registry, self._auth),
                    insecure=ref.registry in self._insecure, pm=self._plugin_manager,
                    pool=self._pool)
            return self._clients[key]

    def _store_for(self, ref: Reference | LocalReference, write: bool) -> BlobStore:
        if isinstance(ref, Reference):
            return RegistryStore(self.client(str(ref), write=write), self._progress)
        return open_store(ref, write=write, auth=self._auth, insecure=self._insecure,
                          pm=self._plugin_manager, progress=self._progress)

    @property
    def build_cache(self) -> BuildCache:
        """The layer cache policy: local, and the cache repository's (``cache_repo``)."""
        if self._build_cache is None:
            repo, verify = self._cache
            # a dry run sends nothing: no blob mounted from, nor record written to, the cache
            # repository; the local cache still finds what this machine built
            client = (None if repo is None or self._dry_run
                      else self.client(str(repo), write=True))
            self._build_cache = BuildCache(client, verify=verify)
        return self._build_cache

    @property
    def base_store(self) -> BlobStore | None:
        if self._base_store is None and not self._is_scratch:
            self._base_store = self._store_for(self.base_ref, write=False)
        return self._base_store

    @property
    def target_store(self) -> BlobStore:
        if self._target_store is None:
            if self._dry_run:
                self._target_store = PlanningStore(self.target_ref, self._existing_target())
            else:
                self._target_store = self._store_for(self.target_ref, write=True)
        return self._target_store

    def _existing_target(self) -> BlobStore | None:
        """The target as it is, read-only, for a dry run (``None``: nothing there yet)."""
        ref = self.target_ref
        if isinstance(ref, Reference):
            return self._store_for(ref, write=False)
        if ref.transport != "oci":
            return None
        assert ref.path is not None
        from pathlib import Path

        from cib_core.errors import LocalWriteError
        from cib_core.formats.oci_layout import OCILayoutStore

        path = Path(ref.path)
        if path.exists() and not path.is_dir():
            raise LocalWriteError(path, "it exists and is not a directory",
                                  "pick another path for the layout", what="the OCI image layout")
        if not path.exists():
            return None
        try:
            return OCILayoutStore(path)
        except NotFound:  # a directory a real build would turn into a layout
            return None

    def _oci_types_only(self, store: BlobStore) -> bool:
        if isinstance(store, PlanningStore):
            return store.oci_types_only
        return wants_oci_types(store)

    @property
    def _is_scratch(self) -> bool:
        return isinstance(self.base_ref, LocalReference) and self.base_ref.transport == "scratch"

    # -- reading the base ----------------------------------------------------------------
    def _load(self) -> list[_PlatformImage]:
        with self._lock:
            if self._images is not None:
                return self._images
        images = self._read_base()
        with self._lock:
            if self._images is None:
                self._images = images
            return self._images

    def _read_base(self) -> list[_PlatformImage]:
        if self._is_scratch:
            self._docker_flavour = False
            config = _scratch_config(self._platform)
            manifest: dict[str, Any] = {
                "schemaVersion": 2, "mediaType": mt.OCI_MANIFEST,
                "config": {"mediaType": mt.OCI_CONFIG, "digest": "", "size": 0}, "layers": []}
            return [_PlatformImage(ImageData(manifest, config), None, None)]
        store = self.base_store
        assert store is not None
        ident = self.base_ref.identifier if isinstance(self.base_ref, Reference) else (
            self.base_ref.ref or "")
        raw, media_type, _digest = store.get_manifest(ident)
        doc = parse_manifest(raw, media_type)
        self._docker_flavour = mt.is_docker_flavour(doc.media_type)
        if isinstance(doc, Index):
            return self._read_index(store, doc)
        image = self._read_image(store, doc, None)
        if self._platform is not None and not image.platform.matches(self._platform):
            raise ConfigurationError(
                f"the base {self._describe_base()} is a single {image.platform} image; "
                f"it cannot be built for {self._platform}")
        return [image]

    def _read_index(self, store: BlobStore, index: Index) -> list[_PlatformImage]:
        entries = []
        for desc in index.manifests:
            if desc.media_type not in mt.IMAGE_MANIFESTS:
                log.debug("skipping %s entry %s in the base index", desc.media_type, desc.digest)
                continue
            if desc.is_attestation:
                log.info("dropping attestation manifest %s of the base: it describes the base, "
                         "not the new image", desc.digest)
                continue
            if desc.platform is None:
                continue
            entries.append(desc)
        if self._platform is not None:
            entries = [index.select(self._platform)]
        else:
            self._index = copy.deepcopy(index.data)
        if not entries:
            raise NotFound(f"the base {self._describe_base()} is an index with no image manifests")
        images: list[_PlatformImage] = [None] * len(entries)  # type: ignore[list-item]

        def read(i: int) -> None:
            raw, media_type, digest = store.get_manifest(entries[i].digest)
            doc = parse_manifest(raw, media_type)
            if not isinstance(doc, Manifest):
                raise RegistryError(f"{entries[i].digest} in the base index is not an image manifest")
            images[i] = self._read_image(store, doc, entries[i].to_dict())

        self._parallel(read, range(len(entries)))
        return images

    def _read_image(self, store: BlobStore, manifest: Manifest,
                    descriptor: dict[str, Any] | None) -> _PlatformImage:
        config_desc = manifest.config
        config_raw, config = read_config(store, config_desc.digest, config_desc.size,
                                         self._describe_base())
        data = ImageData(copy.deepcopy(manifest.data), config)
        base_blobs: dict[str, int | None] = {config_desc.digest: config_desc.size}
        for layer in manifest.layers:
            base_blobs[layer.digest] = layer.size
        image = _PlatformImage(data, descriptor, config_raw, copy.deepcopy(config), base_blobs)
        return image

    def _describe_base(self) -> str:
        return str(self.base_ref)

    def _parallel(self, fn: Any, items: Iterable[Any]) -> None:
        run_parallel(fn, items, self._jobs)

    # -- reading and editing ---------------------------------------------------------------
    def platforms(self) -> list[str]:
        """The platforms this build produces, like ``["linux/amd64", "linux/arm64/v8"]``."""
        return [str(image.platform) for image in self._load()]

    def _image_for(self, platform: str | None) -> _PlatformImage:
        images = self._load()
        if platform is None:
            return images[0]
        wanted = Platform.parse(platform)
        for image in images:
            if image.platform.matches(wanted):
                return image
        raise NotFound(f"this build has no {platform} image; it has: {', '.join(self.platforms())}")

    def _layer_images(self, platform: object, what: str) -> list[_PlatformImage]:
        """The platforms a new layer goes to: every one for ``platform=None``, else the one
        ``platform`` names (a ``ConfigurationError`` naming the build's platforms when it has
        none or several such)."""
        if platform is None:
            return self._load()
        if not isinstance(platform, str):
            raise ConfigurationError(f"{what}'s platform must be a str like \"linux/arm64\", "
                                     f"not {type(platform).__name__}")
        wanted = Platform.parse(platform)
        images = self._load()
        matching = [image for image in images if image.platform.matches(wanted)]
        if len(matching) > 1:  # "linux/arm" means v7, as when an index entry is picked
            exact = [image for image in matching
                     if image.platform.normalized().variant == wanted.normalized().variant]
            matching = exact or matching
        if len(matching) == 1:
            return matching
        have = ", ".join(self.platforms())
        if not matching:
            raise ConfigurationError(
                f"{what}(platform={platform!r}): the build of {self._describe_base()} has no "
                f"{platform} image; its platforms are {have}")
        raise ConfigurationError(
            f"{what}(platform={platform!r}) matches {len(matching)} images of the build of "
            f"{self._describe_base()} ({', '.join(str(i.platform) for i in matching)}); name "
            f"one with its variant (the build's platforms are {have})")

    def get_image_data(self, platform: str | None = None) -> ImageData:
        """The manifest and config (mutable; saved by ``save``) of one platform, default the first."""
        return self._image_for(platform).data

    def get_image_config(self, platform: str | None = None) -> dict[str, Any]:
        """The mutable ``config`` object of the image config (Env, Cmd, WorkingDir, ...)."""
        cfg = self._image_for(platform).data.config
        inner = cfg.get("config")
        if not isinstance(inner, dict):
            inner = cfg["config"] = {}
        return inner

    @property
    def docker_flavour(self) -> bool:
        self._load()
        return self._docker_flavour

    @refuse_options_object(1, "image.add_files")
    def add_files(
        self,
        files: Mapping[str, object] | str | os.PathLike[str],
        target_dir: str | None = None,
        *,
        ignores: Iterable[str] = (),
        ignore_files: Iterable[str] = (),
        follow_symlinks: bool = True,
        platform: str | None = None,
        cache_inputs: Mapping[str, str | bytes] | None = None,
    ) -> LayerInfo:
        """Put local directories, files and ``CustomFile``s into one new layer.

        ``files`` maps a path in the image to its source (``{"/app": "./src"}``); the forms
        ``add_files(local_dir, target_dir)`` and ``add_files(local_dir)`` (target ``/``) work
        too. The layer goes to every platform of the build, or with ``platform``
        (``"linux/arm64"``) to that one only. Returns the new layer, already uploaded to (or
        written into) the target. ``cache_inputs`` are a packager's own inputs to the layer's
        cache key (a lock file's hash, a platform, an interpreter), by name.
        """
        sources = self._sources(files, target_dir)
        ignores = self._patterns("ignores", ignores)
        ignore_files = self._patterns("ignore_files", ignore_files)
        if not sources:
            raise ConfigurationError("add_files was given no files")
        layer_platform: str | None = None
        loading = None
        if platform is not None:
            # the sources are told which platform they serve (a packager may fetch files for
            # it), so the base is read and the platform checked before they are listed
            images = self._layer_images(platform, "add_files")
            layer_platform = str(images[0].platform)
        else:
            images = None
            # the first layer: read the base (a few round trips) while the sources are walked
            if self._images is None and not self._is_scratch:
                # the reading thread only sends requests: the store is opened and its
                # credentials settled here (plugins and credential providers may import modules)
                ready_for_threads(self.base_store)
                loading = _in_background(self._load, "cib-read-base")
        mtime = self._layer_mtime()
        import cib_core.layers.cache as layer_cache

        label = "new layer " + ", ".join(sorted(sources))

        def make() -> LayerBuilder:
            made = prepare_layer(
                self._plugin_manager, sources, ignores=tuple(ignores),
                ignore_files=tuple(ignore_files), follow_symlinks=follow_symlinks,
                compression=self._compression, mtime=mtime, platform=layer_platform)
            if loading is None or loading.done():
                # else the base's flavour is not known yet: the media type is set once it is
                made.media_type = mt.layer_media_type(self._docker_flavour, self._compression)
            return made

        try:
            builder = make()
            cache = self.build_cache
            on = layer_cache.cache_dir() is not None
            recipe = builder.recipe()
            recipes = [r for r in (recipe, builder.recipe(relocatable=True)) if r] if on else []
            # Look in the caches first when one may know the layer: a cache repository, content
            # that is not all local files (cheap to key), or local sources built before here
            # (from this path, or from another checkout of the project). Else start building
            # and uploading at once, the upload overlapping the walk, and remember the layer.
            look = (cache.repo is not None or recipe is None
                    or any(layer_cache.seen(r) for r in recipes))
            if look:
                builder.fingerprint(layer_cache.RACY_SECONDS)  # the walk, while the base is read
            store = self.target_store
        except BaseException:
            if loading is not None:
                loading.result()  # a base that cannot be read is reported first, as ever
            raise
        if look:
            self._wait_for_base(loading)
            builder.media_type = mt.layer_media_type(self._docker_flavour, self._compression)
            info = self._put_layer(builder, make, label, cache_inputs=cache_inputs)
        else:
            log.info("%s: cache miss (no layer of these targets was built here); building", label)
            try:
                info = self._write_layer(builder, store, make, label, loading,
                                         layer_cache.RACY_SECONDS)
            except BaseException:
                if loading is not None:
                    loading.result()  # a base that cannot be read is reported first, as ever
                raise
            self._wait_for_base(loading)
            # the layer's media type follows the base's flavour, known now
            builder.media_type = mt.layer_media_type(self._docker_flavour, self._compression)
            info = dataclasses.replace(info, media_type=builder.media_type)
            cache.remember(cache.first(builder, cache_inputs), builder, info, store, label)
        for recipe in recipes:
            layer_cache.remember(recipe)
        created_by = "cib add_files " + " ".join(sorted(sources))
        self._append_layer(
            {"mediaType": info.media_type, "digest": info.digest, "size": info.size},
            info.diff_id, {"created_by": created_by, "comment": "cib"}, images)
        return info

    def _layer_mtime(self) -> int | None:
        return None if self._created == "now" else int(source_date().timestamp())

    def _put_layer(self, builder: LayerBuilder | None, make: Callable[[], LayerBuilder],
                   label: str, *, key: str | None = None,
                   cache_inputs: Mapping[str, str | bytes] | None = None) -> LayerInfo:
        """Make a layer present in the target: one the build cache (local, and ``cache_repo``)
        knows and the target has or gets (nothing built), else ``builder`` (or a new one from
        ``make``, which also lists the entries again should a streamed upload need a retry)
        built and uploaded. ``key``: a packager's key of a layer whose entries are costly to
        produce, looked up before ``make`` runs; ``cache_inputs`` go into the content key."""
        store = self.target_store
        cache = self.build_cache
        if key is not None and builder is None:
            hit = cache.find_keyed(key, mt.layer_media_type(self._docker_flavour, self._compression),
                                   store, label, make)
            if hit is not None:
                self._present.add(hit.info.digest)
                return hit.info
            builder = make()
            info = self._build_and_send(builder, store, make, label)
            cache.remember_keyed(key, info, store, label)
            return info
        if builder is None:
            builder = make()
        found = cache.find(builder, store, label, cache_inputs)
        if isinstance(found, Hit):
            # inputs built before and their blob in the target: no tar, gzip or upload
            self._present.add(found.info.digest)
            return found.info
        info = self._build_and_send(builder, store, make, label)
        cache.remember(found, builder, info, store, label)
        return info

    def _build_and_send(self, builder: LayerBuilder, store: BlobStore,
                        make: Callable[[], LayerBuilder], label: str) -> LayerInfo:
        import cib_core.layers.cache as layer_cache

        return self._write_layer(builder, store, make, label, None, layer_cache.RACY_SECONDS)

    # -- apps ------------------------------------------------------------------------------
    def add_python_app(
        self,
        project: str | os.PathLike[str] = ".",
        *,
        lock: str | os.PathLike[str] | None = None,
        index_url: str | None = None,
        find_links: Iterable[str | os.PathLike[str]] = (),
        entrypoint: str | Iterable[str] | None = None,
        app_dir: str = "/app",
        python_target: Mapping[str, str] | None = None,
    ) -> list[LayerInfo]:
        """Package the Python project in ``project`` the way Jib packages a Java one.

        Its dependencies come from its lock (``pylock.toml``, ``uv.lock`` or a
        ``requirements.txt`` with hashes; ``lock`` names one), as wheels picked for each
        platform's interpreter and libc (read from the base's files), downloaded from
        ``index_url`` and ``find_links`` (default: pip's configuration), checked against the
        lock's hashes and installed into a virtual environment at ``/opt/venv``. Layers,
        least-changing first: one per distribution over 64 MiB unpacked, one for the other
        dependencies, one for the project (built as a wheel from its ``pyproject.toml``, or a
        plain directory copied to ``app_dir``). The entrypoint is the project's single
        ``[project.scripts]`` entry unless ``entrypoint`` names a script or a command;
        ``VIRTUAL_ENV``, ``PATH`` and the working directory (``app_dir``) are set.
        ``python_target`` overrides what is read from the base: ``interpreter`` (a path in
        the image), ``version``, ``abi``, ``libc`` (``"glibc 2.36"``, ``"musl 1.2"``).

        Returns the new layers (each one once, whichever platforms it went to).
        """
        return self.add_app(project, kind="python", lock=lock, index_url=index_url,
                            find_links=find_links, entrypoint=entrypoint, app_dir=app_dir,
                            settings={"python_target": dict(python_target)} if python_target else {})

    def add_app(
        self,
        project: str | os.PathLike[str] = ".",
        *,
        kind: str | None = None,
        lock: str | os.PathLike[str] | None = None,
        index_url: str | None = None,
        find_links: Iterable[str | os.PathLike[str]] = (),
        entrypoint: str | Iterable[str] | None = None,
        app_dir: str = "/app",
        settings: Mapping[str, Any] | None = None,
    ) -> list[LayerInfo]:
        """Package the app in the directory ``project`` with the ``cib_app_packager`` plugin
        for ``kind`` (``"python"``, or a third party's; ``None``: whichever recognizes it),
        for every platform of the build: its layers go on top, its entrypoint, env and
        working directory into each platform's config. ``settings`` are the packager's own
        options. Returns the new layers, each once."""
        from cib_core.apps import apply_config

        options = self._app_options(kind, lock, index_url, find_links, entrypoint, app_dir,
                                    settings, dry_run=False)
        images, answers = self._package_app(project, options)
        mtime = self._layer_mtime()
        media_type = mt.layer_media_type(self._docker_flavour, self._compression)
        built: dict[str, LayerInfo] = {}
        added: list[LayerInfo] = []
        for image, answer in zip(images, answers, strict=True):
            for layer in answer.layers:
                key = layer.key or _files_key(layer)
                info = built.get(key) if key is not None else None
                if info is None:
                    info = self._build_app_layer(layer, mtime, media_type)
                    if key is not None:
                        built[key] = info
                    if info not in added:
                        added.append(info)
                self._append_layer(
                    {"mediaType": info.media_type, "digest": info.digest, "size": info.size},
                    info.diff_id, {"created_by": f"cib add_app: {layer.name}", "comment": "cib"},
                    [image])
            apply_config(image.data.config, answer)
        return added

    def plan_app(
        self,
        project: str | os.PathLike[str] = ".",
        *,
        kind: str | None = None,
        lock: str | os.PathLike[str] | None = None,
        index_url: str | None = None,
        find_links: Iterable[str | os.PathLike[str]] = (),
        entrypoint: str | Iterable[str] | None = None,
        app_dir: str = "/app",
        settings: Mapping[str, Any] | None = None,
    ) -> list[tuple[str, AppImage]]:
        """What ``add_app`` would do, per platform, without building or uploading anything:
        ``(platform, AppImage)`` pairs whose ``summary`` and ``details`` say what the packager
        picked (the wheels of a Python app). The image is left unchanged."""
        options = self._app_options(kind, lock, index_url, find_links, entrypoint, app_dir,
                                    settings, dry_run=True)
        images, answers = self._package_app(project, options)
        return [(str(image.platform), answer) for image, answer in zip(images, answers, strict=True)]

    def _app_options(self, kind: str | None, lock: str | os.PathLike[str] | None,
                     index_url: str | None, find_links: Iterable[str | os.PathLike[str]],
                     entrypoint: str | Iterable[str] | None, app_dir: str,
                     settings: Mapping[str, Any] | None, *, dry_run: bool) -> AppOptions:
        from cib_core.caches import cache_root

        if isinstance(find_links, (str, os.PathLike)):
            find_links = [find_links]
        if not isinstance(find_links, Iterable):
            raise ConfigurationError("find_links must be a list of directories or URLs")
        if isinstance(entrypoint, str):
            entry: tuple[str, ...] | None = (entrypoint,)
        elif entrypoint is None:
            entry = None
        else:
            entry = tuple(image_config.check("entrypoint", list(entrypoint), "entrypoint") or ())
        if not isinstance(app_dir, str) or not app_dir.startswith("/"):
            raise ConfigurationError(f"app_dir={app_dir!r}: use an absolute path in the image "
                                     'like "/app"')
        if index_url is not None and not isinstance(index_url, str):
            raise ConfigurationError(f"index_url must be a str URL, not {type(index_url).__name__}")
        root = cache_root()
        return AppOptions(
            kind=kind, lock=os.fspath(lock) if lock is not None else None,
            index_url=index_url, find_links=tuple(os.fspath(f) for f in find_links),
            entrypoint=entry, app_dir=app_dir, settings=dict(settings or {}), dry_run=dry_run,
            cache_dir=os.path.join(root, "apps") if root is not None else None, jobs=self._jobs,
            progress=self._progress)

    def _package_app(self, project: str | os.PathLike[str],
                     options: AppOptions) -> tuple[list[_PlatformImage], list[AppImage]]:
        from cib_core.apps import BaseFiles, package

        if not isinstance(project, (str, os.PathLike)):
            raise ConfigurationError(f"the project must be a directory path, not "
                                     f"{type(project).__name__}")
        images = self._load()
        bases = [BaseFiles(self._describe_base(), str(image.platform), image.data.config,
                           [(layer["digest"], self._layer_opener(image, layer["digest"]))
                            for layer in image.data.manifest.get("layers", [])],
                           facts=self.build_cache)
                 for image in images]
        try:
            answers = package(self._plugin_manager, os.fspath(project), bases, options)
        finally:
            for base in bases:
                base.close()
        return images, answers

    def _layer_opener(self, image: _PlatformImage, digest: str) -> Callable[[], BinaryIO]:
        def open_layer() -> BinaryIO:
            # a layer added by this Image lives in the target only
            store = self.base_store if digest in image.base_blobs else self.target_store
            assert store is not None
            return store.open_blob(digest)

        return open_layer

    def _build_app_layer(self, layer: AppLayer, mtime: int | None, media_type: str) -> LayerInfo:
        from cib_core.apps import layer_cache_key

        label = f"app layer {layer.name}"
        if layer.files is not None:
            files = dict(layer.files)

            def make_files() -> LayerBuilder:
                return prepare_layer(self._plugin_manager, files, ignores=layer.ignores,
                                     compression=self._compression,
                                     docker_flavour=self._docker_flavour, mtime=mtime)

            return self._put_layer(make_files(), make_files, label)
        produce = layer.entries
        assert produce is not None

        def make() -> LayerBuilder:
            builder = LayerBuilder(compression=self._compression, media_type=media_type,
                                   mtime=mtime)
            builder.add_source("/", produce())
            return builder

        key = (layer_cache_key(layer.key, self._compression, media_type, mtime,
                               gzip_implementation()) if layer.key else None)
        report_step(self._progress, label, 0, None)
        info = self._put_layer(None, make, label, key=key)
        report_step(self._progress, label, 1, 1)
        return info

    def _wait_for_base(self, loading: concurrent.futures.Future[Any] | None) -> None:
        if loading is not None:
            loading.result()
        else:
            self._load()

    @staticmethod
    def _sources(files: object, target_dir: object) -> dict[str, object]:
        """add_files' sources as ``{image_path: source}``, whichever form they came in."""
        if isinstance(files, Mapping):
            if target_dir is not None:
                raise ConfigurationError(
                    "add_files takes either a mapping {image_path: source} or "
                    f"(local_dir, target_dir), not both: write add_files({{{target_dir!r}: ...}})")
            check_mapping_order(files, positional=False)
            sources = {os.fsdecode(k) if isinstance(k, os.PathLike) else str(k): v
                       for k, v in files.items()}
            for target, source in sources.items():
                _check_no_nul(source, target)
            return sources
        if not isinstance(files, (str, os.PathLike)):
            raise ConfigurationError(
                "add_files takes a mapping {image_path: source} (like {\"/app\": \"./src\"}) or "
                f"a local directory, not {type(files).__name__}")
        if target_dir is not None and not isinstance(target_dir, (str, os.PathLike)):
            raise ConfigurationError(
                f"add_files' target_dir must be a path in the image like \"/app\", not "
                f"{type(target_dir).__name__}")
        target = os.fsdecode(target_dir) if target_dir else "/"
        check_mapping_order({target: files}, positional=True)
        _check_no_nul(files, target)
        return {target: files}

    @staticmethod
    def _patterns(name: str, value: Iterable[str]) -> tuple[str, ...]:
        """``ignores`` or ``ignore_files`` as a tuple; a single ``str`` is an error, not characters."""
        if isinstance(value, str):
            raise ConfigurationError(f"add_files' {name} must be a list of strings, not a str: "
                                     f"write {name}=[{value!r}]")
        patterns = tuple(value)
        for pattern in patterns:
            if not isinstance(pattern, str):
                raise ConfigurationError(f"add_files' {name} holds {pattern!r}; every item "
                                         "must be a str")
            if name == "ignore_files" and (not pattern or "\0" in pattern
                                           or os.path.isabs(pattern)
                                           or ".." in pattern.replace("\\", "/").split("/")):
                # read from each directory's root: a file elsewhere is not that directory's
                raise ConfigurationError(f"add_files' ignore_files holds {pattern!r}; name a file "
                                         "inside each added directory, like '.dockerignore'")
        return patterns

    def _write_layer(self, builder: LayerBuilder, store: BlobStore,
                     make: Callable[[], LayerBuilder], label: str,
                     loading: concurrent.futures.Future[Any] | None,
                     racy: float | None) -> LayerInfo:
        """Build ``builder``'s layer into ``store``: streamed where the store takes a stream,
        else through a temporary file (see :meth:`_stream_layer`)."""
        if isinstance(store, StreamingStore):
            return self._stream_layer(builder, store, make, label, loading, racy)
        return self._upload_built(builder, store, racy)

    def _stream_layer(self, builder: LayerBuilder, store: StreamingStore,
                      make: Callable[[], LayerBuilder], label: str,
                      loading: concurrent.futures.Future[Any] | None,
                      racy: float | None) -> LayerInfo:
        """Write the layer straight into the target as it is made (one streamed upload request
        into a registry): walking the sources, tar, compression and upload or write run side
        by side, with no temporary file, memory bounded by a few pieces, and the blob hashed
        once (by the store). ``label`` names it to the progress callback until its digest is
        known. A base that turns out unreadable (``loading``) stops it. Should an upload fail
        for a temporary reason (a stream cannot be rewound), list the sources again (``make``),
        build the layer into a temporary file and upload that, which can resume and retry.
        ``racy``: compute the rebuild cache's key on the way (see ``LayerBuilder.write``)."""
        pieces: queue.Queue[bytes | None] = queue.Queue(maxsize=4)
        failure: list[BaseException] = []
        result: list[tuple[str, int]] = []

        ended = False  # the end marker was taken off the queue (only the upload thread takes)

        def produce() -> Iterator[bytes]:
            nonlocal ended
            while True:
                piece = pieces.get()
                if piece is None:
                    ended = True
                    if abort:
                        raise CibError("the layer build stopped; upload cancelled")
                    return
                yield piece

        def upload() -> None:
            nonlocal ended
            try:
                result.append(store.put_stream(produce(), label))
            except BaseException as exc:  # noqa: BLE001 - handed to the building thread
                failure.append(exc)
                # let the builder finish or fail fast; once the end marker was taken (the final
                # request failed) nothing more comes, and waiting for another would hang
                while not ended:
                    ended = pieces.get() is None

        def sink(data: bytes) -> None:
            if failure:
                raise failure[0]
            if loading is not None and loading.done() and loading.exception() is not None:
                raise cast(BaseException, loading.exception())
            pieces.put(data)

        abort = False
        ready_for_threads(store)
        thread = threading.Thread(target=upload, name="cib-layer-upload", daemon=True)
        thread.start()
        try:
            # the upload hashes the blob as it sends it: no second sha256 of it here
            info = builder.write(sink, digest=False, fingerprint=racy)
        except BaseException:
            abort = True
            pieces.put(None)
            thread.join()
            if failure and isinstance(failure[0], RegistryError) and failure[0].temporary:
                log.debug("streamed upload of a layer failed (%s); building it into a file",
                          failure[0])
                return self._upload_built(make(), store, racy)
            raise
        pieces.put(None)
        thread.join()
        if failure:
            if isinstance(failure[0], RegistryError) and failure[0].temporary:
                log.debug("streamed upload of %s failed (%s); uploading from a file", info.digest,
                          failure[0])
                return self._upload_built(make(), store, racy)
            raise failure[0]
        digest, size = result[0]
        if size != info.size:
            raise RegistryError(f"{store.name} stored the layer as {digest} ({size} bytes) but cib "
                                f"built {info.size} bytes")
        self._present.add(digest)
        return dataclasses.replace(info, digest=digest)

    def _upload_built(self, builder: LayerBuilder, store: BlobStore, racy: float | None,
                      label: str = "new layer") -> LayerInfo:
        with builder.build(fingerprint=racy) as built:
            return self._put_built(built, store, label)

    def _put_built(self, built: BuiltLayer, store: BlobStore, label: str = "layer") -> LayerInfo:
        """Upload a layer built into a file, unless the target has it already."""
        info = built.info
        if store.has_blob(info.digest):
            log.info("%s: %s is in %s already; skipped upload", label, info.digest, store.name)
        else:
            with built.open() as stream:
                store.put_blob(stream, digest=info.digest, size=info.size)
        self._present.add(info.digest)
        return info

    def add_tarball(self, path: str | os.PathLike[str], *, platform: str | None = None) -> LayerInfo:
        """Add an existing ``.tar``, ``.tar.gz`` or ``.tar.zst`` file as one layer, as it is,
        to every platform or to the one ``platform`` names.

        A compressed file is the blob itself (nothing is re-packed); a plain tar is compressed.
        Its members are not normalized: reproducibility is the file's own.
        """
        images = self._layer_images(platform, "add_tarball")
        with layer_from_tarball(path, compression=self._compression,
                                docker_flavour=self._docker_flavour) as built:
            info = self._put_built(built, self.target_store)
        self._append_layer(
            {"mediaType": info.media_type, "digest": info.digest, "size": info.size},
            info.diff_id, {"created_by": f"cib add_tarball {os.path.basename(os.fspath(path))}",
                           "comment": "cib"}, images)
        return info

    def _append_layer(self, descriptor: dict[str, Any], diff_id: str,
                      history: dict[str, Any] | None,
                      images: list[_PlatformImage] | None = None) -> None:
        """Append a layer to ``images`` (default: every platform of the build)."""
        self._added[descriptor["digest"]] = (history or {}).get("created_by")
        for image in self._load() if images is None else images:
            image.data.manifest.setdefault("layers", []).append(dict(descriptor))
            rootfs = image.data.config.setdefault("rootfs", {"type": "layers", "diff_ids": []})
            rootfs.setdefault("diff_ids", []).append(diff_id)
            if history is not None:
                entry = dict(history)
                entry["created"] = self._created_time()
                image.data.config.setdefault("history", []).append(entry)

    def add_layer(self, digest: str, uncompressed_digest: str, size: int,
                  urls: list[str] | None = None, *, media_type: str | None = None,
                  platform: str | None = None) -> None:
        """Append an existing blob as a layer, keeping ``diff_ids`` in step: to every platform,
        or to the one ``platform`` names."""
        images = self._layer_images(platform, "add_layer")
        if media_type is None:
            if urls:
                media_type = (mt.DOCKER_FOREIGN_LAYER_GZIP if self._docker_flavour
                              else mt.OCI_LAYER_NONDISTRIBUTABLE_GZIP)
            else:
                media_type = mt.layer_media_type(self._docker_flavour)
        descriptor: dict[str, Any] = {"mediaType": media_type, "digest": digest, "size": size}
        if urls:
            descriptor["urls"] = list(urls)
        self._append_layer(descriptor, uncompressed_digest,
                           {"created_by": f"cib add_layer {digest}", "comment": "cib"}, images)

    def remove_layer(self, digest: str) -> None:
        """Remove the layer ``digest`` and its ``diff_ids`` entry (and its history entry)."""
        found = False
        for image in self._load():
            layers = image.data.manifest.get("layers", [])
            positions = [i for i, layer in enumerate(layers) if layer.get("digest") == digest]
            if not positions:
                continue
            position = positions[0]
            found = True
            del layers[position]
            diff_ids = image.data.config.get("rootfs", {}).get("diff_ids", [])
            if position < len(diff_ids):
                del diff_ids[position]
            history = image.data.config.get("history", [])
            nonempty = [i for i, h in enumerate(history) if not h.get("empty_layer")]
            if position < len(nonempty):
                del history[nonempty[position]]
        if not found:
            raise NotFound(f"no layer {digest} in the image built from {self._describe_base()}")

    def _created_time(self) -> str:
        if self._created == "now":
            return _rfc3339(datetime.datetime.now(tz=datetime.timezone.utc))
        return _rfc3339(source_date())

    # -- sync and save -------------------------------------------------------------------
    @refuse_options_object(0, "image.sync")
    def sync(self, *, copy_remote_layers: bool = True, ignore_exists: bool = False) -> None:
        """Copy every base blob the target lacks: mount within one registry, stream otherwise."""
        images = self._load()
        wanted: dict[str, dict[str, Any]] = {}
        foreign: dict[str, dict[str, Any]] = {}
        for image in images:
            for layer in image.data.manifest.get("layers", []):
                d = layer.get("digest")
                if layer.get("urls"):  # non-distributable: fetched from its urls, base or not
                    foreign[d] = layer
                elif d in image.base_blobs:
                    wanted[d] = layer
        store = self.base_store
        target = self.target_store
        ready_for_threads(store, target)
        counts: dict[str, int] = {}
        replaced: dict[str, dict[str, Any]] = {}
        counts_lock = threading.Lock()

        def copy_one(digest: str) -> None:
            assert store is not None
            if isinstance(target, PlanningStore):
                descriptor, how = target.plan_transfer(
                    store, wanted[digest], docker_flavour=self._docker_flavour, force=ignore_exists)
            else:
                descriptor, how = transfer_layer(store, target, wanted[digest],
                                                 docker_flavour=self._docker_flavour,
                                                 force=ignore_exists)
            with counts_lock:
                counts[how] = counts.get(how, 0) + 1
                self._present.add(descriptor["digest"])
                if descriptor is not wanted[digest]:
                    replaced[digest] = descriptor

        if wanted:
            self._parallel(copy_one, sorted(wanted))
        for image in images:  # layers compressed on the way now have new digests
            layers = image.data.manifest.get("layers", [])
            for i, layer in enumerate(layers):
                if layer.get("digest") in replaced and layer.get("digest") in image.base_blobs:
                    layers[i] = dict(replaced[layer["digest"]])
                    image.base_blobs[layers[i]["digest"]] = layers[i]["size"]
        if copy_remote_layers and foreign:
            pool = self._foreign_transports(foreign.values())
            try:
                self._parallel(lambda d: self._copy_foreign(foreign[d], target, ignore_exists, pool),
                               sorted(foreign))
            finally:
                pool.close()
        log.info("synced %s to %s: %s", self._describe_base(), target.name,
                 ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "nothing to do")
        self.sync_counts = counts
        self._synced = True

    def _foreign_transports(self, layers: Iterable[dict[str, Any]]) -> TransportPool:
        """The transports of every host the layers' ``urls`` name, made in this thread (the
        transport plugins are asked here, not in the copying threads)."""
        pool = TransportPool(pm=self._plugin_manager)
        for layer in layers:
            for url in layer.get("urls", []):
                host = urlsplit(url).netloc.rsplit("@", 1)[-1]
                if host:
                    pool.get(host)
        return pool

    def _copy_foreign(self, layer: dict[str, Any], target: BlobStore, force: bool,
                      pool: TransportPool) -> None:
        digest = layer["digest"]
        if isinstance(target, PlanningStore):
            target.plan_foreign(layer, force)
            return
        if not force and target.has_blob(digest):
            self._present.add(digest)
            return
        errors = []
        for url in layer.get("urls", []):
            try:
                with fetch_url(url, digest, pool=pool) as stream:
                    target.put_blob(stream, digest=digest, size=layer.get("size"))
                self._present.add(digest)
                return
            except CibError as exc:
                errors.append(f"{url}: {exc}")
        raise RegistryError(f"could not copy the non-distributable layer {digest} from any of its "
                            f"urls ({'; '.join(errors) or 'none given'}); pass "
                            "copy_remote_layers=False to leave it as a reference")

    def _config_values(self) -> dict[str, Any]:
        """Every config attribute, checked again: lists and dicts may have changed in place."""
        values = {name: image_config.check(name, getattr(self, name))
                  for name in image_config.CONFIG_ATTRIBUTES}
        image_config.check_env_edits(values["env"], values["unset_env"])
        return values

    def _warn_unset_names_absent(self, images: list[_PlatformImage], names: list[str]) -> None:
        """A name to unset that no platform's environment has is most likely a typo."""
        present: set[str] = set()
        for image in images:  # the base's, or as get_image_config() changed it before a save
            present |= image_config.env_names(image.base_config or {})
            present |= image_config.env_names(image.data.config)
        absent = [name for name in dict.fromkeys(names) if name not in present]
        if absent:
            log.warning("unset_env: %s %s not in the environment of %s; nothing to remove",
                        ", ".join(absent), "is" if len(absent) == 1 else "are",
                        self._describe_base())

    def _final_config(self, image: _PlatformImage, values: Mapping[str, Any]) -> dict[str, Any]:
        config = image.data.config
        image_config.apply_config(config, values)
        config["created"] = self._created_time()
        return config

    def _config_bytes(self, image: _PlatformImage, values: Mapping[str, Any]) -> bytes:
        config = self._final_config(image, values)
        if image.base_config_raw is not None and config == image.base_config:
            return image.base_config_raw
        return canonical_json(config)

    @refuse_options_object(0, "image.save")
    def save(
        self,
        tags: Iterable[str] | None = None,
        *,
        cmd: list[str] | None = None,
        env: list[str] | None = None,
        working_dir: str | None = None,
        copy_remote_layers: bool = True,
        ignore_exists: bool = False,
    ) -> SaveResult:
        """Write the image to the target and tag it with each of ``tags`` (default: the
        target's own tag, else ``latest``); returns a ``SaveResult`` (``digest``,
        ``reference``, ``tags``, ``manifest``, ``media_type``).

        ``cmd`` and ``working_dir`` set those attributes first; ``env`` entries are added to
        ``image.env``. Unless ``sync`` ran already, every blob of the base the target lacks is
        mounted or copied first (``copy_remote_layers`` and ``ignore_exists`` as for ``sync``).
        Then, per platform, the config goes up, then the manifest, each only after every blob it
        names is confirmed in the target; for a multi-platform build the index goes last and
        carries the tags. Nothing is tagged when a step fails.
        """
        if cmd is not None:
            self.cmd = image_config.check("cmd", cmd, "save(cmd=...)")
        if env is not None:
            self.env = list(self.env) + image_config.check("env", env, "save(env=...)")
        if working_dir is not None:
            self.working_dir = image_config.check("working_dir", working_dir,
                                                  "save(working_dir=...)")
        values = self._config_values()
        tag_list = self._tags(tags)
        images = self._load()
        if values["unset_env"]:
            self._warn_unset_names_absent(images, values["unset_env"])
        if not self._synced:
            self.sync(copy_remote_layers=copy_remote_layers, ignore_exists=ignore_exists)
        target = self.target_store
        pushed: list[tuple[_PlatformImage, bytes, str]] = []
        single = self._index is None
        for image in images:
            raw, media_type = self._push_image(image, target, None if not single else tag_list,
                                               copy_remote_layers, values)
            pushed.append((image, raw, media_type))
        if single:
            image, raw, media_type = pushed[0]
            digest = sha256_digest(raw)
            manifest = image.data.manifest
        else:
            raw, media_type = self._index_bytes(pushed, values["annotations"])
            digest = sha256_digest(raw)
            for tag in tag_list:
                target.put_manifest(raw, media_type, tag)
            import json

            manifest = json.loads(raw)
        target.close()
        plan = None
        if isinstance(target, PlanningStore):
            plan = self._plan(target, pushed, digest, media_type)
        return SaveResult(digest=digest, reference=self._result_reference(digest),
                          tags=tuple(tag_list), manifest=manifest, media_type=media_type, plan=plan)

    def _plan(self, target: PlanningStore, pushed: list[tuple[_PlatformImage, bytes, str]],
              digest: str, media_type: str) -> BuildPlan:
        """What the dry run found, platform by platform."""
        images = []
        for image, raw, _manifest_type in pushed:
            manifest = image.data.manifest
            layers = tuple(
                PlannedLayer(digest=layer["digest"], size=layer.get("size"),
                             media_type=layer.get("mediaType", ""),
                             new=layer["digest"] in self._added and layer["digest"] not in image.base_blobs,
                             present=not target.planned(layer["digest"]),
                             created_by=self._added.get(layer["digest"]))
                for layer in manifest.get("layers", []))
            config = manifest["config"]
            images.append(PlannedImage(platform=str(image.platform),
                                       manifest_digest=sha256_digest(raw),
                                       config_digest=config["digest"], config_size=config["size"],
                                       layers=layers))
        target.mark_configs(image.config_digest for image in images)
        return BuildPlan(target=str(self.target_ref), digest=digest, media_type=media_type,
                         images=tuple(images), blobs=target.blobs, manifests=target.manifests,
                         target_kind=target.kind)

    def _tags(self, tags: Iterable[str] | None) -> list[str]:
        if tags is not None:
            tag_list = list(tags)
            if isinstance(tags, str):
                tag_list = [tags]
        elif isinstance(self.target_ref, Reference):
            tag_list = [self.target_ref.tag or "latest"]
        else:  # oci:PATH:TAG, or docker-archive:PATH:NAME:TAG
            tag_list = [self.target_ref.ref or "latest"]
        if not tag_list:
            raise ConfigurationError("save() was given an empty list of tags")
        for tag in tag_list:
            if not isinstance(tag, str):
                raise ConfigurationError(
                    f'save() was given the tag {tag!r}; every tag must be a str like "v1"')
            check_target_tag(self.target_ref, tag)
        return tag_list

    def _result_reference(self, digest: str) -> str:
        if isinstance(self.target_ref, Reference):
            return f"{self.target_ref.name}@{digest}"
        return f"{self.target_ref.transport}:{self.target_ref.path}@{digest}"

    def _push_image(self, image: _PlatformImage, target: BlobStore, tags: list[str] | None,
                    copy_remote_layers: bool, values: Mapping[str, Any]) -> tuple[bytes, str]:
        config_raw = self._config_bytes(image, values)
        config_digest = sha256_digest(config_raw)
        if config_digest not in self._present and not target.has_blob(config_digest):
            # a seekable body of known digest and size: one monolithic PUT into a registry
            target.put_blob(io.BytesIO(config_raw), digest=config_digest, size=len(config_raw))
        self._present.add(config_digest)
        manifest = image.data.manifest
        media_type = manifest.get("mediaType") or mt.manifest_media_type(self._docker_flavour)
        manifest["mediaType"] = media_type
        manifest.setdefault("schemaVersion", 2)
        cfg_desc = dict(manifest.get("config") or {})
        cfg_desc.update({"mediaType": cfg_desc.get("mediaType") or mt.config_media_type(
            self._docker_flavour), "digest": config_digest, "size": len(config_raw)})
        manifest["config"] = cfg_desc
        image_config.apply_annotations(manifest, values["annotations"])
        self._confirm_blobs(image, target, copy_remote_layers)
        if self._oci_types_only(target):
            manifest = manifest_to_oci(manifest)
            media_type = manifest["mediaType"]
        raw = canonical_json(manifest)
        if tags is None:
            _put_manifest(target, raw, media_type, None)
        else:
            for tag in tags:
                _put_manifest(target, raw, media_type, tag)
        return raw, media_type

    def _confirm_blobs(self, image: _PlatformImage, target: BlobStore,
                       copy_remote_layers: bool) -> None:
        """Refuse to push a manifest that names a blob the target does not have."""
        needed = [image.data.manifest["config"]["digest"]]
        for layer in image.data.manifest.get("layers", []):
            if layer.get("urls") and not copy_remote_layers:
                continue
            needed.append(layer["digest"])
        missing: list[str] = []
        lock = threading.Lock()

        def check(digest: str) -> None:
            if not target.has_blob(digest):
                with lock:
                    missing.append(digest)

        ready_for_threads(target)
        self._parallel(check, sorted(set(needed) - self._present))
        if missing:
            raise RegistryError(
                f"not pushing the manifest: {target.name} lacks {len(missing)} blob(s) it names "
                f"({', '.join(sorted(missing))}); was a layer added without being uploaded?")

    def _index_bytes(self, pushed: list[tuple[_PlatformImage, bytes, str]],
                     annotations: Mapping[str, str]) -> tuple[bytes, str]:
        assert self._index is not None
        index = self._index
        image_config.apply_annotations(index, annotations)
        media_type = index.get("mediaType") or mt.index_media_type(self._docker_flavour)
        entries = []
        for image, raw, manifest_type in pushed:
            entry = dict(image.descriptor or {})
            entry.update({"mediaType": manifest_type, "digest": sha256_digest(raw), "size": len(raw)})
            entries.append(entry)
        index["manifests"] = entries
        if self._oci_types_only(self.target_store):
            media_type = mt.to_oci(media_type)
        index["mediaType"] = media_type
        index.setdefault("schemaVersion", 2)
        return canonical_json(index), media_type
