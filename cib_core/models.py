"""Descriptors, manifests, indexes, platforms and image configs.

Parsed documents keep their exact bytes (``.raw``) and the digest of those bytes (``.digest``):
cib never re-serializes a document it did not build, so digests and signatures stay valid.
Unknown fields survive: a :class:`Descriptor` keeps them in ``extra`` (and ``to_dict`` of a parsed
descriptor returns its original object), ``Manifest.data`` / ``Index.data`` are the parsed dicts.

Parsing for use is more lenient than the OCI schemas (for example it allows a manifest with no
layers, which cib itself makes from ``scratch``); ``cib_core.validate`` checks documents against
the schemas.
"""

from __future__ import annotations

import copy
import logging
import platform as python_platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from cib_core import mediatypes as mt
from cib_core.digest import GRAMMAR, sha256_digest
from cib_core.documents import declared_or_implied_type, is_json_int, is_string_map, loads
from cib_core.errors import ConfigurationError, ManifestError, NotFound

log = logging.getLogger(__name__)

__all__ = [
    "Descriptor",
    "Index",
    "Manifest",
    "Platform",
    "config_platform",
    "diff_ids",
    "parse_manifest",
]




# --- platforms -----------------------------------------------------------------------------------
def _normalize_arch(arch: str, variant: str) -> tuple[str, str]:
    arch, variant = arch.lower(), variant.lower()
    if arch in ("i386", "i686", "386"):
        return "386", ""
    if arch in ("x86_64", "x86-64", "amd64"):
        return "amd64", "" if variant == "v1" else variant
    if arch in ("aarch64", "arm64"):
        return "arm64", "v8" if variant in ("", "8", "v8", "v8.0") else variant
    if arch in ("armhf", "armv7l"):
        return "arm", "v7"
    if arch in ("armel", "armv6l"):
        return "arm", "v6"
    if arch == "arm":
        if variant in ("", "7"):
            return "arm", "v7"
        if variant in ("5", "6", "8"):
            return "arm", "v" + variant
    return arch, variant


@dataclass(frozen=True)
class Platform:
    """An image's platform. ``extra`` keeps fields cib does not know (``features`` of Docker
    manifest lists, ...); it takes no part in comparisons."""

    os: str
    architecture: str
    variant: str | None = None
    os_version: str | None = None
    os_features: tuple[str, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False, repr=False)

    @classmethod
    def parse(cls, text: str) -> Platform:
        """``os/architecture[/variant]``, as in ``linux/arm64/v8``."""
        parts = text.strip().split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise ConfigurationError(
                f"platform {text!r} is not of the form OS/ARCH[/VARIANT], for example linux/amd64 "
                "or linux/arm64/v8")
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else None)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Platform:
        if not isinstance(data, Mapping):
            raise ManifestError(f"platform {data!r} is not a JSON object")
        os_name, arch = data.get("os"), data.get("architecture")
        if not isinstance(os_name, str) or not isinstance(arch, str):
            raise ManifestError(f"platform {dict(data)!r} needs string 'os' and 'architecture'")
        variant = data.get("variant")
        os_version = data.get("os.version")
        features = data.get("os.features") or ()
        if variant is not None and not isinstance(variant, str):
            raise ManifestError(f"platform variant {variant!r} is not a string")
        if os_version is not None and not isinstance(os_version, str):
            raise ManifestError(f"platform os.version {os_version!r} is not a string")
        if not isinstance(features, Sequence) or isinstance(features, str) \
                or not all(isinstance(f, str) for f in features):
            raise ManifestError(f"platform os.features {features!r} is not a list of strings")
        known = {"os", "architecture", "variant", "os.version", "os.features"}
        extra = {k: v for k, v in data.items() if k not in known}
        return cls(os_name, arch, variant, os_version, tuple(features), extra)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"architecture": self.architecture, "os": self.os}
        if self.os_version is not None:
            out["os.version"] = self.os_version
        if self.os_features:
            out["os.features"] = list(self.os_features)
        if self.variant is not None:
            out["variant"] = self.variant
        out.update(copy.deepcopy(dict(self.extra)))
        return out

    def normalized(self) -> Platform:
        """Canonical names and default variants: ``aarch64`` is ``arm64`` (variant ``v8``),
        ``x86_64`` is ``amd64``, ``arm`` means ``v7``, ``i386`` is ``386``; os is lowercased."""
        arch, variant = _normalize_arch(self.architecture, self.variant or "")
        return Platform(self.os.lower(), arch, variant or None, self.os_version, self.os_features,
                        self.extra)

    def matches(self, wanted: Platform) -> bool:
        """Whether this platform satisfies ``wanted``: same os and architecture after
        normalization; the variant (with defaults) only when ``wanted`` names one; the os version
        only when ``wanted`` names one."""
        mine, theirs = self.normalized(), wanted.normalized()
        if (mine.os, mine.architecture) != (theirs.os, theirs.architecture):
            return False
        if wanted.variant and mine.variant != theirs.variant:
            return False
        return not (wanted.os_version and self.os_version != wanted.os_version)

    def __str__(self) -> str:
        return f"{self.os}/{self.architecture}" + (f"/{self.variant}" if self.variant else "")

    @classmethod
    def host(cls) -> Platform:
        """This machine's platform, in OCI's names (``linux/amd64``, ``linux/arm64/v8``)."""
        return cls("linux", python_platform.machine() or "amd64").normalized()


