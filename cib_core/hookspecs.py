"""Every hook a cib plugin can implement.

A plugin is a module (or object) with functions marked ``@cib_core.hookimpl`` whose names
match the specs below. Plugins are found through the ``cib`` entry-point group; cib's own
builtin plugins register through the same group and the same hooks.

Hooks marked *firstresult* stop at the first implementation that returns something other
than ``None``: returning ``None`` means "not mine" and lets the next plugin answer. Plugins
installed from other distributions are asked before cib's builtins, so a corporate plugin can
take over a registry that a builtin would otherwise serve.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterable
from typing import TYPE_CHECKING, BinaryIO

import pluggy

if TYPE_CHECKING:
    import click
    import requests.adapters

    from cib_core.authn.credentials import Credentials

hookspec = pluggy.HookspecMarker("cib")


@hookspec(firstresult=True)
def cib_credentials(registry: str, repository: str | None) -> Credentials | None:
    """Return credentials for ``registry`` (a host as written in references: ``docker.io``,
    ``gcr.io``, ``127.0.0.1:5101``), or ``None`` when this plugin does not serve it.

    *firstresult*: the first non-``None`` answer wins. Explicit options given to ``Image``,
    ``RegistryClient`` or ``auth()`` come before every plugin. Must not raise for registries
    the plugin does not serve.
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
    source: object, target: str
) -> Iterable[tuple[tarfile.TarInfo, BinaryIO | None]] | None:
    """Turn one source the user named into layer entries, or return ``None``: not mine.

    ``source`` is a value of ``Image.add_files``' mapping or the SRC of
    ``cib build --add SRC:DEST`` (a string). ``target`` is the absolute path in the image
    where the source goes. Yield ``(TarInfo, fileobj)`` pairs whose names are relative
    paths placed under ``target`` (``""`` or ``"."`` is ``target`` itself); ``fileobj`` is
    ``None`` for anything but regular files. cib sorts the entries, resets ownership and
    times, and adds missing parent directories. Raise ``LayerSourceError`` naming the path
    for a source that is yours but cannot be read.

    *firstresult*. Plugins claim their own objects, or strings with their own prefix
    (``"acme:…"``).
    """


@hookspec
def cib_commands(cli: click.Group) -> None:
    """Add subcommands to the ``cib`` command line, a ``click.Group``.

    Called for every plugin (not *firstresult*).
    """
