"""export_filesystem: whiteouts, opaque directories, escapes, later layers win."""

from __future__ import annotations

import gzip
import io
import tarfile
from collections.abc import Callable

import pytest
import zstandard

from cib_core.errors import LayerSourceError
from cib_core.formats.flatten import export_filesystem

Entry = tuple[str, str, object]   # name, kind ("f", "d", "l" symlink, "h" hard link), data/target


def layer(*entries: Entry, compress: str | None = None) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, value in entries:
            info = tarfile.TarInfo(name)
            if kind == "f":
                data = value if isinstance(value, bytes) else str(value).encode()
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                continue
            if kind == "d":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
            elif kind == "l":
                info.type, info.linkname = tarfile.SYMTYPE, str(value)
            elif kind == "h":
                info.type, info.linkname = tarfile.LNKTYPE, str(value)
            tar.addfile(info)
    raw = buf.getvalue()
    if compress == "gzip":
        raw = gzip.compress(raw)
    elif compress == "zstd":
        raw = zstandard.ZstdCompressor().compress(raw)
    return io.BytesIO(raw)


def export(*layers: io.BytesIO | Callable[[], io.BytesIO]) -> dict[str, tuple[str, bytes | str]]:
    out = io.BytesIO()
    export_filesystem(layers, out)
    out.seek(0)
    result: dict[str, tuple[str, bytes | str]] = {}
    with tarfile.open(fileobj=out) as tar:
        for m in tar:
            assert m.name not in result, f"{m.name} written twice"
            if m.isreg():
                f = tar.extractfile(m)
                assert f is not None
                result[m.name] = ("f", f.read())
            elif m.isdir():
                result[m.name] = ("d", "")
            elif m.issym():
                result[m.name] = ("l", m.linkname)
            elif m.islnk():
                result[m.name] = ("h", m.linkname)
    return result


def test_later_layer_wins_and_compression_is_sniffed() -> None:
    base = layer(("etc", "d", None), ("etc/a", "f", "old"), ("etc/b", "f", "keep"), compress="gzip")
    top = layer(("./etc/a", "f", "new"), ("bin", "l", "/usr/bin"), compress="zstd")
    assert export(base, top) == {
        "etc": ("d", ""), "etc/a": ("f", b"new"), "etc/b": ("f", b"keep"), "bin": ("l", "/usr/bin")}


def test_whiteout_deletes_file_and_directory_tree() -> None:
    base = layer(("d", "d", None), ("d/x", "f", "1"), ("d/sub", "d", None), ("d/sub/y", "f", "2"),
                 ("keep", "f", "k"))
    top = layer(("d/.wh.x", "f", ""), ("d/.wh.sub", "f", ""))
    assert export(base, top) == {"d": ("d", ""), "keep": ("f", b"k")}


def test_whiteout_only_affects_lower_layers() -> None:
    base = layer(("x", "f", "old"))
    middle = layer((".wh.x", "f", ""))
    top = layer(("x", "f", "new"))
    assert export(base, middle, top) == {"x": ("f", b"new")}
    base.seek(0)
    middle.seek(0)
    assert export(base, middle) == {}


def test_opaque_directory_hides_lower_contents_but_keeps_its_own() -> None:
    base = layer(("d", "d", None), ("d/old", "f", "o"), ("d/deep", "d", None), ("d/deep/z", "f", "z"),
                 ("other", "f", "x"))
    top = layer(("d", "d", None), ("d/.wh..wh..opq", "f", ""), ("d/new", "f", "n"))
    assert export(base, top) == {"d": ("d", ""), "d/new": ("f", b"n"), "other": ("f", b"x")}


def test_file_replacing_directory_hides_lower_children() -> None:
    base = layer(("p", "d", None), ("p/child", "f", "c"))
    top = layer(("p", "l", "/elsewhere"))
    assert export(base, top) == {"p": ("l", "/elsewhere")}


def test_lower_symlink_never_gets_children_from_upper_layer() -> None:
    base = layer(("p", "l", "/etc"))
    top = layer(("p/passwd", "f", "evil"))
    out = export(base, top)
    assert out == {"p/passwd": ("f", b"evil")}


@pytest.mark.parametrize("name", ["/etc/passwd", "../outside", "a/../../b", "a/../b"])
def test_escaping_names_are_refused(name: str) -> None:
    with pytest.raises(LayerSourceError, match="escapes the root"):
        export(layer(("ok", "f", "1"), (name, "f", "x")))


