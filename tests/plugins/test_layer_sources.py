"""The builtin layer sources: local-dir, custom-files and tarball."""

from __future__ import annotations

import gzip
import io
import os
import shutil
import socket
import stat
import string
import subprocess
import tarfile
import tempfile
from pathlib import Path

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cib_core.errors import LayerSourceError
from cib_core.layers.build import LayerBuilder, build_layer, collect_entries
from cib_core.layers.custom_file import CustomFile
from cib_core.layers.pipeline import BuiltLayer
from cib_core.plugin_api import LayerOptions, TarballSource
from cib_plugins import custom_files, local_dir


def layer_members(layer: BuiltLayer) -> dict[str, tuple[tarfile.TarInfo, bytes | None]]:
    with layer.open() as f, tarfile.open(fileobj=f, mode="r|gz", errors="surrogateescape") as t:
        out = {}
        for m in t:
            data = t.extractfile(m).read() if m.isreg() else None  # type: ignore[union-attr]
            out[m.name] = (m, data)
        return out


def names(pm, sources, **kw) -> list[str]:
    options = LayerOptions(**{k: tuple(v) if isinstance(v, list) else v for k, v in kw.items()})
    return [info.name for info, _ in collect_entries(pm, sources, options=options)]


def build(pm, sources, **kw) -> dict[str, tuple[tarfile.TarInfo, bytes | None]]:
    with build_layer(pm, sources, **kw) as layer:
        return layer_members(layer)


# -- local-dir: placement -------------------------------------------------------------------------
def test_directory_contents_go_under_target_and_a_file_at_target(pm, tmp_path):
    (tmp_path / "d").mkdir(mode=0o700)
    (tmp_path / "d" / "x").write_text("x")
    (tmp_path / "file.txt").write_text("file")
    got = build(pm, {"/app": tmp_path / "d", "/etc/conf": str(tmp_path / "file.txt")})
    assert got["app/x"][1] == b"x"
    assert got["app"][0].mode == 0o755, "the target directory is 0755, not the source's 0700"
    assert got["etc/conf"][1] == b"file" and got["etc/conf"][0].isreg()


def test_bare_existing_path_is_claimed_but_a_missing_string_is_not(pm, tmp_path):
    assert local_dir.cib_layer_source(source=str(tmp_path / "nope"), options=LayerOptions()) is None
    assert local_dir.cib_layer_source(source=12, options=LayerOptions()) is None
    assert local_dir.cib_layer_source(source=str(tmp_path), options=LayerOptions()) is not None
    with pytest.raises(LayerSourceError, match="nope: does not exist"):
        list(local_dir.cib_layer_source(source=tmp_path / "nope", options=LayerOptions()))
    with pytest.raises(LayerSourceError, match="does not exist"):
        collect_entries(pm, {"/x": tmp_path / "nope"})  # a PathLike is always a local path


# -- local-dir: ignores ----------------------------------------------------------------------------
TREE = ["a.txt", "a.log", "keep.log", "build/out.o", "build/keep.txt", "src/main.py",
        "src/build/gen.py", "src/deep/x/y.log", "docs/readme.md", "docs/api/index.md",
        "node_modules/pkg/index.js", "src/main.pyc", ".git/config", "tmp/a/b/c"]


def make_ignore_tree(root: Path) -> None:
    for rel in TREE:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(rel)


IGNORE_CASES = [
    # (patterns, the files of TREE that must be left out; every other file must be in)
    (["*.log"], {"a.log", "keep.log", "src/deep/x/y.log"}),
    (["*.log", "!keep.log"], {"a.log", "src/deep/x/y.log"}),
    (["build/"], {"build/out.o", "build/keep.txt", "src/build/gen.py"}),
    (["/build/"], {"build/out.o", "build/keep.txt"}),
    # pathspec, unlike git, re-includes a file below an excluded directory
    (["build", "!build/keep.txt"], {"build/out.o", "src/build/gen.py"}),
    (["build/*", "!build/keep.txt"], {"build/out.o"}),
    (["**/*.log"], {"a.log", "keep.log", "src/deep/x/y.log"}),
    (["src/**/y.log"], {"src/deep/x/y.log"}),
    (["docs/**", "!docs/api/", "!docs/api/**"], {"docs/readme.md"}),
    (["node_modules", ".git"], {"node_modules/pkg/index.js", ".git/config"}),
    (["*.py[co]"], {"src/main.pyc"}),
    (["# a comment", "", "tmp/a"], {"tmp/a/b/c"}),
    (["*", "!src/", "!src/main.py"], set(TREE) - {"src/main.py"}),
    ([r"\#not-comment", "a.txt"], {"a.txt"}),
    (["a.*", "!*.txt"], {"a.log"}),
]


