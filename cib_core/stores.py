"""One interface over every place an image can live: a registry repository, an OCI layout,
a docker-archive tarball.

The builder and ``cib copy`` move blobs and manifests between stores without caring which
kind each one is; only ``transfer_blob`` knows that two repositories of one registry can
mount instead of copy.
"""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol, runtime_checkable

from cib_core import mediatypes as mt
from cib_core.callbacks import Progress
from cib_core.documents import json_object
from cib_core.errors import ConfigurationError, ManifestError, RegistryError
from cib_core.reference import LocalReference, Reference, parse_image_spec
from cib_core.retry import DEFAULT_POLICY, RetryPolicy

if TYPE_CHECKING:
    from cib_core.plugins import CibPluginManager
    from cib_core.remote.client import RegistryClient
    from cib_core.remote.transport import TransportPool

log = logging.getLogger(__name__)


COPY_RESTARTS = 2
"""How often ``transfer_blob`` starts a streamed blob copy over after a temporary failure
(each request in it has had the transport's retries already)."""


def run_parallel(fn: Callable[[Any], None], items: Iterable[Any], jobs: int) -> None:
    """Call ``fn`` on every item, ``jobs`` at a time; the first failure stops what has not
    started and is raised once the running calls end.

    The workers are daemon threads and an interrupt (Ctrl-C) in the calling thread is raised at
    once, without waiting for the calls in flight: a blob halfway through a slow download must
    not hold the process for its remaining seconds. The workers start nothing new after it.

    ``fn`` runs in worker threads, which must find every module they use imported and never
    call a plugin: open the stores it uses and pass them to ``ready_for_threads`` first.
    """
    todo = list(items)
    if len(todo) <= 1 or jobs <= 1:
        for item in todo:
            fn(item)
        return
    lock = threading.Lock()
    remaining = iter(todo)
    stop = threading.Event()
    failures: list[BaseException] = []

    def work() -> None:
        while not stop.is_set():
            with lock:
                item = next(remaining, _END)
            if item is _END:
                return
            try:
                fn(item)
            except BaseException as exc:  # noqa: BLE001 - handed to the calling thread
                with lock:
                    failures.append(exc)
                stop.set()
                return

    workers = [threading.Thread(target=work, name="cib-transfer", daemon=True)
               for _ in range(min(jobs, len(todo)))]
    for worker in workers:
        worker.start()
    try:
        for worker in workers:
            worker.join()
    except BaseException:
        stop.set()
        raise
    if failures:
        raise failures[0]


_END = object()


@runtime_checkable
class BlobStore(Protocol):
    """Where blobs and manifests of one repository live."""

    name: str

    def has_blob(self, digest: str) -> bool: ...

    def open_blob(self, digest: str) -> BinaryIO: ...

    def put_blob(self, data: BinaryIO | Iterable[bytes], digest: str | None = None,
                 size: int | None = None) -> tuple[str, int]:
        """Store a blob unconditionally (callers ask ``has_blob`` first where it pays)."""
        ...

    def get_manifest(self, ref: str) -> tuple[bytes, str, str]: ...

    def put_manifest(self, raw: bytes, media_type: str, tag: str | None) -> str: ...

    def close(self) -> None: ...


@runtime_checkable
class StreamingStore(BlobStore, Protocol):
    """A store that takes a blob while it is being made, its digest not known in advance
    (a new layer, written as it is compressed). ``label`` names it to the progress callback
    until the digest is known."""

    def put_stream(self, pieces: Iterable[bytes], label: str) -> tuple[str, int]: ...


class RegistryStore:
    """A repository in a registry, through a ``RegistryClient``."""

    def __init__(self, client: RegistryClient, progress: Progress | None = None) -> None:
        self.client = client
        self.progress = progress
        self.name = f"{client.registry}/{client.repository}"

    @property
    def registry(self) -> str:
        return self.client.registry

    @property
    def repository(self) -> str:
        return self.client.repository

    def has_blob(self, digest: str) -> bool:
        return self.client.blob_exists(digest)

    def open_blob(self, digest: str) -> BinaryIO:
        stream = self.client.blob(digest, stream=True)
        assert not isinstance(stream, bytes)
        return stream

    def put_blob(self, data: BinaryIO | Iterable[bytes], digest: str | None = None,
                 size: int | None = None) -> tuple[str, int]:
        # force: every caller has asked has_blob already, so no second HEAD
        result = self.client.upload(data, content_length=size, digest=digest, force=True,
                                    progress=self.progress)
        return result.digest, result.size

    def put_stream(self, pieces: Iterable[bytes], label: str = "new blob") -> tuple[str, int]:
        """Upload a blob as it is produced, in one request that cannot resume (see
        ``RegistryClient.upload_stream``); the producer must be able to start over."""
        result = self.client.upload_stream(pieces, progress=self.progress, label=label)
        return result.digest, result.size

    def mount(self, digest: str, from_repository: str) -> bool:
        return self.client.mount(digest, from_repository)

    def get_manifest(self, ref: str) -> tuple[bytes, str, str]:
        return self.client.manifest_raw(ref)

    def put_manifest(self, raw: bytes, media_type: str, tag: str | None) -> str:
        return self.client.manifest_upload(tag, raw, media_type).digest

    def close(self) -> None:
        pass


