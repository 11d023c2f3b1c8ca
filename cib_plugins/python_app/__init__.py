"""The builtin Python app packager: ``add_python_app`` and ``cib build --python-app``.

The flow is in ``packager``: the target Python read from each platform's base (``target``),
the lock's wheels picked for it (``locks``), fetched (``index``) and installed into layer
entries (``install``), the project built as a wheel (``project``). Its modules are imported
when a build asks for a Python app (on the caller's thread), not when cib loads its plugins.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from cib_core import hookimpl
from cib_core.plugin_api import AppImage, AppOptions, BaseImage

KIND = "python"
RECOGNIZED = ("pyproject.toml", "pylock.toml", "uv.lock", "requirements.txt")
"""A directory with one of these is a Python project when no kind is asked for."""


@hookimpl
def cib_app_packager(project: str, bases: Sequence[BaseImage], options: AppOptions) -> list[AppImage] | None:
    if options.kind not in (None, KIND):
        return None
    root = Path(project)
    if options.kind is None and not any((root / name).is_file() for name in RECOGNIZED):
        return None
    from .packager import Packager

    return Packager(root, options).package(bases)
