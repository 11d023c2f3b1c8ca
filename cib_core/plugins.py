"""The plugin host: which plugins load, in which order, and how failures are named.

Builtin plugins are named by short name and module path here only (as strings; the core
never imports ``cib_plugins`` directly). Third-party plugins come from the ``cib``
entry-point group. The first plugin in ``BUILTIN_PLUGINS`` is asked first among the
builtins; every third-party plugin is asked before any builtin.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import pluggy

from cib_core import hookspecs
from cib_core.errors import PluginError

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "cib"
AUTOLOAD_ENV = "CIB_DISABLE_PLUGIN_AUTOLOAD"
DISTRIBUTION = "cib-core"

hookimpl = pluggy.HookimplMarker("cib")

# Asked in this order (first wins for firstresult hooks). The credential order is documented
# in docs/guide.md: explicit options (not a plugin), third-party plugins, then these.
BUILTIN_PLUGINS: tuple[tuple[str, str], ...] = (
    ("credential-helper", "cib_plugins.credential_helper"),
    ("docker-config", "cib_plugins.docker_config"),
    ("dockerhub", "cib_plugins.dockerhub"),
    ("gcr", "cib_plugins.gcr"),
    ("keyring", "cib_plugins.keyring_store"),
    ("custom-files", "cib_plugins.custom_files"),
    ("tarball", "cib_plugins.tarball"),
    ("local-dir", "cib_plugins.local_dir"),
    ("http-transport", "cib_plugins.http_transport"),
)


@dataclass(frozen=True)
class PluginInfo:
    name: str
    version: str
    hooks: tuple[str, ...]
    builtin: bool

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "hooks": list(self.hooks),
                "builtin": self.builtin}


def _own_version() -> str:
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


class CibPluginManager(pluggy.PluginManager):
    """A plugin manager that knows cib's loading rules.

    ``blocked`` holds names given as ``-p no:NAME``; ``autoload`` False (or the environment
    variable ``CIB_DISABLE_PLUGIN_AUTOLOAD=1``) loads builtins only.
    """

    def __init__(self, *, blocked: Iterable[str] = (), autoload: bool | None = None) -> None:
        super().__init__("cib")
        self.add_hookspecs(hookspecs)
        self._versions: dict[str, str] = {}
        self._builtin_names: set[str] = set()
        self.blocked_names = frozenset(blocked)
        if autoload is None:
            autoload = os.environ.get(AUTOLOAD_ENV, "") not in ("1", "true", "yes")
        self.autoload = autoload
        for name in self.blocked_names:
            self.set_blocked(name)

    # -- loading ---------------------------------------------------------------------------
    def load_builtins(self) -> None:
        # pluggy calls the most recently registered implementation first, so register the
        # builtins in reverse to make BUILTIN_PLUGINS' order the call order.
        version = _own_version()
        for name, module_path in reversed(BUILTIN_PLUGINS):
            if self.is_blocked(name) or self.has_plugin(name):
                continue
            module = self._import(name, module_path)
            self.register(module, name=name)
            self._versions[name] = version
            self._builtin_names.add(name)

    def load_entry_points(self) -> None:
        builtin_modules = {path for _, path in BUILTIN_PLUGINS}
        for ep in sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP),
                         key=lambda e: e.name):
            if ep.value in builtin_modules or self.is_blocked(ep.name) or self.has_plugin(ep.name):
                continue
            try:
                plugin = ep.load()
            except Exception as exc:  # noqa: BLE001 - any import failure is the plugin's
                raise PluginError(ep.name, f"failed to import {ep.value}: "
                                  f"{type(exc).__name__}: {exc}") from exc
            self.register(plugin, name=ep.name)
            dist = getattr(ep, "dist", None)
            self._versions[ep.name] = getattr(dist, "version", None) or "unknown"

    def load_all(self) -> None:
        self.load_builtins()
        if self.autoload:
            self.load_entry_points()

    def register_plugin(self, plugin: object, name: str, version: str = "inline") -> None:
        """Register an in-process plugin object (tests, embedding programs)."""
        self.register(plugin, name=name)
        self._versions[name] = version

    @staticmethod
    def _import(name: str, module_path: str) -> ModuleType:
        try:
            return importlib.import_module(module_path)
        except Exception as exc:  # noqa: BLE001
            raise PluginError(name, f"failed to import {module_path}: "
                              f"{type(exc).__name__}: {exc}") from exc

    # -- introspection ---------------------------------------------------------------------
    def plugin_infos(self) -> list[PluginInfo]:
        infos = []
        for name, plugin in self.list_name_plugin():
            if plugin is None:
                continue
            hooks = tuple(sorted(h.name for h in (self.get_hookcallers(plugin) or [])))
            infos.append(PluginInfo(name=name, version=self._versions.get(name, "unknown"),
                                    hooks=hooks, builtin=name in self._builtin_names))
        return sorted(infos, key=lambda i: (i.builtin, i.name))


def create_plugin_manager(*, blocked: Sequence[str] = (), autoload: bool | None = None,
                          ) -> CibPluginManager:
    """A fresh plugin manager with builtins and (unless disabled) entry-point plugins loaded."""
    pm = CibPluginManager(blocked=blocked, autoload=autoload)
    pm.load_all()
    return pm


_default: CibPluginManager | None = None
_default_lock = threading.Lock()


def get_plugin_manager() -> CibPluginManager:
    """The process-wide plugin manager, created on first use (never at import time)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = create_plugin_manager()
        return _default


def set_plugin_manager(pm: CibPluginManager | None) -> CibPluginManager | None:
    """Replace the process-wide manager (the CLI does this for ``-p no:NAME``; tests too).

    Returns the previous one so callers can restore it.
    """
    global _default
    with _default_lock:
        previous, _default = _default, pm
        return previous