@pytest.mark.parametrize(("patterns", "absent"), IGNORE_CASES)
def test_gitignore_semantics(pm, tmp_path, patterns, absent):
    make_ignore_tree(tmp_path)
    got = set(names(pm, {"/": tmp_path}, ignores=patterns))
    assert got & set(TREE) == set(TREE) - absent


# Where pathspec (which cib follows) and git disagree: a negation below an excluded directory.
PATHSPEC_NOT_GIT = [["build", "!build/keep.txt"], ["docs/*", "!docs/api/index.md"], ["src/deep/", "!src/"],
                    ["deep", "!x"]]
GIT_ORACLE_PATTERNS = [c[0] for c in IGNORE_CASES if c[0] not in PATHSPEC_NOT_GIT] + [
    ["**/build", "!src/build/"], ["*", "!*/", "!*.py"],
    ["tmp/**/c"], ["/*", "!/src"], ["src/*/", "!src/deep/"],
    ["a/**/b", "src/**"], ["*.txt", "!/build/*.txt"], ["**"],
]


@pytest.mark.skipif(shutil.which("git") is None, reason="git is the oracle for this test")
def test_ignores_agree_with_git(pm, tmp_path):
    """Real git decides which files of TREE an ignore file leaves out; cib must agree."""
    for i, patterns in enumerate(GIT_ORACLE_PATTERNS + PATHSPEC_NOT_GIT):
        root = tmp_path / f"case{i}"
        make_ignore_tree(root)
        shutil.rmtree(root / ".git")
        subprocess.run(["git", "init", "-q", str(root)], check=True)
        (root / ".gitignore").write_text("\n".join(patterns) + "\n")
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--ignored",
                                 "--untracked-files=all"], check=True, capture_output=True,
                                text=True).stdout
        kept_by_git = {line[3:] for line in status.splitlines() if line.startswith("?? ")}
        shutil.rmtree(root / ".git")
        got = set(names(pm, {"/": root}, ignore_files=[".gitignore"]))
        files = {t for t in TREE if not t.startswith(".git/")} | {".gitignore"}
        if patterns in PATHSPEC_NOT_GIT:
            assert got & files > kept_by_git, patterns  # the documented difference
        else:
            assert got & files == kept_by_git, patterns


def test_ignored_directory_is_not_descended(pm, tmp_path):
    make_ignore_tree(tmp_path)
    secret = tmp_path / "node_modules" / "locked"
    secret.mkdir()
    os.mkfifo(secret / "fifo")  # would be refused if the walk went there
    got = names(pm, {"/": tmp_path}, ignores=["node_modules/"])
    assert not any(n.startswith("node_modules") for n in got)
    with pytest.raises(LayerSourceError, match="FIFO"):
        collect_entries(pm, {"/": tmp_path})


def test_dockerignore_file_at_root(pm, tmp_path):
    make_ignore_tree(tmp_path)
    (tmp_path / ".dockerignore").write_text("# build output\n*.log\nbuild/\n!keep.log\n")
    (tmp_path / "src" / ".dockerignore").write_text("main.py\n")  # only the root's file counts
    got = set(names(pm, {"/": tmp_path}, ignore_files=[".dockerignore", ".missingignore"],
                    ignores=["docs/"]))
    assert {"keep.log", "src/main.py", "a.txt", ".dockerignore"} <= got
    assert not got & {"a.log", "build/out.o", "build", "docs", "docs/readme.md"}
    # explicit ignores come after the file's lines, so they have the last word
    got = set(names(pm, {"/": tmp_path}, ignore_files=[".dockerignore"], ignores=["keep.log"]))
    assert "keep.log" not in got


def test_ignores_do_not_apply_to_a_single_file_source(pm, tmp_path):
    (tmp_path / "x.log").write_text("x")
    assert names(pm, {"/x.log": tmp_path / "x.log"}, ignores=["*.log"]) == ["x.log"]


# -- local-dir: symlinks ---------------------------------------------------------------------------
def make_links(root: Path) -> None:
    (root / "real").mkdir()
    (root / "real" / "f").write_text("content")
    (root / "file-link").symlink_to("real/f")
    (root / "dir-link").symlink_to("real")
    (root / "abs-link").symlink_to(root / "real" / "f")


