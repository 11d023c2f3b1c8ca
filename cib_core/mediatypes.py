"""Media types of the OCI image spec and of Docker's image manifest v2 schema 2."""

from __future__ import annotations

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_LAYER_NONDISTRIBUTABLE_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_FOREIGN_LAYER_GZIP = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"

IMAGE_MANIFESTS = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
INDEXES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
ALL_MANIFESTS = IMAGE_MANIFESTS | INDEXES

# What a registry client asks for: every manifest type cib understands, best first.
ACCEPT = ", ".join((OCI_INDEX, DOCKER_MANIFEST_LIST, OCI_MANIFEST, DOCKER_MANIFEST))

DOCKER_LAYERS = frozenset({DOCKER_LAYER, DOCKER_LAYER_GZIP, DOCKER_FOREIGN_LAYER_GZIP})
OCI_LAYERS = frozenset({
    OCI_LAYER, OCI_LAYER_GZIP, OCI_LAYER_ZSTD, OCI_LAYER_NONDISTRIBUTABLE_GZIP,
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
})

def is_docker_flavour(media_type: str) -> bool:
    return media_type.startswith("application/vnd.docker.")


def layer_media_type(docker_flavour: bool, compression: str = "gzip") -> str:
    """The media type for a new layer in an image of the given flavour."""
    if docker_flavour:
        if compression != "gzip":
            from cib_core.errors import ConfigurationError

            raise ConfigurationError(
                f"a Docker schema 2 image (this base's flavour) only carries gzip layers, not "
                f"{compression}; use gzip, or an OCI base")
        return DOCKER_LAYER_GZIP
    return {"gzip": OCI_LAYER_GZIP, "zstd": OCI_LAYER_ZSTD, "none": OCI_LAYER}[compression]


def config_media_type(docker_flavour: bool) -> str:
    return DOCKER_CONFIG if docker_flavour else OCI_CONFIG


def manifest_media_type(docker_flavour: bool) -> str:
    return DOCKER_MANIFEST if docker_flavour else OCI_MANIFEST


def index_media_type(docker_flavour: bool) -> str:
    return DOCKER_MANIFEST_LIST if docker_flavour else OCI_INDEX


# Docker schema 2 types and their OCI equivalents; the bytes they describe are the same.
_DOCKER_TO_OCI = {
    DOCKER_MANIFEST: OCI_MANIFEST,
    DOCKER_MANIFEST_LIST: OCI_INDEX,
    DOCKER_CONFIG: OCI_CONFIG,
    DOCKER_LAYER: OCI_LAYER,
    DOCKER_LAYER_GZIP: OCI_LAYER_GZIP,
    DOCKER_FOREIGN_LAYER_GZIP: OCI_LAYER_NONDISTRIBUTABLE_GZIP,
}


def to_oci(media_type: str) -> str:
    """The OCI media type for a Docker one (others are returned unchanged)."""
    return _DOCKER_TO_OCI.get(media_type, media_type)
