"""compression: one sniffer, frame-by-frame decompression, bounded output, cut-off streams refused."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import struct
import tracemalloc

import pytest
import zstandard

from cib_core.compression import Frames, decompressed, sniff
from cib_core.errors import LayerSourceError

DATA = os.urandom(200_000) + b"text that compresses well " * 40_000


def _zstd_frames(*parts: bytes) -> bytes:
    skippable = struct.pack("<II", 0x184D2A53, 5) + b"skip!"
    frames = [zstandard.ZstdCompressor(write_checksum=i % 2 == 0).compress(p) for i, p in enumerate(parts)]
    return frames[0] + skippable + b"".join(frames[1:])


# several members, frames or streams each: a decompressor that stops after the first loses data
MULTI = {
    "gzip": gzip.compress(DATA[:1000]) + gzip.compress(DATA[1000:]) + b"\0" * 64,
    "zstd": _zstd_frames(DATA[:5], DATA[5:300_000], DATA[300_000:]),
    "xz": lzma.compress(DATA[:10]) + lzma.compress(DATA[10:]),
    "bzip2": bz2.compress(DATA[:10]) + bz2.compress(DATA[10:]),
}


@pytest.mark.parametrize("kind", sorted(MULTI))
def test_every_member_or_frame_is_read(kind: str) -> None:
    blob = MULTI[kind]
    assert sniff(blob[:6]) == kind
    plain, found = decompressed(io.BytesIO(blob), "t")
    assert found == kind
    assert plain.read() == DATA


@pytest.mark.parametrize("kind", sorted(MULTI))
@pytest.mark.parametrize("step", [1, 7, 4096, 1 << 20])
def test_fed_in_any_slices_gives_the_same_bytes(kind: str, step: int) -> None:
    blob = MULTI[kind] if step > 1 else MULTI[kind][:3000]
    frames = Frames(kind, "t")
    out = bytearray()
    for start in range(0, len(blob), step):
        for piece in frames.feed(blob[start:start + step]):
            out += piece
    if step > 1:
        frames.end()
        assert out == DATA
    else:
        assert bytes(out) == DATA[:len(out)]


def test_plain_streams_pass_through_and_unknown_magic_is_plain() -> None:
    assert sniff(b"ustar\0") is None
    plain, found = decompressed(io.BytesIO(b"abc"), "t")
    assert (found, plain.read()) == (None, b"abc")
    plain, found = decompressed(io.BytesIO(b""), "t")
    assert (found, plain.read()) == (None, b"")


@pytest.mark.parametrize("kind", sorted(MULTI))
@pytest.mark.parametrize("keep", [0.5, 0.99])
def test_a_stream_cut_off_inside_a_frame_is_refused(kind: str, keep: float) -> None:
    blob = MULTI[kind].rstrip(b"\0")
    cut = blob[:int(len(blob) * keep)]
    plain, _ = decompressed(io.BytesIO(cut), "layer sha256:abc")
    with pytest.raises(LayerSourceError, match=r"layer sha256:abc: (ends inside|is not valid)"):
        plain.read()


@pytest.mark.parametrize("kind", sorted(MULTI))
def test_garbage_after_the_magic_is_refused_with_the_name(kind: str) -> None:
    blob = MULTI[kind][:6] + b"this is not compressed data at all" * 30
    plain, _ = decompressed(io.BytesIO(blob), "the archive x.tar.gz")
    with pytest.raises(LayerSourceError, match="the archive x.tar.gz"):
        plain.read()


def test_garbage_after_a_complete_gzip_member_is_refused() -> None:
    plain, _ = decompressed(io.BytesIO(gzip.compress(b"ok") + b"junk"), "t")
    with pytest.raises(LayerSourceError, match="gzip"):
        plain.read()


@pytest.mark.parametrize("kind", ["gzip", "zstd"])
def test_output_pieces_stay_small_whatever_the_ratio(kind: str) -> None:
    """A small blob of zeros that expands 1000-fold and more is never held in memory whole."""
    size = 256 << 20
    blob = (gzip.compress(bytes(size), 9) if kind == "gzip"
            else zstandard.ZstdCompressor().compress(bytes(size)))
    assert len(blob) < size // 900
    frames = Frames(kind, "bomb")
    tracemalloc.start()
    try:
        total = 0
        largest = 0
        for start in range(0, len(blob), 1 << 20):
            for piece in frames.feed(blob[start:start + (1 << 20)]):
                total += len(piece)
                largest = max(largest, len(piece))
        frames.end()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == size
    assert largest <= 1 << 20
    assert peak < 8 << 20, f"peak {peak} bytes while expanding {len(blob)} bytes to {size}"