# --- descriptors ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Descriptor:
    """A content descriptor. ``extra`` holds fields cib does not model (``data``, ...)."""

    media_type: str
    digest: str
    size: int
    urls: tuple[str, ...] = ()
    annotations: Mapping[str, str] | None = field(default=None, hash=False)
    platform: Platform | None = None
    artifact_type: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict, hash=False)
    # The object this descriptor was parsed from, returned by to_dict so round trips are exact.
    _source: Mapping[str, Any] | None = field(default=None, init=False, compare=False, hash=False,
                                               repr=False)

    @property
    def is_attestation(self) -> bool:
        """A BuildKit attestation manifest in an index (it describes an image; it is none)."""
        return (self.annotations or {}).get("vnd.docker.reference.type") == "attestation-manifest"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "descriptor") -> Descriptor:
        if not isinstance(data, Mapping):
            raise ManifestError(f"{where} is not a JSON object: {data!r}")
        media_type, digest, size = data.get("mediaType"), data.get("digest"), data.get("size")
        if not isinstance(media_type, str) or not media_type:
            raise ManifestError(f"{where} has no mediaType string")
        if not isinstance(digest, str) or not GRAMMAR.fullmatch(digest):
            raise ManifestError(f"{where} has no valid digest (got {digest!r})")
        if not is_json_int(size) or size < 0:
            raise ManifestError(f"{where} {digest} has no valid size (got {size!r})")
        urls = data.get("urls") or ()
        if isinstance(urls, str) or not isinstance(urls, Sequence) \
                or not all(isinstance(u, str) for u in urls):
            raise ManifestError(f"{where} {digest}: urls is not a list of strings")
        annotations = data.get("annotations")
        if annotations is not None and not is_string_map(annotations):
            raise ManifestError(f"{where} {digest}: annotations is not a map of strings")
        platform = data.get("platform")
        artifact_type = data.get("artifactType")
        if artifact_type is not None and not isinstance(artifact_type, str):
            raise ManifestError(f"{where} {digest}: artifactType is not a string")
        known = {"mediaType", "digest", "size", "urls", "annotations", "platform", "artifactType"}
        desc = cls(
            media_type, digest, size, tuple(urls),
            dict(annotations) if annotations is not None else None,
            Platform.from_dict(platform) if platform is not None else None,
            artifact_type,
            {k: copy.deepcopy(v) for k, v in data.items() if k not in known},
        )
        object.__setattr__(desc, "_source", copy.deepcopy(dict(data)))
        return desc

    def to_dict(self) -> dict[str, Any]:
        if self._source is not None:
            return copy.deepcopy(dict(self._source))
        out: dict[str, Any] = {"mediaType": self.media_type}
        if self.artifact_type is not None:
            out["artifactType"] = self.artifact_type
        out["digest"] = self.digest
        out["size"] = self.size
        if self.urls:
            out["urls"] = list(self.urls)
        if self.annotations is not None:
            out["annotations"] = dict(self.annotations)
        if self.platform is not None:
            out["platform"] = self.platform.to_dict()
        out.update(copy.deepcopy(dict(self.extra)))
        return out


