"""Every hook a cib plugin can implement.

A plugin is a module (or object) with functions marked ``@cib_core.hookimpl`` whose names
match the specs below. Plugins are found through the ``cib`` entry-point group; cib's own
builtin plugins register through the same group and the same hooks.

Hooks marked *firstresult* stop at the first implementation that returns something other
than ``None``: returning ``None`` means "not mine" and lets the next plugin answer. Plugins
installed from other distributions are asked before cib's builtins, so a corporate plugin can
take over a registry that a builtin would otherwise serve.

Every hook is called through pluggy with keyword arguments, so an implementation may take
fewer arguments than its spec offers (``def cib_layer_source(source): ...``) and one written
for an older spec keeps working when a spec gains an argument.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, BinaryIO

import pluggy

if TYPE_CHECKING:
    import tarfile

    import click
    import requests.adapters

    from cib_core.authn.credentials import Credentials
    from cib_core.plugin_api import AppImage, AppOptions, BaseImage, LayerOptions

hookspec = pluggy.HookspecMarker("cib")
hookimpl = pluggy.HookimplMarker("cib")
"""Marks a plugin's hook implementations: ``@cib_core.hookimpl``."""


@hookspec(firstresult=True)
def cib_credentials(
    registry: str, repository: str | None, options: Mapping[str, Any]
) -> Credentials | None:
    """Return credentials for ``registry`` (a host as written in references: ``docker.io``,
    ``gcr.io``, ``127.0.0.1:5101``), or ``None`` when this plugin does not serve it.

    ``options`` is the caller's auth mapping for this registry (the value of
    ``Image(auth={registry: {...}})``; empty when there is none): a plugin reads its own keys
    there, as the gcr plugin reads google-auth's key file. ``Username``/``Secret`` and
    ``token`` options are answered by cib before any plugin is asked.

    *firstresult*: the first non-``None`` answer wins. Must not raise for registries the
    plugin does not serve.
    """


@hookspec(firstresult=True)
def cib_transport(registry: str) -> requests.adapters.BaseAdapter | None:
    """Return a requests adapter for ``registry`` (proxies, mTLS, a custom CA, a unix socket),
    or ``None`` to let another plugin (finally the builtin pooled HTTP adapter) answer.

    *firstresult*. cib still adds its own timeouts, retries and authentication around the
    adapter that is used.
    """


@hookspec(firstresult=True)
def cib_layer_source(
    source: object, target: str, options: LayerOptions
) -> Iterable[tuple[tarfile.TarInfo, BinaryIO | None]] | None:
    """Turn one source the user named into layer entries, or return ``None``: not mine.

    ``source`` is a value of ``Image.add_files``' mapping or the SRC of
    ``cib build --add SRC:DEST`` (a string). ``target`` is the absolute path in the image
    where the source goes. Yield ``(TarInfo, fileobj)`` pairs whose names are relative
    paths placed under ``target`` (``""`` or ``"."`` is ``target`` itself); ``fileobj`` is
    ``None`` for anything but regular files. cib sorts the entries, resets ownership and
    times, and adds missing parent directories. Raise ``LayerSourceError`` naming the path
    for a source that is yours but cannot be read.

    ``options`` (a ``cib_core.plugin_api.LayerOptions``) carries ``add_files``' and the
    command line's options to every source alike: ``ignores``, ``ignore_files``,
    ``follow_symlinks`` and ``platform`` (``None``, or the one platform the layer is for).

    *firstresult*. Plugins claim their own objects, or strings with their own prefix
    (``"acme:…"``).
    """


@hookspec(firstresult=True)
def cib_app_packager(
    project: str, bases: Sequence[BaseImage], options: AppOptions
) -> Sequence[AppImage] | None:
    """Package the app in the directory ``project`` for every platform of a build, or return
    ``None``: not mine.

    ``bases`` holds one ``cib_core.plugin_api.BaseImage`` per platform of the build: the
    base's config and a read-only view of its files, fetched only when first read (a
    packager reads the target interpreter, libc and paths from them; nothing runs inside the
    image). ``options`` (``AppOptions``) carries the caller's lock, index, entrypoint and app
    directory, ``kind`` (the packager the caller asked for, like ``"python"``; ``None`` when
    any packager that recognizes the project may take it) and the packager's own
    ``settings``. Return one ``AppImage`` per base, in the same order: its layers
    (least-changing first) and config. Raise ``PackagingError`` naming the input for a
    project that is yours but cannot be packaged.

    *firstresult*. The builtin *python-app* plugin answers ``kind="python"``, and ``None``
    for a directory with a ``pyproject.toml``, a lock or a ``requirements.txt``.
    """


@hookspec
def cib_commands(cli: click.Group) -> None:
    """Add subcommands to the ``cib`` command line, a ``click.Group``.

    Called for every plugin (not *firstresult*).
    """
