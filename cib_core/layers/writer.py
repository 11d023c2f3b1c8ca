"""Writing a layer's records as a tar into the pipeline, each file read as its entry comes.

Reading the files in a thread of their own was tried: on two cores the lock Python's threads
share made a tree of 100,000 small files slower (the walk and the reads kept handing the lock
to each other), with a third more processor time. The compressor and the upload, which run
in C with the lock released, stay in their threads (``layers/pipeline.py``).
"""

from __future__ import annotations

import hashlib
import tarfile
from collections.abc import Iterator

from cib_core.errors import LayerSourceError
from cib_core.layers.fingerprint import Fingerprint
from cib_core.layers.pipeline import CHUNK, Pipeline
from cib_core.layers.tar import Headers, Record
from cib_core.plugin_api import LazyFile, Readable

_BLOCK = tarfile.BLOCKSIZE
_PADDING = [bytes(n) for n in range(_BLOCK)]


class HashOnly:
    """A tar's destination that only hashes it: its diff_id, nothing compressed or kept."""

    def __init__(self) -> None:
        self.hash = hashlib.sha256()
        self.write = self.hash.update


def write_tar(records: Iterator[Record], pipe: Pipeline | HashOnly, fp: Fingerprint | None,
              headers: hashlib._Hash | None = None) -> int:
    """Write ``records`` as a tar into ``pipe`` (and, when given, into the rebuild cache's
    key ``fp``); the number of entries. ``headers`` hashes each tar header on the way."""
    buf = bytearray()
    total = 0
    count = 0
    make_header = Headers()
    lazy = LazyFile
    for rec in records:
        count += 1
        header = make_header(rec)
        if fp is not None and not fp.add(header, rec):
            fp = None
        if headers is not None:
            headers.update(header)
        buf += header
        total += len(header)
        size = rec[6]  # rec.size, without the named tuple's lookup: once per file
        if size:
            content = rec.content
            fileobj = lazy(content) if isinstance(content, str) else content
            assert fileobj is not None  # noqa: S101 - checked when the record was made
            try:
                if size < CHUNK and type(fileobj) is lazy:
                    # One read of a byte more than listed: a regular file gives fewer bytes
                    # than asked only at its end, so getting `size` also tells it has not grown.
                    data = fileobj.read1(size + 1)
                    if len(data) < size:
                        data += fileobj.read(size - len(data)) + fileobj.read(1)
                    if len(data) != size:
                        raise _changed_size(fileobj.name, size, len(data))
                    buf += data
                else:
                    buf = _copy(fileobj, size, rec.origin, buf, pipe)
            finally:
                fileobj.close()
            pad = -size % _BLOCK
            buf += _PADDING[pad]
            total += size + pad
        if len(buf) >= CHUNK:
            pipe.write(buf)
            buf = bytearray()
    end = 2 * _BLOCK
    end += -(total + end) % tarfile.RECORDSIZE  # pad to a full record, as tar and tarfile do
    buf += bytes(end)
    pipe.write(buf)
    return count


def _copy(fileobj: Readable, size: int, origin: str, buf: bytearray,
          pipe: Pipeline | HashOnly) -> bytearray:
    """``size`` bytes of ``fileobj`` after ``buf`` into ``pipe``; what is left to send."""
    name = getattr(fileobj, "name", None) or origin
    remaining = size
    while remaining:
        chunk = fileobj.read(min(remaining, CHUNK))
        if not chunk:
            raise _changed_size(name, size, size - remaining)
        if len(chunk) > remaining:
            raise _changed_size(name, size, size + 1)
        remaining -= len(chunk)
        if len(chunk) >= CHUNK // 4:
            if buf:
                pipe.write(buf)
                buf = bytearray()
            pipe.write(chunk)
        else:
            buf += chunk
    if fileobj.read(1):
        raise _changed_size(name, size, size + 1)
    return buf


def _changed_size(name: str, listed: int, got: int) -> LayerSourceError:
    if got < listed:
        return LayerSourceError(name, f"changed size while being read: expected {listed} bytes, "
                                f"got {got}; build again once it has stopped changing")
    return LayerSourceError(name, f"changed size while being read: grew past the {listed} "
                            "bytes it had when listed; build again once it has stopped changing")
