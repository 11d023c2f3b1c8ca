"""docker-archive: the writer's tarball, and reading classic, skopeo-style and OCI-style archives."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from cib_core import mediatypes as mt
from cib_core.errors import ConfigurationError, DigestMismatch, ManifestError, NotFound
from cib_core.formats.docker_archive import DockerArchiveReader, DockerArchiveWriter, normalize_repo_tag


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer_tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def image_blobs(marker: str = "a") -> tuple[bytes, bytes, bytes, bytes]:
    """(uncompressed layer, gzip layer, config, docker manifest)."""
    plain = layer_tar({"hello.txt": f"hello {marker}\n".encode()})
    gz = gzip.compress(plain, mtime=0)
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Env": [marker]},
                         "rootfs": {"type": "layers", "diff_ids": [sha(plain)]}}).encode()
    manifest = json.dumps({"schemaVersion": 2, "mediaType": mt.DOCKER_MANIFEST,
                           "config": {"mediaType": mt.DOCKER_CONFIG, "digest": sha(config),
                                      "size": len(config)},
                           "layers": [{"mediaType": mt.DOCKER_LAYER_GZIP, "digest": sha(gz),
                                       "size": len(gz)}]}).encode()
    return plain, gz, config, manifest


def write_image(store: DockerArchiveWriter, marker: str, *tags: str | None) -> tuple[bytes, bytes, bytes]:
    plain, gz, config, manifest = image_blobs(marker)
    store.put_blob(io.BytesIO(gz), digest=sha(gz), size=len(gz))
    store.put_blob([config])
    for tag in tags or (None,):
        store.put_manifest(manifest, mt.DOCKER_MANIFEST, tag)
    return plain, config, manifest


def members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        out = {}
        for m in tar:
            f = tar.extractfile(m) if m.isreg() else None
            out[m.name] = f.read() if f else b""
        return out


def test_writer_produces_docker_save_layout(tmp_path: Path) -> None:
    path = tmp_path / "img.tar"
    store = DockerArchiveWriter(path, "example.com/app:1")
    plain, config, manifest = write_image(store, "a", None, "2", "other/name:x")
    assert not path.exists()              # written at close
    assert store.get_manifest("")[0] == manifest
    store.close()
    files = members(path)
    diff_hex = sha(plain)[7:]
    assert files[f"{diff_hex}/layer.tar"] == plain      # uncompressed, named by diff_id
    assert files[f"{sha(config)[7:]}.json"] == config
    assert json.loads(files["manifest.json"]) == [{
        "Config": f"{sha(config)[7:]}.json",
        "RepoTags": ["example.com/app:1", "example.com/app:2", "other/name:x"],
        "Layers": [f"{diff_hex}/layer.tar"]}]
    assert json.loads(files["repositories"]) == {"example.com/app": {"1": diff_hex, "2": diff_hex},
                                                 "other/name": {"x": diff_hex}}
    assert not [p for p in tmp_path.iterdir() if p.name != "img.tar"]   # temp files gone


def test_reader_synthesizes_manifest_of_stored_files(tmp_path: Path) -> None:
    path = tmp_path / "img.tar"
    with DockerArchiveWriter(path) as store:
        plain, config, _ = write_image(store, "a", "app:1")
        plain_b, config_b, _ = write_image(store, "b", "app:2")
    reader = DockerArchiveReader(path)
    assert reader.repo_tags() == ["app:1", "app:2"]
    raw, media_type, digest = reader.get_manifest("docker.io/library/app:2")
    assert media_type == mt.DOCKER_MANIFEST and digest == sha(raw)
    manifest = json.loads(raw)
    assert manifest["config"] == {"mediaType": mt.DOCKER_CONFIG, "digest": sha(config_b),
                                  "size": len(config_b)}
    [layer] = manifest["layers"]
    assert layer == {"mediaType": mt.DOCKER_LAYER, "digest": sha(plain_b), "size": len(plain_b)}
    assert reader.open_blob(sha(plain_b)).read() == plain_b
    assert reader.open_blob(sha(config_b)).read() == config_b
    assert reader.get_manifest(digest)[0] == raw
    assert reader.get_manifest("@0")[0] == reader.get_manifest("app:1")[0]
    assert reader.get_manifest("2")[2] == digest     # a bare tag, unique in the archive
    with pytest.raises(NotFound, match="app:1, app:2"):
        reader.get_manifest("app:3")
    with pytest.raises(NotFound, match="holds 2 images"):
        reader.get_manifest("")
    with pytest.raises(ConfigurationError):
        reader.put_blob(b"x")
    reader.close()


def test_reader_follows_skopeo_style_symlinks_and_gzip_layers(tmp_path: Path) -> None:
    plain, gz, config, _ = image_blobs()
    path = tmp_path / "skopeo.tar.gz"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        add("abc.tar.gz", gz)
        link = tarfile.TarInfo("0123/layer.tar")
        link.type, link.linkname = tarfile.SYMTYPE, "../abc.tar.gz"
        tar.addfile(link)
        add("cfg.json", config)
        add("manifest.json", json.dumps([{"Config": "cfg.json", "RepoTags": ["docker.io/x/y:t"],
                                          "Layers": ["0123/layer.tar"]}]).encode())
    path.write_bytes(gzip.compress(buf.getvalue()))       # docker load takes gzip'd archives too
    reader = DockerArchiveReader(path, "x/y:t")
    manifest = json.loads(reader.get_manifest("")[0])
    [layer] = manifest["layers"]
    assert layer == {"mediaType": mt.DOCKER_LAYER_GZIP, "digest": sha(gz), "size": len(gz)}
    assert reader.open_blob(sha(gz)).read() == gz
    reader.close()


def test_reader_prefers_real_manifest_of_oci_style_archive(tmp_path: Path) -> None:
    plain, _, config, _ = image_blobs()
    manifest = json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST,
                           "config": {"mediaType": mt.OCI_CONFIG, "digest": sha(config), "size": len(config)},
                           "layers": [{"mediaType": mt.OCI_LAYER, "digest": sha(plain),
                                       "size": len(plain)}]}).encode()
    index = {"schemaVersion": 2, "manifests": [{
        "mediaType": mt.OCI_MANIFEST, "digest": sha(manifest), "size": len(manifest),
        "annotations": {"io.containerd.image.name": "docker.io/library/app:9",
                        "org.opencontainers.image.ref.name": "9"}}]}
    path = tmp_path / "new-docker.tar"
    with tarfile.open(path, "w") as tar:
        for name, data in [(f"blobs/sha256/{sha(b)[7:]}", b) for b in (plain, config, manifest)] + [
                ("index.json", json.dumps(index).encode()), ("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'),
                ("manifest.json", json.dumps([{"Config": f"blobs/sha256/{sha(config)[7:]}",
                                               "RepoTags": ["app:9"],
                                               "Layers": [f"blobs/sha256/{sha(plain)[7:]}"]}]).encode())]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    reader = DockerArchiveReader(path)
    assert reader.get_manifest("app:9") == (manifest, mt.OCI_MANIFEST, sha(manifest))
    assert reader.get_manifest("") == (manifest, mt.OCI_MANIFEST, sha(manifest))
    assert reader.open_blob(sha(plain)).read() == plain


def test_corrupt_layer_in_archive_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "img.tar"
    with DockerArchiveWriter(path, "app:1") as store:
        plain, _, _ = write_image(store, "a", "1")
    data = path.read_bytes()
    path.write_bytes(data.replace(b"hello a", b"hello b"))
    reader = DockerArchiveReader(path)
    layer = json.loads(reader.get_manifest("app:1")[0])["layers"][0]
    with pytest.raises(DigestMismatch):
        reader.open_blob(layer["digest"]).read()


def test_writer_refuses_index_wrong_diff_id_and_missing_blobs(tmp_path: Path) -> None:
    store = DockerArchiveWriter(tmp_path / "a.tar", "app:1")
    with pytest.raises(ManifestError, match="single-platform"):
        store.put_manifest(b'{"manifests": []}', mt.OCI_INDEX, "1")
    _, gz, _, manifest = image_blobs()
    store.put_manifest(manifest, mt.DOCKER_MANIFEST, "1")
    with pytest.raises(NotFound, match="never written"):
        store.close()
    assert not (tmp_path / "a.tar").exists()

    store = DockerArchiveWriter(tmp_path / "b.tar", "app:1")
    other_plain = layer_tar({"x": b"y"})
    config = json.dumps({"rootfs": {"type": "layers", "diff_ids": [sha(other_plain)]}}).encode()
    store.put_blob(gz)
    store.put_blob(config)
    store.put_manifest(json.dumps({"schemaVersion": 2, "mediaType": mt.DOCKER_MANIFEST,
                                   "config": {"digest": sha(config), "size": len(config)},
                                   "layers": [{"digest": sha(gz), "size": len(gz)}]}).encode(),
                       mt.DOCKER_MANIFEST, None)
    with pytest.raises(DigestMismatch):
        store.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_discard_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), DockerArchiveWriter(tmp_path / "a.tar") as store:
        write_image(store, "a", "x:1")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_normalize_repo_tag() -> None:
    assert normalize_repo_tag("busybox") == "docker.io/library/busybox:latest"
    assert normalize_repo_tag("user/app:1") == "docker.io/user/app:1"
    assert normalize_repo_tag("localhost:5000/a:b") == "localhost:5000/a:b"
    assert normalize_repo_tag("127.0.0.1:5000/a") == "127.0.0.1:5000/a:latest"
