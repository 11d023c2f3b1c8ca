"""Hostile local images: damaged docker-archives, OCI layouts with FIFOs, sockets and
directories where files belong, layers that are no tar or no gzip, a sparse file of 100 GiB,
300,000 entries. Every command answers with one `cib: error:` line and exit 1, at once (a
FIFO must not block), and an export's memory stays bounded by its paths.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import textwrap
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard

from cib_core import mediatypes as mt
from cib_core.digest import sha256_digest
from cib_core.formats.oci_layout import OCILayoutStore

pytestmark = pytest.mark.integration

CIB = str(Path(sys.executable).parent / "cib")


def cib(tmp: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, HOME=str(tmp / "home"))
    return subprocess.run([CIB, *args], capture_output=True, text=True, env=env, cwd=tmp,
                          timeout=timeout, check=False)


def assert_one_error_line(done: subprocess.CompletedProcess[str], *needles: str) -> str:
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 1, done.stderr
    assert len(lines) == 1 and lines[0].startswith("cib: error: "), done.stderr
    assert "Traceback" not in done.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# -- building inputs ------------------------------------------------------------------------------
def tar_of(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


GOOD_LAYER = tar_of({"etc/hello": b"hello\n"})
CONFIG = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                     "rootfs": {"type": "layers", "diff_ids": [sha256_digest(GOOD_LAYER)]}}).encode()


def archive(tmp: Path, files: dict[str, bytes], name: str = "a.tar") -> str:
    (tmp / name).write_bytes(tar_of(files))
    return f"docker-archive:{tmp / name}"


def good_archive_files() -> dict[str, bytes]:
    return {"manifest.json": json.dumps([{"Config": "c.json", "RepoTags": ["x/y:1"],
                                          "Layers": ["l/layer.tar"]}]).encode(),
            "c.json": CONFIG, "l/layer.tar": GOOD_LAYER}


def layout(tmp: Path, layer_blob: bytes = b"",
           media_type: str = mt.OCI_LAYER_GZIP) -> tuple[str, OCILayoutStore, dict[str, str]]:
    """An OCI layout tagged ``t`` with one layer; returns the reference, the store and the
    digests by role."""
    store = OCILayoutStore(tmp / "layout", create=True)
    blob = layer_blob or gzip.compress(GOOD_LAYER, mtime=0)
    layer_digest, layer_size = store.put_blob(blob)
    config_digest, config_size = store.put_blob(CONFIG)
    manifest = json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST,
                           "config": {"mediaType": mt.OCI_CONFIG, "digest": config_digest,
                                      "size": config_size},
                           "layers": [{"mediaType": media_type, "digest": layer_digest,
                                       "size": layer_size}]}).encode()
    manifest_digest = store.put_manifest(manifest, mt.OCI_MANIFEST, "t")
    return f"oci:{tmp / 'layout'}:t", store, {"manifest": manifest_digest, "config": config_digest,
                                              "layer": layer_digest}


def replace_with(path: Path, kind: str) -> None:
    path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    else:
        directory = os.open(path.parent, os.O_RDONLY)
        server = socket.socket(socket.AF_UNIX)
        try:
            server.bind(f"/proc/self/fd/{directory}/{path.name}")
        finally:
            server.close()
            os.close(directory)


def _archive_inputs() -> dict[str, Callable[[Path], tuple[str, str]]]:
    def damaged(change: Callable[[dict[str, bytes]], None], needle: str) -> Callable[[Path], tuple[str, str]]:
        def make(tmp: Path) -> tuple[str, str]:
            files = good_archive_files()
            change(files)
            return archive(tmp, files), needle
        return make

    def not_a_tar(tmp: Path) -> tuple[str, str]:
        (tmp / "a.tar").write_bytes(b"this is no tar archive " * 100)
        return f"docker-archive:{tmp / 'a.tar'}", "not a tar archive"

    def cut_off(tmp: Path) -> tuple[str, str]:
        whole = tar_of(good_archive_files())
        (tmp / "a.tar").write_bytes(whole[:700])
        return f"docker-archive:{tmp / 'a.tar'}", "a.tar"

    def gzip_cut_off(tmp: Path) -> tuple[str, str]:
        (tmp / "a.tar.gz").write_bytes(gzip.compress(tar_of(good_archive_files()))[:-20])
        return f"docker-archive:{tmp / 'a.tar.gz'}", "ends inside a gzip frame"

    def special(kind: str) -> Callable[[Path], tuple[str, str]]:
        def make(tmp: Path) -> tuple[str, str]:
            (tmp / "a.tar").write_bytes(b"")
            replace_with(tmp / "a.tar", kind)
            return f"docker-archive:{tmp / 'a.tar'}", "not a regular file"
        return make

    return {
        "manifest.json is not JSON": damaged(lambda f: f.update({"manifest.json": b"{nope"}),
                                              "manifest.json is not valid JSON"),
        "manifest.json is UTF-16": damaged(
            lambda f: f.update({"manifest.json": "[]".encode("utf-16")}), "manifest.json is not valid JSON"),
        "manifest.json is not a list": damaged(lambda f: f.update({"manifest.json": b"{}"}),
                                                "manifest.json is not a list"),
        "manifest.json has RepoTags as a string": damaged(lambda f: f.update({"manifest.json": json.dumps(
            [{"Config": "c.json", "RepoTags": "x/y:1", "Layers": ["l/layer.tar"]}]).encode()}),
            "lists of strings"),
        "manifest.json has Layers as numbers": damaged(lambda f: f.update({"manifest.json": json.dumps(
            [{"Config": "c.json", "RepoTags": [], "Layers": [1, 2]}]).encode()}), "lists of strings"),
        "manifest.json names a missing config": damaged(lambda f: f.pop("c.json"), "has no file 'c.json'"),
        "the config is not JSON": damaged(lambda f: f.update({"c.json": b"\x00\x01"}),
                                          "the config c.json is not valid JSON"),
        "index.json is not JSON": damaged(lambda f: (f.pop("manifest.json"), f.update({"index.json": b"["})),
                                          "index.json is not valid JSON"),
        "not a tar at all": not_a_tar,
        "a tar cut off": cut_off,
        "a gzip'd archive cut off": gzip_cut_off,
        "the archive is a FIFO": special("fifo"),
        "the archive is a socket": special("socket"),
        "the archive is a directory": special("directory"),
    }


ARCHIVES = _archive_inputs()


@pytest.mark.parametrize("command", ["manifest", "export", "copy"])
@pytest.mark.parametrize("case", sorted(ARCHIVES))
def test_damaged_docker_archives_are_one_error_line(tmp_path: Path, case: str, command: str) -> None:
    # config and inspect read an archive through the same reader as manifest
    ref, needle = ARCHIVES[case](tmp_path)
    args = {"manifest": ["manifest", ref], "export": ["export", ref, "fs.tar"],
            "copy": ["copy", ref, f"oci:{tmp_path / 'out'}:t"]}
    done = cib(tmp_path, *args[command])
    assert_one_error_line(done, needle)
    assert not (tmp_path / "fs.tar").exists()


def _layout_inputs() -> dict[str, tuple[str, str, tuple[str, ...]]]:
    """case -> (file to replace: index.json, oci-layout or a blob role; the kind; commands)."""
    every = ("manifest", "config", "inspect", "export", "copy")
    cases: dict[str, tuple[str, str, tuple[str, ...]]] = {}
    for kind in ("fifo", "socket", "directory"):
        cases[f"index.json is a {kind}"] = ("index.json", kind, every)
        cases[f"oci-layout is a {kind}"] = ("oci-layout", kind, every)
        cases[f"the manifest blob is a {kind}"] = ("manifest", kind, every)
        cases[f"the config blob is a {kind}"] = ("config", kind, ("config", "inspect", "copy"))
        cases[f"the layer blob is a {kind}"] = ("layer", kind, ("export", "copy"))
    return cases


LAYOUTS = _layout_inputs()


@pytest.mark.parametrize("case", sorted(LAYOUTS))
def test_layout_files_that_are_not_files_are_one_error_line_at_once(tmp_path: Path, case: str) -> None:
    where, kind, commands = LAYOUTS[case]
    ref, store, digests = layout(tmp_path)
    named = where in ("index.json", "oci-layout")
    path = tmp_path / "layout" / where if named else store.blob_path(digests[where])
    replace_with(path, kind)
    expected = {"fifo": "FIFO", "socket": "socket", "directory": "directory"}[kind]
    for command in commands:
        args = {"manifest": ["manifest", ref], "config": ["config", ref], "inspect": ["inspect", ref],
                "export": ["export", ref, "fs.tar"],
                "copy": ["copy", ref, f"oci:{tmp_path / 'out'}:t"]}[command]
        started = time.monotonic()
        done = cib(tmp_path, *args, timeout=60)
        assert time.monotonic() - started < 30, f"{command} took too long"
        assert_one_error_line(done, expected, "not a regular file")
        assert not (tmp_path / "fs.tar").exists()


def _sparse_layer(tmp: Path, size: int, fmt: str) -> bytes:
    """A layer with one sparse file of ``size`` bytes (data at its start and end), made by
    GNU tar, which stores only the data."""
    work = tmp / f"sparse-{fmt}"
    work.mkdir()
    with open(work / "big", "wb") as handle:
        handle.write(b"head")
        handle.truncate(size)
        handle.seek(size - 4)
        handle.write(b"tail")
    subprocess.run(["tar", "--sparse", f"--format={fmt}", "-C", str(work), "-cf", str(work / "l.tar"), "big"],
                   check=True)
    (work / "big").unlink()
    return gzip.compress((work / "l.tar").read_bytes(), mtime=0)


@pytest.mark.parametrize("fmt", ["posix", "gnu"])
def test_a_small_layer_with_a_100_gib_sparse_file_is_refused(tmp_path: Path, fmt: str) -> None:
    blob = _sparse_layer(tmp_path, 100 << 30, fmt)
    assert len(blob) < 10_000
    ref, _, _ = layout(tmp_path, blob)
    started = time.monotonic()
    done = cib(tmp_path, "export", ref, "fs.tar")
    assert time.monotonic() - started < 30
    assert_one_error_line(done, "big", "sparse", "--max-sparse-expansion")
    assert not (tmp_path / "fs.tar").exists()
    done = cib(tmp_path, "export", ref, "-", "--max-sparse-expansion", "1M")
    assert_one_error_line(done, "sparse")


@pytest.mark.parametrize("fmt", ["posix", "gnu"])
def test_a_sparse_file_within_the_limit_is_exported_whole(tmp_path: Path, fmt: str) -> None:
    size = 3 << 20
    ref, _, _ = layout(tmp_path, _sparse_layer(tmp_path, size, fmt))
    assert_one_error_line(cib(tmp_path, "export", ref, "fs.tar", "--max-sparse-expansion", "1M"), "sparse")
    done = cib(tmp_path, "export", ref, "fs.tar", "--max-sparse-expansion", "4M")
    assert done.returncode == 0, done.stderr
    with tarfile.open(tmp_path / "fs.tar") as tar:
        member = tar.getmember("big")
        assert member.type == tarfile.REGTYPE and member.size == size and member.sparse is None
        handle = tar.extractfile(member)
        assert handle is not None
        data = handle.read()
    assert data[:4] == b"head" and data[-4:] == b"tail" and data[4:-4] == bytes(size - 8)


LAYER_BLOBS: dict[str, tuple[bytes, str]] = {
    "the layer is neither gzip nor tar": (b"not a layer at all " * 100, "is not a valid tar archive"),
    "the layer is gzip of no tar": (gzip.compress(b"plain text, no tar " * 100),
                                    "is not a valid tar archive"),
    "the gzip layer is cut off": (gzip.compress(GOOD_LAYER + bytes(2048))[:-30],
                                  "ends inside a gzip frame"),
    "the gzip layer is not deflate": (b"\x1f\x8b\x08\x00" + b"garbage " * 50, "is not valid gzip"),
    "the zstd layer is cut off": (zstandard.ZstdCompressor().compress(GOOD_LAYER)[:-9],
                                  "ends inside a zstd frame"),
    "the tar inside is cut off": (gzip.compress(GOOD_LAYER[:600]), "is not a valid tar archive"),
    "a raw deflate stream": (zlib.compress(GOOD_LAYER), "is not a valid tar archive"),
}


@pytest.mark.parametrize("case", sorted(LAYER_BLOBS))
def test_export_of_a_layer_that_is_no_tar_is_one_error_line(tmp_path: Path, case: str) -> None:
    blob, needle = LAYER_BLOBS[case]
    ref, _, digests = layout(tmp_path, blob)
    for out in ("fs.tar", "-"):
        done = cib(tmp_path, "export", ref, out)
        assert_one_error_line(done, digests["layer"], needle)
    assert not (tmp_path / "fs.tar").exists()


_MEASURE = textwrap.dedent("""
    import resource, sys, time
    from cib_core.formats.flatten import export_filesystem
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.monotonic()
    with open(sys.argv[1], "rb") as layer, open("/dev/null", "wb") as out:
        export_filesystem([layer], out)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print((after - before) * 1024, time.monotonic() - started)
""")


@pytest.mark.slow
def test_export_memory_grows_with_paths_not_with_tar_headers(tmp_path: Path) -> None:
    """60,000 entries: tarfile's own list of headers alone took about 55 MB here."""
    entries = 60_000
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in range(entries // 1000):
            info = tarfile.TarInfo(f"dir{d:03d}")
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
            for f in range(999):
                data = b"%d" % f
                info = tarfile.TarInfo(f"dir{d:03d}/a-file-with-a-longer-name-{f:04d}.txt")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    (tmp_path / "layer.tar.gz").write_bytes(gzip.compress(buf.getvalue(), 1))
    del buf
    done = subprocess.run([sys.executable, "-c", _MEASURE, str(tmp_path / "layer.tar.gz")],
                          capture_output=True, text=True, check=True, timeout=600)
    grown, seconds = done.stdout.split()
    # the merged tree holds about 220 bytes a path; 30 MB leaves room, tarfile's headers did not
    assert int(grown) < 30 << 20, f"export grew by {int(grown) >> 20} MB for {entries} entries in {seconds} s"


def test_fixtures_need_gnu_tar() -> None:
    assert shutil.which("tar") is not None
