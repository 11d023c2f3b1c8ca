"""OCI image layouts: a directory with ``oci-layout``, ``index.json`` and ``blobs/<alg>/<hex>``.

Tags are the ``org.opencontainers.image.ref.name`` annotations of ``index.json``'s entries, so one
layout holds several tagged images (as skopeo and umoci write them). Blobs are written to a temporary
file and renamed into place, ``index.json`` is replaced atomically, and every blob read back is
checked against its digest as it streams. A tag is added only after the blobs it needs are in
place, so a write that fails (a read-only or full file system) never leaves a tagged image that
is incomplete; it raises ``LocalWriteError`` naming the layout.

Several writers (processes, threads) may tag images in one layout at once: ``index.json`` is
read, merged and replaced under an ``flock`` on the layout directory, so no writer's tag is
lost. Only regular files are read: a FIFO, socket, device or directory where ``index.json``
or a blob belongs is a ``ManifestError`` (a FIFO would otherwise block for ever).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from cib_core import mediatypes as mt
from cib_core.digest import is_digest, new_hasher, sha256_digest, verified_digest, verified_reader
from cib_core.documents import loads, manifest_media_type
from cib_core.errors import DigestMismatch, InvalidReference, LocalWriteError, ManifestError, NotFound
from cib_core.fileio import (
    AtomicFile,
    NotRegularFile,
    chunks,
    open_regular,
    write_atomically,
    write_failure,
    writing_to,
)

log = logging.getLogger(__name__)

WHAT = "the OCI image layout"
REF_NAME = "org.opencontainers.image.ref.name"
CONTAINERD_NAME = "io.containerd.image.name"
LAYOUT_VERSION = "1.0.0"
_NO_LOCKS = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS})
MAX_DOCUMENT = 1 << 20
"""The largest ``oci-layout`` file cib reads."""
MAX_INDEX = 64 << 20
"""The largest ``index.json`` cib reads (a layout of many thousand tags stays far below)."""

# The OCI image-layout grammar for ref.name values (a tag, or a fuller name).
_REF_NAME_RE = re.compile(
    r"^[A-Za-z0-9]+(?:(?:[-._:@+]|--)[A-Za-z0-9]+)*(?:/[A-Za-z0-9]+(?:(?:[-._:@+]|--)[A-Za-z0-9]+)*)*$")


def check_digest(digest: str, where: str) -> str:
    """Return ``digest`` if it is a sha256/sha512 digest; it becomes a path, so nothing else passes."""
    if not is_digest(digest):
        raise ManifestError(
            f"{where}: {digest!r} is not a digest of the form sha256:<64 lowercase hex>")
    return digest


class OCILayoutStore:
    """Reads and writes an OCI image layout directory (``oci:PATH[:TAG]``).

    ``progress(digest, done, total)`` is called as blobs are written (see ``cib_core.progress``).
    """

    def __init__(self, path: str | os.PathLike[str], *, create: bool = False,
                 progress: Callable[[str, int, int | None], None] | None = None) -> None:
        self.path = Path(path)
        self.progress = progress
        self.name = f"oci:{self.path}"
        if create:
            self._create()
        elif not all(os.path.lexists(self.path / name) for name in ("oci-layout", "index.json")):
            raise NotFound(
                f"{self.name}: no OCI image layout there (needs oci-layout and index.json); "
                "check the path, or write an image to it first")
        layout = self._read_document("oci-layout", MAX_DOCUMENT)
        version = layout.get("imageLayoutVersion") if isinstance(layout, dict) else None
        if not isinstance(version, str) or not version.startswith("1."):
            raise ManifestError(
                f"{self.name}: unsupported imageLayoutVersion {version!r} (cib reads 1.x)")

    def _create(self) -> None:
        """Make the layout's directory and files where they are missing; several writers may
        create one layout at once."""
        if self.path.exists() and not self.path.is_dir():
            raise LocalWriteError(self.path, "it exists and is not a directory",
                                  "pick another path for the layout", what=WHAT)
        with writing_to(self.path, WHAT):
            self.path.mkdir(parents=True, exist_ok=True)
        with self._locked():
            if not os.path.lexists(self.path / "oci-layout"):
                write_atomically(self.path / "oci-layout",
                                 json.dumps({"imageLayoutVersion": LAYOUT_VERSION}).encode(),
                                 target=self.path, what=WHAT)
            if not os.path.lexists(self.path / "index.json"):
                self._write_index({"schemaVersion": 2, "manifests": []})
            with writing_to(self.path, WHAT):
                (self.path / "blobs").mkdir(exist_ok=True)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the layout's write lock: an ``flock`` on the layout directory itself, so no
        file is added to the layout. Each holder opens its own descriptor, so writers in one
        process (threads, several store objects) exclude each other as other processes do."""
        with writing_to(self.path, WHAT):
            fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError as exc:
                if exc.errno not in _NO_LOCKS:
                    raise write_failure(self.path, exc, what=WHAT) from exc
                log.warning("%s: the file system cannot lock the layout (%s); writing without the "
                            "lock, so a tag written by another writer at the same time may be lost",
                            self.name, exc.strerror)
            yield
        finally:
            os.close(fd)   # releases the lock

    def _open(self, path: Path, what: str) -> BinaryIO:
        """``path`` (``what`` of this layout) opened for reading, only if it is a regular file."""
        try:
            return open_regular(path)
        except FileNotFoundError:
            raise NotFound(f"{self.name}: {what} is missing; the layout is incomplete") from None
        except NotRegularFile as exc:
            raise ManifestError(f"{self.name}: {what} is {exc.kind}, not a regular file; "
                                "the layout is damaged") from None
        except OSError as exc:
            raise ManifestError(f"{self.name}: cannot read {what}: "
                                f"{(exc.strerror or str(exc)).lower()}") from None

    def _read_document(self, name: str, limit: int) -> Any:
        """The JSON file ``name`` of the layout, parsed; at most ``limit`` bytes are read."""
        with self._open(self.path / name, name) as handle:
            raw = handle.read(limit + 1)
        if len(raw) > limit:
            raise ManifestError(f"{self.name}: {name} is larger than {limit} bytes; refusing to read it")
        try:
            return loads(raw)
        except ValueError as exc:
            raise ManifestError(f"{self.name}: {name} is not valid JSON: {exc}") from None

    def __repr__(self) -> str:
        return f"OCILayoutStore({str(self.path)!r})"

    def __enter__(self) -> OCILayoutStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- blobs ---------------------------------------------------------------------------
    def blob_path(self, digest: str) -> Path:
        algorithm, hexpart = check_digest(digest, self.name).split(":", 1)
        return self.path / "blobs" / algorithm / hexpart

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def open_blob(self, digest: str) -> BinaryIO:
        path = self.blob_path(digest)
        if not os.path.lexists(path):
            raise NotFound(f"{self.name}: blob {digest} is not in the layout")
        handle = self._open(path, f"blob {digest}")
        size = os.fstat(handle.fileno()).st_size
        return verified_reader(handle, digest, f"blob {digest} in {self.name}", size)

    def put_blob(self, data: BinaryIO | Iterable[bytes] | bytes, digest: str | None = None,
                 size: int | None = None) -> tuple[str, int]:
        return self._write_blob(data, digest, size, digest)

    def put_stream(self, pieces: Iterable[bytes], label: str = "new blob") -> tuple[str, int]:
        """Store a blob as it is made (a new layer); ``label`` names it to ``progress`` until
        its digest is known."""
        return self._write_blob(pieces, None, None, label)

    def _write_blob(self, data: BinaryIO | Iterable[bytes] | bytes, digest: str | None,
                    size: int | None, label: str | None) -> tuple[str, int]:
        """Write a blob through a temporary file; ``label`` names it to ``progress`` (None:
        not reported, as for manifests, which registries do not report either)."""
        report = (functools.partial(self.progress, label)
                  if self.progress is not None and label is not None else None)
        if digest is not None:
            final = self.blob_path(digest)
            if final.is_file():
                known = final.stat().st_size
                if size is not None and size != known:
                    raise DigestMismatch(f"size of blob {digest} in {self.name}", str(size), str(known))
                return digest, known
        blobs = self.path / "blobs"
        with writing_to(self.path, WHAT):
            blobs.mkdir(exist_ok=True)
        # a registry download checks its digest itself (it raises before handing out bytes
        # past a mismatch): hashing it again here would only cost time
        trusted = digest is not None and verified_digest(data) == digest
        hasher = None if trusted else new_hasher(digest)
        count = 0
        with AtomicFile(blobs, target=self.path, what=WHAT) as out:
            for block in chunks(data, 1 << 20):
                if hasher is not None:
                    hasher.update(block)
                count += len(block)
                out.write(block)
                if report is not None:
                    report(count, size)
            actual = f"{hasher.name}:{hasher.hexdigest()}" if hasher is not None else str(digest)
            if digest is not None and actual != digest:
                raise DigestMismatch(f"blob written to {self.name}", digest, actual)
            if size is not None and count != size:
                raise DigestMismatch(f"size of blob {actual} written to {self.name}", str(size), str(count))
            final = self.blob_path(actual)
            with writing_to(self.path, WHAT):
                final.parent.mkdir(parents=True, exist_ok=True)
            out.commit(final)
        if report is not None and size is None:
            report(count, count)  # the size is known now: the bar can finish
        log.debug("wrote blob %s (%d bytes) to %s", actual, count, self.name)
        return actual, count

    def _read_blob_bytes(self, digest: str, size: int | None = None) -> bytes:
        with self.open_blob(digest) as stream:
            data = stream.read()
        if size is not None and len(data) != size:
            raise DigestMismatch(f"size of {digest} in {self.name}", str(size), str(len(data)))
        return data

    # -- index.json ----------------------------------------------------------------------
    def read_index(self) -> dict[str, Any]:
        """The parsed ``index.json``."""
        index = self._read_document("index.json", MAX_INDEX)
        if not isinstance(index, dict) or not isinstance(index.get("manifests", []), list):
            raise ManifestError(f"{self.name}: index.json has no manifests list")
        index.setdefault("manifests", [])
        return index

    def _write_index(self, index: dict[str, Any]) -> None:
        write_atomically(self.path / "index.json", json.dumps(index, separators=(",", ":")).encode(),
                         target=self.path, what=WHAT)

    @staticmethod
    def _ref_name(entry: Any) -> str | None:
        if not isinstance(entry, dict):
            return None
        annotations = entry.get("annotations") or {}
        value = annotations.get(REF_NAME) if isinstance(annotations, dict) else None
        return value if isinstance(value, str) else None

    def tags(self) -> list[str]:
        """Every ``ref.name`` in ``index.json``, in order, each once."""
        seen: list[str] = []
        for entry in self.read_index()["manifests"]:
            name = self._ref_name(entry)
            if name is not None and name not in seen:
                seen.append(name)
        return seen

    def _find_entry(self, ref: str) -> dict[str, Any]:
        entries = [e for e in self.read_index()["manifests"] if isinstance(e, dict)]
        if not ref:
            if len(entries) == 1:
                return entries[0]
            available = self.tags()
            raise NotFound(
                f"{self.name}: holds {len(entries)} images; name one as {self.name}:TAG "
                f"(available tags: {', '.join(available) or 'none'})")
        matches = [e for e in entries if self._ref_name(e) == ref]
        if not matches:
            # Some tools (containerd, docker save) annotate full names; accept a unique tag match.
            matches = [e for e in entries if any(
                isinstance(v, str) and v.endswith(":" + ref)
                for v in ((e.get("annotations") or {}).get(k) for k in (REF_NAME, CONTAINERD_NAME)))]
            if len(matches) > 1:
                matches = []
        if not matches:
            available = self.tags()
            raise NotFound(
                f"{self.name}: no image tagged {ref!r} "
                f"(available tags: {', '.join(available) or 'none'})")
        return matches[-1]

    # -- manifests -----------------------------------------------------------------------
    def get_manifest(self, ref: str | None) -> tuple[bytes, str, str]:
        ref = ref or ""
        if is_digest(ref):
            entry: dict[str, Any] | None = next(
                (e for e in self.read_index()["manifests"]
                 if isinstance(e, dict) and e.get("digest") == ref), None)
            if not os.path.lexists(self.blob_path(ref)):
                raise NotFound(f"{self.name}: manifest {ref} is not in the layout")
            raw = self._read_blob_bytes(ref)
            media_type = (entry or {}).get("mediaType") or manifest_media_type(raw)
            return raw, str(media_type), ref
        entry = self._find_entry(ref)
        digest = check_digest(entry.get("digest", ""), f"{self.name} index.json")
        size = entry.get("size")
        raw = self._read_blob_bytes(digest, size if isinstance(size, int) else None)
        media_type = entry.get("mediaType") or manifest_media_type(raw)
        return raw, str(media_type), digest

    def put_manifest(self, raw: bytes, media_type: str, tag: str | None) -> str:
        if tag is not None and not _REF_NAME_RE.match(tag):
            raise InvalidReference(f"{self.name}:{tag}", "a layout tag is letters, digits and . _ - : @ + /")
        # the manifest may be there already (another tag of it): naming its digest skips the
        # write; manifests are not reported to ``progress``, as registries do not report them
        digest, size = self._write_blob(raw, sha256_digest(raw), len(raw), None)
        if tag is None:
            return digest
        entry: dict[str, Any] = {"mediaType": media_type, "digest": digest, "size": size,
                                 "annotations": {REF_NAME: tag}}
        if media_type in mt.IMAGE_MANIFESTS:
            platform = self._platform_of(raw)
            if platform:
                entry["platform"] = platform
        with self._locked():
            # read, merge and write under the lock: another writer's tag, added since this
            # one last looked, survives
            index = self.read_index()
            kept = [e for e in index["manifests"] if self._ref_name(e) != tag]
            index["manifests"] = [*kept, entry]
            index.setdefault("schemaVersion", 2)
            self._write_index(index)
        log.debug("tagged %s as %s in %s", digest, tag, self.name)
        return digest

    def _platform_of(self, raw: bytes) -> dict[str, str] | None:
        """The platform of an image manifest, read from its config when it is in the layout."""
        try:
            config_desc = json.loads(raw).get("config") or {}
            digest = config_desc.get("digest", "")
            if not is_digest(digest) or not self.has_blob(digest):
                return None
            config = json.loads(self._read_blob_bytes(digest))
        except (ValueError, AttributeError, ManifestError, DigestMismatch):
            return None
        if not isinstance(config, dict) or not config.get("os") or not config.get("architecture"):
            return None
        platform = {"architecture": str(config["architecture"]), "os": str(config["os"])}
        if config.get("variant"):
            platform["variant"] = str(config["variant"])
        return platform

    def close(self) -> None:
        """Nothing to finish: every write is complete when it returns."""
