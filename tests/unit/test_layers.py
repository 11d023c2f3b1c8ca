"""The layer builder: determinism, normalization, compression, hashing, tarballs as they are."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import pytest
import zstandard

from cib_core import mediatypes
from cib_core.errors import ConfigurationError, LayerSourceError, PluginError
from cib_core.layers.build import LayerBuilder, build_layer, collect_entries, write_layer
from cib_core.layers.custom_file import CustomFile
from cib_core.layers.pipeline import GZIP_HEADER, BuiltLayer, LayerInfo
from cib_core.layers.tar import normalize_target
from cib_core.layers.tarball import layer_from_tarball
from cib_core.plugin_api import LayerOptions, dir_entry, file_entry, keep_fields, symlink_entry
from cib_core.plugins import hookimpl


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def read_blob(layer: BuiltLayer) -> bytes:
    with layer.open() as f:
        return f.read()


def decompress(blob: bytes, compression: str) -> bytes:
    if compression == "gzip":
        return gzip.decompress(blob)
    if compression == "zstd":
        return zstandard.ZstdDecompressor().decompressobj().decompress(blob)
    return blob


def members(tar_bytes: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(tar_bytes), mode="r:",
                      errors="surrogateescape") as t:
        return t.getmembers()


def contents(tar_bytes: bytes) -> dict[str, bytes | None]:
    out: dict[str, bytes | None] = {}
    with tarfile.open(fileobj=io.BytesIO(tar_bytes), mode="r:", errors="surrogateescape") as t:
        for m in t.getmembers():
            f = t.extractfile(m) if m.isreg() else None
            out[m.name] = f.read() if f else None
    return out


def make_tree(root: Path) -> None:
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "a.txt").write_text("alpha\n")
    (root / "sub" / "b.bin").write_bytes(bytes(range(256)) * 100)
    (root / "sub" / "deeper" / "c").write_text("c")
    (root / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (root / "run.sh").chmod(0o755)
    (root / "a").mkdir()
    (root / "a" / "z").write_text("z")
    (root / "a.d").write_text("dot")


# -- determinism and normalization ------------------------------------------------------------
def test_two_builds_with_different_times_and_owners_give_the_same_digests(pm, tmp_path, monkeypatch):
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    one, two = tmp_path / "one", tmp_path / "two"
    make_tree(one)
    make_tree(two)
    for i, p in enumerate(sorted(two.rglob("*"))):
        os.utime(p, (1_600_000_000 + i, 1_600_000_000 + i), follow_symlinks=False)
        os.chown(p, 1234 + i, 4321 + i, follow_symlinks=False)
    with build_layer(pm, {"/app": one}) as l1, build_layer(pm, {"/app": str(two)}) as l2:
        assert l1.info == l2.info
        assert read_blob(l1) == read_blob(l2)
        assert l1.info.digest != l1.info.diff_id


def test_entries_sorted_parents_added_owners_and_names_cleared(pm, tmp_path, monkeypatch):
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    make_tree(tmp_path)
    os.chown(tmp_path / "a.txt", 1000, 1000)
    with build_layer(pm, {"/srv/www/app": tmp_path}) as layer:
        ms = members(decompress(read_blob(layer), "gzip"))
    names = [m.name for m in ms]
    # component-wise order: a directory's contents follow it ("a/z" before "a.d")
    assert names == ["srv", "srv/www", "srv/www/app", "srv/www/app/a", "srv/www/app/a/z",
                     "srv/www/app/a.d", "srv/www/app/a.txt", "srv/www/app/run.sh",
                     "srv/www/app/sub", "srv/www/app/sub/b.bin", "srv/www/app/sub/deeper",
                     "srv/www/app/sub/deeper/c"]
    for m in ms:
        assert (m.uid, m.gid, m.uname, m.gname, m.mtime) == (0, 0, "", "", 0)
        if m.isdir():
            assert m.mode == 0o755
    modes = {m.name: m.mode for m in ms}
    assert modes["srv/www/app/run.sh"] == 0o755
    assert modes["srv/www/app/a.txt"] == 0o644


def test_source_date_epoch_sets_every_mtime(pm, tmp_path, monkeypatch):
    make_tree(tmp_path)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    with build_layer(pm, {"/x": tmp_path, "/m": CustomFile("m")}) as layer:
        ms = members(decompress(read_blob(layer), "gzip"))
    assert {m.mtime for m in ms} == {1700000000}
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "soon")
    with pytest.raises(ConfigurationError, match="SOURCE_DATE_EPOCH"):
        build_layer(pm, {"/x": tmp_path})


def test_explicit_mtime_argument_wins_over_the_environment(pm, tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    (tmp_path / "f").write_text("f")
    with build_layer(pm, {"/x": tmp_path}, mtime=42) as layer:
        assert {m.mtime for m in members(gzip.decompress(read_blob(layer)))} == {42}


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_digest_is_sha_of_blob_and_diff_id_of_the_tar(pm, tmp_path, compression):
    make_tree(tmp_path)
    with build_layer(pm, {"/": tmp_path}, compression=compression) as layer:
        blob = read_blob(layer)
        tar = decompress(blob, compression)
        assert layer.info.digest == sha(blob)
        assert layer.info.diff_id == sha(tar)
        assert layer.info.size == len(blob) == os.path.getsize(layer.path)
        assert layer.info.media_type == mediatypes.layer_media_type(False, compression)
        assert contents(tar)["sub/deeper/c"] == b"c"
        assert len(tar) % tarfile.RECORDSIZE == 0
    assert not os.path.exists(layer.path), "close() deletes the temporary blob"


def test_gzip_header_is_fixed_and_docker_flavour_sets_media_type(pm, tmp_path):
    (tmp_path / "f").write_text("x" * 10000)
    with build_layer(pm, {"/": tmp_path}, docker_flavour=True) as layer:
        blob = read_blob(layer)
    assert blob[:10] == GZIP_HEADER
    assert blob[4:8] == b"\0\0\0\0"  # no mtime
    assert blob[3] == 0  # no FNAME, no FEXTRA
    assert blob[8:10] == b"\x00\xff"
    assert layer.info.media_type == mediatypes.DOCKER_LAYER_GZIP
    with pytest.raises(ValueError, match="gzip"):
        build_layer(pm, {"/": tmp_path}, docker_flavour=True, compression="zstd")


def test_gzip_levels_give_valid_blobs_and_bad_values_are_refused(pm, tmp_path):
    (tmp_path / "f").write_bytes(b"abc" * 100000)
    infos = []
    for level in (0, 1, 2, 3):
        with build_layer(pm, {"/": tmp_path}, level=level) as layer:
            assert gzip.decompress(read_blob(layer)) and layer.info.digest == sha(read_blob(layer))
            infos.append(layer.info)
    assert len({i.diff_id for i in infos}) == 1
    with pytest.raises(ConfigurationError):
        LayerBuilder(level=17)
    with pytest.raises(ConfigurationError, match="compression"):
        LayerBuilder(compression="brotli")


def test_write_layer_streams_to_a_sink(pm, tmp_path):
    make_tree(tmp_path)
    chunks: list[bytes] = []
    info = write_layer(pm, {"/app": tmp_path}, chunks.append)
    blob = b"".join(chunks)
    assert all(isinstance(c, bytes) for c in chunks)
    assert info == LayerInfo(sha(blob), sha(gzip.decompress(blob)), len(blob),
                             mediatypes.OCI_LAYER_GZIP)
    with build_layer(pm, {"/app": tmp_path}) as layer:
        assert layer.info == info


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_a_sink_that_hashes_the_blob_gets_the_same_bytes(compression, tmp_path):
    """``write(sink, digest=False)`` leaves the blob's digest to the sink (an upload hashes what
    it sends): same bytes, diff_id and size; the digest empty unless uncompressed, where it
    is the diff_id at no cost."""
    payload = os.urandom(3 << 20) + b"text " * 300_000
    results = []
    for digest in (True, False):
        b = LayerBuilder(compression=compression, mtime=0)
        info, f = file_entry("data/blob", len(payload), io.BytesIO(payload), 0o644)
        b.add(info, f)
        chunks: list[bytes] = []
        results.append((b.write(chunks.append, digest=digest), b"".join(chunks)))
    (full, blob), (lean, same) = results
    assert same == blob and full.digest == sha(blob)
    assert (lean.diff_id, lean.size, lean.media_type) == (full.diff_id, full.size, full.media_type)
    assert lean.digest == (full.digest if compression == "none" else "")


def test_sink_failure_propagates_and_leaves_no_thread_blocked(pm, tmp_path):
    (tmp_path / "big").write_bytes(os.urandom(5 << 20))

    def sink(_: bytes) -> None:
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_layer(pm, {"/": tmp_path}, sink)


def test_pax_long_names(pm, tmp_path):
    long_dir = "d" * 120
    name = "n" * 200
    (tmp_path / long_dir).mkdir()
    (tmp_path / long_dir / name).write_text("long")
    target = "/" + "/".join(["t" * 50] * 3)
    with build_layer(pm, {target: tmp_path}) as layer:
        tar = gzip.decompress(read_blob(layer))
    path = f"{target[1:]}/{long_dir}/{name}"
    assert len(path.encode()) > 255
    assert contents(tar)[path] == b"long"
    assert b"path=" in tar  # a PAX record, not a GNU long-name entry
    assert b"././@LongLink" not in tar


def test_duplicate_paths_last_source_wins(pm, tmp_path):
    (tmp_path / "f").write_text("from dir")
    sources = {"/app": tmp_path, "/app/f": CustomFile("custom")}
    with build_layer(pm, sources) as layer:
        assert contents(gzip.decompress(read_blob(layer)))["app/f"] == b"custom"
    with build_layer(pm, dict(reversed(list(sources.items())))) as layer:
        assert contents(gzip.decompress(read_blob(layer)))["app/f"] == b"from dir"


def test_file_and_directory_at_the_same_path_is_an_error(pm, tmp_path):
    (tmp_path / "x").write_text("x")
    with pytest.raises(LayerSourceError, match="not a directory"):
        build_layer(pm, {"/app": CustomFile("file"), "/app/sub": tmp_path})


def test_a_file_cannot_go_at_the_root(pm):
    with pytest.raises(LayerSourceError, match="image root"):
        build_layer(pm, {"/": CustomFile("x")})


@pytest.mark.parametrize(("given", "expected"), [
    ("/app", "/app"), ("app/", "/app"), ("/a/./b//c/", "/a/b/c"), ("/a/../b", "/b"), ("/", "/"),
    ("", "/"),
])
def test_normalize_target(given, expected):
    assert normalize_target(given) == expected


@pytest.mark.parametrize("bad", ["/../etc", "a/../../b", "x\0y"])
def test_targets_that_leave_the_root_are_refused(pm, bad):
    with pytest.raises(ConfigurationError):
        normalize_target(bad)
    with pytest.raises(ConfigurationError):
        collect_entries(pm, {bad: CustomFile("x")})


# -- CustomFile ---------------------------------------------------------------------------------
class OneShotStream(io.RawIOBase):
    """A non-seekable binary stream, like a pipe."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, b):  # type: ignore[no-untyped-def]
        chunk = self._data.read(len(b))
        b[: len(chunk)] = chunk
        return len(chunk)


