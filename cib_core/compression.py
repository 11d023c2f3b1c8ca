"""Compressed streams: which compression a stream uses, and decompressing it frame by frame.

A layer or an archive may be gzip (one or more members), zstd (one or more frames), xz or
bzip2, recognized from its first bytes by :func:`sniff`. :class:`Frames` decompresses such a
stream as ``gzip -d`` and ``zstd -d`` do: every member or frame in turn, trailing zero bytes
allowed after gzip and xz (some tools pad), and a stream cut off inside a frame refused. Its
output comes in pieces of bounded size whatever the compression ratio, so a small blob that
expands to gigabytes never sits in memory. :func:`decompressed` wraps a readable stream.

Every failure is a ``LayerSourceError`` naming what was being read.
"""

from __future__ import annotations

import bz2
import importlib
import io
import lzma
import zlib
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

from cib_core.errors import LayerSourceError

GZIP = "gzip"
ZSTD = "zstd"
XZ = "xz"
BZIP2 = "bzip2"

SNIFF_SIZE = 6
"""How many leading bytes :func:`sniff` needs to tell every compression apart."""

PIECE = 1 << 20
"""The most output one step of decompression hands out (a zstd block is at most 128 KiB)."""

_MAGIC = ((GZIP, b"\x1f\x8b"), (ZSTD, b"\x28\xb5\x2f\xfd"), (XZ, b"\xfd7zXZ\x00"), (BZIP2, b"BZh"))

_isal_zlib: Any
try:
    _isal_zlib = importlib.import_module("isal.isal_zlib")
except ImportError:  # pragma: no cover - isal is a dependency; zlib still works
    _isal_zlib = None


def sniff(head: bytes) -> str | None:
    """``"gzip"``, ``"zstd"``, ``"xz"`` or ``"bzip2"`` from a stream's first bytes
    (:data:`SNIFF_SIZE` of them), or None for anything else (an uncompressed stream)."""
    for kind, magic in _MAGIC:
        if head.startswith(magic):
            return kind
    return None


class _ZstdBlocks:
    """Follows the frame and block headers of a zstd stream (RFC 8878) without decoding, so
    the input can be cut at block ends: each cut then decodes to at most one block (128 KiB).
    Also tells whether the stream ended between frames."""

    _MAGIC, _FRAME_HEADER, _HEADER_REST, _BLOCK_HEADER, _BODY, _SKIP_SIZE = range(6)

    def __init__(self) -> None:
        self._state = self._MAGIC
        self._need = 4          # bytes still wanted by the current state
        self._field = bytearray()
        self._checksum = 0      # length of the content checksum closing the current frame
        self._last = False      # the current block is the frame's last
        self.at_frame_end = True
        self.unknown = False    # not a frame the walker understands: leave it to the decoder

    def cuts(self, data: bytes) -> Iterator[tuple[int, bool]]:
        """Offsets into ``data`` where a block or a frame ends, each with "a frame ends here"."""
        pos = 0
        while pos < len(data) and not self.unknown:
            take = min(self._need, len(data) - pos)
            if self._state in (self._MAGIC, self._FRAME_HEADER, self._BLOCK_HEADER, self._SKIP_SIZE):
                self._field += data[pos:pos + take]
            pos += take
            self._need -= take
            self.at_frame_end = False
            if self._need:
                continue
            frame_ends = self._advance()
            if self._state == self._BLOCK_HEADER or frame_ends:
                yield pos, frame_ends

    def _advance(self) -> bool:
        """Move past a complete field; True when that completed a frame."""
        field = bytes(self._field)
        self._field.clear()
        if self._state == self._MAGIC:
            number = int.from_bytes(field, "little")
            if number == 0xFD2FB528:
                self._state, self._need = self._FRAME_HEADER, 1
            elif number & 0xFFFFFFF0 == 0x184D2A50:
                self._state, self._need = self._SKIP_SIZE, 4
            else:
                self.unknown = True
            return False
        if self._state == self._SKIP_SIZE:
            self._state, self._need = self._BODY, int.from_bytes(field, "little")
            self._checksum, self._last = 0, True
            return self._end_body_if_empty()
        if self._state == self._FRAME_HEADER:
            descriptor = field[0]
            single_segment = bool(descriptor & 0x20)
            content_size = (1 if single_segment else 0, 2, 4, 8)[descriptor >> 6]
            dictionary_id = (0, 1, 2, 4)[descriptor & 0x03]
            self._checksum = 4 if descriptor & 0x04 else 0
            rest = (0 if single_segment else 1) + dictionary_id + content_size
            self._state, self._need = self._HEADER_REST, rest
            if rest == 0:
                self._state, self._need = self._BLOCK_HEADER, 3
            return False
        if self._state == self._HEADER_REST:
            self._state, self._need = self._BLOCK_HEADER, 3
            return False
        if self._state == self._BLOCK_HEADER:
            header = int.from_bytes(field, "little")
            self._last = bool(header & 1)
            block_type, size = (header >> 1) & 3, header >> 3
            if block_type == 3:
                self.unknown = True
                return False
            body = 1 if block_type == 1 else size
            if self._last:
                body += self._checksum
            self._state, self._need = self._BODY, body
            return self._end_body_if_empty()
        # _BODY complete
        return self._after_body()

    def _end_body_if_empty(self) -> bool:
        return self._after_body() if self._need == 0 else False

    def _after_body(self) -> bool:
        if self._last:
            self._state, self._need = self._MAGIC, 4
            self.at_frame_end = True
            return True
        self._state, self._need = self._BLOCK_HEADER, 3
        return False


