"""`cib completion`: the shell completion script for bash, zsh or fish.

The script is click's: at each TAB the shell runs ``cib`` with ``_CIB_COMPLETE=<shell>_complete``
and the words typed so far, and click answers with the commands, options and choices that fit,
plugin commands included.
"""

from __future__ import annotations

import click

from cib_core.cli.common import PROG

SHELLS = ("bash", "zsh", "fish")
COMPLETE_VAR = "_CIB_COMPLETE"
"""The environment variable the scripts set to ask ``cib`` for completions (click's name for it)."""


def completion_script(command: click.Command, shell: str, prog_name: str = PROG) -> str:
    """The completion script of ``shell`` for the click ``command`` installed as ``prog_name``."""
    from click.shell_completion import get_completion_class

    completion_class = get_completion_class(shell)
    if completion_class is None:  # pragma: no cover - click.Choice lets only SHELLS through
        raise click.BadParameter(f"no completion for {shell!r}; choose one of {', '.join(SHELLS)}")
    return completion_class(command, {}, prog_name, COMPLETE_VAR).source()


@click.command(epilog="""\b
Examples:
  eval "$(cib completion bash)"          # this shell only
  cib completion bash > ~/.local/share/bash-completion/completions/cib
  cib completion zsh > "${fpath[1]}/_cib"
  cib completion fish > ~/.config/fish/completions/cib.fish""")
@click.argument("shell", type=click.Choice(SHELLS))
@click.pass_context
def completion(ctx: click.Context, shell: str) -> None:
    """Print the completion script for SHELL (bash, zsh or fish) on stdout."""
    click.echo(completion_script(ctx.find_root().command, shell))