def test_custom_file_str_bytes_and_streams(pm, tmp_path):
    seekable = io.BytesIO(b"skip-me|seekable content")
    seekable.seek(len(b"skip-me|"))
    big = os.urandom((9 << 20) + 7)  # over the spool threshold: spooled to disk
    sources = {
        "/s": CustomFile("héllo\n"),
        "/b": CustomFile(b"\x00\x01bytes"),
        "/seek": CustomFile(seekable),
        "/pipe": CustomFile(OneShotStream(b"from a pipe")),
        "/big": CustomFile(io.BufferedReader(OneShotStream(big))),
        "/empty": CustomFile(b""),
    }
    assert sources["/pipe"].size == len(b"from a pipe")
    assert sources["/big"].size == len(big)
    for _ in range(2):  # a CustomFile can be built more than once
        with build_layer(pm, sources) as layer:
            got = contents(gzip.decompress(read_blob(layer)))
        assert got == {"s": "héllo\n".encode(), "b": b"\x00\x01bytes", "seek": b"seekable content",
                       "pipe": b"from a pipe", "big": big, "empty": b""}


def test_custom_file_in_two_places_reads_both(pm):
    shared = CustomFile(io.BytesIO(b"shared"))
    with build_layer(pm, {"/one": shared, "/two": shared}) as layer:
        got = contents(gzip.decompress(read_blob(layer)))
    assert got["one"] == got["two"] == b"shared"


