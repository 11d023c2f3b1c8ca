"""docker-archive tarballs (``docker save`` / ``docker load`` / ``podman load``), read and written.

Reading understands the classic format (``manifest.json`` naming ``<config>.json`` and
``<id>/layer.tar`` or ``<diff_id>.tar`` files, as docker save and skopeo write it) and the
OCI-style one of newer docker (``index.json``, ``oci-layout`` and ``blobs/sha256/...`` next to
``manifest.json``). A classic archive has no manifest, so the reader synthesizes a Docker schema 2
manifest whose layers are the files as stored: uncompressed layers get the media type
``application/vnd.docker.image.rootfs.diff.tar`` (``layer_is_compressed`` tells the copy code to
compress them before a registry sees them). A gzip'd archive file is decompressed to a temporary
file first.

Writing stores blobs as they come in a temporary OCI layout next to the target and, at
``close()``, writes the tarball docker save would: ``manifest.json``, ``repositories``,
``<config hex>.json`` and each layer **uncompressed** as ``<diff_id hex>/layer.tar``, decompressed
on the fly and checked against the config's ``rootfs.diff_ids``. The tarball itself is written
under a temporary name and renamed when complete; a write that fails (a read-only or full file
system, a path that cannot exist) raises ``LocalWriteError`` naming the archive, removes what was
written, and leaves no archive behind.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import shutil
import tarfile
import tempfile
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO

from cib_core import mediatypes as mt
from cib_core.callbacks import ProgressReader, label_for, report_step
from cib_core.compression import SNIFF_SIZE, decompressed, sniff
from cib_core.digest import is_digest, new_hasher, sha256_digest
from cib_core.documents import canonical_json, manifest_media_type
from cib_core.errors import ConfigurationError, DigestMismatch, LocalWriteError, ManifestError, NotFound
from cib_core.fileio import replacing, writing_to
from cib_core.formats.oci_layout import (
    CHUNK,
    CONTAINERD_NAME,
    REF_NAME,
    OCILayoutStore,
    check_digest,
    verified_reader,
)
from cib_core.reference import DEFAULT_REGISTRY, is_docker_hub

log = logging.getLogger(__name__)

WHAT = "the docker-archive"

# Docker's media type for an uncompressed layer; not for registries, only for what an archive holds.
DOCKER_LAYER = mt.DOCKER_LAYER

_BLOB_PATH_RE = re.compile(r"^blobs/(sha256|sha512)/([a-f0-9]{64,128})$")


def layer_compression(desc: Mapping[str, Any]) -> str | None:
    """``"gzip"``, ``"zstd"`` or None (an uncompressed tar) for a layer descriptor's media type."""
    media_type = str(desc.get("mediaType") or "")
    if media_type.endswith(("gzip", "+gzip")):
        return "gzip"
    if media_type.endswith("zstd"):
        return "zstd"
    return None


def layer_is_compressed(desc: Mapping[str, Any]) -> bool:
    """Whether a layer descriptor's media type says the blob is compressed.

    Layers read from a docker-archive are often plain tars; a registry wants them compressed.
    """
    return layer_compression(desc) is not None


def normalize_repo_tag(text: str) -> str:
    """``busybox`` -> ``docker.io/library/busybox:latest``: the form docker and skopeo compare."""
    name = text.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        name, tag = name[:colon], name[colon + 1:]
    else:
        tag = "latest"
    first, sep, rest = name.partition("/")
    if not sep or not ("." in first or ":" in first or first == "localhost"):
        first, rest = "docker.io", name
    if is_docker_hub(first):
        first = DEFAULT_REGISTRY
    if first == "docker.io" and "/" not in rest:
        rest = f"library/{rest}"
    return f"{first}/{rest}:{tag}"


def _split_repo_tag(repo_tag: str) -> tuple[str, str]:
    slash = repo_tag.rfind("/")
    colon = repo_tag.rfind(":")
    if colon > slash:
        return repo_tag[:colon], repo_tag[colon + 1:]
    return repo_tag, "latest"



