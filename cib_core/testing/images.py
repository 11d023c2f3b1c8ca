"""Test images pushed with plain HTTP requests: an oracle independent of cib's client."""


from __future__ import annotations

import functools
import gzip
import io
import json
import logging
import tarfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

from cib_core.errors import ConfigurationError

if TYPE_CHECKING:
    pass

from cib_core.testing.common import (
    _DOCKER_CONFIG,
    _DOCKER_LAYER,
    _DOCKER_LIST,
    _DOCKER_MANIFEST,
    _OCI_CONFIG,
    _OCI_INDEX,
    _OCI_LAYER,
    _OCI_LAYER_GZIP,
    _OCI_MANIFEST,
    _json_bytes,
    _missing,
    _sha256,
)
from cib_core.testing.registries import (
    RegistryServer,
    _OracleClient,
)

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class PushedImage:
    """An image (or index) pushed by the fixtures. ``manifest``/``config`` are fresh copies.

    For an index, ``platforms`` maps ``"linux/amd64"``, ``"linux/arm64/v8"`` to the pushed
    manifests, and ``config``/``layers`` are those of the first platform.
    """

    server: RegistryServer
    repository: str
    tag: str | None
    digest: str
    media_type: str
    raw: bytes = field(repr=False)
    config_raw: bytes = field(repr=False)
    blobs: Mapping[str, bytes] = field(repr=False)
    platforms: Mapping[str, PushedImage] = field(default_factory=dict, repr=False)

    @property
    def ref(self) -> str:
        """``127.0.0.1:PORT/repo:tag`` (``@digest`` if pushed without a tag)."""
        return self.server.ref(self.repository, self.tag or self.digest)

    @property
    def ref_by_digest(self) -> str:
        return f"{self.server.host}/{self.repository}@{self.digest}"

    @property
    def manifest(self) -> dict[str, Any]:
        return cast(dict[str, Any], json.loads(self.raw))

    @property
    def config(self) -> dict[str, Any]:
        return cast(dict[str, Any], json.loads(self.config_raw))

    @property
    def config_digest(self) -> str:
        return _sha256(self.config_raw)

    @property
    def layers(self) -> list[dict[str, Any]]:
        if self.platforms:
            return next(iter(self.platforms.values())).layers
        return cast(list[dict[str, Any]], self.manifest["layers"])


def make_layer(files: Mapping[str, bytes | str] | None = None, *, dirs: Iterable[str] = (),
               symlinks: Mapping[str, str] | None = None, modes: Mapping[str, int] | None = None,
               compress: bool = True) -> bytes:
    """A reproducible layer (gzip unless ``compress=False``): sorted entries, uid/gid 0, mtime 0.

    Paths are relative (``bin/busybox``); parent directories are added (0755). ``modes`` overrides
    a file's or directory's mode (files default to 0644, directories to 0755).
    """
    modes = dict(modes or {})
    entries: dict[str, tuple[bytes, int, bytes | str | None]] = {}

    def add_parents(path: str) -> None:
        parts = path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            parent = "/".join(parts[:i])
            entries.setdefault(parent, (tarfile.DIRTYPE, modes.get(parent, 0o755), None))

    for raw_dir in dirs:
        name = raw_dir.strip("/")
        add_parents(name)
        entries[name] = (tarfile.DIRTYPE, modes.get(name, 0o755), None)
    for raw_name, data in (files or {}).items():
        name = raw_name.strip("/")
        add_parents(name)
        entries[name] = (tarfile.REGTYPE, modes.get(name, 0o644), data)
    for raw_name, target in (symlinks or {}).items():
        name = raw_name.strip("/")
        add_parents(name)
        entries[name] = (tarfile.SYMTYPE, 0o777, target)

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(entries):
            kind, mode, payload = entries[name]
            info = tarfile.TarInfo(name)
            info.type = kind
            info.mode = mode
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if kind == tarfile.REGTYPE:
                data = payload.encode() if isinstance(payload, str) else cast(bytes, payload)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                if kind == tarfile.SYMTYPE:
                    info.linkname = cast(str, payload)
                tar.addfile(info)
    raw = buffer.getvalue()
    return gzip.compress(raw, compresslevel=6, mtime=0) if compress else raw


