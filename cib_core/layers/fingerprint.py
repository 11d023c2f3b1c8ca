"""The rebuild cache's key for a layer (``LayerBuilder.fingerprint``): from the sources' own
identities when they all have one, else entry by entry; see ``layers/cache.py`` for its use."""

from __future__ import annotations

import hashlib
import os
import stat
import struct
import time

from cib_core.layers.tar import Record
from cib_core.plugin_api import LazyFile, SourceIdentity

_IDENTITY = struct.Struct("<QQQqq")  # st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns
ENTRIES_KEY_VERSION = b"cib-layer-cache-2\0"
SOURCES_KEY_VERSION = b"cib-layer-sources-1\0"


def file_identity(st: os.stat_result) -> bytes:
    """What says a local file is unchanged (as git's index does): device, inode, size, and
    modification and change times in nanoseconds; 40 bytes."""
    return _IDENTITY.pack(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class Fingerprint:
    """The rebuild cache's key. Either from the sources' own identities (``add_source``: what
    each source's entries depend on, which local directories tell from a walk with ``stat``
    and nothing else), or hashed entry by entry as the layer is listed or written (``add``:
    each tar header and, for each regular file, the identity of the local file it is read
    from).

    ``cacheable`` turns False for content that is not a plain local file, or a file changed
    within ``racy_seconds`` (its next change might keep the same timestamps).
    """

    def __init__(self, seed: bytes, racy_seconds: float) -> None:
        self._hash = hashlib.sha256(seed)
        self._limit = time.time_ns() - int(racy_seconds * 1e9)
        self.racy_seconds = racy_seconds
        self.cacheable = True

    def add_source(self, target: str, identity: SourceIdentity) -> None:
        digest, newest = identity
        self._hash.update(b"%s\0%s" % (target.encode("utf-8", "surrogateescape"), digest))
        if newest >= self._limit:
            self.cacheable = False

    def add(self, header: bytes, rec: Record) -> bool:
        """Hash one entry; False once the layer turned out not cacheable."""
        self._hash.update(header)
        if rec.size:
            content = rec.content
            if isinstance(content, str):
                ident = rec.ident
                if ident is None:
                    return self._not_cacheable()
                _, _, size, mtime_ns, ctime_ns = _IDENTITY.unpack(ident)
            else:
                if type(content) is not LazyFile or content.closed or content.opened:
                    return self._not_cacheable()
                st = content.stat_result  # from the listing, a moment ago
                if st is None:
                    try:
                        st = os.stat(content.name)
                    except OSError:
                        return self._not_cacheable()
                if not stat.S_ISREG(st.st_mode):
                    return self._not_cacheable()
                size, mtime_ns, ctime_ns = st.st_size, st.st_mtime_ns, st.st_ctime_ns
                ident = file_identity(st)
            if size != rec.size or mtime_ns >= self._limit or ctime_ns >= self._limit:
                return self._not_cacheable()
            self._hash.update(ident)
        return True

    def _not_cacheable(self) -> bool:
        self.cacheable = False
        return False

    def key(self, media_type: str) -> str | None:
        if not self.cacheable:
            return None
        h = self._hash.copy()
        h.update(b"\0" + media_type.encode())
        return h.hexdigest()
