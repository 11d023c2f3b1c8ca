"""Existing tarballs as layers, as they are: ``layer_from_tarball`` and ``compress_layer``;
and ``layer_from_writer``, a layer from a function that writes a tar stream."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from collections.abc import Callable
from typing import IO, Any, BinaryIO, cast

from cib_core import mediatypes
from cib_core.compression import SNIFF_SIZE, Frames, sniff
from cib_core.digest import of as digest_of
from cib_core.errors import LayerSourceError
from cib_core.layers.pipeline import (
    CHUNK,
    COMPRESSIONS,
    BuiltLayer,
    LayerInfo,
    Pipeline,
    Sink,
    make_compressor,
    to_file,
)


class _TarCheck:
    """Checks that a stream starts like a tar archive (a valid first header or zeros)."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._head = bytearray()
        self.done = False

    def feed(self, data: bytes | bytearray) -> None:
        if self.done:
            return
        self._head += data[: tarfile.BLOCKSIZE - len(self._head)]
        if len(self._head) >= tarfile.BLOCKSIZE:
            self._check()

    def _check(self) -> None:
        self.done = True
        block = bytes(self._head)
        if block.count(0) == len(block) and block:
            return
        try:
            tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
        except tarfile.HeaderError as exc:
            raise LayerSourceError(self._name, f"is not a tar archive ({exc})") from None

    def end(self) -> None:
        if not self.done:
            if not self._head:
                raise LayerSourceError(self._name, "is empty, not a tar archive")
            self._check()


def layer_from_tarball(path: str | os.PathLike[str], *, compression: str = "gzip",
                       docker_flavour: bool = False, level: int | None = None,
                       dir: str | None = None) -> BuiltLayer:
    """An existing ``.tar``, ``.tar.gz`` or ``.tar.zst`` as one layer, as it is.

    The compression is recognized from the content. A gzip or zstd file is the blob itself
    (its digest is the file's sha256; nothing is copied) and ``diff_id`` comes from
    decompressing it in the same pass. A plain tar is compressed with ``compression`` into a
    temporary file (or used as it is with ``"none"``). A zstd file in a Docker-flavoured image
    (which only carries gzip) is recompressed to gzip. The content must start like a tar
    archive; its members are not rewritten (no normalization).
    """
    name = os.fspath(path)
    try:
        src = open(name, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise LayerSourceError(name, f"cannot be read: {exc.strerror or exc}") from exc
    with src:
        given = sniff(src.read(SNIFF_SIZE)) or "none"
        src.seek(0)
        if given not in COMPRESSIONS:
            raise LayerSourceError(name, f"is {given}-compressed; a layer is a plain, gzip or "
                                   "zstd tarball")
        if given == "zstd" and docker_flavour:
            return to_file(lambda sink: _recompress(src, name, Frames("zstd", name),
                                                     "gzip", level, True, sink), dir)
        if given == "none" and compression != "none":
            return to_file(lambda sink: _recompress(src, name, None, compression, level,
                                                     docker_flavour, sink), dir)
        media_type = mediatypes.layer_media_type(docker_flavour, given)
        file_hash, tar_hash = hashlib.sha256(), hashlib.sha256()
        decomp = Frames(given, name) if given != "none" else None
        check = _TarCheck(name)
        size = 0
        while True:
            chunk = src.read(CHUNK)
            if not chunk:
                break
            size += len(chunk)
            file_hash.update(chunk)
            for raw in decomp.feed(chunk) if decomp is not None else (chunk,):
                check.feed(raw)
                tar_hash.update(raw)
        if decomp is not None:
            decomp.end()
        check.end()
    info = LayerInfo(digest=digest_of(file_hash), diff_id=digest_of(tar_hash), size=size,
                     media_type=media_type)
    return BuiltLayer(info, os.path.abspath(name), owned=False)


def _recompress(src: IO[bytes], name: str, decomp: Frames | None, method: str,
                level: int | None, docker_flavour: bool, sink: Sink) -> LayerInfo:
    pipe = Pipeline(make_compressor(method, level), sink)
    check = _TarCheck(name)
    try:
        while True:
            chunk = src.read(CHUNK)
            if not chunk:
                break
            for raw in decomp.feed(chunk) if decomp is not None else (chunk,):
                check.feed(raw)
                pipe.write(raw)
        if decomp is not None:
            decomp.end()
        check.end()
        diff_id, digest, size = pipe.finish()
    finally:
        pipe.abort()
    return LayerInfo(digest=digest, diff_id=diff_id, size=size,
                     media_type=mediatypes.layer_media_type(docker_flavour, method))


def compress_layer(stream: IO[bytes], name: str, *, compression: str = "gzip",
                   docker_flavour: bool = False, level: int | None = None,
                   dir: str | None = None) -> BuiltLayer:
    """Compress an uncompressed layer read from ``stream`` into a temporary blob.

    Used where a layer stored as a plain tar (a ``docker save`` archive) goes somewhere that
    wants it compressed, a registry; ``diff_id`` stays what it was, the digest is new.
    """
    return to_file(lambda sink: _recompress(stream, name, None, compression, level,
                                             docker_flavour, sink), dir)



class _PipeWriter(io.RawIOBase):
    """A writable file object over a :class:`Pipeline`, gathering small writes (tarfile's
    stream mode writes 10 kB records) into ``CHUNK``-sized pieces for the compressor thread."""

    def __init__(self, pipe: Pipeline) -> None:
        super().__init__()
        self._pipe = pipe
        self._buf = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self._buf += view
        if len(self._buf) >= CHUNK:
            self._pipe.write(bytes(self._buf))
            self._buf.clear()
        return len(view)

    def drain(self) -> None:
        if self._buf:
            self._pipe.write(bytes(self._buf))
            self._buf.clear()


def layer_from_writer(write_tar: Callable[[BinaryIO], None], *, compression: str = "gzip",
                      docker_flavour: bool = False, level: int | None = None,
                      dir: str | None = None) -> BuiltLayer:
    """A layer from a function that writes an uncompressed tar stream to the file object it
    is given (never seeking), compressed and hashed as it is written, into a temporary blob.

    Memory stays bounded by a few chunks whatever the size of the tar: this is how
    ``cib flatten`` turns an image's merged filesystem into one layer.
    """
    media_type = mediatypes.layer_media_type(docker_flavour, compression)

    def write(sink: Sink) -> LayerInfo:
        pipe = Pipeline(make_compressor(compression, level), sink)
        try:
            writer = _PipeWriter(pipe)
            write_tar(cast(BinaryIO, writer))
            writer.drain()
            diff_id, digest, size = pipe.finish()
        finally:
            pipe.abort()
        return LayerInfo(digest=digest, diff_id=diff_id, size=size, media_type=media_type)

    return to_file(write, dir)