def ready_for_threads(*stores: BlobStore | None) -> None:
    """Do in the calling thread what the first request of a store would otherwise do in
    whichever worker thread sends it: a registry store's client settles its credentials (an
    anonymous ping, then the credential providers if the registry asks for credentials).
    A credential provider may import modules when it is first asked, and an import racing
    one in another thread can fail (a partially initialized module) or deadlock."""
    for store in stores:
        if isinstance(store, RegistryStore):
            store.client.authenticate()


def check_local_target(ref: Reference | LocalReference) -> None:
    """Refuse a local target whose path cannot be written, before anything is read or written:
    a docker-archive path that is a directory or whose directory is missing or a file, an
    ``oci:`` layout path that is a file or lies under one (``LocalWriteError`` naming it). A
    layout's missing directories are made when it is written; a registry target is not
    checked here."""
    if not isinstance(ref, LocalReference) or ref.path is None:
        return
    import errno
    import os
    from pathlib import Path

    from cib_core.errors import LocalWriteError
    from cib_core.fileio import check_output_path, write_failure

    if ref.transport == "docker-archive":
        if os.path.isdir(ref.path):
            raise LocalWriteError(ref.path, "it is a directory",
                                  "name the archive file, for example DIR/image.tar",
                                  what="the docker-archive")
        check_output_path(ref.path, what="the docker-archive")
    elif ref.transport == "oci":
        path = Path(os.path.abspath(ref.path))
        blocker = next((p for p in [*reversed(path.parents), path]
                        if p.exists() and not p.is_dir()), None)
        if blocker is not None:
            code = errno.ENOTDIR
            raise write_failure(ref.path, OSError(code, os.strerror(code), str(path / "index.json")),
                                what="the OCI image layout")


def open_store(
    spec: str | Reference | LocalReference,
    *,
    write: bool = False,
    auth: Mapping[str, Mapping[str, str]] | None = None,
    insecure: Iterable[str] = (),
    pm: CibPluginManager | None = None,
    progress: Progress | None = None,
    pool: TransportPool | None = None,
) -> BlobStore:
    """A store for a reference string or parsed reference. ``scratch`` has no store.

    ``progress`` is called as blobs are written into the store (``cib_core.cli.bars``)."""
    ref = parse_image_spec(spec) if isinstance(spec, str) else spec
    if isinstance(ref, LocalReference):
        if ref.transport == "oci":
            from cib_core.formats.oci_layout import OCILayoutStore

            assert ref.path is not None
            return OCILayoutStore(ref.path, create=write, progress=progress if write else None)
        if ref.transport == "docker-archive":
            from cib_core.formats.docker_archive import DockerArchiveReader, DockerArchiveWriter

            assert ref.path is not None
            if write:
                return DockerArchiveWriter(ref.path, ref.ref, progress=progress)
            return DockerArchiveReader(ref.path, ref.ref)
        raise ConfigurationError(
            "scratch is an empty base image; it can only be used as a base (--from scratch)")
    from cib_core.authn.resolve import options_for_registry
    from cib_core.remote.client import RegistryClient
    from cib_core.remote.transport import TransportPool

    insecure = tuple(insecure)
    if pool is None:  # a pool of its own knows every host named insecure (a token realm's too)
        pool = TransportPool(pm=pm, insecure=insecure)
    options = options_for_registry(ref.registry, auth)
    client = RegistryClient(
        ref.registry, ref.repository, options,
        insecure=ref.registry in set(insecure), pm=pm, pool=pool,
    )
    return RegistryStore(client, progress)


