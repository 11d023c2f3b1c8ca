"""Content digests: the one grammar, the algorithms cib verifies, and hashing.

A digest is ``algorithm:encoded`` in the OCI image spec's grammar. cib verifies ``sha256`` and
``sha512``, whose encoded parts are lowercase hex of a fixed length; a digest of another
algorithm may pass the grammar (the OCI validator ignores algorithms it does not know) but
cannot be verified.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

ALGORITHMS: dict[str, int] = {"sha256": 64, "sha512": 128}
"""The algorithms cib verifies, with the length of their hex encoding."""

GRAMMAR = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")
"""The OCI image spec's digest grammar (``algorithm:encoded``), for ``fullmatch``."""

_LOWER_HEX = re.compile(r"[a-f0-9]+")


def is_digest(text: object) -> bool:
    """True for a digest cib can verify: sha256 or sha512 with the right lowercase hex."""
    if not isinstance(text, str):
        return False
    algorithm, sep, encoded = text.partition(":")
    length = ALGORITHMS.get(algorithm)
    return bool(sep) and length == len(encoded) and _LOWER_HEX.fullmatch(encoded) is not None


def problem(text: object) -> str | None:
    """Why ``text`` is not a digest cib can verify, in a few words; ``None`` when it is one."""
    if not isinstance(text, str) or not GRAMMAR.fullmatch(text):
        return "not of the form sha256:<64 lowercase hex digits>"
    algorithm, _, encoded = text.partition(":")
    length = ALGORITHMS.get(algorithm)
    if length is None:
        return f"unsupported digest algorithm {algorithm!r} (cib verifies sha256 and sha512)"
    if len(encoded) != length or not _LOWER_HEX.fullmatch(encoded):
        return f"not {algorithm}: followed by {length} lowercase hex digits"
    return None


def new_hasher(digest: str | None = None) -> Any:
    """A new hashlib object for the algorithm of ``digest`` (sha256 when ``None``).

    The caller has checked ``digest`` (:func:`is_digest`); an unknown algorithm raises
    ``ValueError``.
    """
    algorithm = digest.partition(":")[0] if digest else "sha256"
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unsupported digest algorithm {algorithm!r}")
    return hashlib.new(algorithm)


def of(hashed: Any) -> str:
    """``algorithm:hex`` of a finished hashlib object."""
    return f"{hashed.name}:{hashed.hexdigest()}"


def sha256_digest(data: bytes) -> str:
    """The sha256 digest of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()
