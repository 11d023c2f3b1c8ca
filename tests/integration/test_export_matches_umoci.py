"""`cib export` gives the filesystem `umoci raw unpack` gives, on the OCI image-layer spec's
rules: whiteouts and opaque directories apply to lower layers only, an entry replaces what is
at its path unless both are directories, the last of two entries with one path wins, hard
links share the inode their target had when they were made.

Random layer stacks (hypothesis) are unpacked by umoci and exported by cib; cib's tarball,
extracted by GNU tar, must give the same tree: types, contents, symlink targets, modes,
owners, the times of all but directories, and which paths share an inode. Every layer lists a path's parent
directories before it, as layers written by real tools do: below a path that is not a
directory the two tools differ on purpose (umoci writes through a lower layer's symlink,
overlayfs and cib do not; see cib_core/formats/flatten.py).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from cib_core import mediatypes as mt
from cib_core.formats.flatten import export_filesystem
from cib_core.formats.oci_layout import OCILayoutStore

pytestmark = pytest.mark.integration

if os.geteuid() != 0 or shutil.which("umoci") is None or shutil.which("tar") is None:
    pytest.fail("these tests compare with `umoci raw unpack` as root (apt-get install umoci)",
                pytrace=False)


@dataclass(frozen=True)
class Op:
    """One entry of a layer: kind is file, dir, symlink, hardlink, fifo, device, whiteout or
    opaque."""

    kind: str
    path: str
    value: str = ""      # file content, symlink target, hard link target
    mode: int = 0o644
    owner: int = 0
    mtime: int = 1_000_000


def _entry_name(op: Op) -> str:
    if op.kind == "whiteout":
        directory, _, base = op.path.rpartition("/")
        return f"{directory}/.wh.{base}" if directory else f".wh.{base}"
    if op.kind == "opaque":
        return f"{op.path}/.wh..wh..opq" if op.path else ".wh..wh..opq"
    return op.path


def _tar_entry(tar: tarfile.TarFile, op: Op) -> None:
    info = tarfile.TarInfo(_entry_name(op))
    info.mode, info.uid, info.gid, info.mtime = op.mode, op.owner, op.owner, op.mtime
    data = None
    if op.kind == "file":
        body = op.value.encode()
        info.size = len(body)
        data = io.BytesIO(body)
    elif op.kind == "dir":
        info.type = tarfile.DIRTYPE
    elif op.kind == "symlink":
        info.type, info.linkname = tarfile.SYMTYPE, op.value
    elif op.kind == "hardlink":
        info.type, info.linkname = tarfile.LNKTYPE, op.value
    elif op.kind == "fifo":
        info.type = tarfile.FIFOTYPE
    elif op.kind == "device":
        info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
    tar.addfile(info, data)


def layer_tar(ops: list[Op]) -> bytes:
    """A layer as tools write it: each entry after dir entries for its parents."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for op in ops:
            parts = _entry_name(op).split("/")
            for depth in range(1, len(parts)):
                _tar_entry(tar, Op("dir", "/".join(parts[:depth]), mode=0o755, mtime=2_000_000))
            _tar_entry(tar, op)
    return buf.getvalue()


def write_layout(layout: Path, layers: list[bytes]) -> list[bytes]:
    """An OCI layout tagged ``t`` whose image has ``layers`` (plain tars), gzip'd; returns
    the gzip'd blobs."""
    store = OCILayoutStore(layout, create=True)
    blobs = [gzip.compress(plain, mtime=0) for plain in layers]
    descriptors = []
    for blob in blobs:
        digest, size = store.put_blob(blob)
        descriptors.append({"mediaType": mt.OCI_LAYER_GZIP, "digest": digest, "size": size})
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": [
                             "sha256:" + hashlib.sha256(plain).hexdigest() for plain in layers]}}).encode()
    config_digest, config_size = store.put_blob(config)
    manifest = json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST,
                           "config": {"mediaType": mt.OCI_CONFIG, "digest": config_digest,
                                      "size": config_size},
                           "layers": descriptors}).encode()
    store.put_manifest(manifest, mt.OCI_MANIFEST, "t")
    return blobs