class _Region(io.RawIOBase):
    """``length`` bytes of a file from ``offset``, with its own file handle."""

    def __init__(self, path: Path, offset: int, length: int) -> None:
        super().__init__()
        self._handle = path.open("rb")
        self._handle.seek(offset)
        self._left = length

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if self._left <= 0:
            return 0
        data = self._handle.read(min(len(view), self._left))
        if not data:
            raise EOFError("the archive ends in the middle of a file")
        view[:len(data)] = data
        self._left -= len(data)
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._handle.close()
            super().close()


@dataclass
class _ArchiveImage:
    """One ``manifest.json`` entry, with its synthesized manifest."""

    position: int
    repo_tags: list[str]
    config_digest: str
    raw: bytes
    digest: str
    media_type: str
    layer_members: list[str] = field(default_factory=list)


class DockerArchiveStore:
    """A docker-archive tarball: a reader (``open``) or a writer (``create``), never both."""

    def __init__(self, path: str | os.PathLike[str], *, write: bool = False,
                 default_ref: str | None = None,
                 progress: Callable[[str, int, int | None], None] | None = None) -> None:
        self.path = Path(path)
        self.name = f"docker-archive:{self.path}"
        self.writing = write
        self.default_ref = default_ref or None
        self.progress = progress
        self._closed = False
        if write:
            self._init_writer()
        else:
            self._init_reader()

    @classmethod
    def open(cls, path: str | os.PathLike[str], ref: str | None = None) -> DockerArchiveStore:
        """Read an archive; ``ref`` (``NAME:TAG``) is the image picked when none is named."""
        return cls(path, write=False, default_ref=ref)

    @classmethod
    def create(cls, path: str | os.PathLike[str], ref: str | None = None, *,
               progress: Callable[[str, int, int | None], None] | None = None,
               ) -> DockerArchiveStore:
        """Write an archive at ``close()``; ``ref`` (``NAME:TAG``) names images put without a name.

        ``progress(digest, done, total)`` is called as blobs are put; a callback with a
        ``step(label, done, total)`` method also sees the tarball being written at ``close()``
        (see ``cib_core.progress``)."""
        return cls(path, write=True, default_ref=ref, progress=progress)

    def __repr__(self) -> str:
        return f"DockerArchiveStore({str(self.path)!r}, write={self.writing})"

    def __enter__(self) -> DockerArchiveStore:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()
        else:
            self.discard()

    # =====================================================================================
    # reading
    # =====================================================================================
    def _init_reader(self) -> None:
        if not self.path.is_file():
            raise NotFound(f"{self.name}: no such file; check the path")
        self._tar_path = self.path
        self._temp: Any = None
        with self.path.open("rb") as handle:
            kind = sniff(handle.read(SNIFF_SIZE))
        if kind is not None:
            # Random access into a compressed tar would re-read it for every blob.
            temp = tempfile.NamedTemporaryFile(prefix="cib-archive-", suffix=".tar")
            with self.path.open("rb") as handle:
                plain, _ = decompressed(handle, str(self.path))
                shutil.copyfileobj(plain, temp, CHUNK)
            temp.flush()
            self._temp = temp
            self._tar_path = Path(temp.name)
        try:
            with tarfile.open(self._tar_path, "r:") as tar:
                members = tar.getmembers()
        except tarfile.TarError as exc:
            raise ManifestError(f"{self.name}: not a tar archive ({exc}); is it a docker-archive?") from exc
        self._members: dict[str, tarfile.TarInfo] = {}
        for member in members:
            self._members[self._clean(member.name)] = member
        self._images: list[_ArchiveImage] | None = None
        self._blobs: dict[str, str] = {}
        for member_name in self._members:
            match = _BLOB_PATH_RE.match(member_name)
            if match:
                self._blobs[f"{match.group(1)}:{match.group(2)}"] = member_name
        self._index: dict[str, Any] | None = None
        if "index.json" in self._members:
            index = json.loads(self._read_member("index.json"))
            self._index = index if isinstance(index, dict) else None
        if "manifest.json" not in self._members and self._index is None:
            raise ManifestError(
                f"{self.name}: has neither manifest.json nor index.json; is it a docker-archive?")

    @staticmethod
    def _clean(name: str) -> str:
        return "/".join(p for p in name.split("/") if p not in ("", "."))

    def _resolve(self, name: str) -> tarfile.TarInfo:
        """The regular-file member ``name`` refers to, following links inside the archive."""
        current = self._clean(name)
        for _ in range(16):
            member = self._members.get(current)
            if member is None:
                raise NotFound(f"{self.name}: has no file {name!r}; the archive is incomplete")
            if member.isreg():
                return member
            if member.issym():
                base = current.rpartition("/")[0]
                target = member.linkname if member.linkname.startswith("/") else f"{base}/{member.linkname}"
                parts: list[str] = []
                for part in target.split("/"):
                    if part == "..":
                        if parts:
                            parts.pop()
                    elif part not in ("", "."):
                        parts.append(part)
                current = "/".join(parts)
            elif member.islnk():
                current = self._clean(member.linkname)
            else:
                raise ManifestError(f"{self.name}: {name!r} is not a file")
        raise ManifestError(f"{self.name}: {name!r} is a loop of links")

    def _open_member(self, name: str) -> BinaryIO:
        member = self._resolve(name)
        return io.BufferedReader(_Region(self._tar_path, member.offset_data, member.size),
                                 buffer_size=CHUNK)

    def _read_member(self, name: str) -> bytes:
        with self._open_member(name) as stream:
            return stream.read()

    def _member_size(self, name: str) -> int:
        return self._resolve(name).size

    def _hash_member(self, name: str) -> str:
        hasher = new_hasher()
        with self._open_member(name) as stream:
            for block in iter(lambda: stream.read(CHUNK), b""):
                hasher.update(block)
        return f"sha256:{hasher.hexdigest()}"

    def _load_images(self) -> list[_ArchiveImage]:
        if self._images is not None:
            return self._images
        images: list[_ArchiveImage] = []
        if "manifest.json" in self._members:
            entries = json.loads(self._read_member("manifest.json"))
            if not isinstance(entries, list):
                raise ManifestError(f"{self.name}: manifest.json is not a list")
            for position, entry in enumerate(entries):
                images.append(self._synthesize(position, entry))
        self._images = images
        return images

    def _synthesize(self, position: int, entry: Any) -> _ArchiveImage:
        if not isinstance(entry, dict) or not isinstance(entry.get("Config"), str) \
                or not isinstance(entry.get("Layers"), list):
            raise ManifestError(f"{self.name}: manifest.json entry {position} lacks Config or Layers")
        config_raw = self._read_member(entry["Config"])
        config_digest = sha256_digest(config_raw)
        self._blobs.setdefault(config_digest, self._clean(entry["Config"]))
        try:
            config = json.loads(config_raw)
            diff_ids = list((config.get("rootfs") or {}).get("diff_ids") or [])
        except (ValueError, AttributeError) as exc:
            raise ManifestError(f"{self.name}: the config {entry['Config']} is not JSON: {exc}") from exc
        layers: list[dict[str, Any]] = []
        compressions: list[str | None] = []
        for i, layer_name in enumerate(entry["Layers"]):
            member = self._clean(str(layer_name))
            with self._open_member(member) as stream:
                compression = sniff(stream.read(SNIFF_SIZE))
            match = _BLOB_PATH_RE.match(member)
            if match:
                digest = f"{match.group(1)}:{match.group(2)}"
            elif compression is None and i < len(diff_ids) and is_digest(str(diff_ids[i])):
                digest = str(diff_ids[i])   # an uncompressed layer's digest is its diff_id; checked on read
            else:
                digest = self._hash_member(member)
            self._blobs.setdefault(digest, member)
            compressions.append(compression)
            layers.append({"digest": digest, "size": self._member_size(member)})
        oci = any(c not in (None, "gzip") for c in compressions)
        for desc, compression in zip(layers, compressions, strict=True):
            if oci:
                desc["mediaType"] = {None: mt.OCI_LAYER, "gzip": mt.OCI_LAYER_GZIP,
                                     "zstd": mt.OCI_LAYER_ZSTD}.get(compression, mt.OCI_LAYER)
            else:
                desc["mediaType"] = DOCKER_LAYER if compression is None else mt.DOCKER_LAYER_GZIP
        manifest = {
            "schemaVersion": 2,
            "mediaType": mt.OCI_MANIFEST if oci else mt.DOCKER_MANIFEST,
            "config": {"mediaType": mt.OCI_CONFIG if oci else mt.DOCKER_CONFIG,
                       "digest": config_digest, "size": len(config_raw)},
            "layers": [{"mediaType": d["mediaType"], "digest": d["digest"], "size": d["size"]}
                       for d in layers],
        }
        raw = canonical_json(manifest)
        repo_tags = [str(t) for t in (entry.get("RepoTags") or [])]
        return _ArchiveImage(position, repo_tags, config_digest, raw,
                             sha256_digest(raw), str(manifest["mediaType"]),
                             [self._clean(str(n)) for n in entry["Layers"]])

    def repo_tags(self) -> list[str]:
        """Every ``NAME:TAG`` of the archive, as stored."""
        if self.writing:
            return [t for tags in self._written.values() for t in tags]
        return [t for image in self._load_images() for t in image.repo_tags]

    def _not_found(self, ref: str) -> NotFound:
        tags = self.repo_tags()
        return NotFound(f"{self.name}: no image {ref!r} in the archive "
                        f"(it holds: {', '.join(tags) or 'untagged images only; use @0, @1, ...'})")

    def _read_get_manifest(self, ref: str) -> tuple[bytes, str, str]:
        images = self._load_images()
        if is_digest(ref):
            for image in images:
                if image.digest == ref:
                    return image.raw, image.media_type, ref
            if ref in self._blobs:
                raw = self._read_blob(ref)
                return raw, manifest_media_type(raw), ref
            raise NotFound(f"{self.name}: no manifest {ref} in the archive")
        found = self._from_oci_index(ref, images)
        if found is not None:
            return found
        image = self._pick_image(ref, images)
        return image.raw, image.media_type, image.digest

    def _pick_image(self, ref: str, images: list[_ArchiveImage]) -> _ArchiveImage:
        if not ref:
            if len(images) == 1:
                return images[0]
            raise NotFound(f"{self.name}: holds {len(images)} images; name one as "
                           f"{self.name}:NAME:TAG or {self.name}:@N "
                           f"(it holds: {', '.join(self.repo_tags()) or 'untagged images'})")
        if ref.startswith("@") and ref[1:].isdigit():
            position = int(ref[1:])
            if position < len(images):
                return images[position]
            raise self._not_found(ref)
        wanted = normalize_repo_tag(ref)
        for image in images:
            if any(normalize_repo_tag(t) == wanted for t in image.repo_tags):
                return image
        if "/" not in ref and ":" not in ref:
            # a bare word may be a tag: accept it when exactly one image has that tag
            hits = [i for i in images if any(_split_repo_tag(t)[1] == ref for t in i.repo_tags)]
            if len(hits) == 1:
                return hits[0]
        raise self._not_found(ref)

    def _from_oci_index(self, ref: str, images: list[_ArchiveImage]) -> tuple[bytes, str, str] | None:
        """The real manifest of an OCI-style archive, when ``index.json`` names the image."""
        if self._index is None:
            return None
        entries = [e for e in self._index.get("manifests") or [] if isinstance(e, dict)]
        chosen: dict[str, Any] | None = None
        if not ref:
            if len(entries) == 1 and len(images) <= 1:
                chosen = entries[0]
        else:
            wanted = normalize_repo_tag(ref) if not ref.startswith("@") else None
            for entry in entries:
                annotations = entry.get("annotations") or {}
                names = [annotations.get(CONTAINERD_NAME), annotations.get(REF_NAME)]
                if ref in names or (wanted and any(
                        isinstance(n, str) and ":" in n and normalize_repo_tag(n) == wanted for n in names)):
                    chosen = entry
                    break
        if chosen is None:
            if not images:
                raise self._not_found(ref)
            return None
        digest = check_digest(str(chosen.get("digest", "")), f"{self.name} index.json")
        if digest not in self._blobs:
            return None
        raw = self._read_blob(digest)
        return raw, str(chosen.get("mediaType") or manifest_media_type(raw)), digest

    def _read_blob(self, digest: str) -> bytes:
        with self.open_blob(digest) as stream:
            return stream.read()

    # =====================================================================================
    # writing
    # =====================================================================================
    def _init_writer(self) -> None:
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
            self._layout = OCILayoutStore(self._tmpdir, create=True, progress=self.progress)

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

    def _writer_only(self) -> None:
        if not self.writing:
            raise ConfigurationError(f"{self.name} was opened for reading; it cannot be written to")
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
            return f"{_split_repo_tag(self.default_ref)[0]}:{tag}"
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
        try:
            doc = json.loads(raw)
            check_digest(str(doc["config"]["digest"]), f"{self.name} manifest config")
        except (ValueError, KeyError, TypeError) as exc:
            raise ManifestError(f"{self.name}: the manifest has no config descriptor ({exc})") from exc
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
            raise self._not_found(ref)
        wanted = normalize_repo_tag(self._repo_tag(ref) or ref)
        for digest, tags in self._written.items():
            if any(normalize_repo_tag(t) == wanted for t in tags):
                return self._layout.get_manifest(digest)
        raise self._not_found(ref)

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
            blob = io.BufferedReader(ProgressReader(opened, report), CHUNK)
            plain, _ = decompressed(blob, f"layer {digest}")
            with plain:
                for block in iter(lambda: plain.read(CHUNK), b""):
                    hasher.update(block)
                    size += len(block)
        return size, f"sha256:{hasher.hexdigest()}"

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
            manifest = json.loads(raw)
            config_digest = check_digest(str(manifest["config"]["digest"]), f"{self.name} manifest")
            if not self._layout.has_blob(config_digest):
                raise NotFound(f"{self.name}: the config {config_digest} was never written; "
                               "put every blob before closing the archive")
            with self._layout.open_blob(config_digest) as stream:
                config_raw = stream.read()
            diff_ids = list(((json.loads(config_raw).get("rootfs") or {}).get("diff_ids")) or [])
            layers = list(manifest.get("layers") or [])
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
                        self._add(tar, member, io.BufferedReader(counted, CHUNK), size)
                written_layers.add(diff_hex)
            config_name = f"{config_digest.split(':', 1)[1]}.json"
            if config_name not in written_configs:
                self._add(tar, config_name, config_raw)
                written_configs.add(config_name)
            entries.append({"Config": config_name, "RepoTags": list(repo_tags) or None,
                            "Layers": layer_paths})
            for repo_tag in repo_tags:
                repo, tag = _split_repo_tag(repo_tag)
                if layer_paths:
                    repositories.setdefault(repo, {})[tag] = layer_paths[-1].split("/", 1)[0]
        self._add(tar, "manifest.json", canonical_json(entries))
        self._add(tar, "repositories", canonical_json(repositories))

    def discard(self) -> None:
        """Forget what was written; no archive is created."""
        if self.writing and not self._closed:
            self._closed = True
            self._cleanup()
        elif not self.writing:
            self.close()

    # =====================================================================================
    # the BlobStore interface
    # =====================================================================================
    def has_blob(self, digest: str) -> bool:
        if self.writing:
            return self._layout.has_blob(digest)
        self._load_images()
        return digest in self._blobs

    def open_blob(self, digest: str) -> BinaryIO:
        if self.writing:
            return self._layout.open_blob(digest)
        self._load_images()
        member = self._blobs.get(digest)
        if member is None:
            raise NotFound(f"{self.name}: blob {digest} is not in the archive")
        size = self._member_size(member)
        return verified_reader(self._open_member(member), digest, f"{member} in {self.name}", size)

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
        ref = ref or self.default_ref or ""
        if self.writing:
            return self._write_get_manifest(ref)
        return self._read_get_manifest(ref)

    def put_manifest(self, raw: bytes, media_type: str, tag: str | None) -> str:
        return self._write_put_manifest(raw, media_type, tag)

    def close(self) -> None:
        """A writer writes the tarball here (atomically); a reader drops its temporary file."""
        if self._closed:
            return
        self._closed = True
        if self.writing:
            try:
                if self._written:
                    self._write_archive()
                else:
                    log.debug("%s: nothing was put; no archive written", self.name)
            finally:
                self._cleanup()
        elif self._temp is not None:
            self._temp.close()
