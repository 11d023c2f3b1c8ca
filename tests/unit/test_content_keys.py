"""Content keys of layers: the same for the same inputs in any checkout (other paths, inodes,
mtimes), different when any input changes (a file's bytes, its mode, its name, a link's
target, the sources' options, the compression settings, a packager's inputs)."""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cib_core import CustomFile
from cib_core.errors import ConfigurationError
from cib_core.layers.build import prepare_layer
from cib_core.layers.keys import content_key
from cib_core.plugins import get_plugin_manager

_name = st.text(alphabet="abcdefghijklmnopqrstuvwxyzé_-.0123456789", min_size=1,
                max_size=12).filter(lambda s: s not in (".", ".."))
_mode = st.sampled_from([0o644, 0o600, 0o755, 0o444])
_tree = st.dictionaries(
    st.lists(_name, min_size=1, max_size=3).map("/".join),
    st.tuples(st.binary(max_size=300), _mode), min_size=1, max_size=8,
).filter(lambda t: not any(a != b and b.startswith(a + "/") for a in t for b in t))

SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


def write_tree(root: Path, tree: Mapping[str, tuple[bytes, int]], *, mtime: int) -> None:
    for rel, (data, mode) in tree.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        path.chmod(mode)
        os.utime(path, (mtime, mtime))


def key_of(sources: Mapping[str, object], inputs: Mapping[str, str | bytes] | None = None,
           **options: object) -> str:
    builder = prepare_layer(get_plugin_manager(), sources, **options)  # type: ignore[arg-type]
    found = content_key(builder, inputs)
    assert found is not None
    return found.key


@contextmanager
def checkout(tree: Mapping[str, tuple[bytes, int]], mtime: int) -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "src"
        root.mkdir()
        write_tree(root, tree, mtime=mtime)
        yield root


@SETTINGS
@given(tree=_tree, mtimes=st.tuples(st.integers(10**8, 2 * 10**9), st.integers(10**8, 2 * 10**9)))
def test_the_key_is_the_same_in_another_checkout(tree, mtimes):
    with checkout(tree, mtimes[0]) as first, checkout(tree, mtimes[1]) as second:
        assert os.stat(first).st_ino != os.stat(second).st_ino
        assert key_of({"/app": str(first)}) == key_of({"/app": str(second)})


@SETTINGS
@given(tree=_tree, data=st.data())
def test_changing_any_file_changes_the_key(tree, data):
    rel = data.draw(st.sampled_from(sorted(tree)))
    content, mode = tree[rel]
    change = data.draw(st.sampled_from(["content", "mode", "name"]))
    changed = dict(tree)
    if change == "content":
        changed[rel] = (data.draw(st.binary(max_size=300).filter(lambda b: b != content)), mode)
    elif change == "mode":
        changed[rel] = (content, data.draw(_mode.filter(lambda m: m != mode)))
    else:
        del changed[rel]
        new = rel + "x"
        if any(p == new or p.startswith(new + "/") or new.startswith(p + "/") for p in changed):
            return
        changed[new] = (content, mode)
    with checkout(tree, 10**9) as before, checkout(changed, 10**9) as after:
        assert key_of({"/app": str(before)}) != key_of({"/app": str(after)})


@SETTINGS
@given(tree=_tree)
def test_a_touch_or_a_copy_keeps_the_key(tree):
    with checkout(tree, 10**9) as root:
        before = key_of({"/app": str(root)})
        for rel in tree:
            os.utime(root / rel, None)
        moved = root.parent / "elsewhere"
        shutil.copytree(root, moved)
        assert key_of({"/app": str(root)}) == before
        assert key_of({"/app": str(moved)}) == before


def test_options_settings_and_inputs_change_the_key(tmp_path: Path) -> None:
    root = tmp_path / "src"
    write_tree(root, {"a.txt": (b"a\n", 0o644), "skip.log": (b"x", 0o644),
                      "sub/b.bin": (os.urandom(5000), 0o755)}, mtime=10**9)
    (root / "link").symlink_to("a.txt")
    base = key_of({"/app": str(root)})
    variants = {
        "target": key_of({"/srv": str(root)}),
        "ignores": key_of({"/app": str(root)}, ignores=["*.log"]),
        "symlinks": key_of({"/app": str(root)}, follow_symlinks=False),
        "compression": key_of({"/app": str(root)}, compression="none"),
        "level": key_of({"/app": str(root)}, level=1),
        "flavour": key_of({"/app": str(root)}, docker_flavour=True),
        "layer time": key_of({"/app": str(root)}, mtime=1),
        "input": key_of({"/app": str(root)}, {"python.platform": "linux/arm64"}),
        "other input": key_of({"/app": str(root)}, {"python.platform": "linux/amd64"}),
    }
    assert base == key_of({"/app": str(root)})
    assert len({base, *variants.values()}) == len(variants) + 1, variants


def test_a_link_target_changes_the_key(tmp_path: Path) -> None:
    root = tmp_path / "src"
    write_tree(root, {"a": (b"1", 0o644), "b": (b"1", 0o644)}, mtime=10**9)
    (root / "link").symlink_to("a")
    first = key_of({"/app": str(root)}, follow_symlinks=False)
    (root / "link").unlink()
    (root / "link").symlink_to("b")
    assert key_of({"/app": str(root)}, follow_symlinks=False) != first


def test_custom_files_are_keyed_by_their_bytes_and_streams_are_not_keyed() -> None:
    one = key_of({"/etc/motd": CustomFile("hello\n")})
    assert one == key_of({"/etc/motd": CustomFile(b"hello\n")})
    assert one != key_of({"/etc/motd": CustomFile("hello!\n")})
    assert one != key_of({"/etc/motd": CustomFile("hello\n", mode=0o600)})
    builder = prepare_layer(get_plugin_manager(), {"/x": CustomFile(io.BufferedReader(
        io.BytesIO(b"data")))})
    # a stream is read by the build from where it stands: reading it for a key would move it
    assert content_key(builder) is None


def test_a_bad_input_is_a_configuration_error(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    builder = prepare_layer(get_plugin_manager(), {"/f": str(tmp_path / "f")})
    with pytest.raises(ConfigurationError, match="cache key input"):
        content_key(builder, {"n": 3})  # type: ignore[dict-item]


def test_the_key_does_not_use_up_the_content(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"payload" * 1000)
    builder = prepare_layer(get_plugin_manager(), {"/f": str(tmp_path / "f"),
                                                   "/g": CustomFile(b"in memory")})
    content_key(builder)
    import hashlib

    sink = hashlib.sha256()
    info = builder.write(sink.update)
    again = prepare_layer(get_plugin_manager(), {"/f": str(tmp_path / "f"),
                                                 "/g": CustomFile(b"in memory")}).write(
        lambda _b: None)
    assert info.diff_id == again.diff_id
