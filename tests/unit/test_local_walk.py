"""local-dir's no-change check shared with a helper process (cib_plugins/local_dir/walk.py).

The key must be the one a walk alone computes and the one the listing computes on the way;
a change anywhere, in what the parent walks or what the helper walks, must change it; an
error must be the one a walk alone raises; and a helper that cannot start, dies, or talks
nonsense must only cost time.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tracemalloc
from pathlib import Path

import pytest
from walk_support import sharing

from cib_core.errors import LayerSourceError
from cib_core.plugin_api import LayerOptions
from cib_plugins import local_dir
from cib_plugins.local_dir import walk


def make_tree(root: Path, tops: int = 8, subs: int = 4, files: int = 3) -> None:
    """``tops`` directories of ``subs`` subdirectories of ``files`` files, and files at each
    level, so there are task lists at two depths."""
    root.mkdir(exist_ok=True)
    (root / "top.txt").write_text("top")
    for a in range(tops):
        for b in range(subs):
            d = root / f"d{a}" / f"e{b}"
            d.mkdir(parents=True)
            for c in range(files):
                (d / f"f{c}.txt").write_text(f"{a}.{b}.{c}")
        (root / f"d{a}" / "zz.txt").write_text(str(a))


def check(root: Path, options: LayerOptions | None = None, shared: bool = True,
          **how: float) -> tuple[tuple[bytes, int], int]:
    """The no-change check's key and how many subdirectories the helper walked."""
    source = local_dir._Walk(str(root), options or LayerOptions())
    with sharing(shared, **how):
        key = source.identity()
    return key, source.helped


def listing(root: Path, options: LayerOptions | None = None) -> tuple[bytes, int]:
    source = local_dir.cib_layer_source(source=str(root), options=options or LayerOptions())
    assert source is not None and source.identity is not None
    list(source)
    return source.identity()


def error_of(run: object) -> str:
    with pytest.raises(LayerSourceError) as caught:
        run()  # type: ignore[operator]
    return str(caught.value)


def test_a_shared_check_has_the_key_of_a_walk_alone_and_of_the_listing(tmp_path: Path) -> None:
    make_tree(tmp_path / "src")
    alone, helped_alone = check(tmp_path / "src", shared=False)
    shared, helped = check(tmp_path / "src")
    assert helped_alone == 0
    assert helped > 0, "the helper walked nothing: the test did not test sharing"
    assert shared == alone == listing(tmp_path / "src")


def test_the_helper_is_gone_when_the_check_returns(tmp_path: Path) -> None:
    make_tree(tmp_path / "src")
    tree = walk.TreeCheck(None, True)
    st = os.stat(tmp_path / "src")
    with sharing():
        tree.run(f"{tmp_path}/src/", frozenset({(st.st_dev, st.st_ino)}))
    assert tree.helped > 0
    helper = tree._helper
    assert helper is not None and helper._proc.returncode is not None


def test_ignores_and_negations_reach_the_helper(tmp_path: Path) -> None:
    make_tree(tmp_path / "src")
    options = LayerOptions(ignores=("f1.txt", "d6/", "!d6/e2/f0.txt", "e3"))
    alone, _ = check(tmp_path / "src", options, shared=False)
    shared, helped = check(tmp_path / "src", options)
    assert helped > 0
    assert shared == alone == listing(tmp_path / "src", options)
    assert alone != check(tmp_path / "src", shared=False)[0]


@pytest.mark.parametrize("follow", [True, False])
def test_symlinks_below_are_kept_or_followed_alike_by_the_helper(tmp_path: Path, follow: bool) -> None:
    make_tree(tmp_path / "src")
    for a in range(8):
        (tmp_path / "src" / f"d{a}" / "e1" / "to-file").symlink_to("../../top.txt")
        (tmp_path / "src" / f"d{a}" / "e2" / "to-dir").symlink_to("../e0")
    options = LayerOptions(follow_symlinks=follow)
    alone, _ = check(tmp_path / "src", options, shared=False)
    shared, helped = check(tmp_path / "src", options)
    assert helped > 0
    assert shared == alone == listing(tmp_path / "src", options)
    other, _ = check(tmp_path / "src", LayerOptions(follow_symlinks=not follow), shared=False)
    assert other != alone