def test_custom_file_mode_mtime_uid_gid_are_kept(pm, monkeypatch):
    from datetime import datetime, timezone

    monkeypatch.setenv("SOURCE_DATE_EPOCH", "100")
    sources = {
        "/bin/tool": CustomFile("#!/bin/sh\n", mode=0o4755, mtime=1234567890, uid=1000, gid=50),
        "/etc/x": CustomFile("x", mtime=datetime(2020, 1, 1, tzinfo=timezone.utc)),
        "/etc/y": CustomFile("y"),
    }
    with build_layer(pm, sources) as layer:
        ms = {m.name: m for m in members(gzip.decompress(read_blob(layer)))}
    tool = ms["bin/tool"]
    assert (tool.mode, tool.mtime, tool.uid, tool.gid, tool.uname) == (0o4755, 1234567890, 1000, 50, "")
    assert ms["etc/x"].mtime == 1577836800
    assert (ms["etc/y"].mtime, ms["etc/y"].uid, ms["etc/y"].mode) == (100, 0, 0o644)
    assert ms["bin"].mtime == 100 and ms["bin"].mode == 0o755


def test_custom_file_rejects_text_streams_and_other_types():
    with pytest.raises(ConfigurationError):
        CustomFile(12)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="binary"):
        CustomFile(OneShotText("text"))  # type: ignore[arg-type]
    assert "bytes" in repr(CustomFile(b"secretish")) and "secretish" not in repr(CustomFile(b"secretish"))