def _diff_id(layer: bytes) -> str:
    return _sha256(gzip.decompress(layer) if layer[:2] == b"\x1f\x8b" else layer)


def push_image(server: RegistryServer, repo: str, tag: str | None, layers: Sequence[bytes],
               config: Mapping[str, Any], *, oci: bool) -> PushedImage:
    """Push layers (gzip or plain tar bytes), the config and a manifest with plain HTTP calls.

    ``config`` gets ``rootfs`` (diff IDs computed from ``layers``) if it has none. ``oci`` picks
    OCI media types, else Docker schema 2. ``tag`` ``None`` pushes by digest only. Authenticates
    with basic credentials or via the token server, as ``server.mode`` needs.
    """
    config = dict(config)
    if "rootfs" not in config:
        config["rootfs"] = {"type": "layers", "diff_ids": [_diff_id(layer) for layer in layers]}
    config_raw = _json_bytes(config)
    layer_descriptors = []
    for layer in layers:
        gzipped = layer[:2] == b"\x1f\x8b"
        if oci:
            media_type = _OCI_LAYER_GZIP if gzipped else _OCI_LAYER
        elif gzipped:
            media_type = _DOCKER_LAYER
        else:
            raise ConfigurationError("Docker schema 2 layers must be gzip compressed; use oci=True")
        layer_descriptors.append({"mediaType": media_type, "size": len(layer),
                                  "digest": _sha256(layer)})
    manifest_type = _OCI_MANIFEST if oci else _DOCKER_MANIFEST
    manifest = {
        "schemaVersion": 2,
        "mediaType": manifest_type,
        "config": {"mediaType": _OCI_CONFIG if oci else _DOCKER_CONFIG, "size": len(config_raw),
                   "digest": _sha256(config_raw)},
        "layers": layer_descriptors,
    }
    raw = json.dumps(manifest, indent=3).encode()
    client = _OracleClient(server, repo)
    try:
        blobs = {}
        for blob in (*layers, config_raw):
            blobs[client.put_blob(blob)] = blob
        digest = client.put_manifest(tag or _sha256(raw), raw, manifest_type)
    finally:
        client.close()
    return PushedImage(server=server, repository=repo, tag=tag, digest=digest,
                       media_type=manifest_type, raw=raw, config_raw=config_raw, blobs=blobs)


def _platform_of(image: PushedImage) -> dict[str, str]:
    config = image.config
    platform = {"architecture": str(config["architecture"]), "os": str(config["os"])}
    if config.get("variant"):
        platform["variant"] = str(config["variant"])
    return platform


def _platform_key(platform: Mapping[str, str]) -> str:
    return "/".join(p for p in (platform["os"], platform["architecture"], platform.get("variant"))
                    if p)


def push_index(server: RegistryServer, repo: str, tag: str | None, images: Sequence[PushedImage],
               *, oci: bool = True) -> PushedImage:
    """Push an OCI index (or Docker manifest list) over ``images``, already pushed to ``repo``."""
    index_type = _OCI_INDEX if oci else _DOCKER_LIST
    manifests = [{"mediaType": img.media_type, "size": len(img.raw), "digest": img.digest,
                  "platform": _platform_of(img)} for img in images]
    index = {"schemaVersion": 2, "mediaType": index_type, "manifests": manifests}
    raw = json.dumps(index, indent=3).encode()
    client = _OracleClient(server, repo)
    try:
        digest = client.put_manifest(tag or _sha256(raw), raw, index_type)
    finally:
        client.close()
    blobs: dict[str, bytes] = {}
    for img in images:
        blobs.update(img.blobs)
    return PushedImage(server=server, repository=repo, tag=tag, digest=digest, media_type=index_type,
                       raw=raw, config_raw=images[0].config_raw, blobs=blobs,
                       platforms={_platform_key(_platform_of(img)): img for img in images})


