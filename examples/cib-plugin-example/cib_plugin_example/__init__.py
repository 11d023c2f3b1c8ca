"""cib-plugin-example: a credential provider, a layer source and a subcommand.

* ``cib_credentials``: for the registry hosts listed in ``$CIB_EXAMPLE_REGISTRIES``
  (comma- or space-separated, e.g. ``127.0.0.1:5000,registry.example.com``), read the file
  named by ``$CIB_EXAMPLE_TOKEN_FILE``. A first line ``USER:SECRET`` gives a username and
  secret (basic auth, or exchanged for a bearer token by cib when the registry asks for
  one); anything else is used as a ready-made bearer token. Other registries: ``None``.
* ``cib_layer_source``: claims strings ``example:TEXT`` and yields one file ``hello.txt``
  holding ``TEXT``, so ``cib build --add example:hi:/greeting`` puts ``/greeting/hello.txt``
  into the new layer. Anything else: ``None``, so the other layer sources get their turn.
* ``cib_commands``: adds ``cib example-info``, which says which registries the provider serves
  and where it reads the credentials from (never the credentials themselves).
"""

from __future__ import annotations

import io
import os
import re
import tarfile
from collections.abc import Iterable
from typing import TYPE_CHECKING, BinaryIO

from cib_core import Credentials, PluginError, hookimpl

if TYPE_CHECKING:
    import click

__version__ = "0.1.0"

PLUGIN_NAME = "example"
PREFIX = "example:"
REGISTRIES_ENV = "CIB_EXAMPLE_REGISTRIES"
TOKEN_FILE_ENV = "CIB_EXAMPLE_TOKEN_FILE"


def served_registries() -> list[str]:
    """The registry hosts named in ``$CIB_EXAMPLE_REGISTRIES``, lower-cased."""
    raw = os.environ.get(REGISTRIES_ENV, "")
    return [host.lower() for host in re.split(r"[,\s]+", raw) if host]


def read_credentials(path: str) -> Credentials:
    """``USER:SECRET`` on the first line gives basic credentials, anything else a bearer token.

    Error messages name the file, never its content.
    """
    try:
        with open(path, encoding="utf-8") as handle:
            first_line = handle.readline().strip()
    except OSError as exc:
        raise PluginError(PLUGIN_NAME, f"cannot read {TOKEN_FILE_ENV}={path}: "
                          f"{exc.strerror or type(exc).__name__}") from None
    if not first_line:
        raise PluginError(PLUGIN_NAME, f"{TOKEN_FILE_ENV}={path} is empty; write USER:SECRET "
                          "or a bearer token on its first line")
    username, sep, secret = first_line.partition(":")
    if sep and username and secret:
        return Credentials(username=username, secret=secret)
    return Credentials(token=first_line)


@hookimpl
def cib_credentials(registry: str, repository: str | None) -> Credentials | None:
    if registry.lower() not in served_registries():
        return None  # not ours: the next provider answers
    path = os.environ.get(TOKEN_FILE_ENV)
    if not path:
        raise PluginError(PLUGIN_NAME, f"{registry} is listed in {REGISTRIES_ENV} but "
                          f"{TOKEN_FILE_ENV} is not set; name the file holding the credentials")
    return read_credentials(path)


@hookimpl
def cib_layer_source(source: object, target: str) -> Iterable[tuple[tarfile.TarInfo, BinaryIO | None]] | None:
    if not isinstance(source, str) or not source.startswith(PREFIX):
        return None  # a local path, a CustomFile, another plugin's string: not ours
    data = source[len(PREFIX):].encode("utf-8")
    info = tarfile.TarInfo("hello.txt")  # relative: cib places it under ``target``
    info.size = len(data)
    info.mode = 0o644
    # cib sorts entries, sets owner 0:0 and reproducible times, and adds parent directories.
    return [(info, io.BytesIO(data))]


@hookimpl
def cib_commands(cli: click.Group) -> None:
    import click

    @cli.command("example-info")
    def example_info() -> None:
        """Show which registries the example credential provider serves."""
        hosts = served_registries()
        click.echo(f"registries: {', '.join(hosts) if hosts else '(none; set ' + REGISTRIES_ENV + ')'}")
        click.echo(f"credentials file: {os.environ.get(TOKEN_FILE_ENV) or '(unset)'}")
