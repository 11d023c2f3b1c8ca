"""The plugin host: which plugins load, in which order, and how failures are named.

Every plugin, cib's own builtins included, comes from the ``cib`` entry-point group: the
entry points of the core distribution (``cib-core``) are the builtins, so ``pyproject.toml``
is their one list. Third-party plugins are asked before the builtins; among the builtins
the order is the alphabetical order of their entry-point names, which puts the credential
providers in the order docs/guide.md gives (credential-helper, docker-config, dockerhub, gcr,
keyring). A plugin that fails (not with a ``CibError`` of its own) becomes a ``PluginError``
naming the plugin, for every hook, however the hook is called.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import pluggy

from cib_core import hookspecs
from cib_core.entrypoints import (
    AUTOLOAD_ENV,
    DISTRIBUTION,
    ENTRY_POINT_GROUP,
    EntryPoint,
    autoload_enabled,
    entry_points,
    remember,
)
from cib_core.errors import CibError, PluginError
from cib_core.hookspecs import hookimpl

if TYPE_CHECKING:
    from cib_core.plugin_api import AppImage

log = logging.getLogger(__name__)


__all__ = ["AUTOLOAD_ENV", "DISTRIBUTION", "ENTRY_POINT_GROUP", "CibPluginManager", "EntryPoint",
           "PluginInfo", "create_plugin_manager", "entry_points", "get_plugin_manager", "hookimpl",
           "set_plugin_manager"]

class PluginInfo(NamedTuple):
    name: str
    version: str
    hooks: tuple[str, ...]
    builtin: bool

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "hooks": list(self.hooks),
                "builtin": self.builtin}


def _is_credentials(value: object) -> bool:
    from cib_core.authn.credentials import Credentials  # with the first credentials asked

    return isinstance(value, Credentials)


def _guarded(plugin_name: str, hook_name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    """``function`` (one plugin's implementation of a hook) with its failures named.

    A ``CibError`` is the plugin's own, clear answer and passes as it is; anything else is a
    bug in that plugin and becomes ``PluginError(plugin_name, ...)``. Layer entries are listed
    lazily, so a failure while iterating them is named the same way. Messages carry only the
    exception's type and text, never the arguments' values (they may hold secrets).
    """

    @functools.wraps(function)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            result = function(*args, **kwargs)
        except CibError:
            raise
        except Exception as exc:
            # a credential provider's exception text may quote what it read: name only its type
            detail = "" if hook_name == "cib_credentials" else f": {exc}"
            raise PluginError(plugin_name, f"{hook_name} failed: {type(exc).__name__}{detail}") from exc
        if result is None:
            return None
        if hook_name == "cib_layer_source":
            from cib_core.plugin_api import SortedEntries  # with the first layer, not at start-up

            named = _named_entries(plugin_name, result)
            if not isinstance(result, SortedEntries):
                return named
            # the promise of layer order survives the guard, which keeps the order
            identity = result.identity
            return SortedEntries(named, identity=None if identity is None else _guarded(
                plugin_name, "cib_layer_source (identity)", identity))
        if hook_name == "cib_app_packager":
            return _named_app_images(plugin_name, result)
        if hook_name == "cib_credentials" and not _is_credentials(result):
            raise PluginError(plugin_name, f"cib_credentials returned {type(result).__name__}, "
                              "not Credentials")
        return result

    return call


def _named_entries(plugin_name: str, entries: Iterable[Any],
                   what: str = "cib_layer_source") -> Iterator[Any]:
    import tarfile

    try:
        for item in entries:
            if (not isinstance(item, tuple) or len(item) != 2
                    or not isinstance(item[0], tarfile.TarInfo)):
                raise PluginError(plugin_name, f"{what} yielded {type(item).__name__}, "
                                  "not a (TarInfo, fileobj) pair")
            yield item
    except CibError:
        raise
    except Exception as exc:  # noqa: BLE001 - a plugin bug; name the plugin
        raise PluginError(plugin_name, f"{what} failed while listing entries: "
                          f"{type(exc).__name__}: {exc}") from exc


def _named_app_images(plugin_name: str, result: Any) -> list[AppImage]:
    """A packager's answer checked, with the entries of its layers (listed later, when a
    layer is built) failing in the packager's name."""
    from cib_core.plugin_api import AppImage, AppLayer  # with the first app, not at start-up

    if not isinstance(result, (list, tuple)) or not all(isinstance(i, AppImage) for i in result):
        raise PluginError(plugin_name, "cib_app_packager returned "
                          f"{type(result).__name__}, not a list of AppImage")
    images = []
    for image in result:
        layers = []
        for layer in image.layers:
            if not isinstance(layer, AppLayer):
                raise PluginError(plugin_name, f"cib_app_packager returned a layer of type "
                                  f"{type(layer).__name__}, not AppLayer")
            if (layer.entries is None) == (layer.files is None):
                raise PluginError(plugin_name, f"layer {layer.name!r} must have either entries "
                                  "or files")
            if layer.entries is not None:
                layer = dataclasses.replace(layer, entries=_named_producer(plugin_name,
                                                                            layer.entries))
            layers.append(layer)
        images.append(dataclasses.replace(image, layers=tuple(layers)))
    return images


