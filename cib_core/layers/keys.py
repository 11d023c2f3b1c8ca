"""Content keys: a digest of what makes a layer, the same on any machine for the same inputs.

A layer's bytes are decided by its normalized tar (every entry's path in the image, type,
mode, size, owner ids, link target, the layer time, kept xattrs, and every file's content, in
layer order) and by how that tar is compressed. The key is therefore the sha256 of:

- the layer's media type, the compression, its level and the implementation (isal and zlib
  deflate differently), and any inputs a packager adds (a lock file's hash, a platform, a
  target interpreter), each named;
- the layer's diff_id: the sha256 of the normalized tar, which a build computes anyway and
  which :meth:`LayerBuilder.tar_digest` computes without compressing, writing or keeping
  anything (headers and file bytes go straight into sha256).

Nothing local goes in: no absolute path, inode, device or file time, so the same inputs give
the same key in any checkout on any machine, and any change to them gives another key. As the
key of a built layer comes from the diff_id of the very bytes built, a file that changes
while a layer is made cannot leave a record naming the wrong layer.

The *shape* of a layer is the sha256 of its tar headers only (paths, modes, sizes, links; no
file bytes): equal for a touched or re-cloned tree, cheap to list. A machine that never made
a layer of some shape cannot hold its content key, so reading the files for one is skipped.

A layer whose content is not all plain local files or in-memory bytes (a stream handed to
``CustomFile``, a member of a tarball read by a plugin) has no key: reading it here would use
up what the build must read.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from cib_core.errors import ConfigurationError
from cib_core.layers.build import LayerBuilder

KEY_DOMAIN = b"cib-layer-content-key-2\0"
"""Changes whenever the meaning of a key changes, so old records stop matching."""
SHAPE_DOMAIN = b"cib-layer-shape-2\0"


@dataclass(frozen=True)
class ContentKey:
    """A layer's content key (64 hex digits) and its diff_id."""

    key: str
    diff_id: str


def _named_value(h: hashlib._Hash, name: str, value: bytes) -> None:
    raw_name = name.encode("utf-8", "surrogateescape")
    h.update(b"%d:%s%d:" % (len(raw_name), raw_name, len(value)))
    h.update(value)


def settings_digest(builder: LayerBuilder, inputs: Mapping[str, str | bytes] | None) -> bytes:
    """What besides the tar decides the layer and its key: the media type, the compressor,
    and a packager's named ``inputs`` (str or bytes values)."""
    head = hashlib.sha256()
    compression, level, implementation = builder.compression_settings
    for setting, text in (("media-type", builder.media_type), ("compression", compression),
                          ("level", "" if level is None else str(level)),
                          ("implementation", implementation)):
        _named_value(head, setting, text.encode())
    given = dict(inputs or {})
    for name in sorted(given, key=str):
        value = given[name]
        if not isinstance(name, str) or not isinstance(value, (str, bytes)):
            raise ConfigurationError(f"cache key input {name!r}: names must be str and values "
                                     f"str or bytes, not {type(value).__name__}")
        _named_value(head, "input:" + name, value.encode() if isinstance(value, str) else value)
    return head.digest()


def key_for(settings: bytes, diff_id: str) -> str:
    """The content key of a layer with these settings (:func:`settings_digest`) and tar."""
    return hashlib.sha256(KEY_DOMAIN + settings + diff_id.encode()).hexdigest()


def shape_for(settings: bytes, headers: bytes) -> str:
    """The shape key from the settings and the digest of the tar headers."""
    return hashlib.sha256(SHAPE_DOMAIN + settings + headers).hexdigest()


def shape_key(builder: LayerBuilder,
              inputs: Mapping[str, str | bytes] | None = None) -> str | None:
    """The layer's shape key from a listing (nothing read), or ``None`` when its content
    cannot be keyed."""
    settings = settings_digest(builder, inputs)
    headers = builder.headers_digest()
    return None if headers is None else shape_for(settings, headers)


def content_key(builder: LayerBuilder,
                inputs: Mapping[str, str | bytes] | None = None) -> ContentKey | None:
    """The content key of the layer ``builder`` will write (every file is read and hashed,
    nothing compressed), or ``None`` when some content cannot be read without using it up.
    ``inputs`` are a packager's own named inputs (values are str or bytes):
    ``{"python.lock-sha256": ..., "python.platform": "linux/arm64"}``."""
    settings = settings_digest(builder, inputs)
    if builder.headers_digest() is None:
        return None
    diff_id = builder.tar_digest()
    return ContentKey(key_for(settings, diff_id), diff_id)


__all__ = ["KEY_DOMAIN", "ContentKey", "content_key", "key_for", "settings_digest",
           "shape_for", "shape_key"]
