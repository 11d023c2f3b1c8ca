"""Property tests of the tar writer: random trees on disk -> ``build_layer`` -> read back by
Python's tarfile (every file, its bytes and mode; every directory; every symlink), and, for a
few examples, by ``umoci unpack`` (marked integration: it needs umoci)."""

from __future__ import annotations

import gzip
import io
import os
import random
import stat
import tarfile
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cib_core import Image
from cib_core.layers.build import build_layer
from cib_core.layers.tar import Record
from cib_core.plugins import get_plugin_manager
from cib_core.testing import umoci_unpack

# names: printable, some non-ASCII, never "." or ".." or containing "/" or NUL
_name = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/\\"),
                min_size=1, max_size=24).filter(lambda s: s not in (".", "..") and s.strip() == s
                                                and s[0] != "-")
_mode = st.sampled_from([0o644, 0o600, 0o755, 0o700, 0o444, 0o4755, 0o1777 & 0o777])
# small files drawn byte by byte; big ones (over a compressor chunk boundary) from a seed
_content = st.one_of(
    st.binary(max_size=2048),
    st.builds(lambda seed, n: random.Random(seed).randbytes(n),  # noqa: S311 - test data
              st.integers(0, 2**32), st.integers(70_000, 1_200_000)))


@st.composite
def trees(draw: st.DrawFn) -> dict[str, tuple[str, object, int]]:
    """``{relative path: (kind, payload, mode)}`` with kind "f" (bytes), "d" or "l" (link target)."""
    tree: dict[str, tuple[str, object, int]] = {}
    dirs = [""]
    for _ in range(draw(st.integers(1, 14))):
        parent = draw(st.sampled_from(dirs))
        name = draw(_name)
        path = f"{parent}/{name}" if parent else name
        if path in tree or any(p.lower() == path.lower() for p in tree):
            continue
        kind = draw(st.sampled_from("ffffdl"))
        if kind == "d":
            tree[path] = ("d", None, draw(st.sampled_from([0o755, 0o700, 0o750])))
            dirs.append(path)
        elif kind == "f":
            tree[path] = ("f", draw(_content), draw(_mode))
        else:
            tree[path] = ("l", draw(_name), 0o777)  # may dangle: kept as a link, not followed
    return tree


def _materialize(root: Path, tree: dict[str, tuple[str, object, int]]) -> None:
    for path, (kind, payload, mode) in sorted(tree.items()):
        full = root / path
        if kind == "d":
            full.mkdir(exist_ok=True)
        elif kind == "f":
            assert isinstance(payload, bytes)
            full.write_bytes(payload)
        else:
            os.symlink(str(payload), full)
    for path, (kind, _payload, mode) in sorted(tree.items(), reverse=True):
        if kind != "l":
            os.chmod(root / path, mode)


def _read_back(blob: bytes) -> dict[str, tuple[str, object, int]]:
    out: dict[str, tuple[str, object, int]] = {}
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob)), mode="r:") as tar:
        for m in tar:
            assert m.uid == 0 and m.gid == 0 and m.uname == "" and m.gname == ""
            assert m.mtime == 0
            if m.isreg():
                f = tar.extractfile(m)
                assert f is not None
                out[m.name] = ("f", f.read(), stat.S_IMODE(m.mode))
            elif m.isdir():
                out[m.name] = ("d", None, stat.S_IMODE(m.mode))
            elif m.issym():
                out[m.name] = ("l", m.linkname, 0o777)
            else:
                raise AssertionError(f"unexpected member type {m.type!r} for {m.name}")
    return out


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=trees())
def test_build_layer_round_trips_through_tarfile(tree: dict[str, tuple[str, object, int]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "src"
        root.mkdir()
        _materialize(root, tree)
        pm = get_plugin_manager()
        with build_layer(pm, {"/": str(root)}, follow_symlinks=False, mtime=0) as built:
            with built.open() as f:
                blob = f.read()
            info = built.info
        got = _read_back(blob)
        # the writer's own claims about the blob hold
        import hashlib

        assert info.digest == "sha256:" + hashlib.sha256(blob).hexdigest()
        assert info.diff_id == "sha256:" + hashlib.sha256(gzip.decompress(blob)).hexdigest()
        assert info.size == len(blob)
        assert got == tree
        # same tree, same bytes
        with build_layer(pm, {"/": str(root)}, follow_symlinks=False, mtime=0) as again, \
                again.open() as f:
            assert f.read() == blob
        # entries sorted by path components: every directory before what is in it
        with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob))) as tar:
            names = tar.getnames()
        for i, name in enumerate(names):
            parent = name.rpartition("/")[0]
            if parent:
                assert parent in names[:i], f"{name} comes before its directory"


