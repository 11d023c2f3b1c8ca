"""Writing docker-archive tarballs, as ``docker save`` writes them.

Blobs are stored as they come in a temporary OCI layout next to the target; ``close()`` then
writes ``manifest.json``, ``repositories``, ``<config hex>.json`` and each layer
**uncompressed** as ``<diff_id hex>/layer.tar``, decompressed on the fly and checked against
the config's ``rootfs.diff_ids``. The tarball is written under a temporary name and renamed
when complete; a write that fails (a read-only or full file system, a path that cannot exist)
raises ``LocalWriteError`` naming the archive, removes what was written, and leaves no archive
behind.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import tarfile
import tempfile
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any, BinaryIO

from cib_core import mediatypes as mt
from cib_core.callbacks import Progress, ProgressReader, label_for, report_step
from cib_core.compression import decompressed
from cib_core.digest import is_digest, new_hasher, of
from cib_core.documents import canonical_json, json_object
from cib_core.errors import ConfigurationError, DigestMismatch, LocalWriteError, ManifestError, NotFound
from cib_core.fileio import replacing, writing_to
from cib_core.formats.docker_archive.common import WHAT, ArchiveBase, normalize_repo_tag, split_repo_tag
from cib_core.formats.oci_layout import OCILayoutStore, check_digest

log = logging.getLogger(__name__)

_CHUNK = 1 << 16


class DockerArchiveWriter(ArchiveBase):
    """A docker-archive tarball, written at ``close()``; ``default_ref`` (``NAME:TAG``) names
    images put without a name."""

    writing = True

    def __init__(self, path: str | os.PathLike[str], default_ref: str | None = None, *,
                 progress: Progress | None = None) -> None:
        """``progress(digest, done, total)`` is called as blobs are put; a callback with a
        ``step(label, done, total)`` method also sees the tarball being written at ``close()``
        (``cib_core.callbacks``)."""
        super().__init__(path, default_ref)
        self.progress = progress
        self._closed = False
        if self.path.is_dir():
            raise LocalWriteError(self.path, "it is a directory",
                                  "name the archive file, for example DIR/image.tar", what=WHAT)
        # the first failure to write, after which the archive is given up; and how many
        # writes (from several threads) are under way, so the blobs go once the last one ends
        self._failure: LocalWriteError | None = None
        self._active = 0
        self._state = threading.Lock()
        # manifest digest -> NAME:TAG list, in the order images were put
        self._written: dict[str, list[str]] = {}
        with writing_to(self.path, WHAT):
            self._tmpdir = tempfile.mkdtemp(prefix=f".{self.path.name}.cib-", dir=self.path.parent)
        self._cleanup = weakref.finalize(self, shutil.rmtree, self._tmpdir, True)
        with self._writing():
            self._layout = OCILayoutStore(self._tmpdir, create=True, progress=progress)

    def _named(self, failure: LocalWriteError) -> LocalWriteError:
        """``failure`` as a failure to write this archive (the user never named its blobs)."""
        return LocalWriteError(self.path, failure.reason, failure.hint, what=WHAT, errno=failure.errno)

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """A failure to write the blobs kept for the archive is a failure to write the archive:
        named so, and, once no other write is under way, what was kept is removed (it would
        only hold the disk space) and no further write is taken."""
        with self._state:
            if self._failure is not None:
                raise self._named(self._failure)
            self._active += 1
        try:
            yield
        except LocalWriteError as exc:
            failure = exc if exc.path == str(self.path) else self._named(exc)
            with self._state:
                if self._failure is None:
                    self._failure = failure
            if failure is exc:
                raise
            raise failure from exc
        finally:
            with self._state:
                self._active -= 1
                give_up = self._failure is not None and self._active == 0 and not self._closed
                if give_up:
                    self._closed = True
            if give_up:
                self._cleanup()

    def __repr__(self) -> str:
        return f"DockerArchiveWriter({str(self.path)!r})"

    def __enter__(self) -> DockerArchiveWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()
        else:
            self.discard()

    def _writer_only(self) -> None:
        if self._failure is not None:
            raise self._named(self._failure)
        if self._closed:
            raise ConfigurationError(f"{self.name} is already written and closed")

    def _repo_tag(self, tag: str | None) -> str | None:
        """``NAME:TAG`` for what put_manifest was given; a bare tag borrows the archive's name."""
        if not tag:
            return self.default_ref if self.default_ref and ":" in self.default_ref.rpartition("/")[2] \
                else (f"{self.default_ref}:latest" if self.default_ref else None)
        if "/" in tag or ":" in tag:
            return tag if ":" in tag.rpartition("/")[2] else f"{tag}:latest"
        if self.default_ref:
            return f"{split_repo_tag(self.default_ref)[0]}:{tag}"
        log.debug("%s: tag %r has no repository name; the image is stored untagged", self.name, tag)
        return None

    def _write_put_manifest(self, raw: bytes, media_type: str, tag: str | None) -> str:
        self._writer_only()
        if media_type in mt.INDEXES:
            raise ManifestError(
                f"{self.name}: a docker-archive holds single-platform images, not an index; "
                "pick one platform (for example --platform linux/amd64)")
        if media_type not in mt.IMAGE_MANIFESTS:
            raise ManifestError(f"{self.name}: a docker-archive cannot hold a {media_type} manifest")
        doc = json_object(raw, f"the manifest put into {self.name}")
        config = doc.get("config")
        if not isinstance(config, dict) or not isinstance(config.get("digest"), str):
            raise ManifestError(f"{self.name}: the manifest has no config descriptor")
        check_digest(config["digest"], f"{self.name} manifest config")
        with self._writing():
            digest = self._layout.put_manifest(raw, media_type, None)
        repo_tag = self._repo_tag(tag)
        tags = self._written.setdefault(digest, [])
        if repo_tag is not None:
            for other in self._written.values():
                if repo_tag in other:
                    other.remove(repo_tag)
            tags.append(repo_tag)
        return digest

    def _write_get_manifest(self, ref: str) -> tuple[bytes, str, str]:
        if is_digest(ref):
            return self._layout.get_manifest(ref)
        if not ref:
            if len(self._written) == 1:
                return self._layout.get_manifest(next(iter(self._written)))
            raise self.not_found(ref)
        wanted = normalize_repo_tag(self._repo_tag(ref) or ref)
        for digest, tags in self._written.items():
            if any(normalize_repo_tag(t) == wanted for t in tags):
                return self._layout.get_manifest(digest)
        raise self.not_found(ref)

    def _step(self, label: str, total: int | None) -> Callable[[int], None]:
        """``report(done)`` for one step of writing the tarball, told to ``progress``."""
        return lambda done: report_step(self.progress, label, done, total)

    def _layer_uncompressed(self, digest: str) -> tuple[int, str]:
        """Size and sha256 of a stored layer blob once decompressed."""
        hasher = new_hasher()
        size = 0
        stored = self._layout.blob_path(digest).stat().st_size
        report = self._step(f"check {label_for(digest)}", stored)
        with self._layout.open_blob(digest) as opened:
            blob = io.BufferedReader(ProgressReader(opened, report), _CHUNK)
            plain, _ = decompressed(blob, f"layer {digest}")
            with plain:
                for block in iter(lambda: plain.read(_CHUNK), b""):
                    hasher.update(block)
                    size += len(block)
        return size, of(hasher)

    def _write_archive(self) -> None:
        with replacing(self.path, fsync=False, what=WHAT) as handle, \
                tarfile.open(fileobj=handle, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            self._fill_archive(tar)

    @staticmethod
    def _add(tar: tarfile.TarFile, name: str, data: bytes | IO[bytes] | None, size: int = 0) -> None:
        info = tarfile.TarInfo(name)
        info.mtime = 0
        info.mode = 0o644
        if data is None:
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            tar.addfile(info)
        elif isinstance(data, bytes):
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        else:
            info.size = size
            tar.addfile(info, data)

    def _fill_archive(self, tar: tarfile.TarFile) -> None:
        entries: list[dict[str, Any]] = []
        repositories: dict[str, dict[str, str]] = {}
        written_layers: set[str] = set()
        written_configs: set[str] = set()
        for manifest_digest, repo_tags in self._written.items():
            raw, _, _ = self._layout.get_manifest(manifest_digest)
            manifest = json_object(raw, f"the manifest {manifest_digest}")
            config_digest = check_digest(str(manifest["config"]["digest"]), f"{self.name} manifest")
            if not self._layout.has_blob(config_digest):
                raise NotFound(f"{self.name}: the config {config_digest} was never written; "
                               "put every blob before closing the archive")
            with self._layout.open_blob(config_digest) as stream:
                config_raw = stream.read()
            rootfs = json_object(config_raw, f"the config {config_digest}").get("rootfs")
            listed = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
            diff_ids = listed if isinstance(listed, list) else []
            listed = manifest.get("layers")
            layers = [d for d in listed if isinstance(d, dict)] if isinstance(listed, list) else []
            if len(layers) != len(diff_ids):
                raise ManifestError(f"{self.name}: image {manifest_digest} has {len(layers)} layers but "
                                    f"its config lists {len(diff_ids)} diff_ids")
            layer_paths: list[str] = []
            for desc, diff_id in zip(layers, diff_ids, strict=True):
                digest = check_digest(str(desc.get("digest", "")), f"{self.name} manifest layer")
                diff_hex = check_digest(str(diff_id), f"{self.name} config diff_ids").split(":", 1)[1]
                member = f"{diff_hex}/layer.tar"
                layer_paths.append(member)
                if diff_hex in written_layers:
                    continue
                if not self._layout.has_blob(digest):
                    raise NotFound(f"{self.name}: the layer {digest} was never written; "
                                   "put every blob before closing the archive (a foreign layer "
                                   "must be copied, not referenced)")
                size, actual = self._layer_uncompressed(digest)
                if actual != diff_id:
                    raise DigestMismatch(f"uncompressed layer {digest} for {self.name}", str(diff_id), actual)
                self._add(tar, f"{diff_hex}/", None)
                with self._layout.open_blob(digest) as blob:
                    plain, _ = decompressed(blob, f"layer {digest}")
                    report = self._step(f"write {label_for(digest)}", size)
                    with plain, ProgressReader(plain, report) as counted:
                        self._add(tar, member, io.BufferedReader(counted, _CHUNK), size)
                written_layers.add(diff_hex)
            config_name = f"{config_digest.split(':', 1)[1]}.json"
            if config_name not in written_configs:
                self._add(tar, config_name, config_raw)
                written_configs.add(config_name)
            entries.append({"Config": config_name, "RepoTags": list(repo_tags) or None,
                            "Layers": layer_paths})
            for repo_tag in repo_tags:
                repo, tag = split_repo_tag(repo_tag)
                if layer_paths:
                    repositories.setdefault(repo, {})[tag] = layer_paths[-1].split("/", 1)[0]
        self._add(tar, "manifest.json", canonical_json(entries))
        self._add(tar, "repositories", canonical_json(repositories))

    def discard(self) -> None:
        """Forget what was written; no archive is created."""
        if not self._closed:
            self._closed = True
            self._cleanup()


    def repo_tags(self) -> list[str]:
        return [t for tags in self._written.values() for t in tags]

    # -- the BlobStore interface --------------------------------------------------------------
    def has_blob(self, digest: str) -> bool:
        return self._layout.has_blob(digest)

    def open_blob(self, digest: str) -> BinaryIO:
        return self._layout.open_blob(digest)

    def put_blob(self, data: BinaryIO | Iterable[bytes] | bytes, digest: str | None = None,
                 size: int | None = None) -> tuple[str, int]:
        self._writer_only()
        with self._writing():
            return self._layout.put_blob(data, digest, size)

    def put_stream(self, pieces: Iterable[bytes], label: str = "new blob") -> tuple[str, int]:
        """Put a blob as it is made (a new layer); ``label`` names it to ``progress``."""
        self._writer_only()
        with self._writing():
            return self._layout.put_stream(pieces, label)

    def get_manifest(self, ref: str | None) -> tuple[bytes, str, str]:
        return self._write_get_manifest(ref or self.default_ref or "")

    def put_manifest(self, raw: bytes, media_type: str, tag: str | None) -> str:
        return self._write_put_manifest(raw, media_type, tag)

    def close(self) -> None:
        """Write the tarball (atomically), then drop the blobs kept for it."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._written:
                self._write_archive()
            else:
                log.debug("%s: nothing was put; no archive written", self.name)
        finally:
            self._cleanup()