def transfer_blob(src: BlobStore, dst: BlobStore, digest: str, size: int | None,
                  *, force: bool = False) -> str:
    """Make ``digest`` present in ``dst``; returns how: "present", "mounted" or "copied".

    Two repositories of one registry mount instead of copying; a declined mount falls back
    to a streamed copy. Registry to registry streams straight through, with no temporary file.
    """
    if not force and dst.has_blob(digest):
        return "present"
    if (isinstance(src, RegistryStore) and isinstance(dst, RegistryStore)
            and src.registry == dst.registry and src.repository != dst.repository):
        if dst.mount(digest, src.repository):
            log.debug("mounted %s from %s into %s", digest, src.name, dst.name)
            return "mounted"
        log.debug("%s declined to mount %s from %s; copying", dst.name, digest, src.repository)
    def copy() -> str:
        with src.open_blob(digest) as stream:
            dst.put_blob(stream, digest=digest, size=size)
        return "copied"

    # A streamed copy cannot rewind its source: after an upload the destination lost (or a
    # download that broke off for good), start the blob over, a bounded number of times. A
    # streamed request is not retried by the transport (its body cannot be sent again), so the
    # policy's waits give a 429 or 503 burst time to pass.
    policy = _retry_policy(dst, src).with_retries(COPY_RESTARTS)
    return policy.run(
        copy, retryable=lambda exc: isinstance(exc, RegistryError) and exc.temporary,
        on_retry=lambda exc, attempt, delay: log.debug(
            "copying %s from %s to %s failed (%s); starting it over in %.1fs", digest, src.name,
            dst.name, exc, delay))


def _retry_policy(*stores: BlobStore) -> RetryPolicy:
    """The retry policy of the first registry among ``stores`` (local stores have none)."""
    for store in stores:
        if isinstance(store, RegistryStore):
            return store.client.transport.retry
    return DEFAULT_POLICY


MAX_CONFIG_SIZE = 4 * 1024 * 1024
"""distribution's limit for manifests, which cib holds configs to as well."""


def read_config(store: BlobStore, digest: str, size: int | None, what: str) -> tuple[bytes, dict[str, Any]]:
    """An image config's exact bytes and parsed object, never reading more than 4 MiB.

    ``size`` is the descriptor's (checked before anything is fetched); ``what`` names the image
    in errors.
    """
    too_big = ManifestError(f"the config {digest} of {what} is larger than {MAX_CONFIG_SIZE} "
                            "bytes; refusing to read it")
    if size is not None and size > MAX_CONFIG_SIZE:
        raise too_big
    with store.open_blob(digest) as stream:
        raw = stream.read(MAX_CONFIG_SIZE + 1)
    if len(raw) > MAX_CONFIG_SIZE:
        raise too_big
    return raw, json_object(raw, f"the config {digest} of {what}")


def wants_oci_types(store: BlobStore) -> bool:
    """OCI layouts take OCI media types only (skopeo and umoci ignore Docker ones there)."""
    from cib_core.formats.oci_layout import OCILayoutStore

    return isinstance(store, OCILayoutStore)


def manifest_to_oci(manifest: dict[str, Any]) -> dict[str, Any]:
    """The same image manifest or index with OCI media types; the blobs stay as they are."""
    converted = copy.deepcopy(manifest)
    if "mediaType" in converted:
        converted["mediaType"] = mt.to_oci(converted["mediaType"])
    for key in ("config",):
        if isinstance(converted.get(key), dict):
            converted[key]["mediaType"] = mt.to_oci(converted[key].get("mediaType", ""))
    for key in ("layers", "manifests"):
        for desc in converted.get(key) or []:
            desc["mediaType"] = mt.to_oci(desc.get("mediaType", ""))
    return converted


def transfer_layer(src: BlobStore, dst: BlobStore, descriptor: dict[str, Any], *,
                   docker_flavour: bool, force: bool = False) -> tuple[dict[str, Any], str]:
    """Make the layer ``descriptor`` present in ``dst``; returns its descriptor there and how.

    A plain-tar Docker layer (what ``docker save`` archives hold) is gzip-compressed on its
    way into a registry, which does not take that type; its descriptor changes accordingly.
    """
    digest = descriptor["digest"]
    if descriptor.get("mediaType") == mt.DOCKER_LAYER and isinstance(dst, RegistryStore):
        from cib_core.layers.tarball import compress_layer

        with src.open_blob(digest) as stream, \
                compress_layer(stream, f"{src.name}@{digest}", docker_flavour=docker_flavour) as built:
            info = built.info
            how = "present"
            if force or not dst.has_blob(info.digest):
                with built.open() as blob:
                    dst.put_blob(blob, digest=info.digest, size=info.size)
                how = "compressed"
        new = dict(descriptor)
        new.update({"mediaType": info.media_type, "digest": info.digest, "size": info.size})
        return new, how
    return descriptor, transfer_blob(src, dst, digest, descriptor.get("size"), force=force)