def test_symlinks_are_followed_by_default(pm, tmp_path):
    make_links(tmp_path)
    got = build(pm, {"/app": tmp_path})
    assert got["app/file-link"][0].isreg() and got["app/file-link"][1] == b"content"
    assert got["app/dir-link"][0].isdir() and got["app/dir-link/f"][1] == b"content"
    assert got["app/abs-link"][1] == b"content"


def test_symlinks_are_kept_with_follow_symlinks_false(pm, tmp_path):
    make_links(tmp_path)
    got = build(pm, {"/app": tmp_path}, follow_symlinks=False)
    assert got["app/file-link"][0].issym() and got["app/file-link"][0].linkname == "real/f"
    assert got["app/dir-link"][0].issym() and "app/dir-link/f" not in got
    assert got["app/abs-link"][0].linkname == str(tmp_path / "real" / "f")


def test_source_path_that_is_a_symlink_is_resolved(pm, tmp_path):
    make_links(tmp_path)
    got = build(pm, {"/app": tmp_path / "dir-link"}, follow_symlinks=False)
    assert got["app/f"][1] == b"content"


@pytest.mark.timeout(30)
def test_symlink_to_an_ancestor_is_a_loop_error_not_a_hang(pm, tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "up").symlink_to("../..")
    with pytest.raises(LayerSourceError, match="loop") as info:
        collect_entries(pm, {"/": tmp_path})
    assert str(tmp_path / "a" / "b" / "up") in str(info.value)
    # kept as a link, it is harmless
    assert "a/b/up" in names(pm, {"/": tmp_path}, follow_symlinks=False)


@pytest.mark.timeout(30)
def test_symlink_cycle_and_dangling_link_name_the_path(pm, tmp_path):
    (tmp_path / "x").symlink_to("y")
    (tmp_path / "y").symlink_to("x")
    with pytest.raises(LayerSourceError, match="loop") as info:
        collect_entries(pm, {"/": tmp_path})
    assert str(tmp_path / "x") in str(info.value)
    other = tmp_path / "other"
    other.mkdir()
    (other / "gone").symlink_to("does-not-exist")
    with pytest.raises(LayerSourceError, match="dangling") as info:
        collect_entries(pm, {"/": other})
    assert str(other / "gone") in str(info.value)
    with pytest.raises(LayerSourceError, match="dangling"):
        collect_entries(pm, {"/g": other / "gone"})
    got = build(pm, {"/": other}, follow_symlinks=False)
    assert got["gone"][0].linkname == "does-not-exist"


# -- local-dir: special files, hard links, changing files, names ------------------------------------
def test_fifo_is_refused_naming_the_path(pm, tmp_path):
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(LayerSourceError, match="FIFO") as info:
        collect_entries(pm, {"/": tmp_path})
    assert str(tmp_path / "pipe") in str(info.value)
    assert names(pm, {"/": tmp_path}, ignores=["pipe"]) == [""]


def test_socket_is_refused_naming_the_path(pm):
    with tempfile.TemporaryDirectory(dir="/tmp") as d:  # short path: AF_UNIX limit
        s = socket.socket(socket.AF_UNIX)
        try:
            s.bind(os.path.join(d, "sock"))
            with pytest.raises(LayerSourceError, match="socket") as info:
                collect_entries(pm, {"/": d})
            assert os.path.join(d, "sock") in str(info.value)
            with pytest.raises(LayerSourceError, match="socket"):
                collect_entries(pm, {"/s": os.path.join(d, "sock")})
        finally:
            s.close()