def _named_producer(plugin_name: str, produce: Callable[[], Iterable[Any]]) -> Callable[[], Iterator[Any]]:
    def named() -> Iterator[Any]:
        try:
            entries = produce()
        except CibError:
            raise
        except Exception as exc:  # noqa: BLE001 - a plugin bug; name the plugin
            raise PluginError(plugin_name, f"cib_app_packager's layer failed: "
                              f"{type(exc).__name__}: {exc}") from exc
        yield from _named_entries(plugin_name, entries, "cib_app_packager's layer")

    return named


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
            autoload = autoload_enabled()
        self.autoload = autoload
        for name in self.blocked_names:
            self.set_blocked(name)

    # -- loading ---------------------------------------------------------------------------
    def register(self, plugin: object, name: str | None = None) -> str | None:
        """Register ``plugin`` with every hook implementation guarded (see ``_guarded``)."""
        registered = super().register(plugin, name)
        if registered is not None:
            for caller in self.get_hookcallers(plugin) or []:
                for impl in caller.get_hookimpls():
                    if impl.plugin is plugin and not (impl.hookwrapper or impl.wrapper):
                        # pluggy types it Final; it is a plain slot it calls with the
                        # arguments the implementation names, which the guard passes on
                        impl.function = _guarded(  # type: ignore[misc]
                            registered, caller.name, impl.function)
        return registered

    def _load(self, eps: Sequence[EntryPoint]) -> None:
        # pluggy calls the most recently registered implementation first: register in reverse
        # so that the sorted order is the call order.
        seen: dict[str, tuple[tuple[str, ...], object]] = {}
        for ep in reversed(eps):
            if self.is_blocked(ep.name) or self.has_plugin(ep.name):
                continue
            try:
                plugin = ep.load()
            except Exception as exc:
                raise PluginError(ep.name, f"failed to import {ep.value}: "
                                  f"{type(exc).__name__}: {exc}") from exc
            self.register(plugin, name=ep.name)
            self._versions[ep.name] = ep.version
            if ep.builtin:
                self._builtin_names.add(ep.name)
            seen[ep.name] = (tuple(sorted(h.name for h in (self.get_hookcallers(plugin) or []))),
                             plugin)
        if seen:
            remember(seen)  # what the command line's help needs, without loading plugins

    def load_builtins(self) -> None:
        """The core distribution's own plugins (asked after every other plugin)."""
        self._load([ep for ep in entry_points() if ep.builtin])

    def load_entry_points(self) -> None:
        """Every other distribution's plugins (asked before the builtins)."""
        self._load([ep for ep in entry_points() if not ep.builtin])

    def load_all(self) -> None:
        self.load_builtins()
        if self.autoload:
            self.load_entry_points()

    def builtin_names(self) -> list[str]:
        """The builtin plugins loaded, in the order they are asked."""
        return [name for name, _ in reversed(self.list_name_plugin()) if name in self._builtin_names]

    def register_plugin(self, plugin: object, name: str, version: str = "inline") -> None:
        """Register an in-process plugin object (tests, embedding programs)."""
        self.register(plugin, name=name)
        self._versions[name] = version

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