# --- manifests and indexes -----------------------------------------------------------------------
def _descriptor_list(data: Mapping[str, Any], key: str, what: str) -> tuple[Descriptor, ...]:
    items = data.get(key)
    if not isinstance(items, list):
        raise ManifestError(f"{what} has no '{key}' list")
    return tuple(Descriptor.from_dict(item, where=f"{what} {key}[{i}]") for i, item in enumerate(items))


def _check_schema_version(data: Mapping[str, Any], what: str) -> None:
    version = data.get("schemaVersion")
    if version != 2 or not is_json_int(version):
        raise ManifestError(f"{what} has schemaVersion {version!r}; cib reads schema version 2 only")


_DocumentT = TypeVar("_DocumentT", bound="_Document")


@dataclass(frozen=True, eq=False)
class _Document:
    """What manifests and indexes share: exact bytes, media type, parsed data and digest;
    equal when bytes and media type are."""

    _kind: ClassVar[str]  # for messages: "manifest", "index"
    _noun: ClassVar[str]  # "an image manifest", "an index"

    raw: bytes
    media_type: str
    data: dict[str, Any] = field(repr=False)
    digest: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "digest", sha256_digest(self.raw))
        _check_schema_version(self.data, self._what)

    @property
    def _what(self) -> str:
        return f"{self._kind} {self.digest}"

    @classmethod
    def from_bytes(cls: type[_DocumentT], raw: bytes, media_type: str | None = None) -> _DocumentT:
        doc = parse_manifest(raw, media_type)
        if not isinstance(doc, cls):
            raise ManifestError(f"{doc.digest} is {doc._noun} ({doc.media_type}), not {cls._noun}")
        return doc

    @property
    def annotations(self) -> Mapping[str, str]:
        value = self.data.get("annotations")
        return value if isinstance(value, Mapping) else {}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, type(self)) and (self.raw, self.media_type) == (
            other.raw, other.media_type)

    def __hash__(self) -> int:
        return hash((self.raw, self.media_type))