class OneShotText:
    def __init__(self, s: str) -> None:
        self._s = s

    def read(self, n: int = -1) -> str:
        s, self._s = self._s, ""
        return s


# -- the hook call ------------------------------------------------------------------------------
def test_unknown_source_names_the_source(pm):
    with pytest.raises(LayerSourceError, match="acme:thing.*no layer source claims it"):
        collect_entries(pm, {"/x": "acme:thing"})
    with pytest.raises(LayerSourceError, match="no layer source"):
        collect_entries(pm, {"/x": 12345})


def test_a_plugin_claims_its_own_prefix_and_sees_the_layer_options(pm, tmp_path):
    seen = []

    class Acme:
        @hookimpl
        def cib_layer_source(self, source, target, options):
            seen.append((source, target, options))
            if isinstance(source, str) and source.startswith("acme:"):
                return [dir_entry("d"), file_entry("d/f", 3, io.BytesIO(b"abc")),
                        symlink_entry("l", "d/f")]
            return None

    pm.register(Acme(), name="acme")
    (tmp_path / "real").write_text("real")
    options = LayerOptions(ignores=("*.o",), follow_symlinks=False)
    entries = collect_entries(pm, {"/x": "acme:thing", "/y": str(tmp_path / "real")},
                              options=options)
    assert [e[0].name for e in entries] == ["x/d", "x/d/f", "x/l", "y"]
    assert entries[2][0].linkname == "d/f"  # symlink contents untouched
    # local-dir is asked first and claims the existing path: the third party never sees it
    assert seen == [("acme:thing", "/x", LayerOptions(("*.o",), (), False, None))]


