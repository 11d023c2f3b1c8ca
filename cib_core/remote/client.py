"""``RegistryClient``: the whole distribution API for one repository of one registry.

Every request asks only for the scope it needs (``pull`` to read, ``pull,push`` to write,
``pull`` on the source of a mount, in one token). Manifests are read as exact bytes and
checked against their digest; blobs stream and are verified as they go (``remote.blobs``);
uploads are in ``remote.uploads``; tag lists and the catalog follow ``Link`` pagination
within fixed bounds, page by page for a caller that streams them.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import IO, Any, BinaryIO, Literal, overload
from urllib.parse import urljoin

import requests

from cib_core import mediatypes
from cib_core.authn.challenge import ScopedAuth, repository_scope
from cib_core.authn.credentials import Credentials
from cib_core.callbacks import Progress
from cib_core.digest import ALGORITHMS, sha256_digest
from cib_core.documents import canonical_json, json_object, manifest_media_type
from cib_core.errors import DigestMismatch, InvalidReference, ManifestError, NotFound, RegistryError
from cib_core.redact import redact_url
from cib_core.reference import check_repository_name
from cib_core.remote.blobs import BlobStream, fetch_url, hasher_for
from cib_core.remote.body import READ_SIZE, BodyBrokenOff
from cib_core.remote.errors import media_type_of
from cib_core.remote.session import DEFAULT_CHUNK_SIZE, RepositorySession, is_digest_ref
from cib_core.remote.transport import Transport, TransportOptions, TransportPool
from cib_core.remote.uploads import MAX_ANSWER_BODY, BlobUploader, UploadResult, with_query

log = logging.getLogger(__name__)

MAX_MANIFEST_SIZE = 4 * 1024 * 1024
MAX_LIST_BODY = 16 * 1024 * 1024
"""The largest page of a tag list or catalog cib reads."""
MAX_PAGES = 10_000
"""The most pages of one tag list or catalog: a registry paging without end is cut off."""
MAX_LIST_ENTRIES = 1_000_000
"""The most tags or repositories ``tags()`` and ``catalog()`` collect in memory (the
``iter_`` forms stream, bounded by ``MAX_PAGES`` only)."""


def is_digest(ref: str) -> bool:
    """True when ``ref`` (a tag or a digest) has the digest grammar: tags have no colon."""
    return is_digest_ref(ref)


def _manifest_subject(ref: str) -> str:
    """How a message names a manifest reference: ``tag 'v1'`` or ``manifest sha256:...``."""
    return f"manifest {ref}" if is_digest_ref(ref) else f"tag {ref!r}"


def referrers_tag(digest: str) -> str:
    """The distribution spec's referrers tag for ``digest``: the algorithm cut to 32
    characters, ``-``, the encoded part cut to 64, anything a tag cannot hold turned into ``-``
    (``sha256:ab..`` -> ``sha256-ab..``)."""
    algorithm, sep, encoded = digest.partition(":")
    if not sep or not algorithm or not encoded:
        raise InvalidReference(digest, "not a digest (expected algorithm:hex)")
    return re.sub(r"[^A-Za-z0-9_.-]", "-", f"{algorithm[:32]}-{encoded[:64]}")


class RegistryClient(RepositorySession):
    """A client for one repository of one registry.

    ``auth`` is that registry's options (``{"Username": ..., "Secret": ...}`` or
    ``{"token": ...}``) or a ``Credentials``; without it the ``cib_credentials`` plugins are
    asked. ``insecure`` allows plain HTTP or unverified TLS (loopback hosts always may).
    Pass one ``pool`` (a ``TransportPool``) to clients of one registry to share a session,
    the ``/v2/`` ping and the tokens; ``progress(digest, done, total)`` is called as blobs move.
    ``options`` (a ``TransportOptions``) sets timeouts, the deadline rule and the retry policy
    of a client that makes its own transport.
    """

    def __init__(self, registry: str, repository: str,
                 auth: Mapping[str, str] | Credentials | None = None, *, insecure: bool = False,
                 pm: Any = None, pool: TransportPool | None = None,
                 transport: Transport | None = None, options: TransportOptions | None = None,
                 chunk_size: int = DEFAULT_CHUNK_SIZE, progress: Progress | None = None) -> None:
        super().__init__(registry, repository, auth, insecure=insecure, pm=pm, pool=pool,
                         transport=transport, options=options, chunk_size=chunk_size,
                         progress=progress)
        self.uploads = BlobUploader(self)

    def authenticate(self) -> Credentials:
        """Settle now which credentials this client uses (the first request does otherwise):
        the explicit options, or, after an anonymous ping, the credential providers' answer if
        the registry asks for credentials. Call it before sharing the client with threads, so
        the providers (which may import modules when first asked) run in the calling thread."""
        return self.registry_auth.credentials

    # -- manifests ----------------------------------------------------------------------------
    def manifest_raw(self, ref: str) -> tuple[bytes, str, str]:
        """The exact stored bytes, media type and digest of a manifest or index (tag or digest).
        A body that breaks off is asked for again, by the transport's retry policy."""
        self.check_ref(ref)
        return self.transport.retry.run(lambda: self._manifest_raw(ref),
                                        retryable=lambda exc: isinstance(exc, BodyBrokenOff))

    def _manifest_raw(self, ref: str) -> tuple[bytes, str, str]:
        what = f"manifest {ref}"
        resp = self.check(self.send("GET", self.path("manifests", ref),
                                    headers={"Accept": mediatypes.ACCEPT}), (200,), what,
                          missing=_manifest_subject(ref))
        length = resp.headers.get("Content-Length")
        if length and length.isdigit() and int(length) > MAX_MANIFEST_SIZE:
            resp.close()
            raise RegistryError(f"{what} in {self.name} is {length} bytes, over the "
                                f"{MAX_MANIFEST_SIZE}-byte limit for manifests; refusing to read it",
                                status=200, registry=self.registry, repository=self.repository)
        raw = self.read_body(resp, MAX_MANIFEST_SIZE + 1, what)
        if len(raw) > MAX_MANIFEST_SIZE:
            raise RegistryError(f"{what} in {self.name} is over the {MAX_MANIFEST_SIZE}-byte limit "
                                "for manifests; refusing to read it", status=200,
                                registry=self.registry, repository=self.repository)
        if not raw:
            raise RegistryError(f"{what} in {self.name} came with an empty body", status=200,
                                registry=self.registry, repository=self.repository)
        header_digest = resp.headers.get("Docker-Content-Digest")
        algo = ref.split(":", 1)[0] if is_digest_ref(ref) else (
            header_digest.split(":", 1)[0] if header_digest and header_digest.split(":", 1)[0]
            in ALGORITHMS else "sha256")
        digest = f"{algo}:{hashlib.new(algo, raw).hexdigest()}"
        if is_digest_ref(ref) and digest != ref:
            raise DigestMismatch(f"manifest {ref} from {self.name}", ref, digest)
        if header_digest and header_digest.split(":", 1)[0] == algo and header_digest != digest:
            raise DigestMismatch(f"{what} from {self.name} (Docker-Content-Digest)", header_digest, digest)
        media_type = media_type_of(resp.headers.get("Content-Type"))
        if media_type not in mediatypes.ALL_MANIFESTS:
            try:
                media_type = manifest_media_type(raw)
            except ManifestError:
                pass  # not JSON: the caller's parse says so, naming the manifest
        return raw, media_type, digest

    def manifest(self, ref: str) -> dict[str, Any]:
        """A manifest or index as a dict (Docker schema 2, OCI manifest, OCI index, manifest list)."""
        raw, _media_type, _ = self.manifest_raw(ref)
        return json_object(raw, f"manifest {ref} in {self.name}")

    def manifest_exists(self, ref: str) -> bool:
        self.check_ref(ref)
        resp = self.send("HEAD", self.path("manifests", ref), headers={"Accept": mediatypes.ACCEPT})
        if resp.status_code == 404:
            resp.close()
            return False
        self.check(resp, (200,), f"manifest {ref}", missing=_manifest_subject(ref)).close()
        return True

    def manifest_digest(self, ref: str) -> str:
        """The digest of a manifest by tag (HEAD, falling back to GET when no header is sent)."""
        if is_digest_ref(ref):
            return ref
        self.check_ref(ref)
        resp = self.check(self.send("HEAD", self.path("manifests", ref),
                                    headers={"Accept": mediatypes.ACCEPT}), (200,),
                          f"manifest {ref}", missing=_manifest_subject(ref))
        resp.close()
        digest = resp.headers.get("Docker-Content-Digest")
        return digest if digest and is_digest_ref(digest) else self.manifest_raw(ref)[2]

    def manifest_upload(self, tag: str | None, manifest: bytes | Mapping[str, Any],
                        media_type: str | None = None) -> UploadResult:
        """Push a manifest or index under ``tag`` (``None``: by digest only). A dict is
        serialized as compact JSON; the media type comes from the document when not given."""
        if isinstance(manifest, (bytes, bytearray)):
            raw = bytes(manifest)
        else:
            raw = canonical_json(manifest)
        if media_type is None:
            media_type = manifest_media_type(raw, "the manifest to upload")
        digest = sha256_digest(raw)
        ref = self.check_ref(tag) if tag else digest
        resp = self.send("PUT", self.path("manifests", ref), scope=self.scoped("push"),
                         headers={"Content-Type": media_type}, data=raw)
        self.check(resp, (200, 201, 202), f"upload of manifest {ref}")
        answered = resp.headers.get("Docker-Content-Digest")
        body = self.read_body(resp, MAX_ANSWER_BODY, f"the answer to the upload of manifest {ref}")
        if answered and answered.startswith("sha256:") and answered != digest:
            raise DigestMismatch(f"manifest pushed to {self.name}", digest, answered)
        log.debug("pushed manifest %s to %s as %s", digest, self.name, ref)
        subject = resp.headers.get("OCI-Subject") or None
        return UploadResult(resp.status_code, digest, len(raw), body, subject)

    def delete_manifest(self, ref: str) -> None:
        """Delete a manifest (a tag is resolved to its digest first; registries delete by digest)."""
        digest = self.manifest_digest(ref)
        resp = self.send("DELETE", self.path("manifests", digest),
                         scope=self.scoped("delete", [repository_scope(self.repository, "pull")]))
        self.check(resp, (200, 202, 204), f"delete of manifest {ref}",
                   missing=_manifest_subject(digest)).close()

    # -- listing --------------------------------------------------------------------------------
    def _pages(self, first: str, key: str, scope: ScopedAuth, what: str,
               page_size: int | None) -> Iterator[list[str]]:
        """The entries of a paginated list, a page at a time, following ``Link`` headers; a
        loop or more than ``MAX_PAGES`` pages is an error."""
        start = self.transport.url(first)
        if page_size:
            start = with_query(start, [("n", str(page_size))])
        url: str | None = start
        seen: set[str] = set()
        while url is not None:
            if url in seen:
                raise RegistryError(f"the {what} of {self.name} paginates in a loop at "
                                    f"{redact_url(url)}", registry=self.registry,
                                    repository=self.repository)
            if len(seen) >= MAX_PAGES:
                raise RegistryError(f"the {what} of {self.name} goes on for more than {MAX_PAGES} "
                                    "pages; stopped reading it", registry=self.registry,
                                    repository=self.repository)
            seen.add(url)
            resp = self.check(self.send("GET", url, scope=scope), (200,), what)
            nxt = resp.links.get("next", {}).get("url")
            doc = self.read_json(resp, MAX_LIST_BODY, what)
            items = doc.get(key) if isinstance(doc, dict) else None
            if items is not None and not isinstance(items, list):
                raise RegistryError(f"the {what} of {self.name} has no '{key}' list",
                                    registry=self.registry, repository=self.repository)
            yield [str(i) for i in items or []]
            url = urljoin(resp.url, nxt) if nxt else None

    def _collect(self, pages: Iterator[list[str]], what: str) -> list[str]:
        out: list[str] = []
        for page in pages:
            out.extend(page)
            if len(out) > MAX_LIST_ENTRIES:
                raise RegistryError(f"the {what} of {self.name} has more than {MAX_LIST_ENTRIES} "
                                    "entries; stopped reading it (iterate over it page by page to "
                                    "see them all)", registry=self.registry,
                                    repository=self.repository)
        return out

    def iter_tags(self, page_size: int | None = None) -> Iterator[str]:
        """Every tag of the repository as the pages arrive (memory bounded by one page)."""
        for page in self._pages(self.path("tags", "list"), "tags", self.scoped("pull"),
                                "tag list", page_size):
            yield from page

    def tags(self, page_size: int | None = None) -> list[str]:
        """Every tag of the repository, following ``Link`` pagination."""
        return self._collect(self._pages(self.path("tags", "list"), "tags", self.scoped("pull"),
                                         "tag list", page_size), "tag list")

    def _catalog_pages(self, page_size: int | None) -> Iterator[list[str]]:
        scope = self.registry_auth.scoped(("registry:catalog:*",), None)
        return self._pages("/v2/_catalog", "repositories", scope, "catalog", page_size)

    def iter_catalog(self, page_size: int | None = None) -> Iterator[str]:
        """Every repository of the registry as the pages arrive."""
        for page in self._catalog_pages(page_size):
            yield from page

    def catalog(self, page_size: int | None = None) -> list[str]:
        """Every repository of the registry, following ``Link`` pagination."""
        return self._collect(self._catalog_pages(page_size), "catalog")

    # -- blobs ----------------------------------------------------------------------------------
    @overload
    def blob(self, digest: str, stream: Literal[False] = ..., *, size: int | None = ...,
             progress: Progress | None = ...) -> bytes: ...

    @overload
    def blob(self, digest: str, stream: Literal[True], *, size: int | None = ...,
             progress: Progress | None = ...) -> BinaryIO: ...

    @overload
    def blob(self, digest: str, stream: bool, *, size: int | None = ...,
             progress: Progress | None = ...) -> bytes | BinaryIO: ...

    def blob(self, digest: str, stream: bool = False, *, size: int | None = None,
             progress: Progress | None = None) -> bytes | BinaryIO:
        """A blob's bytes, or a readable binary stream of them, verified against ``digest``
        (a mismatch raises ``DigestMismatch`` before the last piece is handed out). ``size``,
        when known, is checked too and sets how long the download may take."""
        what = f"blob {digest} from {self.name}"
        hasher_for(digest, what)
        path = self.path("blobs", digest)
        resp = self.check(self.send("GET", path, expected_size=size), (200,), f"blob {digest}",
                          missing=f"blob {digest}")

        def reopen(offset: int) -> requests.Response:
            rest = None if size is None else max(0, size - offset)
            return self.check(self.send("GET", path, headers={"Range": f"bytes={offset}-"},
                                        expected_size=rest), (200, 206), f"blob {digest}")

        reader = BlobStream(resp, digest, what, size=size, progress=progress or self.progress,
                            reopen=reopen, policy=self.transport.retry)
        if stream:
            return io.BufferedReader(reader, READ_SIZE)
        with reader:
            return reader.readall()

    def delete_blob(self, digest: str) -> None:
        hasher_for(digest, "a blob")
        resp = self.send("DELETE", self.path("blobs", digest),
                         scope=self.scoped("delete", [repository_scope(self.repository, "pull")]))
        self.check(resp, (200, 202, 204), f"delete of blob {digest}").close()

    def mount(self, digest: str, from_repository: str) -> bool:
        """Mount a blob from another repository of this registry: True when mounted, False when
        the registry declined (the upload session it opened instead is cancelled)."""
        hasher_for(digest, "a blob")
        check_repository_name(from_repository)
        scope = self.scoped("push", [repository_scope(from_repository, "pull")])
        resp = self.send("POST", self.path("blobs", "uploads/"), scope=scope,
                         params=[("mount", digest), ("from", from_repository)])
        if resp.status_code == 201:
            resp.close()
            log.debug("mounted %s from %s into %s", digest, from_repository, self.name)
            return True
        self.check(resp, (202,), f"mount of blob {digest} from {from_repository}").close()
        location = resp.headers.get("Location")
        if location:
            self.uploads.cancel(urljoin(resp.url, location), scope)
        log.debug("%s declined to mount %s from %s", self.name, digest, from_repository)
        return False

    # -- uploads ----------------------------------------------------------------------------------
    def upload(self, blob: bytes | IO[bytes] | Iterable[bytes], content_length: int | None = None,
               digest: str | None = None, *, force: bool = False, progress: Progress | None = None,
               chunk_size: int | None = None) -> UploadResult:
        """Upload a blob (bytes, a binary file object or an iterable of bytes).

        With digest and length known and a body that can be sent again (bytes, a seekable
        file), one monolithic request; otherwise a chunked upload hashed on the fly and resumed
        after a dropped connection. A blob the repository has is skipped unless ``force``.
        """
        return self.uploads.upload(blob, content_length, digest, force=force, progress=progress,
                                   chunk_size=chunk_size)

    def upload_stream(self, pieces: Iterable[bytes], *, progress: Progress | None = None,
                      label: str = "new blob") -> UploadResult:
        """Upload a blob whose digest is not known yet in one streamed ``PATCH`` (chunked
        transfer encoding), hashed on the way, then the closing ``PUT``: the way docker, crane
        and skopeo push a layer while it is being made. The registry takes the bytes as they
        come, with no round trip per chunk and no per-chunk bookkeeping, but nothing can be
        resumed: this is for a producer that can make the bytes again (a layer build), and a
        break-off is a temporary ``RegistryError``. ``upload`` is the resumable way.
        ``label`` names the blob to ``progress`` while its digest is not known."""
        return self.uploads.stream(pieces, progress=progress, label=label)

    def copy_blob_to(self, target: RegistryClient, digest: str, size: int | None = None, *,
                     progress: Progress | None = None, force: bool = False) -> UploadResult:
        """Stream a blob from this repository into ``target`` (any registry) with no temporary
        file: a verified download feeding a chunked upload with the digest known."""
        if not force and target.blob_exists(digest):
            return UploadResult(200, digest, size or 0)
        with self.blob(digest, stream=True, size=size) as reader:
            return target.upload(reader, content_length=size, digest=digest,
                                 force=True, progress=progress)

    # -- referrers ------------------------------------------------------------------------------
    def referrers(self, digest: str, artifact_type: str | None = None) -> dict[str, Any]:
        """The manifests that refer to ``digest`` as an OCI index: the referrers API, else the
        ``sha256-<hex>`` tag scheme, else an empty index."""
        hasher_for(digest, "referrers")
        params = [("artifactType", artifact_type)] if artifact_type else None
        resp = self.send("GET", self.path("referrers", digest), params=params,
                         headers={"Accept": mediatypes.OCI_INDEX})
        index: Any = None
        filtered = False
        if resp.status_code == 200 and media_type_of(resp.headers.get("Content-Type")) in (
                mediatypes.OCI_INDEX, "application/json"):
            filtered = "artifactType" in resp.headers.get("OCI-Filters-Applied", "")
            index = self.read_json(resp, MAX_MANIFEST_SIZE, f"referrers of {digest}")
        elif resp.status_code in (200, 404, 405, 400):
            resp.close()
            try:
                index = self.manifest(referrers_tag(digest))
            except NotFound:
                index = None
        else:
            raise self.error(resp, f"referrers of {digest}")
        if not isinstance(index, dict):
            index = {"schemaVersion": 2, "mediaType": mediatypes.OCI_INDEX, "manifests": []}
        manifests = index.get("manifests") or []
        if artifact_type and not filtered:
            manifests = [m for m in manifests if isinstance(m, dict)
                         and m.get("artifactType") == artifact_type]
        return {"schemaVersion": 2, "mediaType": mediatypes.OCI_INDEX, "manifests": list(manifests)}


__all__ = ["MAX_LIST_ENTRIES", "MAX_MANIFEST_SIZE", "MAX_PAGES", "RegistryClient", "UploadResult",
           "fetch_url", "is_digest", "referrers_tag"]
