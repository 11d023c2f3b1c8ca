"""Making local-dir's no-change check share its walk with the helper process in a small tree.

A test tree is walked in a few milliseconds, long before the check would start its helper
(``HELPER_AFTER``), and the helper needs about 20 ms to start: ``sharing`` starts the helper
at once (or after ``late`` seconds), claims two processors, and slows the parent's listing of
each directory so the helper, which is not slowed, gets a share of the tree to walk.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import pytest

from cib_plugins.local_dir import walk


@contextlib.contextmanager
def sharing(shared: bool = True, late: float = 0.0, slow: float = 0.004) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(walk, "_processors", lambda: 2 if shared else 1)
        patch.setattr(walk, "HELPER_AFTER", late)
        if shared:
            listing = walk.listing

            def slowed(*args: Any, **kwargs: Any) -> tuple[list[walk.Kid], int]:
                time.sleep(slow)
                return listing(*args, **kwargs)

            patch.setattr(walk, "listing", slowed)
        yield