def umoci_rootfs(layout: Path, rootfs: Path) -> Path | None:
    """``umoci raw unpack`` of the layout's ``t``; None when umoci refuses the image."""
    done = subprocess.run(["umoci", "raw", "unpack", "--image", f"{layout}:t", str(rootfs)],
                          capture_output=True, text=True, check=False)
    return rootfs if done.returncode == 0 else None


def extract(tarball: Path, into: Path) -> Path:
    into.mkdir()
    subprocess.run(["tar", "--numeric-owner", "--warning=no-timestamp", "-xpf", str(tarball),
                    "-C", str(into)], check=True)
    return into


def tree(root: Path) -> dict[str, object]:
    """Everything a container would see below ``root``, and which paths share an inode."""
    found: dict[str, object] = {}
    inodes: dict[tuple[int, int], list[str]] = {}
    for directory, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            path = Path(directory) / name
            rel = str(path.relative_to(root))
            st_ = os.lstat(path)
            kind = stat.S_IFMT(st_.st_mode)
            entry: dict[str, object] = {"type": kind, "owner": (st_.st_uid, st_.st_gid)}
            if not stat.S_ISLNK(st_.st_mode):
                entry["mode"] = stat.S_IMODE(st_.st_mode)
            if not stat.S_ISDIR(st_.st_mode):
                # a directory's time is left out: umoci leaves the time of the moment it
                # deleted something in it, where cib keeps the entry's time
                entry["mtime"] = int(st_.st_mtime)
            if stat.S_ISREG(st_.st_mode):
                entry["content"] = path.read_bytes()
            if stat.S_ISLNK(st_.st_mode):
                entry["target"] = os.readlink(path)
            if not stat.S_ISDIR(st_.st_mode):
                inodes.setdefault((st_.st_dev, st_.st_ino), []).append(rel)
            found[rel] = entry
    found["<hard links>"] = sorted(sorted(paths) for paths in inodes.values() if len(paths) > 1)
    return found


def compare(tmp: Path, layers: list[list[Op]], *, random: bool = False) -> None:
    plain = [layer_tar(ops) for ops in layers]
    layout = tmp / "layout"
    blobs = write_layout(layout, plain)
    expected = umoci_rootfs(layout, tmp / "umoci")
    if random:
        assume(expected is not None)   # a hard link to nothing: umoci refuses the image
    assert expected is not None
    exported = tmp / "export.tar"
    export_filesystem([io.BytesIO(blob) for blob in blobs], exported)
    with tarfile.open(exported) as tar:
        names = [m.name for m in tar.getmembers()]
    assert len(names) == len(set(names)), "an entry written twice"
    assert tree(extract(exported, tmp / "cib")) == tree(expected)


# -- the cases the issue names, and their neighbours -------------------------------------------
NAMED = {
    "a directory replaced by a symlink takes its contents along": [
        [Op("file", "d/x", "lower"), Op("file", "d/sub/y", "deep")],
        [Op("symlink", "d", "/elsewhere")],
        [Op("dir", "d"), Op("file", "d/new", "again")],
    ],
    "a directory replaced by a file, then a directory again": [
        [Op("file", "d/x", "1")], [Op("file", "d", "now a file")], [Op("dir", "d", mode=0o700)],
    ],
    "of two entries with one path in a layer the last wins": [
        [Op("file", "a", "first"), Op("file", "a", "second", mode=0o600),
         Op("symlink", "b", "x"), Op("file", "b", "file after symlink"),
         Op("file", "c", "file"), Op("dir", "c", mode=0o711)],
    ],
    "a regular file after a hard link of the same name": [
        [Op("file", "target", "t")],
        [Op("hardlink", "a", "target"), Op("file", "a", "regular after link")],
    ],
    "a hard link keeps the content its target had": [
        [Op("file", "t", "lower", mode=0o640)], [Op("hardlink", "l", "t")],
        [Op("file", "t", "upper")],
    ],
    "a hard link made before its target is replaced in the same layer": [
        [Op("file", "t", "lower")],
        [Op("hardlink", "l", "t"), Op("file", "t", "same layer"), Op("hardlink", "m", "t")],
    ],
    "whiteouts spare what the same layer added": [
        [Op("file", "d/old", "o"), Op("file", "x", "x")],
        [Op("file", "d/new", "n"), Op("opaque", "d"), Op("file", "x", "new x"), Op("whiteout", "x")],
    ],
    "a whiteout of a directory, then the directory again": [
        [Op("file", "d/a", "a"), Op("file", "d/b", "b")],
        [Op("whiteout", "d"), Op("file", "d/c", "c")],
    ],
}