def test_plugin_bugs_are_plugin_errors_naming_the_plugin(pm):
    class Broken:
        @hookimpl
        def cib_layer_source(self, source, target):
            if source == "broken:now":
                raise KeyError("oops")
            if source == "broken:later":
                def gen():
                    yield dir_entry("a")
                    raise RuntimeError("late")
                return gen()
            if source == "broken:shape":
                return ["not a pair"]
            return None

    pm.register(Broken(), name="broken-plugin")
    for source, match in (("broken:now", "oops"), ("broken:later", "late"),
                          ("broken:shape", "not a .TarInfo, fileobj. pair")):
        with pytest.raises(PluginError, match=match) as info:
            collect_entries(pm, {"/x": source})
        assert info.value.plugin == "broken-plugin"


def test_kept_fields_from_a_plugin(pm):
    class Owner:
        @hookimpl
        def cib_layer_source(self, source, target):
            if source != "owner:":
                return None
            info, f = file_entry("", 1, io.BytesIO(b"o"), 0o600)
            info.uid, info.gid, info.mtime, info.uname = 7, 8, 9, "someone"
            return [(keep_fields(info, "uid"), f)]

    pm.register(Owner(), name="owner")
    with build_layer(pm, {"/o": "owner:"}, mtime=5) as layer:
        (m,) = members(gzip.decompress(read_blob(layer)))
    assert (m.uid, m.gid, m.mtime, m.uname, m.mode) == (7, 0, 5, "", 0o600)
    with pytest.raises(ValueError):
        keep_fields(tarfile.TarInfo("x"), "mode")


def test_hard_link_listed_before_its_target_is_reordered():
    b = LayerBuilder(compression="none", mtime=0)
    link = tarfile.TarInfo("z/first-in-listing")
    link.type = tarfile.LNKTYPE
    link.linkname = "b/content"
    b.add(link)
    info, f = file_entry("b/content", 4, io.BytesIO(b"data"), 0o640)
    b.add(info, f)
    late = tarfile.TarInfo("a/early")
    late.type = tarfile.LNKTYPE
    late.linkname = "z/first-in-listing"
    b.add(late)
    chunks: list[bytes] = []
    b.write(chunks.append)
    ms = {m.name: m for m in members(b"".join(chunks))}
    # "a/early" comes first in path order, so it carries the content
    assert ms["a/early"].isreg() and ms["a/early"].size == 4 and ms["a/early"].mode == 0o640
    assert ms["b/content"].islnk() and ms["b/content"].linkname == "a/early"
    assert ms["z/first-in-listing"].islnk() and ms["z/first-in-listing"].linkname == "a/early"
    assert contents(b"".join(chunks))["a/early"] == b"data"


def test_hard_link_to_a_missing_member_is_an_error():
    b = LayerBuilder(compression="none")
    link = tarfile.TarInfo("x")
    link.type = tarfile.LNKTYPE
    link.linkname = "nowhere"
    b.add(link)
    with pytest.raises(LayerSourceError, match="not in the layer"):
        b.write(lambda _: None)


