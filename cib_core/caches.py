"""Where cib keeps what it may throw away: ``$CIB_CACHE_DIR``, else ``$XDG_CACHE_HOME/cib``,
else ``~/.cache/cib``; ``CIB_CACHE_DIR=""`` turns every cache off.

The rebuild cache (``layers/cache.py``) and the plugin host's list of entry points
(``plugins.py``) live below it, each in a directory of its own.
"""

from __future__ import annotations

import os


def cache_root() -> str | None:
    """The directory of cib's caches, or ``None`` when caching is off (a str: pathlib is not
    imported at start-up)."""
    configured = os.environ.get("CIB_CACHE_DIR")
    if configured is not None:
        return configured if configured.strip() else None
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    return os.path.join(xdg or os.path.join(os.path.expanduser("~"), ".cache"), "cib")