def _read_rootfs(rootfs: Path) -> dict[str, tuple[str, object, int]]:
    out: dict[str, tuple[str, object, int]] = {}
    for dirpath, dirnames, filenames in os.walk(rootfs):
        for name in dirnames + filenames:
            full = Path(dirpath) / name
            rel = str(full.relative_to(rootfs))
            st_ = full.lstat()
            if stat.S_ISLNK(st_.st_mode):
                out[rel] = ("l", os.readlink(full), 0o777)
            elif stat.S_ISDIR(st_.st_mode):
                out[rel] = ("d", None, stat.S_IMODE(st_.st_mode))
            else:
                out[rel] = ("f", full.read_bytes(), stat.S_IMODE(st_.st_mode))
    return out


@pytest.mark.integration
@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=trees())
def test_build_layer_round_trips_through_umoci(tree: dict[str, tuple[str, object, int]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "src"
        root.mkdir()
        _materialize(root, tree)
        image = Image("scratch", f"oci:{tmp}/layout:t")
        image.add_files({"/": str(root)}, follow_symlinks=False)
        image.save()
        rootfs = umoci_unpack(f"{tmp}/layout", "t", f"{tmp}/bundle")
        got = _read_rootfs(rootfs)
        if os.geteuid() != 0:  # rootless umoci keeps its own access to what it unpacks
            got = {k: (kind, data, mode if kind == "l" else tree.get(k, (kind, data, mode))[2])
                   for k, (kind, data, mode) in got.items()}
        assert got == tree


# -- the fast tar header equals tarfile's, on both sides of every limit ------------------------
_header_name = st.one_of(
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), min_size=1, max_size=130),
    st.text(min_size=1, max_size=40).filter(lambda s: "\0" not in s),  # non-ASCII, surrogates
    st.sampled_from(["a" * 99, "a" * 100, "a" * 101, "d/" * 50, "x/" * 49 + "y"]))


@st.composite
def tar_infos(draw: st.DrawFn) -> tarfile.TarInfo:
    info = tarfile.TarInfo(draw(_header_name))
    info.type = draw(st.sampled_from([tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE,
                                      tarfile.LNKTYPE, tarfile.FIFOTYPE, tarfile.CHRTYPE,
                                      tarfile.BLKTYPE]))
    info.mode = draw(st.integers(0, 0o7777))
    info.uid = draw(st.one_of(st.integers(0, 70_000), st.sampled_from([8**7 - 1, 8**7, 2**32])))
    info.gid = draw(st.one_of(st.integers(0, 70_000), st.sampled_from([8**7 - 1, 8**7])))
    info.size = draw(st.one_of(st.integers(0, 1 << 40), st.sampled_from([8**11 - 1, 8**11, 1 << 40])))
    info.mtime = draw(st.one_of(st.integers(-10, 8**11 + 10), st.floats(0, 2e9, allow_nan=False)))
    info.uname = info.gname = draw(st.sampled_from(["", "", "root", "ü"]))
    if info.type in (tarfile.SYMTYPE, tarfile.LNKTYPE):
        info.linkname = draw(_header_name)
    if info.type in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        info.devmajor, info.devminor = draw(st.integers(0, 255)), draw(st.integers(0, 255))
    if draw(st.integers(0, 9)) == 0:
        info.pax_headers = {"SCHILY.xattr.user.k": draw(st.text(max_size=8))}
    return info