@pytest.mark.parametrize("where", ["d0/e0/f0.txt", "d3/e2/f2.txt", "d7/e3/f1.txt", "d5/zz.txt"])
def test_a_change_anywhere_changes_the_shared_key(tmp_path: Path, where: str) -> None:
    """The first directory is the parent's, the last the helper's, the middle either's."""
    make_tree(tmp_path / "src")
    before, helped = check(tmp_path / "src")
    assert helped > 0
    changed = tmp_path / "src" / where
    changed.write_text(changed.read_text() + "!")  # one byte longer: the size alone tells
    after, helped = check(tmp_path / "src")
    assert helped > 0
    assert after != before
    assert after == check(tmp_path / "src", shared=False)[0] == listing(tmp_path / "src")


@pytest.mark.parametrize("where", [("d1/e1",), ("d6/e1",), ("d6/e1", "d7/e3"), ("d2/e0", "d6/e2")])
def test_an_error_is_the_one_a_walk_alone_raises(tmp_path: Path, where: tuple[str, ...]) -> None:
    make_tree(tmp_path / "src")
    for i, directory in enumerate(where):
        os.mkfifo(tmp_path / "src" / directory / f"fifo{i}")
    alone = error_of(lambda: check(tmp_path / "src", shared=False))
    assert "fifo0" in alone and "named pipe" in alone
    assert error_of(lambda: check(tmp_path / "src")) == alone
    assert error_of(lambda: listing(tmp_path / "src")) == alone


def test_a_refusal_after_a_subdirectory_comes_after_the_errors_below_it(tmp_path: Path) -> None:
    make_tree(tmp_path / "src")
    os.mkfifo(tmp_path / "src" / "d3" / "zzz-fifo")  # listed with d3, met after d3/e*
    os.mkfifo(tmp_path / "src" / "d3" / "e2" / "a-fifo")
    alone = error_of(lambda: check(tmp_path / "src", shared=False))
    assert "e2/a-fifo" in alone
    assert error_of(lambda: check(tmp_path / "src")) == alone == error_of(lambda: listing(tmp_path / "src"))


def test_a_helper_that_cannot_start_costs_nothing_but_time(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    make_tree(tmp_path / "src")
    monkeypatch.setattr(walk, "_python", lambda: str(tmp_path / "no-such-python"))
    key, helped = check(tmp_path / "src")
    assert helped == 0
    assert key == listing(tmp_path / "src")


def test_an_embedding_program_that_is_not_python_is_never_started(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_tree(tmp_path / "src")
    program = tmp_path / "uwsgi"
    program.write_text(f"#!/bin/sh\ntouch {tmp_path}/started\n")
    program.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(program))
    key, helped = check(tmp_path / "src")
    assert helped == 0 and not (tmp_path / "started").exists()
    assert key == listing(tmp_path / "src")


FAULTY = {
    # dies at once
    "exits": "import sys; sys.exit(3)",
    # answers with something that is not the protocol
    "garbles": "import sys; sys.stdin.readline(); print('hello', flush=True); sys.stdin.read()",
    # starts the last item of the first list and dies before its digest
    "dies-mid-item": """
import sys
sys.stdin.readline(); sys.stdin.readline()
kind, n, *items = sys.stdin.readline().split()
print(f"S {n} {len(items) - 1}", flush=True)
""",
    # reports every item it starts as failed
    "fails-every-item": """
import sys
sys.stdin.readline(); sys.stdin.readline()
for line in sys.stdin:
    kind, n, *items = line.split()
    if kind == "T":
        for i in range(len(items) - 1, 0, -1):
            print(f"S {n} {i}", flush=True)
            print(f"E {n} {i}", flush=True)
        print(f"F {n}", flush=True)
""",
}


@pytest.mark.parametrize("fault", sorted(FAULTY))
def test_a_failing_helper_leaves_the_key_as_a_walk_alone_makes_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fault: str) -> None:
    make_tree(tmp_path / "src")
    program = tmp_path / "helper.py"
    program.write_text(FAULTY[fault])
    monkeypatch.setattr(walk, "__file__", str(program))
    key, helped = check(tmp_path / "src")
    assert helped == 0
    assert key == listing(tmp_path / "src")