class Frames:
    """Decompresses a stream of ``kind`` fed in arbitrary slices, member after member (gzip),
    frame after frame (zstd), stream after stream (xz, bzip2).

    ``feed(data)`` yields the output in pieces of at most about :data:`PIECE` bytes;
    ``end()`` refuses a stream cut off inside a frame. ``name`` says what is being read in
    error messages.
    """

    def __init__(self, kind: str, name: str) -> None:
        self.kind = kind
        self._name = name
        self._new = self._factory(kind)
        self._d: Any = self._new()
        self._between = False      # the last frame is complete and no other has begun
        self._blocks = _ZstdBlocks() if kind == ZSTD else None

    def _factory(self, kind: str) -> Callable[[], Any]:
        if kind == GZIP:
            lib: Any = _isal_zlib if _isal_zlib is not None else zlib
            return lambda: lib.decompressobj(31)
        if kind == ZSTD:
            try:
                import zstandard
            except ImportError:
                raise LayerSourceError(self._name, "is zstd-compressed; install cib-core[zstd] "
                                       "to read it") from None
            return lambda: zstandard.ZstdDecompressor().decompressobj()
        if kind == XZ:
            return lambda: lzma.LZMADecompressor(lzma.FORMAT_XZ)
        if kind == BZIP2:
            return bz2.BZ2Decompressor
        raise ValueError(f"unknown compression {kind!r}")

    def _invalid(self, exc: BaseException) -> LayerSourceError:
        return LayerSourceError(self._name, f"is not valid {self.kind}: {exc}")

    def feed(self, data: bytes | bytearray | memoryview) -> Iterator[bytes]:
        """The output of ``data`` (the next slice of the stream), in bounded pieces."""
        if self._blocks is not None:
            yield from self._feed_zstd(bytes(data))
            return
        rest = bytes(data)
        while rest:
            if self._between:
                if self.kind in (GZIP, XZ) and not rest.strip(b"\0"):
                    return      # padding after the last member
                self._d = self._new()
                self._between = False
            try:
                if self.kind == GZIP:
                    # zlib keeps what it did not take in unconsumed_tail
                    while True:
                        piece = self._d.decompress(rest, PIECE)
                        rest = self._d.unconsumed_tail
                        if piece:
                            yield piece
                        if self._d.eof or (not rest and len(piece) < PIECE):
                            break
                else:
                    # lzma and bz2 buffer the input themselves and ask for more when done
                    piece = self._d.decompress(rest, PIECE)
                    rest = b""
                    while True:
                        if piece:
                            yield piece
                        if self._d.eof or self._d.needs_input:
                            break
                        piece = self._d.decompress(b"", PIECE)
            except (zlib.error, lzma.LZMAError, OSError, EOFError, ValueError) as exc:
                raise self._invalid(exc) from None
            except Exception as exc:
                if _isal_zlib is None or not isinstance(exc, _isal_zlib.error):
                    raise
                raise self._invalid(exc) from None
            if self._d.eof:
                rest = self._d.unused_data + rest
                self._between = True

    def _feed_zstd(self, data: bytes) -> Iterator[bytes]:
        assert self._blocks is not None
        start = 0
        view = memoryview(data)
        cuts = self._blocks.cuts(data)
        while start < len(data):
            end, frame_ends = next(cuts, (len(data), False))
            if self._between:
                self._d = self._new()
                self._between = False
            try:
                piece = self._d.decompress(view[start:end])
            except Exception as exc:  # noqa: BLE001 - zstandard.ZstdError and its kin
                raise self._invalid(exc) from None
            if piece:
                yield piece
            start = end
            if frame_ends != bool(self._d.eof) and not self._blocks.unknown:
                raise self._invalid(ValueError("a frame does not end where its headers say"))
            if self._d.eof:
                self._between = True

    def end(self) -> None:
        """Check that the stream ended between frames (it was not cut off)."""
        complete = self._between if self._blocks is None else (
            self._between and self._blocks.at_frame_end)
        if not complete:
            raise LayerSourceError(self._name, f"ends inside a {self.kind} frame: the file is "
                                   "truncated or damaged")