def test_hard_link_escaping_is_refused_and_writing_through_symlink_is_refused() -> None:
    with pytest.raises(LayerSourceError, match="escapes the root"):
        export(layer(("link", "h", "../../etc/shadow")))
    with pytest.raises(LayerSourceError, match="escapes the root"):
        export(layer(("s", "l", "/etc"), ("s/cron", "f", "x")))


def test_hard_links_within_and_across_layers() -> None:
    base = layer(("bin", "d", None), ("bin/real", "f", "payload"), ("bin/gone", "f", "old"))
    top = layer(("bin/same", "f", "s"), ("bin/same2", "h", "bin/same"), ("bin/alias", "h", "bin/real"),
                (".wh.nothing", "f", ""))
    out = export(base, top)
    assert out["bin/same2"] == ("h", "bin/same")
    assert out["bin/real"] == ("f", b"payload")
    assert out["bin/alias"] == ("h", "bin/real")
    # the target replaced above the link's layer: the link keeps the lower content
    base2 = layer(("t", "f", "lower"))
    mid = layer(("l", "h", "t"))
    top2 = layer(("t", "f", "upper"))
    out2 = export(base2, mid, top2)
    assert out2["t"] == ("f", b"upper")
    assert out2["l"] == ("f", b"lower")


def test_callables_open_one_layer_at_a_time_bottom_first() -> None:
    events: list[tuple[str, str]] = []

    class Tracked(io.BytesIO):
        def __init__(self, name: str, data: bytes) -> None:
            super().__init__(data)
            self.label = name

        def close(self) -> None:
            if not self.closed:
                events.append(("close", self.label))
            super().close()

    def opener(name: str, stream: io.BytesIO) -> Callable[[], io.BytesIO]:
        def open_() -> io.BytesIO:
            events.append(("open", name))
            return Tracked(name, stream.getvalue())
        return open_

    out = export(opener("base", layer(("a", "f", "1"))), opener("top", layer(("b", "f", "2"))))
    # each source is read once, and closed before the next one is opened
    assert events == [("open", "base"), ("close", "base"), ("open", "top"), ("close", "top")]
    assert set(out) == {"a", "b"}


def test_large_file_streams_through() -> None:
    big = b"\x01\x02" * (3 << 20)
    out = export(layer(("big", "f", big), compress="gzip"))
    assert out["big"] == ("f", big)


def test_a_layer_that_is_not_a_tar_or_not_valid_compression_names_the_layer() -> None:
    tar_bytes = layer(("a", "f", "1")).getvalue()
    cases = {
        b"random bytes, neither compressed nor a tar archive" * 20: "is not a valid tar archive",
        gzip.compress(b"gzip, but what is inside is no tar" * 40): "is not a valid tar archive",
        gzip.compress(tar_bytes)[:-10]: "ends inside a gzip frame",
        zstandard.ZstdCompressor().compress(tar_bytes)[:-7]: "ends inside a zstd frame",
        b"\x1f\x8b\x08\x00" + b"not deflate data" * 30: "is not valid gzip",
    }
    for blob, message in cases.items():
        with pytest.raises(LayerSourceError, match=f"layer 2 of 2 \\(sha256:abc\\): {message}"):
            export_filesystem([layer(("ok", "f", "1")), io.BytesIO(blob)], io.BytesIO(),
                              names=["sha256:123", "sha256:abc"])


def test_an_empty_blob_is_an_empty_layer() -> None:
    assert export(io.BytesIO(b""), layer(("a", "f", "1"))) == {"a": ("f", b"1")}


def test_entries_written_once_with_clean_headers() -> None:
    """A long name (PAX path record), a renamed hard link, a duplicate in one layer: one entry
    each, and no stale PAX record overriding the name written."""
    long_name = "d/" + "n" * 150
    base = layer(("d", "d", None), (long_name, "f", "long"), ("d/t", "f", "first"), ("d/t", "f", "last"))
    top = layer(("d/link", "h", long_name), ("./" + long_name, "f", "replaced"))
    out = export(base, top)
    assert out == {"d": ("d", ""), long_name: ("f", b"replaced"), "d/t": ("f", b"last"),
                   "d/link": ("f", b"long")}