BASE_ENV = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8")
_BUSYBOX_APPLETS = ("sh", "ls", "cat", "echo", "env", "true", "false", "pwd", "id", "mkdir", "rm",
                    "test", "sleep", "wc", "head", "grep", "find", "stat", "readlink", "uname")
_OS_RELEASE = ('PRETTY_NAME="cib test base"\nNAME="cib-test"\nID=cib-test\nVERSION_ID="1"\n'
               'HOME_URL="https://example.invalid/cib"\n')


def _busybox_path() -> Path:
    for candidate in (Path("/bin/busybox"), Path("/usr/bin/busybox")):
        if candidate.is_file():
            return candidate
    _missing("/bin/busybox is missing; install the Debian package 'busybox-static'")
    raise AssertionError("unreachable")  # pragma: no cover


@functools.lru_cache(maxsize=1)
def _base_layers_cached(busybox: str) -> tuple[bytes, bytes]:
    binary = Path(busybox).read_bytes()
    bin_layer = make_layer({"bin/busybox": binary}, modes={"bin/busybox": 0o755},
                           symlinks={f"bin/{applet}": "busybox" for applet in _BUSYBOX_APPLETS})
    etc_layer = make_layer(
        {"etc/os-release": _OS_RELEASE,
         "etc/passwd": "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
         "etc/group": "root:x:0:\nnogroup:x:65534:\n"},
        dirs=("root", "tmp", "run", "usr/local/bin", "var/empty"),
        symlinks={"var/run": "/run"},
        modes={"root": 0o700, "tmp": 0o1777})
    return bin_layer, etc_layer


def _base_layers() -> tuple[bytes, bytes]:
    return _base_layers_cached(str(_busybox_path()))


def _base_config(layers: Sequence[bytes], *, architecture: str = "amd64",
                 variant: str | None = None) -> dict[str, Any]:
    created = "2024-01-01T00:00:00Z"
    config: dict[str, Any] = {
        "architecture": architecture,
        "os": "linux",
        "created": created,
        "config": {"Env": list(BASE_ENV), "Cmd": ["sh"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [_diff_id(layer) for layer in layers]},
        "history": [
            *({"created": created, "created_by": f"/bin/sh -c #(nop) ADD file:layer{i} in / "}
              for i in range(len(layers))),
            {"created": created, "created_by": '/bin/sh -c #(nop)  CMD ["sh"]', "empty_layer": True},
        ],
    }
    if variant:
        config["variant"] = variant
    return config


def push_base_image(server: RegistryServer, repo: str = "base/docker", tag: str | None = "1", *,
                    flavour: Literal["docker", "oci", "multiarch"] = "docker") -> PushedImage:
    """Push the fixtures' base image into any registry (the same bytes, hence the same digests).

    ``docker``/``oci``: two gzip layers (static busybox with applet links; /etc files, dirs and
    a symlink), Env/Cmd/WorkingDir set, amd64. ``multiarch``: an OCI index over linux/amd64 and
    linux/arm64/v8, each with the /etc layer, a small layer of its own and its own config.
    """
    if flavour in ("docker", "oci"):
        layers = _base_layers()
        return push_image(server, repo, tag, layers, _base_config(layers), oci=flavour == "oci")
    if flavour != "multiarch":
        raise ConfigurationError(f"base image flavour {flavour!r}: use docker, oci or multiarch")
    _, etc_layer = _base_layers()
    children = []
    for architecture, variant in (("amd64", None), ("arm64", "v8")):
        platform = "/".join(p for p in ("linux", architecture, variant) if p)
        own = make_layer({"etc/platform": f"{platform}\n"})
        platform_layers = [etc_layer, own]
        children.append(push_image(server, repo, None, platform_layers,
                                   _base_config(platform_layers, architecture=architecture,
                                                variant=variant),
                                   oci=True))
    return push_index(server, repo, tag, children, oci=True)


