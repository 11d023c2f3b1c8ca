"""Reading docker-archive tarballs (``docker save``, ``skopeo copy ... docker-archive:``).

The classic format has ``manifest.json`` naming ``<config>.json`` and ``<id>/layer.tar`` or
``<diff_id>.tar`` files; newer docker adds ``index.json``, ``oci-layout`` and
``blobs/sha256/...``. A classic archive has no manifest, so the reader synthesizes a Docker
schema 2 manifest whose layers are the files as stored: an uncompressed layer gets the media
type ``application/vnd.docker.image.rootfs.diff.tar``, which the copy code compresses before a
registry sees it. A compressed archive file is decompressed to an anonymous temporary file
first; members are then read in place, and every blob is checked against its digest as it
streams.

A damaged archive (not a tar, ``manifest.json`` or ``index.json`` not JSON or of the wrong
shape, a member missing) is a ``ManifestError`` or ``NotFound`` naming the archive.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tarfile
import tempfile
from dataclasses import dataclass, field
from typing import IO, Any, BinaryIO

from cib_core import mediatypes as mt
from cib_core.compression import SNIFF_SIZE, decompressed, sniff
from cib_core.digest import is_digest, new_hasher, of, sha256_digest, verified_reader
from cib_core.documents import canonical_json, loads, manifest_media_type
from cib_core.errors import ConfigurationError, ManifestError, NotFound
from cib_core.fileio import FileSlice, NotRegularFile, open_regular
from cib_core.formats.docker_archive.common import ArchiveBase, normalize_repo_tag, split_repo_tag
from cib_core.formats.oci_layout import CONTAINERD_NAME, REF_NAME, check_digest

log = logging.getLogger(__name__)

_BLOB_PATH_RE = re.compile(r"^blobs/(sha256|sha512)/([a-f0-9]{64,128})$")
_CHUNK = 1 << 16
MAX_DOCUMENT = 16 << 20
"""The largest ``manifest.json``, ``index.json`` or config read from an archive."""


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


def _clean(name: str) -> str:
    return "/".join(p for p in name.split("/") if p not in ("", "."))


def _strings(value: Any) -> list[str] | None:
    """``value`` if it is a list of strings (or null, an empty list), else None."""
    if value is None:
        return []
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    return None


class DockerArchiveReader(ArchiveBase):
    """A docker-archive tarball, read; ``default_ref`` (``NAME:TAG``) is the image picked
    when none is named."""

    writing = False

    def __init__(self, path: str | os.PathLike[str], default_ref: str | None = None) -> None:
        super().__init__(path, default_ref)
        self._file = self._open_archive()
        try:
            self._index_members()
        except BaseException:
            self._file.close()
            raise

    def __repr__(self) -> str:
        return f"DockerArchiveReader({str(self.path)!r})"

    def __enter__(self) -> DockerArchiveReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _open_archive(self) -> IO[bytes]:
        try:
            handle = open_regular(self.path)
        except FileNotFoundError:
            raise NotFound(f"{self.name}: no such file; check the path") from None
        except NotRegularFile as exc:
            raise ConfigurationError(f"{self.name}: {exc.strerror}; name a docker-archive "
                                     "tarball") from None
        except OSError as exc:
            raise ConfigurationError(f"{self.name}: cannot be read: "
                                     f"{exc.strerror or exc}") from None
        with handle:
            kind = sniff(handle.read(SNIFF_SIZE))
            if kind is None:
                return open(os.dup(handle.fileno()), "rb")  # noqa: SIM115 - closed in close()
            # members are read in place, by offset: a compressed tar would have to be
            # decompressed again for every blob
            handle.seek(0)
            with tempfile.TemporaryFile(prefix="cib-archive-") as temp:
                plain, _ = decompressed(handle, self.name)
                shutil.copyfileobj(plain, temp, 1 << 20)
                temp.flush()
                # a read-only descriptor of the same file: its members are read with pread,
                # from several threads at once
                return open(os.dup(temp.fileno()), "rb")  # noqa: SIM115 - closed in close()

    def _index_members(self) -> None:
        self._file.seek(0)
        try:
            with tarfile.open(fileobj=self._file, mode="r:") as tar:
                members = tar.getmembers()
        except (tarfile.TarError, EOFError) as exc:
            raise ManifestError(f"{self.name}: not a tar archive ({exc}); is it a "
                                "docker-archive?") from None
        self._members: dict[str, tarfile.TarInfo] = {_clean(m.name): m for m in members}
        self._images: list[_ArchiveImage] | None = None
        self._blobs: dict[str, str] = {}
        for member_name in self._members:
            match = _BLOB_PATH_RE.match(member_name)
            if match:
                self._blobs[f"{match.group(1)}:{match.group(2)}"] = member_name
        self._index: dict[str, Any] | None = None
        if "index.json" in self._members:
            index = self._read_document("index.json")
            if not isinstance(index, dict):
                raise ManifestError(f"{self.name}: index.json is not a JSON object")
            self._index = index
        if "manifest.json" not in self._members and self._index is None:
            raise ManifestError(
                f"{self.name}: has neither manifest.json nor index.json; is it a docker-archive?")

    # -- members ------------------------------------------------------------------------------
    def _resolve(self, name: str) -> tarfile.TarInfo:
        """The regular-file member ``name`` refers to, following links inside the archive."""
        current = _clean(name)
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
                current = _clean(member.linkname)
            else:
                raise ManifestError(f"{self.name}: {name!r} is not a file")
        raise ManifestError(f"{self.name}: {name!r} is a loop of links")

    def _open_member(self, name: str) -> FileSlice:
        member = self._resolve(name)
        return FileSlice(self._file, member.offset_data, member.size, name=f"{self.name}:{name}")

    def _read_bytes(self, name: str) -> bytes:
        """A small member whole (a JSON document): at most ``MAX_DOCUMENT`` bytes."""
        member = self._resolve(name)
        if member.size > MAX_DOCUMENT:
            raise ManifestError(f"{self.name}: {name} is larger than {MAX_DOCUMENT} bytes; "
                                "refusing to read it")
        with self._open_member(name) as stream:
            raw = stream.read()
        if len(raw) != member.size:
            raise ManifestError(f"{self.name}: {name} ends early; the archive is truncated")
        return raw

    def _parse(self, raw: bytes, name: str) -> Any:
        try:
            return loads(raw)
        except ValueError as exc:
            raise ManifestError(f"{self.name}: {name} is not valid JSON ({exc})") from None

    def _read_document(self, name: str) -> Any:
        """A JSON member, parsed; ``ManifestError`` naming it if it is not JSON."""
        return self._parse(self._read_bytes(name), name)

    def _hash_member(self, name: str) -> str:
        hasher = new_hasher()
        with self._open_member(name) as stream:
            for block in iter(lambda: stream.read(_CHUNK), b""):
                hasher.update(block)
        return of(hasher)

    # -- images -------------------------------------------------------------------------------
    def _load_images(self) -> list[_ArchiveImage]:
        if self._images is not None:
            return self._images
        images: list[_ArchiveImage] = []
        if "manifest.json" in self._members:
            entries = self._read_document("manifest.json")
            if not isinstance(entries, list):
                raise ManifestError(f"{self.name}: manifest.json is not a list")
            for position, entry in enumerate(entries):
                images.append(self._synthesize(position, entry))
        self._images = images
        return images

    def _synthesize(self, position: int, entry: Any) -> _ArchiveImage:
        config_name = entry.get("Config") if isinstance(entry, dict) else None
        layer_names = _strings(entry.get("Layers")) if isinstance(entry, dict) else None
        repo_tags = _strings(entry.get("RepoTags")) if isinstance(entry, dict) else None
        if not isinstance(config_name, str) or layer_names is None or repo_tags is None:
            raise ManifestError(f"{self.name}: manifest.json entry {position} needs Config (a "
                                "file name), Layers and RepoTags (lists of strings)")
        config_raw = self._read_bytes(config_name)
        config = self._parse(config_raw, f"the config {config_name}")
        if not isinstance(config, dict):
            raise ManifestError(f"{self.name}: the config {config_name} is not a JSON object")
        config_digest = sha256_digest(config_raw)
        self._blobs.setdefault(config_digest, _clean(config_name))
        rootfs = config.get("rootfs")
        listed = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
        diff_ids = listed if isinstance(listed, list) else []
        layers: list[dict[str, Any]] = []
        compressions: list[str | None] = []
        for i, layer_name in enumerate(layer_names):
            member = _clean(layer_name)
            with self._open_member(member) as stream:
                compression = sniff(stream.read(SNIFF_SIZE))
            match = _BLOB_PATH_RE.match(member)
            if match:
                digest = f"{match.group(1)}:{match.group(2)}"
            elif compression is None and i < len(diff_ids) and is_digest(diff_ids[i]):
                digest = str(diff_ids[i])   # an uncompressed layer's digest is its diff_id; checked on read
            else:
                digest = self._hash_member(member)
            self._blobs.setdefault(digest, member)
            compressions.append(compression)
            layers.append({"digest": digest, "size": self._resolve(member).size})
        oci = any(c not in (None, "gzip") for c in compressions)
        for desc, compression in zip(layers, compressions, strict=True):
            if oci:
                desc["mediaType"] = {None: mt.OCI_LAYER, "gzip": mt.OCI_LAYER_GZIP,
                                     "zstd": mt.OCI_LAYER_ZSTD}.get(compression, mt.OCI_LAYER)
            else:
                desc["mediaType"] = mt.DOCKER_LAYER if compression is None else mt.DOCKER_LAYER_GZIP
        manifest = {
            "schemaVersion": 2,
            "mediaType": mt.OCI_MANIFEST if oci else mt.DOCKER_MANIFEST,
            "config": {"mediaType": mt.OCI_CONFIG if oci else mt.DOCKER_CONFIG,
                       "digest": config_digest, "size": len(config_raw)},
            "layers": [{"mediaType": d["mediaType"], "digest": d["digest"], "size": d["size"]}
                       for d in layers],
        }
        raw = canonical_json(manifest)
        return _ArchiveImage(position, repo_tags, config_digest, raw,
                             sha256_digest(raw), str(manifest["mediaType"]),
                             [_clean(n) for n in layer_names])

    def repo_tags(self) -> list[str]:
        return [t for image in self._load_images() for t in image.repo_tags]

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
            raise self.not_found(ref)
        wanted = normalize_repo_tag(ref)
        for image in images:
            if any(normalize_repo_tag(t) == wanted for t in image.repo_tags):
                return image
        if "/" not in ref and ":" not in ref:
            # a bare word may be a tag: accept it when exactly one image has that tag
            hits = [i for i in images if any(split_repo_tag(t)[1] == ref for t in i.repo_tags)]
            if len(hits) == 1:
                return hits[0]
        raise self.not_found(ref)

    def _from_oci_index(self, ref: str, images: list[_ArchiveImage]) -> tuple[bytes, str, str] | None:
        """The real manifest of an OCI-style archive, when ``index.json`` names the image."""
        if self._index is None:
            return None
        listed = self._index.get("manifests")
        entries = [e for e in listed if isinstance(e, dict)] if isinstance(listed, list) else []
        chosen: dict[str, Any] | None = None
        if not ref:
            if len(entries) == 1 and len(images) <= 1:
                chosen = entries[0]
        else:
            wanted = normalize_repo_tag(ref) if not ref.startswith("@") else None
            for entry in entries:
                annotations = entry.get("annotations")
                if not isinstance(annotations, dict):
                    continue
                names = [annotations.get(CONTAINERD_NAME), annotations.get(REF_NAME)]
                if ref in names or (wanted and any(
                        isinstance(n, str) and ":" in n and normalize_repo_tag(n) == wanted for n in names)):
                    chosen = entry
                    break
        if chosen is None:
            if not images:
                raise self.not_found(ref)
            return None
        digest = check_digest(str(chosen.get("digest", "")), f"{self.name} index.json")
        if digest not in self._blobs:
            return None
        raw = self._read_blob(digest)
        return raw, str(chosen.get("mediaType") or manifest_media_type(raw)), digest

    def _read_blob(self, digest: str) -> bytes:
        with self.open_blob(digest) as stream:
            return stream.read()

    # -- the BlobStore interface --------------------------------------------------------------
    def has_blob(self, digest: str) -> bool:
        self._load_images()
        return digest in self._blobs

    def open_blob(self, digest: str) -> BinaryIO:
        self._load_images()
        member = self._blobs.get(digest)
        if member is None:
            raise NotFound(f"{self.name}: blob {digest} is not in the archive")
        size = self._resolve(member).size
        return verified_reader(self._open_member(member), digest, f"{member} in {self.name}", size)

    def get_manifest(self, ref: str | None) -> tuple[bytes, str, str]:
        ref = ref or self.default_ref or ""
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

    def put_blob(self, data: object, digest: str | None = None,
                 size: int | None = None) -> tuple[str, int]:
        raise ConfigurationError(f"{self.name} was opened for reading; it cannot be written to")

    def put_manifest(self, raw: bytes, media_type: str, tag: str | None) -> str:
        raise ConfigurationError(f"{self.name} was opened for reading; it cannot be written to")

    def close(self) -> None:
        """Close the archive (and drop its decompressed copy)."""
        with contextlib.suppress(OSError):
            self._file.close()