def test_a_helper_that_lies_would_be_caught(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The tests above would see a helper whose digests differ: one that walks but reports a
    wrong digest changes the key (so the key comparisons in this file can fail)."""
    make_tree(tmp_path / "src")
    program = tmp_path / "helper.py"
    program.write_text("""
import sys
sys.stdin.readline(); sys.stdin.readline()
for line in sys.stdin:
    kind, n, *items = line.split()
    if kind == "T":
        print(f"S {n} {len(items) - 1}", flush=True)
        print(f"D {n} {len(items) - 1} {'00' * 32} 0", flush=True)
        print(f"F {n}", flush=True)
""")
    monkeypatch.setattr(walk, "__file__", str(program))
    key, helped = check(tmp_path / "src")
    assert helped > 0
    assert key != listing(tmp_path / "src")


@pytest.mark.skipif(sys.platform == "darwin", reason="macOS file systems refuse non-UTF-8 names")
def test_names_that_are_not_utf8_reach_the_helper_as_their_bytes(tmp_path: Path) -> None:
    root = tmp_path / "src"
    make_tree(root, tops=4)
    for a in range(4):
        raw = os.path.join(os.fsencode(root), b"d%d" % a, b"caf\xe9-\xff")
        os.mkdir(raw)
        for c in range(3):
            with open(os.path.join(raw, b"f\xfe%d" % c), "wb") as f:
                f.write(b"x" * c)
    alone, _ = check(root, shared=False)
    shared, helped = check(root)
    assert helped > 0
    assert shared == alone == listing(root)


def test_a_flat_directory_of_many_files_keeps_no_record_a_file(tmp_path: Path) -> None:
    """The records of the files before a directory's first subdirectory are hashed as they
    are made: a flat directory costs the check its names, not a record a file."""
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(30_000):
        os.close(os.open(flat / f"file-{i:06d}.txt", os.O_CREAT | os.O_WRONLY, 0o644))
    st = os.stat(flat)
    ancestors = frozenset({(st.st_dev, st.st_ino)})
    tracemalloc.start()
    try:
        names = sorted(os.listdir(flat))
        names_peak = tracemalloc.get_traced_memory()[1]
        del names
        tracemalloc.reset_peak()
        hasher = hashlib.sha256()
        kids, _ = walk.listing(f"{flat}/", "", ancestors, None, True, hasher.update)
        listing_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert sum(len(k) for k in kids if isinstance(k, bytes)) < 4096 * 64  # the last run only
    # buffered, the 30,000 records (~2.5 MB with their join) would double the names' peak
    assert listing_peak < names_peak + 1_000_000, (listing_peak, names_peak)
    assert check(flat, shared=False)[0] == listing(flat)


def test_a_tree_deeper_than_the_recursion_limit_is_checked(tmp_path: Path) -> None:
    deep = tmp_path / "src"
    depth = sys.getrecursionlimit() + 50
    # os.makedirs and shutil.rmtree recurse: made and removed here one level at a time
    levels = [os.path.join(deep, *(["d"] * n)) for n in range(depth + 1)]
    for level in levels:
        os.mkdir(level)
    with open(os.path.join(levels[-1], "f"), "w") as f:
        f.write("bottom")
    try:
        alone, _ = check(deep, shared=False)
        assert alone == listing(deep)
        assert alone == check(deep)[0]
    finally:
        os.remove(os.path.join(levels[-1], "f"))
        for level in reversed(levels):
            os.rmdir(level)