@dataclass(frozen=True, eq=False)
class Manifest(_Document):
    """An image manifest (OCI or Docker schema 2), with its exact bytes."""

    _kind = "manifest"
    _noun = "an image manifest"

    config: Descriptor = field(init=False, repr=False)
    layers: tuple[Descriptor, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        what = self._what
        object.__setattr__(self, "config", Descriptor.from_dict(self.data.get("config"),  # type: ignore[arg-type]
                                                                where=f"{what} config"))
        object.__setattr__(self, "layers", _descriptor_list(self.data, "layers", what))

    @property
    def subject(self) -> Descriptor | None:
        subject = self.data.get("subject")
        return Descriptor.from_dict(subject, where=f"{self._what} subject") if subject else None


@dataclass(frozen=True, eq=False)
class Index(_Document):
    """An OCI image index or Docker manifest list, with its exact bytes."""

    _kind = "index"
    _noun = "an index"

    manifests: tuple[Descriptor, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "manifests", _descriptor_list(self.data, "manifests", self._what))

    def images(self) -> list[Descriptor]:
        """The entries that are image manifests, attestation manifests left out."""
        return [d for d in self.manifests
                if d.media_type in mt.IMAGE_MANIFESTS and not d.is_attestation]

    def platforms(self) -> list[Platform]:
        """The platforms of the entries that name one, in index order."""
        return [d.platform for d in self.manifests if d.platform is not None]

    def select_all(self, platform: Platform) -> list[Descriptor]:
        """Every entry that matches ``platform``, best first: an entry whose variant equals the
        wanted one (or its default: ``v8`` for arm64, ``v7`` for arm) comes before other
        variants; otherwise index order. Empty when nothing matches."""
        matching = [d for d in self.manifests if d.platform is not None and d.platform.matches(platform)]
        wanted_variant = platform.normalized().variant
        exact = [d for d in matching if d.platform is not None
                 and d.platform.normalized().variant == wanted_variant]
        return exact + [d for d in matching if d not in exact]

    def select(self, platform: Platform) -> Descriptor:
        """The best entry for ``platform``; :class:`NotFound` naming the platforms there are."""
        found = self.select_all(platform)
        if not found:
            available = ", ".join(str(p) for p in self.platforms()) or "none"
            raise NotFound(f"index {self.digest} has no image for platform {platform}; "
                           f"it has: {available}")
        return found[0]



def parse_manifest(raw: bytes, media_type: str | None = None) -> Manifest | Index:
    """Parse manifest or index bytes. The media type is the document's ``mediaType``, else
    ``media_type`` (a Content-Type header; parameters are ignored), else sniffed from the fields.
    Docker schema 1 and unknown types raise :class:`ManifestError`."""
    raw = bytes(raw)
    digest = sha256_digest(raw)
    try:
        data = loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ManifestError(f"manifest {digest} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ManifestError(f"manifest {digest} is not a JSON object")
    header = (media_type or "").split(";", 1)[0].strip() or None
    declared = data.get("mediaType")
    if declared is not None and not isinstance(declared, str):
        raise ManifestError(f"manifest {digest} has a mediaType that is not a string: {declared!r}")
    schema1 = {mt.DOCKER_SCHEMA1, mt.DOCKER_SCHEMA1_SIGNED}
    if data.get("schemaVersion") == 1 or declared in schema1 or header in schema1:
        raise ManifestError(
            f"manifest {digest} is a Docker schema 1 manifest, which cib does not support; "
            "re-push the image with a current docker, podman or skopeo to get schema 2")
    if declared:
        kind = declared
        if header and header != declared:
            log.debug("manifest %s declares %s; the server said %s", digest, declared, header)
    elif header in mt.ALL_MANIFESTS:
        kind = header
    else:
        sniffed = declared_or_implied_type(data)
        if sniffed is None:
            raise ManifestError(f"{digest} is neither an image manifest nor an index "
                                f"(no mediaType, no 'manifests', no 'config' and 'layers')")
        kind = sniffed
    if kind in mt.INDEXES:
        return Index(raw, kind, data)
    if kind in mt.IMAGE_MANIFESTS:
        return Manifest(raw, kind, data)
    raise ManifestError(f"manifest {digest} has media type {kind}, which cib does not support; "
                        f"it reads {', '.join(sorted(mt.ALL_MANIFESTS))}")


# --- configs -------------------------------------------------------------------------------------
def diff_ids(config: Mapping[str, Any]) -> list[str]:
    """The ``rootfs.diff_ids`` of an image config (empty when it has none)."""
    rootfs = config.get("rootfs")
    if rootfs is None:
        return []
    ids = rootfs.get("diff_ids") if isinstance(rootfs, Mapping) else None
    if ids is None:
        return []
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise ManifestError("the image config's rootfs.diff_ids is not a list of strings")
    return list(ids)


def config_platform(config: Mapping[str, Any]) -> Platform:
    """The platform an image config declares (its other fields are not platform ``extra``)."""
    keys = ("os", "architecture", "variant", "os.version", "os.features")
    return Platform.from_dict({k: config[k] for k in keys if k in config})
