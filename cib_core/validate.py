"""Documents checked against the OCI image spec's JSON schemas and its Go validator.

``validate_manifest``, ``validate_index``, ``validate_config``, ``validate_descriptor`` and
``validate_layout`` check what the schemas and the validator check (types, required fields,
media-type and digest grammar, env entries, ...) and raise ``ManifestError`` naming the JSON path
of the first fault; they return the parsed document.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import re
from collections.abc import Mapping
from typing import Any, TypeAlias

from cib_core.digest import ALGORITHMS, GRAMMAR
from cib_core.documents import is_json_int, is_string_list, is_string_map, loads
from cib_core.errors import ManifestError

__all__ = [
    "validate_config",
    "validate_descriptor",
    "validate_index",
    "validate_layout",
    "validate_manifest",
]

JSONDocument: TypeAlias = "bytes | bytearray | str | Mapping[str, Any]"

_MEDIA_TYPE_RE = re.compile(
    r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}")
_LOWER_HEX_RE = re.compile(r"[a-f0-9]+")
# As in the Go validator (RE2 without flags): a value may not contain a newline.
_ENV_RE = re.compile(r"[^=]+=.*")
_URI_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")
_RFC3339_RE = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(Z|[+-]\d{2}:\d{2})")
_INT64_MAX = 2**63 - 1


# --- validation against the OCI schemas ----------------------------------------------------------
class _Checker:
    """Collects the first problem of a document as a ManifestError naming the JSON path."""

    def __init__(self, what: str) -> None:
        self.what = what

    def fail(self, where: str, problem: str) -> ManifestError:
        return ManifestError(f"{self.what}: {where}: {problem}")

    def load(self, doc: JSONDocument) -> Mapping[str, Any]:
        data: Any = doc
        if isinstance(doc, (bytes, bytearray, str)):
            try:
                data = loads(doc)
            except (ValueError, UnicodeDecodeError) as exc:
                raise ManifestError(f"{self.what} is not valid JSON: {exc}") from None
        if not isinstance(data, Mapping):
            raise self.fail("$", "not a JSON object")
        return data

    def obj(self, value: object, where: str) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            raise self.fail(where, f"must be an object, not {_json_type(value)}")
        return value

    def required(self, data: Mapping[str, Any], where: str, *keys: str) -> None:
        for key in keys:
            if key not in data:
                raise self.fail(where, f"'{key}' is required")

    def string(self, data: Mapping[str, Any], key: str, where: str) -> str | None:
        if key not in data:
            return None
        value = data[key]
        if not isinstance(value, str):
            raise self.fail(f"{where}.{key}", f"must be a string, not {_json_type(value)}")
        return value

    def string_list(self, data: Mapping[str, Any], key: str, where: str, *, nullable: bool = False) -> None:
        if key not in data or (nullable and data[key] is None):
            return
        if not is_string_list(data[key]):
            raise self.fail(f"{where}.{key}", "must be an array of strings")

    def string_map(self, data: Mapping[str, Any], key: str, where: str, *, nullable: bool = False) -> None:
        if key not in data or (nullable and data[key] is None):
            return
        if not is_string_map(data[key]):
            raise self.fail(f"{where}.{key}", "must be an object of strings")

    def object_map(self, data: Mapping[str, Any], key: str, where: str, *, nullable: bool = False) -> None:
        if key not in data or (nullable and data[key] is None):
            return
        value = data[key]
        if not isinstance(value, Mapping) or not all(isinstance(v, Mapping) for v in value.values()):
            raise self.fail(f"{where}.{key}", "must be an object whose values are objects")

    def media_type(self, data: Mapping[str, Any], key: str, where: str) -> None:
        value = self.string(data, key, where)
        if value is not None and not _MEDIA_TYPE_RE.fullmatch(value):
            raise self.fail(f"{where}.{key}", f"{value!r} is not a media type (type/subtype)")

    def schema_version(self, data: Mapping[str, Any]) -> None:
        self.required(data, "$", "schemaVersion")
        version = data["schemaVersion"]
        if not is_json_int(version) or version != 2:
            raise self.fail("$.schemaVersion", f"must be the integer 2, not {version!r}")

    def digest(self, value: object, where: str) -> None:
        if not isinstance(value, str):
            raise self.fail(where, f"must be a string, not {_json_type(value)}")
        if not GRAMMAR.fullmatch(value):
            raise self.fail(where, f"{value!r} is not of the form algorithm:encoded")
        # Algorithms cib can verify have a fixed length; others pass on grammar alone, as in
        # the OCI validator, which ignores unsupported algorithms.
        algorithm, _, encoded = value.partition(":")
        length = ALGORITHMS.get(algorithm)
        if length is not None and (len(encoded) != length or not _LOWER_HEX_RE.fullmatch(encoded)):
            raise self.fail(where, f"{value!r} is not {algorithm}: followed by {length} lowercase hex digits")

    def platform(self, value: object, where: str) -> None:
        data = self.obj(value, where)
        self.required(data, where, "architecture", "os")
        for key in ("architecture", "os", "os.version", "variant"):
            self.string(data, key, where)
        self.string_list(data, "os.features", where)
        self.string_list(data, "features", where)

    def descriptor(self, value: object, where: str) -> None:
        data = self.obj(value, where)
        self.required(data, where, "mediaType", "size", "digest")
        self.media_type(data, "mediaType", where)
        self.media_type(data, "artifactType", where)
        size = data["size"]
        if not is_json_int(size) or not 0 <= size <= _INT64_MAX:
            raise self.fail(f"{where}.size", f"must be a non-negative 64-bit integer, not {size!r}")
        self.digest(data["digest"], f"{where}.digest")
        if "urls" in data:
            urls = data["urls"]
            if not is_string_list(urls):
                raise self.fail(f"{where}.urls", "must be an array of strings")
            for i, url in enumerate(urls):
                if not _is_uri(url):
                    raise self.fail(f"{where}.urls[{i}]", f"{url!r} is not an absolute URI")
        self.string_map(data, "annotations", where)
        if "data" in data:
            encoded = data["data"]
            if not isinstance(encoded, str):
                raise self.fail(f"{where}.data", "must be a base64 string")
            try:
                base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError):
                raise self.fail(f"{where}.data", "is not valid (padded) base64") from None
        if "platform" in data:
            self.platform(data["platform"], f"{where}.platform")

    def descriptors(self, data: Mapping[str, Any], key: str, *, min_items: int = 0) -> None:
        items = data[key]
        if not isinstance(items, list):
            raise self.fail(f"$.{key}", f"must be an array, not {_json_type(items)}")
        if len(items) < min_items:
            raise self.fail(f"$.{key}", f"needs at least {min_items} entr{'y' if min_items == 1 else 'ies'}")
        for i, item in enumerate(items):
            self.descriptor(item, f"$.{key}[{i}]")

    def date_time(self, data: Mapping[str, Any], key: str, where: str) -> None:
        value = self.string(data, key, where)
        if value is not None and not _is_rfc3339(value):
            raise self.fail(f"{where}.{key}", f"{value!r} is not an RFC 3339 date-time")


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _is_uri(value: str) -> bool:
    scheme, sep, rest = value.partition(":")
    if not sep or not _URI_SCHEME_RE.fullmatch(scheme) or "\\" in value:
        return False
    return not any(c.isspace() or ord(c) < 0x20 for c in value)


def _is_rfc3339(value: str) -> bool:
    match = _RFC3339_RE.fullmatch(value)
    if match is None:
        return False
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    zone = match.group(8)
    try:
        datetime.datetime(year, month, day, hour, minute, second)
    except ValueError:
        return False
    if zone != "Z":
        zone_hours, zone_minutes = int(zone[1:3]), int(zone[4:6])
        if zone_hours > 23 or zone_minutes > 59:
            return False
    return True


def validate_descriptor(doc: JSONDocument) -> Mapping[str, Any]:
    """Check a content descriptor as the OCI schema and validator do; returns the parsed object."""
    check = _Checker("descriptor")
    data = check.load(doc)
    check.descriptor(data, "$")
    return data


def validate_manifest(doc: JSONDocument) -> Mapping[str, Any]:
    """Check an OCI image manifest as the OCI schema and validator do; returns the parsed object."""
    check = _Checker("image manifest")
    data = check.load(doc)
    check.schema_version(data)
    check.media_type(data, "mediaType", "$")
    check.media_type(data, "artifactType", "$")
    check.required(data, "$", "config", "layers")
    check.descriptor(data["config"], "$.config")
    check.descriptors(data, "layers", min_items=1)
    if "subject" in data:
        check.descriptor(data["subject"], "$.subject")
    check.string_map(data, "annotations", "$")
    return data


def validate_index(doc: JSONDocument) -> Mapping[str, Any]:
    """Check an OCI image index as the OCI schema and validator do; returns the parsed object."""
    check = _Checker("image index")
    data = check.load(doc)
    check.schema_version(data)
    check.media_type(data, "mediaType", "$")
    check.media_type(data, "artifactType", "$")
    check.required(data, "$", "manifests")
    check.descriptors(data, "manifests")
    if "subject" in data:
        check.descriptor(data["subject"], "$.subject")
    check.string_map(data, "annotations", "$")
    return data


def validate_config(doc: JSONDocument) -> Mapping[str, Any]:
    """Check an OCI image config as the OCI schema and validator do; returns the parsed object."""
    check = _Checker("image config")
    data = check.load(doc)
    check.required(data, "$", "architecture", "os", "rootfs")
    for key in ("architecture", "os", "variant", "os.version", "author"):
        check.string(data, key, "$")
    check.string_list(data, "os.features", "$")
    check.date_time(data, "created", "$")
    if "config" in data:
        inner = check.obj(data["config"], "$.config")
        for key in ("User", "WorkingDir", "StopSignal"):
            check.string(inner, key, "$.config")
        if "ArgsEscaped" in inner and not isinstance(inner["ArgsEscaped"], bool):
            raise check.fail("$.config.ArgsEscaped", "must be a boolean")
        check.object_map(inner, "ExposedPorts", "$.config")
        check.object_map(inner, "Volumes", "$.config", nullable=True)
        check.string_list(inner, "Env", "$.config")
        for i, entry in enumerate(inner.get("Env") or ()):
            if not _ENV_RE.fullmatch(entry):
                raise check.fail(f"$.config.Env[{i}]", f"{entry!r} is not of the form NAME=value")
        check.string_list(inner, "Entrypoint", "$.config", nullable=True)
        check.string_list(inner, "Cmd", "$.config", nullable=True)
        check.string_map(inner, "Labels", "$.config", nullable=True)
    rootfs = check.obj(data["rootfs"], "$.rootfs")
    check.required(rootfs, "$.rootfs", "diff_ids", "type")
    if check.string(rootfs, "type", "$.rootfs") != "layers":
        raise check.fail("$.rootfs.type", f"must be 'layers', not {rootfs['type']!r}")
    check.string_list(rootfs, "diff_ids", "$.rootfs")
    if "history" in data:
        history = data["history"]
        if not isinstance(history, list):
            raise check.fail("$.history", f"must be an array, not {_json_type(history)}")
        for i, item in enumerate(history):
            where = f"$.history[{i}]"
            entry = check.obj(item, where)
            check.date_time(entry, "created", where)
            for key in ("author", "created_by", "comment"):
                check.string(entry, key, where)
            if "empty_layer" in entry and not isinstance(entry["empty_layer"], bool):
                raise check.fail(f"{where}.empty_layer", "must be a boolean")
    return data


def validate_layout(doc: JSONDocument) -> Mapping[str, Any]:
    """Check an ``oci-layout`` file; returns the parsed object."""
    check = _Checker("oci-layout")
    data = check.load(doc)
    check.required(data, "$", "imageLayoutVersion")
    if data["imageLayoutVersion"] != "1.0.0":
        raise check.fail("$.imageLayoutVersion", f"must be \"1.0.0\", not {data['imageLayoutVersion']!r}")
    return data
