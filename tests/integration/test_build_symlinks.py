"""``cib build --no-follow-symlinks`` and the symlink errors, each naming the option of the
interface in use: ``follow_symlinks=False`` from Python, ``--no-follow-symlinks`` from the CLI."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from cib_core import Image, LayerSourceError
from cib_core.testing import umoci_unpack

pytestmark = pytest.mark.integration

APPLETS = ("sh", "ls", "cat", "echo", "env", "true", "false", "pwd", "id", "mkdir", "rm", "test",
           "sleep", "wc", "head", "grep", "find", "stat", "readlink", "uname", "cp", "mv", "ln",
           "chmod", "sed", "awk", "tar", "gzip", "vi", "ps")
BINARY_SIZE = 256 * 1024


def cib(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The installed ``cib`` script, as a user runs it."""
    script = Path(sys.executable).parent / "cib"
    return subprocess.run([str(script), *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def busybox_tree(root: Path) -> Path:
    """A userland in the busybox style: one binary (random, so gzip cannot fold copies of it
    together) and a relative symlink to it per applet."""
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "busybox").write_bytes(os.urandom(BINARY_SIZE))
    (root / "bin" / "busybox").chmod(0o755)
    for applet in APPLETS:
        (root / "bin" / applet).symlink_to("busybox")
    (root / "etc").mkdir()
    (root / "etc" / "motd").write_text("hi\n")
    (root / "sbin").mkdir()
    (root / "sbin" / "init").symlink_to("../bin/busybox")
    return root


def only_layer(layout: Path, tag: str) -> tuple[dict[str, object], bytes]:
    """The single layer's descriptor and blob, read from the OCI layout's own files."""
    index = json.loads((layout / "index.json").read_text())
    [entry] = [m for m in index["manifests"]
               if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag]
    blobs = layout / "blobs" / "sha256"
    manifest = json.loads((blobs / entry["digest"].split(":", 1)[1]).read_bytes())
    [layer] = manifest["layers"]
    blob = (blobs / layer["digest"].split(":", 1)[1]).read_bytes()
    assert "sha256:" + hashlib.sha256(blob).hexdigest() == layer["digest"]
    return layer, blob


def members(blob: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:*") as tar:
        return {m.name.rstrip("/"): m for m in tar.getmembers()}


def test_no_follow_symlinks_keeps_a_busybox_tree_small(tmp_path: Path) -> None:
    tree = busybox_tree(tmp_path / "rootfs")
    layout = tmp_path / "layout"

    kept = cib("build", "--from", "scratch", "--to", f"oci:{layout}:links", "--add", f"{tree}:/",
               "--no-follow-symlinks", cwd=tmp_path)
    assert kept.returncode == 0, kept.stderr
    followed = cib("build", "--from", "scratch", "--to", f"oci:{layout}:copies", "--add", f"{tree}:/",
                   cwd=tmp_path)
    assert followed.returncode == 0, followed.stderr

    kept_layer, kept_blob = only_layer(layout, "links")
    copies_layer, copies_blob = only_layer(layout, "copies")
    # one copy of the binary with the flag; one per applet without it
    assert int(str(kept_layer["size"])) < BINARY_SIZE * 1.1
    assert int(str(copies_layer["size"])) > BINARY_SIZE * (len(APPLETS) + 1)

    links = members(kept_blob)
    assert links["bin/busybox"].isreg() and links["bin/busybox"].size == BINARY_SIZE
    for applet in APPLETS:
        assert links[f"bin/{applet}"].issym() and links[f"bin/{applet}"].linkname == "busybox", applet
    assert links["sbin/init"].issym() and links["sbin/init"].linkname == "../bin/busybox"
    copies = members(copies_blob)
    assert copies["bin/sh"].isreg() and copies["bin/sh"].size == BINARY_SIZE
    assert copies["sbin/init"].isreg() and copies["sbin/init"].size == BINARY_SIZE

    # umoci, an independent reader of the layout, unpacks the links as links
    rootfs = umoci_unpack(layout, "links", tmp_path / "bundle")
    assert os.readlink(rootfs / "bin" / "sh") == "busybox"
    assert (rootfs / "bin" / "sh").resolve() == (rootfs / "bin" / "busybox").resolve()
    assert (rootfs / "bin" / "busybox").read_bytes() == (tree / "bin" / "busybox").read_bytes()


@pytest.mark.parametrize("kind", ["dangling link", "link to an ancestor"])
def test_symlink_errors_name_the_option_of_the_interface_in_use(kind: str, tmp_path: Path) -> None:
    tree = tmp_path / "app"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "main.py").write_text("print('hi')\n")
    bad = tree / "sub" / "bad"
    bad.symlink_to("nowhere" if kind == "dangling link" else "..")
    layout = tmp_path / "layout"

    with pytest.raises(LayerSourceError) as raised:
        Image("scratch", f"oci:{layout}:py").add_files({"/app": str(tree)})
    message = str(raised.value)
    assert str(bad) in message
    assert message.endswith(", or use follow_symlinks=False"), message
    assert "--no-follow-symlinks" not in message
    assert raised.value.option == "follow_symlinks=False"

    failed = cib("build", "--from", "scratch", "--to", f"oci:{layout}:cli", "--add", f"{tree}:/app",
                 cwd=tmp_path)
    assert failed.returncode == 1
    lines = failed.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("cib: error: "), failed.stderr
    assert str(bad) in lines[0]
    assert lines[0].endswith(", or use --no-follow-symlinks"), lines[0]
    assert "follow_symlinks=False" not in lines[0]

    # and the flag the message names does get past it: the link is stored as it is
    kept = cib("build", "--from", "scratch", "--to", f"oci:{layout}:cli", "--add", f"{tree}:/app",
               "--no-follow-symlinks", cwd=tmp_path)
    assert kept.returncode == 0, kept.stderr
    _, blob = only_layer(layout, "cli")
    stored = members(blob)["app/sub/bad"]
    assert stored.issym() and stored.linkname == os.readlink(bad)
