"""The callback types through which the library reports to its caller.

The library never draws anything. Whatever moves blobs (``RegistryClient.upload``, the stores,
``Image``, ``copy_image``) takes an optional ``progress`` callable and calls it as
``progress(digest, done, total)``: ``done`` is the number of bytes of ``digest`` moved so far
(it only grows, except when an upload restarts), ``total`` the blob's size when known. Calls
come from several threads at once, because several blobs move at once.
"""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[str, int, "int | None"], None]
"""``progress(digest, done, total)``: bytes of ``digest`` moved so far, and its size if known."""