def test_device_file_is_refused(pm, tmp_path):
    if os.geteuid() != 0:
        pytest.fail("this test needs root to create a device node (run the suite as root)")
    os.mknod(tmp_path / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    with pytest.raises(LayerSourceError, match="device") as info:
        collect_entries(pm, {"/": tmp_path})
    assert str(tmp_path / "null") in str(info.value)


def test_hard_links_become_link_entries(pm, tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "orig").write_text("shared")
    os.link(tmp_path / "b" / "orig", tmp_path / "a-link")
    os.link(tmp_path / "b" / "orig", tmp_path / "c-link")
    got = build(pm, {"/app": tmp_path})
    # "app/a-link" is first in path order, so it carries the content
    assert got["app/a-link"][0].isreg() and got["app/a-link"][1] == b"shared"
    for other in ("app/b/orig", "app/c-link"):
        assert got[other][0].islnk() and got[other][0].linkname == "app/a-link"


def test_hard_link_whose_first_copy_is_ignored_keeps_content(pm, tmp_path):
    (tmp_path / "a").write_text("data")
    os.link(tmp_path / "a", tmp_path / "b")
    got = build(pm, {"/": tmp_path}, ignores=["a"])
    assert got["b"][0].isreg() and got["b"][1] == b"data"


@pytest.mark.parametrize("change", ["grow", "shrink"])
def test_file_changing_size_while_being_built_is_an_error(pm, tmp_path, change):
    f = tmp_path / "log"
    f.write_bytes(b"x" * 100_000)
    builder = LayerBuilder()
    for info, fileobj in collect_entries(pm, {"/": tmp_path}):
        builder.add(info, fileobj)
    with open(f, "ab" if change == "grow" else "r+b") as h:
        if change == "grow":
            h.write(b"more")
        else:
            h.truncate(10)
    with pytest.raises(LayerSourceError, match="changed size while being read") as info:
        builder.build(str(tmp_path))
    assert str(f) in str(info.value)
    assert [p.name for p in tmp_path.iterdir()] == ["log"], "no temporary blob left behind"


def test_non_utf8_names_keep_their_bytes(pm, tmp_path):
    raw = os.fsencode(tmp_path) + b"/caf\xe9-\xff.txt"
    with open(raw, "wb") as f:
        f.write(b"latin-1 name")
    (tmp_path / "ünïcode.txt").write_text("utf-8 name")
    with build_layer(pm, {"/d": tmp_path}) as layer, layer.open() as blob:
        tar_bytes = gzip.decompress(blob.read())
    assert b"hdrcharset=BINARY" in tar_bytes
    with tarfile.open(fileobj=io.BytesIO(tar_bytes), encoding="utf-8",
                      errors="surrogateescape") as t:
        by_bytes = {os.fsencode(m.name): m for m in t.getmembers()}
        assert t.extractfile(by_bytes[b"d/caf\xe9-\xff.txt"]).read() == b"latin-1 name"  # type: ignore[union-attr]
        assert b"d/\xc3\xbcn\xc3\xafcode.txt" in by_bytes


def test_unreadable_file_names_the_path(pm, tmp_path):
    (tmp_path / "f").write_text("x")
    builder = LayerBuilder()
    for info, fileobj in collect_entries(pm, {"/": tmp_path}):
        builder.add(info, fileobj)
    (tmp_path / "f").unlink()  # gone between listing and reading
    with pytest.raises(LayerSourceError, match="cannot be read") as info:
        builder.write(lambda _: None)
    assert str(tmp_path / "f") in str(info.value)


# -- custom-files -------------------------------------------------------------------------------------
def test_custom_files_claims_only_custom_files():
    assert custom_files.cib_layer_source(source="x", target="/x") is None
    entries = list(custom_files.cib_layer_source(source=CustomFile("abc", mode=0o600), target="/x"))
    assert len(entries) == 1
    info, fileobj = entries[0]
    assert (info.name, info.size, info.mode) == ("", 3, 0o600)
    assert fileobj is not None and fileobj.read(10) == b"abc"


# -- tarball --------------------------------------------------------------------------------------------
def make_tarball(path: Path, compression: str) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        d = tarfile.TarInfo("./usr/bin")
        d.type, d.mode, d.uid = tarfile.DIRTYPE, 0o750, 5
        t.addfile(d)
        data = b"#!/bin/sh\n" * 500
        f = tarfile.TarInfo("usr/bin/tool")
        f.size, f.mode, f.uid, f.gid, f.uname, f.mtime = len(data), 0o755, 1000, 100, "dev", 99
        f.pax_headers = {"SCHILY.xattr.user.note": "kept", "comment": "dropped"}
        t.addfile(f, io.BytesIO(data))
        h = tarfile.TarInfo("usr/bin/tool-link")
        h.type, h.linkname = tarfile.LNKTYPE, "usr/bin/tool"
        t.addfile(h)
        s = tarfile.TarInfo("usr/bin/sym")
        s.type, s.linkname = tarfile.SYMTYPE, "tool"
        t.addfile(s)
        c = tarfile.TarInfo("dev/null")
        c.type, c.devmajor, c.devminor, c.mode = tarfile.CHRTYPE, 1, 3, 0o666
        t.addfile(c)
        e = tarfile.TarInfo("empty")
        t.addfile(e, io.BytesIO(b""))
    raw = buf.getvalue()
    if compression == "gzip":
        raw = gzip.compress(raw)
    elif compression == "zstd":
        raw = zstandard.ZstdCompressor().compress(raw)
    path.write_bytes(raw)


@pytest.mark.parametrize("compression", ["none", "gzip", "zstd"])
def test_tarball_members_are_unpacked_under_target(pm, tmp_path, compression):
    path = tmp_path / "rootfs.tar.x"
    make_tarball(path, compression)
    for source in (f"tar:{path}", TarballSource(path)):
        got = build(pm, {"/opt": source})
        tool, data = got["opt/usr/bin/tool"]
        assert data == b"#!/bin/sh\n" * 500
        assert (tool.mode, tool.uid, tool.gid, tool.uname, tool.mtime) == (0o755, 1000, 100, "", 99)
        assert tool.pax_headers.get("SCHILY.xattr.user.note") == "kept"
        assert "comment" not in tool.pax_headers
        assert got["opt/usr/bin/tool-link"][0].linkname == "opt/usr/bin/tool"
        assert got["opt/usr/bin/sym"][0].linkname == "tool"
        assert (got["opt/dev/null"][0].ischr(), got["opt/dev/null"][0].devminor) == (True, 3)
        assert got["opt/usr/bin"][0].mode == 0o750 and got["opt/usr"][0].mode == 0o755
        assert got["opt/empty"][1] == b""


def test_plain_tarball_path_is_a_file_not_unpacked(pm, tmp_path):
    path = tmp_path / "x.tar.gz"
    make_tarball(path, "gzip")
    got = build(pm, {"/app/x.tar.gz": path})
    assert got["app/x.tar.gz"][1] == path.read_bytes()


@pytest.mark.parametrize(("member", "match"), [("../evil", r"\.\."), ("a/../../evil", r"\.\.")])
def test_tarball_members_may_not_escape(pm, tmp_path, member, match):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        t.addfile(tarfile.TarInfo(member), io.BytesIO(b""))
    (tmp_path / "evil.tar").write_bytes(buf.getvalue())
    with pytest.raises(LayerSourceError, match=match):
        collect_entries(pm, {"/": f"tar:{tmp_path / 'evil.tar'}"})


def test_tarball_errors_name_the_file(pm, tmp_path):
    with pytest.raises(LayerSourceError, match="missing.tar"):
        collect_entries(pm, {"/": f"tar:{tmp_path / 'missing.tar'}"})
    (tmp_path / "junk.tar").write_bytes(b"junk" * 1000)
    with pytest.raises(LayerSourceError, match="junk.tar"):
        collect_entries(pm, {"/": f"tar:{tmp_path / 'junk.tar'}"})
    (tmp_path / "junk.tgz").write_bytes(b"\x1f\x8b" + b"junk" * 1000)
    with pytest.raises(LayerSourceError, match="junk.tgz.*gzip"):
        collect_entries(pm, {"/": f"tar:{tmp_path / 'junk.tgz'}"})
    with pytest.raises(LayerSourceError, match="tar:PATH"):
        collect_entries(pm, {"/": "tar:"})


# -- property: random trees round-trip ----------------------------------------------------------------
_name = st.text(alphabet=string.ascii_letters + string.digits + "._-é ", min_size=1, max_size=12).filter(
    lambda n: n not in (".", ".."))
_tree = st.dictionaries(
    st.lists(_name, min_size=1, max_size=4).map(tuple),
    st.tuples(st.binary(max_size=3000), st.sampled_from([0o644, 0o600, 0o755, 0o400, 0o4755])),
    min_size=1, max_size=15)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tree=_tree)
def test_random_trees_round_trip(pm, tree):
    with tempfile.TemporaryDirectory() as d:
        root = Path(d) / "src"
        root.mkdir()
        files: dict[str, tuple[bytes, int]] = {}
        for parts, (data, mode) in sorted(tree.items(), key=lambda kv: len(kv[0])):
            p = root.joinpath(*parts)
            # skip paths that collide with an earlier file used as a directory, or vice versa
            if any("/".join(parts[:i]) in files for i in range(1, len(parts))) or p.is_dir():
                continue
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
            p.chmod(mode)
            files["/".join(parts)] = (data, mode)
        with build_layer(pm, {"/r": root}, dir=d) as layer:
            got = layer_members(layer)
    files_in_layer = {n[2:]: (data, m.mode) for n, (m, data) in got.items() if m.isreg()}
    assert files_in_layer == files
    for n, (m, _) in got.items():
        assert m.uid == 0 and m.mtime == 0
        if m.isdir():
            assert n == "r" or n[2:] in {"/".join(k.split("/")[:i]) for k in files
                                         for i in range(1, k.count("/") + 1)}
