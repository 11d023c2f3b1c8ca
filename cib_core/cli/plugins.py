"""`cib plugins`: the installed plugins, their versions and hooks."""

from __future__ import annotations

import logging

import click

from cib_core.cli.common import (
    cli_state,
    echo_json,
)

log = logging.getLogger(__name__)

@click.command(epilog="""\b
Examples:
  cib plugins
  cib plugins --json | jq '.[].name'
  CIB_DISABLE_PLUGIN_AUTOLOAD=1 cib plugins     # builtins only
  cib -p no:keyring plugins                     # without the keyring plugin""")
@click.option("--json", "as_json", is_flag=True,
              help='Print a JSON list of {"name", "version", "hooks", "builtin"}.')
def plugins(as_json: bool) -> None:
    """List the loaded plugins: name, version and the hooks each implements."""
    infos = cli_state().pm.plugin_infos()
    if as_json:
        echo_json([info.to_dict() for info in infos])
        return
    width = max((len(i.name) for i in infos), default=4)
    vwidth = max((len(i.version) for i in infos), default=7)
    for info in infos:
        kind = " (builtin)" if info.builtin else ""
        click.echo(f"{info.name:<{width}}  {info.version:<{vwidth}}  "
                   f"{', '.join(info.hooks) or '-'}{kind}")