class _Prefixed(io.RawIOBase):
    """A stream whose first bytes were already read: gives them back, then the rest.

    Closing it leaves the underlying stream open: whoever opened that closes it.
    """

    def __init__(self, head: bytes, rest: BinaryIO) -> None:
        super().__init__()
        self._head = head
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if self._head:
            n = min(len(view), len(self._head))
            view[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._rest.read(len(view))
        view[:len(data)] = data
        return len(data)


class _Decompressing(io.RawIOBase):
    """The decompressed bytes of a readable stream, pulled through :class:`Frames`."""

    def __init__(self, source: BinaryIO, frames: Frames, chunk: int) -> None:
        super().__init__()
        self._source = source
        self._frames = frames
        self._chunk = chunk
        self._pieces: Iterator[bytes] = iter(())
        self._piece = memoryview(b"")
        self._eof = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        while not len(self._piece):
            piece = next(self._pieces, None)
            if piece is not None:
                self._piece = memoryview(piece)
                continue
            if self._eof:
                return 0
            block = self._source.read(self._chunk)
            if not block:
                self._eof = True
                self._frames.end()
                return 0
            self._pieces = self._frames.feed(block)
        n = min(len(view), len(self._piece))
        view[:n] = self._piece[:n]
        self._piece = self._piece[n:]
        return n


def _read_head(stream: BinaryIO, n: int) -> bytes:
    head = b""
    while len(head) < n:
        block = stream.read(n - len(head))
        if not block:
            break
        head += block
    return head


def decompressed(stream: BinaryIO, name: str, *, chunk: int = 1 << 16) -> tuple[BinaryIO, str | None]:
    """``stream`` decompressed as its first bytes say, and the compression found (None: it
    was not compressed and passes through as it is).

    Reading the result to its end checks that the stream was complete. The result does not
    close ``stream``: the caller still owns it. ``name`` says what is read, in errors.
    """
    head = _read_head(stream, SNIFF_SIZE)
    kind = sniff(head)
    raw = _Prefixed(head, stream)
    if kind is None:
        return io.BufferedReader(raw, buffer_size=chunk), None
    reader = _Decompressing(io.BufferedReader(raw, buffer_size=chunk), Frames(kind, name), chunk)
    return io.BufferedReader(reader, buffer_size=chunk), kind