# -- tarballs as they are -----------------------------------------------------------------------
def make_tar(path: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as t:
        info = tarfile.TarInfo("etc/hello")
        data = b"hello from a tarball\n" * 1000
        info.size, info.uid, info.uname, info.mtime = len(data), 33, "www", 1234
        t.addfile(info, io.BytesIO(data))
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


def test_existing_gzip_tarball_is_the_blob_itself(tmp_path):
    tar = make_tar(tmp_path / "l.tar")
    gz = gzip.compress(tar, mtime=77)
    (tmp_path / "l.tar.gz").write_bytes(gz)
    layer = layer_from_tarball(tmp_path / "l.tar.gz")
    assert layer.info == LayerInfo(sha(gz), sha(tar), len(gz), mediatypes.OCI_LAYER_GZIP)
    assert read_blob(layer) == gz
    layer.close()
    assert (tmp_path / "l.tar.gz").exists(), "a given tarball is never deleted"
    docker = layer_from_tarball(tmp_path / "l.tar.gz", docker_flavour=True)
    assert docker.info.media_type == mediatypes.DOCKER_LAYER_GZIP


def test_existing_multi_member_gzip_tarball(tmp_path):
    tar = make_tar(tmp_path / "l.tar")
    gz = gzip.compress(tar[:3000]) + gzip.compress(tar[3000:])
    (tmp_path / "m.tgz").write_bytes(gz)
    layer = layer_from_tarball(tmp_path / "m.tgz")
    assert (layer.info.digest, layer.info.diff_id) == (sha(gz), sha(tar))


def test_existing_zstd_tarball_as_it_is_and_recompressed_for_docker(tmp_path):
    tar = make_tar(tmp_path / "l.tar")
    zst = zstandard.ZstdCompressor().compress(tar)
    (tmp_path / "l.tar.zst").write_bytes(zst)
    layer = layer_from_tarball(tmp_path / "l.tar.zst")
    assert layer.info == LayerInfo(sha(zst), sha(tar), len(zst), mediatypes.OCI_LAYER_ZSTD)
    with layer_from_tarball(tmp_path / "l.tar.zst", docker_flavour=True) as docker:
        blob = read_blob(docker)
        assert docker.info == LayerInfo(sha(blob), sha(tar), len(blob), mediatypes.DOCKER_LAYER_GZIP)
        assert gzip.decompress(blob) == tar


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_existing_plain_tar_is_compressed(tmp_path, compression):
    tar = make_tar(tmp_path / "l.tar")
    with layer_from_tarball(tmp_path / "l.tar", compression=compression) as layer:
        blob = read_blob(layer)
        assert decompress(blob, compression) == tar, "members are not rewritten"
        assert layer.info.diff_id == sha(tar) and layer.info.digest == sha(blob)
    assert (tmp_path / "l.tar").exists()


def _small_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        info = tarfile.TarInfo("f")
        info.size = 5000
        t.addfile(info, io.BytesIO(os.urandom(5000)))
    return buf.getvalue()


_TAR = _small_tar()


@pytest.mark.parametrize(("content", "match"), [
    (b"", "empty"), (b"this is not a tar archive at all" * 40, "not a tar"),
    (gzip.compress(b"x" * 2000), "not a tar"), (gzip.compress(_TAR)[:-12], "truncated"),
    (zstandard.ZstdCompressor().compress(_TAR)[:-20], "truncated"),
    (b"\x1f\x8b" + b"garbage" * 100, "not valid gzip"),
])
def test_tarball_that_is_not_a_tar_is_refused(tmp_path, content, match):
    (tmp_path / "bad.tar").write_bytes(content)
    with pytest.raises(LayerSourceError, match=match) as info:
        layer_from_tarball(tmp_path / "bad.tar")
    assert "bad.tar" in str(info.value)


def test_missing_tarball_names_the_path(tmp_path):
    with pytest.raises(LayerSourceError, match="missing.tar"):
        layer_from_tarball(tmp_path / "missing.tar")


# -- memory ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_building_from_a_300mb_file_keeps_memory_bounded(tmp_path):
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        block = os.urandom(1 << 20)
        for i in range(300):
            f.write(block[i:] + block[:i])
    script = textwrap.dedent(f"""
        import resource, sys
        from cib_core.plugins import CibPluginManager
        from cib_core.layers.build import build_layer
        from cib_plugins import local_dir
        pm = CibPluginManager(autoload=False)
        pm.register(local_dir, name="local-dir")
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        with build_layer(pm, {{"/big": {str(big)!r}}}, dir={str(tmp_path)!r}) as layer:
            assert layer.info.size > 300 << 20
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(after - before)
    """)
    out = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True)
    growth_kib = int(out.stdout.strip())
    assert growth_kib < 64 * 1024, f"peak RSS grew by {growth_kib} KiB"
