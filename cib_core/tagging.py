"""More tags for a manifest that is already stored: no blob moves, the bytes and digest stay.

In a registry each new tag is a ``PUT`` of the manifest's exact bytes under that tag; in an OCI
layout it is another ``index.json`` entry (``org.opencontainers.image.ref.name``) for the same
digest. Every tag is checked before the first one is written.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cib_core.errors import ConfigurationError, InvalidReference
from cib_core.reference import LocalReference, Reference, parse_image_spec
from cib_core.stores import open_store

if TYPE_CHECKING:
    from cib_core.plugins import CibPluginManager

log = logging.getLogger(__name__)

__all__ = ["TagResult", "tag_image"]


@dataclass(frozen=True)
class TagResult:
    """What ``tag_image`` did: the manifest's ``digest`` and ``media_type``, the ``tags`` it now
    also has, and each as a reference (``REGISTRY/REPO:TAG`` or ``oci:PATH:TAG``)."""

    digest: str
    media_type: str
    tags: tuple[str, ...]
    references: tuple[str, ...]


def _tag_reference(ref: Reference | LocalReference, tag: str, spec: str) -> str:
    """``tag`` as a reference next to ``ref``; ``InvalidReference`` naming the tag if it is not one."""
    hint = ("a tag names the image in its own repository (like v2 or 1.4.0); to put it into "
            "another repository use cib copy")
    if isinstance(ref, Reference):
        if not tag or "/" in tag or "@" in tag or ":" in tag:
            raise InvalidReference(tag, f"not a tag for {spec}; {hint}")
        return str(ref.without_identifier().with_tag(tag))
    assert ref.path is not None
    if not tag:
        raise InvalidReference(tag, f"not a tag for {spec}")
    try:
        parse_image_spec(f"oci:{ref.path}:{tag}")
    except InvalidReference as exc:
        raise InvalidReference(tag, f"not a tag for {spec}: {exc.reason}") from None
    return f"oci:{ref.path}:{tag}"


def tag_image(
    ref: str,
    tags: Iterable[str],
    *,
    auth: Mapping[str, Mapping[str, str]] | None = None,
    insecure: Iterable[str] = (),
    pm: CibPluginManager | None = None,
) -> TagResult:
    """Give the manifest (or index) ``ref`` names each of ``tags`` as well, in its own registry
    repository or OCI layout. Nothing is written unless every tag is valid and ``ref`` exists."""
    parsed = parse_image_spec(ref)
    if isinstance(parsed, LocalReference) and parsed.transport != "oci":
        raise ConfigurationError(
            f"cib tag works on registry references and oci: layouts, not {ref!r}; a "
            f"{parsed.transport} cannot take more names in place (cib copy SRC "
            "docker-archive:NEW.tar:NAME:TAG writes one with another name)")
    wanted = list(dict.fromkeys(tags))
    if not wanted:
        raise ConfigurationError(f"name at least one tag to give {ref}")
    references = [_tag_reference(parsed, tag, ref) for tag in wanted]
    insecure = tuple(insecure)
    from cib_core.remote.transport import TransportPool

    pool = TransportPool(pm=pm, insecure=insecure)
    try:
        store = open_store(parsed, write=False, auth=auth, insecure=insecure, pm=pm, pool=pool)
        identifier = parsed.identifier if isinstance(parsed, Reference) else parsed.ref or ""
        raw, media_type, digest = store.get_manifest(identifier)
        for tag in wanted:
            store.put_manifest(raw, media_type, tag)
            log.info("tagged %s as %s", digest, tag)
        store.close()
    finally:
        pool.close()
    return TagResult(digest=digest, media_type=media_type, tags=tuple(wanted),
                     references=tuple(references))