@pytest.mark.parametrize("case", sorted(NAMED))
def test_named_cases_match_umoci(tmp_path: Path, case: str) -> None:
    compare(tmp_path, NAMED[case])


def test_cib_export_command_matches_umoci(tmp_path: Path) -> None:
    layers = NAMED["a directory replaced by a symlink takes its contents along"]
    write_layout(tmp_path / "layout", [layer_tar(ops) for ops in layers])
    rootfs = umoci_rootfs(tmp_path / "layout", tmp_path / "umoci")
    assert rootfs is not None
    cib = str(Path(sys.executable).parent / "cib")
    done = subprocess.run([cib, "export", f"oci:{tmp_path / 'layout'}:t", str(tmp_path / "fs.tar")],
                          capture_output=True, text=True, check=False,
                          env=dict(os.environ, HOME=str(tmp_path)))
    assert done.returncode == 0, done.stderr
    assert tree(extract(tmp_path / "fs.tar", tmp_path / "cib")) == tree(rootfs)
    assert not (tmp_path / "cib" / "d" / "x").exists()


# -- random stacks -------------------------------------------------------------------------------
PATHS = ["a", "b", "a/x", "a/y", "b/x", "a/x/p", "a/x/q", "c" * 120, "a/" + "long" * 30]


@st.composite
def layer_ops(draw: st.DrawFn, earlier: list[str]) -> list[Op]:
    ops: list[Op] = []
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["file", "file", "dir", "symlink", "hardlink", "fifo",
                                     "device", "whiteout", "opaque"]))
        path = draw(st.sampled_from(PATHS))
        mode = draw(st.sampled_from([0o644, 0o600, 0o755, 0o700, 0o444]))
        owner = draw(st.sampled_from([0, 1000]))
        mtime = draw(st.integers(0, 1_600_000_000))
        if kind == "hardlink":
            targets = [p for p in earlier if p != path]
            if not targets:
                continue
            ops.append(Op(kind, path, draw(st.sampled_from(targets)), mode, owner, mtime))
            continue
        if kind == "opaque":
            path = draw(st.sampled_from(["a", "b", "a/x"]))
        value = draw(st.text("xyz/.", max_size=8)) if kind in ("file", "symlink") else ""
        if kind == "symlink" and not value:
            value = "/"
        ops.append(Op(kind, path, value, mode, owner, mtime))
        if kind in ("file", "symlink", "fifo", "device"):
            earlier.append(path)
    return ops


@st.composite
def stacks(draw: st.DrawFn) -> list[list[Op]]:
    earlier: list[str] = []
    return [draw(layer_ops(earlier)) for _ in range(draw(st.integers(1, 5)))]


@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.filter_too_much])
@given(layers=stacks())
def test_random_layer_stacks_match_umoci(tmp_path_factory: pytest.TempPathFactory,
                                         layers: list[list[Op]]) -> None:
    compare(tmp_path_factory.mktemp("stack"), layers, random=True)
