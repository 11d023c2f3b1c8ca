"""What the docker-archive reader and writer share: names, and the ``NAME:TAG`` rules."""

from __future__ import annotations

import os
from pathlib import Path

from cib_core.errors import NotFound
from cib_core.reference import DEFAULT_REGISTRY, is_docker_hub

WHAT = "the docker-archive"


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
    if first == DEFAULT_REGISTRY and "/" not in rest:
        rest = f"library/{rest}"
    return f"{first}/{rest}:{tag}"


def split_repo_tag(repo_tag: str) -> tuple[str, str]:
    """``NAME:TAG`` as ``(NAME, TAG)``; a name without a tag is ``latest``."""
    slash = repo_tag.rfind("/")
    colon = repo_tag.rfind(":")
    if colon > slash:
        return repo_tag[:colon], repo_tag[colon + 1:]
    return repo_tag, "latest"


class ArchiveBase:
    """The path, the name and the default image of a docker-archive, read or written."""

    def __init__(self, path: str | os.PathLike[str], default_ref: str | None) -> None:
        self.path = Path(path)
        self.name = f"docker-archive:{self.path}"
        self.default_ref = default_ref or None

    def repo_tags(self) -> list[str]:
        """Every ``NAME:TAG`` of the archive, as stored."""
        raise NotImplementedError

    def not_found(self, ref: str) -> NotFound:
        tags = self.repo_tags()
        return NotFound(f"{self.name}: no image {ref!r} in the archive "
                        f"(it holds: {', '.join(tags) or 'untagged images only; use @0, @1, ...'})")
