"""Our OCI layouts and docker-archives, checked by skopeo and umoci in both directions."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from cib_core import mediatypes as mt
from cib_core.formats.docker_archive import DockerArchiveReader, DockerArchiveWriter
from cib_core.formats.flatten import export_filesystem
from cib_core.formats.oci_layout import OCILayoutStore

pytestmark = pytest.mark.integration

if not shutil.which("skopeo") or not shutil.which("umoci"):
    pytest.fail("skopeo and umoci are needed for these tests (apt-get install skopeo umoci)")


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def run(*args: str) -> str:
    result = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{args} failed: {result.stderr}"
    return result.stdout


def make_layer(files: dict[str, bytes]) -> tuple[bytes, bytes]:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    plain = buf.getvalue()
    return plain, gzip.compress(plain, mtime=0)


def build_into(store: OCILayoutStore | DockerArchiveWriter, marker: str, tag: str | None,
               *, docker: bool = False) -> tuple[str, str, list[str]]:
    """An image of one gzip layer: (manifest digest, config digest, diff_ids)."""
    plain, gz = make_layer({"etc/marker": marker.encode(), "hello.txt": b"hi\n"})
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "config": {"Env": [f"MARKER={marker}"], "Cmd": ["/bin/sh"]},
                         "rootfs": {"type": "layers", "diff_ids": [sha(plain)]}}).encode()
    store.put_blob(io.BytesIO(gz), digest=sha(gz), size=len(gz))
    store.put_blob([config], digest=sha(config), size=len(config))
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": mt.DOCKER_MANIFEST if docker else mt.OCI_MANIFEST,
        "config": {"mediaType": mt.DOCKER_CONFIG if docker else mt.OCI_CONFIG,
                   "digest": sha(config), "size": len(config)},
        "layers": [{"mediaType": mt.DOCKER_LAYER_GZIP if docker else mt.OCI_LAYER_GZIP,
                    "digest": sha(gz), "size": len(gz)}]}).encode()
    digest = store.put_manifest(manifest, mt.DOCKER_MANIFEST if docker else mt.OCI_MANIFEST, tag)
    assert digest == sha(manifest)
    return digest, sha(config), [sha(plain)]


def test_oci_layout_read_by_skopeo_and_umoci_with_several_tags(tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    store = OCILayoutStore(layout, create=True)
    d1, _, _ = build_into(store, "one", "v1")
    d2, c2, diff_ids = build_into(store, "two", "v2")
    assert store.tags() == ["v1", "v2"]
    for tag, digest in (("v1", d1), ("v2", d2)):
        info = json.loads(run("skopeo", "inspect", f"oci:{layout}:{tag}"))
        assert info["Digest"] == digest
    config = json.loads(run("skopeo", "inspect", "--config", f"oci:{layout}:v2"))
    assert config["rootfs"]["diff_ids"] == diff_ids
    assert sha(run("skopeo", "inspect", "--raw", f"oci:{layout}:v2").encode()) == d2
    bundle = tmp_path / "bundle"
    run("umoci", "unpack", "--rootless", "--image", f"{layout}:v2", str(bundle))
    assert (bundle / "rootfs" / "etc" / "marker").read_text() == "two"
    # umoci writes into the layout too; our store still reads what it left
    run("umoci", "tag", "--image", f"{layout}:v1", "also-v1")
    assert set(OCILayoutStore(layout).tags()) == {"v1", "v2", "also-v1"}
    assert OCILayoutStore(layout).get_manifest("also-v1")[2] == d1


def test_skopeo_docker_archive_read_by_our_reader(tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    store = OCILayoutStore(layout, create=True)
    _, config_digest, diff_ids = build_into(store, "x", "t")
    archive = tmp_path / "skopeo.tar"
    run("skopeo", "copy", "-q", f"oci:{layout}:t", f"docker-archive:{archive}:example/app:7")
    reader = DockerArchiveReader(archive)
    raw, media_type, digest = reader.get_manifest("example/app:7")
    manifest = json.loads(raw)
    assert manifest["config"]["digest"] == config_digest
    assert [layer["digest"] for layer in manifest["layers"]] == diff_ids   # stored uncompressed
    assert all(layer["mediaType"] == mt.DOCKER_LAYER for layer in manifest["layers"])
    config = json.loads(reader.open_blob(config_digest).read())
    assert config["rootfs"]["diff_ids"] == diff_ids
    for layer in manifest["layers"]:
        assert sha(reader.open_blob(layer["digest"]).read()) == layer["digest"]
    out = io.BytesIO()
    export_filesystem([reader.open_blob(layer["digest"]) for layer in manifest["layers"]], out)
    out.seek(0)
    with tarfile.open(fileobj=out) as tar:
        member = tar.extractfile("etc/marker")
        assert member is not None and member.read() == b"x"
    # and back out through our writer: uncompressed layers pass as they are; skopeo reads the result
    again = tmp_path / "again.tar"
    with DockerArchiveWriter(again, "example/again:1") as writer:
        for desc in [manifest["config"], *manifest["layers"]]:
            with reader.open_blob(desc["digest"]) as stream:
                writer.put_blob(stream, digest=desc["digest"], size=desc["size"])
        writer.put_manifest(raw, media_type, None)
    reader.close()
    config = json.loads(run("skopeo", "inspect", "--config", f"docker-archive:{again}"))
    assert config["rootfs"]["diff_ids"] == diff_ids
    assert DockerArchiveReader(again).get_manifest("example/again:1")[2] == digest


def test_our_docker_archive_read_by_skopeo(tmp_path: Path) -> None:
    archive = tmp_path / "ours.tar"
    with DockerArchiveWriter(archive, "example.com/app:1") as store:
        _, config_digest, diff_ids = build_into(store, "d", "1", docker=True)
        store.put_manifest(store.get_manifest("example.com/app:1")[0], mt.DOCKER_MANIFEST, "2")
    for number, suffix in enumerate(("", ":example.com/app:1", ":example.com/app:2")):
        target = tmp_path / f"copy{number}"
        run("skopeo", "copy", "-q", f"docker-archive:{archive}{suffix}", f"oci:{target}:t")
        info = json.loads(run("skopeo", "inspect", f"oci:{target}:t"))
        config = json.loads(run("skopeo", "inspect", "--config", f"oci:{target}:t"))
        assert config["rootfs"]["diff_ids"] == diff_ids
        assert sha(run("skopeo", "inspect", "--raw", f"oci:{target}:t").encode()) == info["Digest"]
        assert "MARKER=d" in info["Env"]
        # skopeo turns the config into an OCI one on the way; our store reads what it wrote
        copied = OCILayoutStore(target)
        raw, _, _ = copied.get_manifest("t")
        copied_config = json.loads(copied.open_blob(json.loads(raw)["config"]["digest"]).read())
        assert copied_config["rootfs"]["diff_ids"] == diff_ids
    # read straight from the archive, skopeo sees our exact config blob (the image ID)
    spec = f"docker-archive:{archive}:example.com/app:2"
    raw_manifest = json.loads(run("skopeo", "inspect", "--raw", spec))
    assert raw_manifest["config"]["digest"] == config_digest
    listed = json.loads(run("skopeo", "inspect", spec))
    assert listed["Layers"] == diff_ids
