"""JSON documents (manifests, indexes, configs): how cib reads them, writes them, and tells
which kind a document is when nothing declares it."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, TypeGuard

from cib_core import mediatypes as mt
from cib_core.errors import ManifestError


def canonical_json(obj: Any) -> bytes:
    """How cib serializes documents it builds: compact, UTF-8, keys in the order given."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def loads(raw: bytes | bytearray | str) -> Any:
    """Parse a JSON document as registries do: UTF-8 only (no BOM, no UTF-16), no NaN."""
    # json.loads on bytes would also take UTF-16/32 and skip a byte order mark.
    text = raw.decode("utf-8") if isinstance(raw, (bytes, bytearray)) else raw
    return json.loads(text, parse_constant=_reject_constant)


def json_object(raw: bytes, what: str) -> dict[str, Any]:
    """``raw`` parsed as a JSON object; ``ManifestError`` naming ``what`` if it is not one."""
    try:
        doc = loads(raw)
    except ValueError as exc:
        raise ManifestError(f"{what} is not valid JSON") from exc
    if not isinstance(doc, dict):
        raise ManifestError(f"{what} is not a JSON object")
    return doc


def is_json_int(value: object) -> TypeGuard[int]:
    """A JSON integer (Python's ``bool`` is an ``int`` but not a JSON number)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_string_map(value: object) -> bool:
    """A JSON object of strings (annotations, labels)."""
    return isinstance(value, Mapping) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items())


def is_string_list(value: object) -> bool:
    """A JSON array of strings."""
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def declared_or_implied_type(doc: Mapping[str, Any]) -> str | None:
    """The media type a manifest document declares, else the one its fields imply, else None.

    ``manifests`` means an OCI index; a Docker image config means a Docker manifest;
    ``schemaVersion: 1`` a Docker schema 1 manifest; ``config`` and ``layers`` an OCI manifest.
    """
    declared = doc.get("mediaType")
    if isinstance(declared, str) and declared:
        return declared
    if "manifests" in doc:
        return mt.OCI_INDEX
    if doc.get("schemaVersion") == 1:
        return mt.DOCKER_SCHEMA1_SIGNED if "signatures" in doc else mt.DOCKER_SCHEMA1
    config = doc.get("config")
    if isinstance(config, Mapping) and config.get("mediaType") == mt.DOCKER_CONFIG:
        return mt.DOCKER_MANIFEST
    if "config" in doc and "layers" in doc:
        return mt.OCI_MANIFEST
    return None


def manifest_media_type(raw: bytes, what: str = "the manifest") -> str:
    """The media type of manifest bytes: declared, implied, or (a bare object) an OCI manifest."""
    return declared_or_implied_type(json_object(raw, what)) or mt.OCI_MANIFEST
