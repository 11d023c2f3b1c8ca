"""A built layer unpacked by an independent tool: umoci."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from cib_core import mediatypes
from cib_core.layers.build import build_layer
from cib_core.layers.custom_file import CustomFile
from cib_core.layers.pipeline import BuiltLayer

pytestmark = pytest.mark.integration


def write_blob(layout: Path, data: bytes) -> tuple[str, int]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest.split(":")[1]).write_bytes(data)
    return digest, len(data)


def make_layout(layout: Path, layer: BuiltLayer) -> None:
    """An OCI image layout with one image of one layer, written by hand."""
    (layout / "blobs" / "sha256").mkdir(parents=True)
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    shutil.copyfile(layer.path, layout / "blobs" / "sha256" / layer.info.digest.split(":")[1])
    config = {"architecture": "amd64", "os": "linux", "config": {},
              "rootfs": {"type": "layers", "diff_ids": [layer.info.diff_id]}}
    cdigest, csize = write_blob(layout, json.dumps(config).encode())
    manifest = {
        "schemaVersion": 2, "mediaType": mediatypes.OCI_MANIFEST,
        "config": {"mediaType": mediatypes.OCI_CONFIG, "digest": cdigest, "size": csize},
        "layers": [{"mediaType": layer.info.media_type, "digest": layer.info.digest,
                    "size": layer.info.size}],
    }
    mdigest, msize = write_blob(layout, json.dumps(manifest).encode())
    index = {"schemaVersion": 2, "mediaType": mediatypes.OCI_INDEX, "manifests": [
        {"mediaType": mediatypes.OCI_MANIFEST, "digest": mdigest, "size": msize,
         "annotations": {"org.opencontainers.image.ref.name": "test"}}]}
    (layout / "index.json").write_text(json.dumps(index))


@pytest.mark.parametrize("compression", ["gzip", "none"])  # umoci 0.4.7 cannot read zstd
def test_umoci_unpacks_a_built_layer(pm, tmp_path, compression):
    if shutil.which("umoci") is None:
        pytest.fail("umoci is not installed (apt-get install umoci)")
    src = tmp_path / "src"
    (src / "bin").mkdir(parents=True)
    (src / "bin" / "tool").write_text("#!/bin/sh\necho tool\n")
    (src / "bin" / "tool").chmod(0o755)
    (src / "data.bin").write_bytes(os.urandom(300_000))
    (src / "tool-link").symlink_to("bin/tool")
    os.link(src / "data.bin", src / "data-hard")
    deep = src / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    (deep / ("f" * 150)).write_text("long path")
    sources = {"/app": src, "/etc/motd": CustomFile("welcome\n", mode=0o600)}
    with build_layer(pm, sources, compression=compression, follow_symlinks=False) as layer:
        make_layout(tmp_path / "layout", layer)
    bundle = tmp_path / "bundle"
    result = subprocess.run(["umoci", "unpack", "--rootless", "--image",
                             f"{tmp_path / 'layout'}:test", str(bundle)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    rootfs = bundle / "rootfs"
    assert (rootfs / "app" / "bin" / "tool").read_text() == "#!/bin/sh\necho tool\n"
    assert stat.S_IMODE((rootfs / "app" / "bin" / "tool").stat().st_mode) == 0o755
    assert stat.S_IMODE((rootfs / "app").stat().st_mode) == 0o755
    assert os.readlink(rootfs / "app" / "tool-link") == "bin/tool"
    assert (rootfs / "app" / "data.bin").read_bytes() == (src / "data.bin").read_bytes()
    hard = (rootfs / "app" / "data-hard").stat()
    assert hard.st_ino == (rootfs / "app" / "data.bin").stat().st_ino and hard.st_nlink == 2
    assert (rootfs / "app" / ("d" * 60) / ("e" * 60) / ("f" * 150)).read_text() == "long path"
    assert (rootfs / "etc" / "motd").read_text() == "welcome\n"
    assert stat.S_IMODE((rootfs / "etc" / "motd").stat().st_mode) == 0o600
