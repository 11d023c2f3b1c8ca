"""docker-archive tarballs (``docker save`` / ``docker load`` / ``podman load``): a reader and a
writer over a small common part, as containers/image splits ``docker/archive`` into a source
and a destination. A store is either one or the other, never both."""

from __future__ import annotations

from cib_core.formats.docker_archive.common import normalize_repo_tag
from cib_core.formats.docker_archive.reader import DockerArchiveReader
from cib_core.formats.docker_archive.writer import DockerArchiveWriter

__all__ = ["DockerArchiveReader", "DockerArchiveWriter", "normalize_repo_tag"]