def _record(info: tarfile.TarInfo) -> Record:
    """``info`` as a record, the rare fields (PAX records, devices) in ``extra`` as the
    builder keeps them."""
    extra = None
    if info.pax_headers or info.type in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        extra = tarfile.TarInfo()
        extra.pax_headers = dict(info.pax_headers)
        extra.devmajor, extra.devminor = info.devmajor, info.devminor
    return Record(info.name, info.type, info.mode, info.uid, info.gid, int(info.mtime), info.size,
                  info.linkname, None, None, "src", extra)


def _as_tarfile_writes_it(rec: Record) -> bytes:
    info = tarfile.TarInfo(rec.path)
    info.type, info.mode, info.uid, info.gid = rec.type, rec.mode, rec.uid, rec.gid
    info.mtime, info.size, info.linkname = rec.mtime, rec.size, rec.link
    if rec.extra is not None:
        info.pax_headers = dict(rec.extra.pax_headers)
        info.devmajor, info.devminor = rec.extra.devmajor, rec.extra.devminor
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


@settings(max_examples=2000, deadline=None)
@given(st.lists(tar_infos(), min_size=1, max_size=3))
def test_fast_tar_header_is_tarfiles_byte_for_byte(infos: list[tarfile.TarInfo]) -> None:
    from cib_core.layers.tar import Headers

    header = Headers()  # one per layer: entries after the first reuse its formatted fields
    for info in infos:
        rec = _record(info)
        try:
            expected = _as_tarfile_writes_it(rec)
        except ValueError as exc:  # what tarfile refuses, the fast path must refuse too
            with pytest.raises(type(exc)):
                header(rec)
            continue
        assert header(rec) == expected
        assert header(rec._replace(size=rec.size // 2)) == _as_tarfile_writes_it(
            rec._replace(size=rec.size // 2))


def test_common_entries_take_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The property above would pass with every entry sent to tarfile; these, what a source
    tree is made of, must not be."""
    from cib_core.layers.tar import Headers

    entries = []
    for name, kind, link in [("app/main.py", tarfile.REGTYPE, ""), ("app", tarfile.DIRTYPE, ""),
                             ("app/lib/", tarfile.DIRTYPE, ""), ("bin/sh", tarfile.SYMTYPE, "busybox"),
                             ("a" * 100, tarfile.REGTYPE, ""), ("l", tarfile.LNKTYPE, "a" * 100),
                             ("fifo", tarfile.FIFOTYPE, "")]:
        info = tarfile.TarInfo(name)
        info.type, info.linkname, info.mode, info.size = kind, link, 0o4755, 12345
        info.mtime, info.uid, info.gid, info.uname, info.gname = 8**11 - 1, 8**7 - 1, 1000, "", ""
        entries.append((_record(info), info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")))

    def refuse(*_: object, **__: object) -> bytes:
        raise AssertionError("went to tarfile")

    monkeypatch.setattr(tarfile.TarInfo, "tobuf", refuse)
    header = Headers()
    for rec, expected in entries:
        assert header(rec) == expected, rec.path


@settings(max_examples=3000, deadline=None)
@given(st.sampled_from(["", "/", "/app", "/app/lib"]),
       st.text(alphabet="a./é", max_size=12))
def test_fast_path_join_agrees_with_the_segment_by_segment_one(base: str, name: str) -> None:
    from cib_core.errors import LayerSourceError
    from cib_core.layers.tar import join, join_parts

    try:
        expected = join_parts(base, name, "src")
    except LayerSourceError:
        with pytest.raises(LayerSourceError, match="'..'"):
            join(base, name, "src")
        return
    assert join(base, name, "src") == expected
