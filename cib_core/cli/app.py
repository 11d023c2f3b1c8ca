"""The ``cib`` command line: the click group, its global options, plugin commands and the entry point.

Results go to stdout, diagnostics to stderr. A ``CibError`` becomes one line
``cib: error: ...`` and exit status 1, a usage error exits 2, Ctrl-C exits 130; only a bug
shows a traceback. Plugins add subcommands through the ``cib_commands`` hook, called with a
fresh plugin manager (honouring ``-p no:NAME``) before click looks the subcommand up.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import click

from cib_core.errors import (
    CibError,
)

if TYPE_CHECKING:
    from cib_core.plugins import CibPluginManager

from cib_core.cli.common import (
    HIDDEN_COMMANDS_KEY,
    PLUGIN_COMMANDS_KEY,
    PLUGIN_OPTION_NAMES,
    PLUGIN_OPTIONS_KEY,
    PM_KEY,
    PROG,
    VALUE_OPTIONS,
    CliState,
    fail,
)


def prescan_plugin_options(args: Sequence[str]) -> list[str]:
    """The values of ``-p``/``--plugin`` given before the subcommand's name."""
    found: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            break
        if arg in VALUE_OPTIONS:
            if i + 1 < len(args) and arg in PLUGIN_OPTION_NAMES:
                found.append(args[i + 1])
            i += 2
            continue
        if arg.startswith("--plugin="):
            found.append(arg.partition("=")[2])
        elif arg.startswith("--insecure-registry="):
            pass
        elif arg.startswith("-p") and not arg.startswith("--") and len(arg) > 2:
            found.append(arg[2:])
        elif not arg.startswith("-"):
            break  # the subcommand
        i += 1
    return found


def build_plugin_manager(plugin_options: Sequence[str]) -> CibPluginManager:
    """A fresh plugin manager for one run: ``no:NAME`` blocks a plugin, ``MODULE`` imports and
    registers one (as pytest's ``-p`` does)."""
    import importlib

    from cib_core.errors import PluginError
    from cib_core.plugins import create_plugin_manager

    blocked = [p[3:] for p in plugin_options if p.startswith("no:")]
    extra = [p for p in plugin_options if not p.startswith("no:")]
    pm = create_plugin_manager(blocked=blocked)
    for module_name in extra:
        if pm.has_plugin(module_name) or pm.is_blocked(module_name):
            continue
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:
            raise PluginError(module_name, f"-p {module_name}: cannot import it "
                              f"({type(exc).__name__}: {exc})") from exc
        pm.register_plugin(module, name=module_name,
                           version=str(getattr(module, "__version__", "unknown")))
    return pm


COMMANDS: dict[str, tuple[str, str, str]] = {
    "build": ("build", "build", "Build an image: BASE plus new files and config, saved to TARGET."),
    "copy": ("copy", "copy", "Copy an image (all platforms by default) from SRC to DST."),
    "manifest": ("inspect", "manifest", "Print the exact bytes of REF's manifest (or index)."),
    "config": ("inspect", "config", "Print the config JSON of REF, exactly as stored."),
    "digest": ("inspect", "digest", "Print the digest of REF's manifest (or index)."),
    "inspect": ("inspect", "inspect", "Summarize REF: platforms, layers and sizes, env, cmd, "
                "entrypoint, workdir, created."),
    "ls": ("registry", "ls_", "List every tag of REPO, one a line."),
    "catalog": ("registry", "catalog", "List every repository of REGISTRY, one a line."),
    "blob": ("registry", "blob", "Write the blob DIGEST of REPO to stdout, verified against its "
             "digest."),
    "delete": ("registry", "delete", "Delete the manifest REF names (a tag is resolved to its "
               "digest first)."),
    "export": ("export", "export", "Write REF's flattened filesystem (whiteouts applied) as a "
               "tarball to OUT, or - for stdout."),
    "auth": ("auth", "auth", "Store or remove registry credentials (docker's config.json or the "
             "keyring)."),
    "plugins": ("plugins", "plugins", "List the loaded plugins: name, version and the hooks each "
                "implements."),
    "tag": ("tag", "tag", "Give the manifest REF names each TAG as well, in REF's own repository "
            "or OCI layout."),
    "index": ("index", "index", "Assemble multi-platform indexes from single-platform images."),
    "completion": ("completion", "completion", "Print the completion script for SHELL (bash, zsh "
                   "or fish) on stdout."),
    "attach": ("attach", "attach", "Attach FILEs to the image REF as an OCI artifact whose subject "
               "is REF."),
    "referrers": ("attach", "referrers", "List the manifests whose subject is the image REF: "
                  "digest, artifact type, annotations."),
    "cache": ("cache", "cache", "The layer-cache records kept in a cache repository (--cache-repo)."),
    "rebase": ("rebase", "rebase", "Swap the base layers under REF's own layers: OLD's layers out, "
               "NEW's in."),
    "flatten": ("flatten", "flatten", "Squash REF's layers into one layer holding its merged "
                "filesystem (whiteouts applied)."),
    "validate": ("validate", "validate", "Check that every manifest and blob of REF is present and "
                 "right, for every platform."),
}
"""cib's own commands: name -> (module of cib_core.cli, attribute, the first paragraph of its
help). A command's module loads when the command runs or shows its help; ``cib --help`` lists
the commands from here, so it loads none of them (a unit test holds the texts equal)."""


class CibGroup(click.Group):
    """Builds the run's plugin manager when the run first needs it (not for ``--version``), so
    plugin subcommands can be found, and turns ``CibError`` into one line."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta.setdefault(PLUGIN_OPTIONS_KEY, prescan_plugin_options(args))
        return super().parse_args(ctx, args)

    def _plugin_commands(self, ctx: click.Context) -> dict[str, click.Command]:
        """The plugins' subcommands. The plugins load for them only when one may add some:
        when what the plugins were last seen to implement (kept with the list of entry
        points) shows none does, nothing loads (``cib --help``)."""
        if PLUGIN_COMMANDS_KEY not in ctx.meta:
            options = ctx.meta.get(PLUGIN_OPTIONS_KEY, ())
            if PM_KEY not in ctx.meta and not any(not p.startswith("no:") for p in options):
                from cib_core.entrypoints import autoload_enabled, command_providers

                blocked = [p[3:] for p in options if p.startswith("no:")]
                if command_providers(blocked, autoload_enabled()) == []:
                    ctx.meta[PLUGIN_COMMANDS_KEY] = {}
                    ctx.meta[HIDDEN_COMMANDS_KEY] = []
                    return {}
            pm = self.plugin_manager(ctx)
            extra = click.Group(name=PROG)
            try:
                pm.hook.cib_commands(cli=extra)
            except CibError as exc:
                fail(exc)
            except Exception as exc:  # noqa: BLE001 - a plugin's bug, named
                from cib_core.errors import PluginError

                fail(PluginError("cib_commands", f"a plugin failed to add its commands: "
                                 f"{type(exc).__name__}: {exc}"))
            own = set(COMMANDS) | set(self.commands)
            ctx.meta[PLUGIN_COMMANDS_KEY] = {
                name: cmd for name, cmd in extra.commands.items() if name not in own}
            ctx.meta[HIDDEN_COMMANDS_KEY] = sorted(set(extra.commands) & own)
        commands: dict[str, click.Command] = ctx.meta[PLUGIN_COMMANDS_KEY]
        return commands

    def plugin_manager(self, ctx: click.Context) -> CibPluginManager:
        """The run's plugin manager, made on first use (``-p`` options honoured)."""
        if PM_KEY not in ctx.meta:
            try:
                ctx.meta[PM_KEY] = build_plugin_manager(ctx.meta.get(PLUGIN_OPTIONS_KEY, ()))
            except CibError as exc:
                fail(exc)
        pm: CibPluginManager = ctx.meta[PM_KEY]
        return pm

    def builtin_command(self, name: str) -> click.Command | None:
        """cib's own command ``name``, its module loaded on first use."""
        command = self.commands.get(name)
        if command is None and name in COMMANDS:
            import importlib

            module, attribute, _ = COMMANDS[name]
            command = getattr(importlib.import_module(f"cib_core.cli.{module}"), attribute)
            assert isinstance(command, click.Command)  # noqa: S101 - the table names commands
            self.add_command(command, name)
        return command

    def builtin_commands(self) -> dict[str, click.Command]:
        """All of cib's own commands (every module loaded), by name."""
        return {name: cmd for name in COMMANDS if (cmd := self.builtin_command(name)) is not None}

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = self.builtin_command(cmd_name)
        return command if command is not None else self._plugin_commands(ctx).get(cmd_name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(COMMANDS) | set(self.commands) | set(self._plugin_commands(ctx)))

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """click's listing of the commands, with cib's own described from ``COMMANDS``
        instead of loaded."""
        names = self.list_commands(ctx)
        if not names:
            return
        limit = formatter.width - 6 - max(len(name) for name in names)
        rows = []
        for name in names:
            if name in COMMANDS and name not in self.commands:
                # shortened by click's own rule, as the loaded command's help would be
                summary = click.Command(name, help=COMMANDS[name][2])
                rows.append((name, summary.get_short_help_str(limit)))
                continue
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(limit)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def get_help(self, ctx: click.Context) -> str:
        text = super().get_help(ctx)
        if (ctx.parent is None and PM_KEY not in ctx.meta and not ctx.meta.get(PLUGIN_OPTIONS_KEY)
                and ctx.meta.get(PLUGIN_COMMANDS_KEY) == {}):
            # no plugin was loaded, none adds commands: the next `cib --help` may print this
            # without loading click (cib_core.cli.main)
            from cib_core.cli import help_key
            from cib_core.entrypoints import keep_help

            key = help_key()
            if key is not None:
                keep_help(key, text)
        return text

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CibError as exc:
            fail(exc, ctx)
        except KeyboardInterrupt:
            click.echo(f"{PROG}: interrupted", err=True)
            raise click.exceptions.Exit(130) from None
        except BrokenPipeError:
            # The reader went away (`cib manifest x | head -c 10`): stop quietly.
            try:
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
            except (OSError, ValueError):
                pass
            raise click.exceptions.Exit(141) from None


def _version() -> str:
    from cib_core import __version__

    return __version__


@click.group(cls=CibGroup, context_settings={"help_option_names": ["-h", "--help"],
                                             "max_content_width": 100},
             epilog="""\b
Examples:
  cib build --from scratch --to oci:./out:v1 --add ./app:/app --cmd '["/app/run"]'
  cib inspect oci:./out:v1
  cib copy docker.io/library/alpine:3.20 localhost:5000/alpine:3.20
  cib -v ls localhost:5000/alpine
  echo "$PASSWORD" | cib auth login localhost:5000 -u me --password-stdin
  cib -p no:keyring plugins          # run without one plugin

Run `cib COMMAND --help` for a command's options and examples.""")
@click.option("--insecure-registry", "insecure", metavar="HOST", multiple=True,
              help="Allow plain HTTP or unverified TLS for HOST (repeatable). Loopback hosts always may.")
@click.option("-v", "--verbose", count=True,
              help="-v: progress messages and each HTTP request; -vv: debug output with (redacted) headers.")
@click.option("-q", "--quiet", is_flag=True, help="Only errors on stderr; no progress or summary.")
@click.option("-p", "--plugin", "plugins", metavar="NAME", multiple=True,
              help="`no:NAME` blocks the plugin NAME; a module name loads that module as a plugin.")
@click.version_option(version=_version(), prog_name=PROG, message="%(prog)s %(version)s")
@click.pass_context
def cli(ctx: click.Context, insecure: tuple[str, ...], verbose: int, quiet: bool,
        plugins: tuple[str, ...]) -> None:
    """cib: build container images and talk to OCI registries, with no Docker daemon.

    REF is a registry reference (`alpine`, `localhost:5000/app:v1`, `gcr.io/p/img@sha256:...`),
    an OCI layout `oci:PATH[:TAG]`, or a docker-archive tarball `docker-archive:PATH[:NAME:TAG]`.
    """
    from cib_core.plugins import set_plugin_manager

    group = cast(CibGroup, ctx.command)
    group._plugin_commands(ctx)  # resolved with the command already; here for the warning below
    pm = group.plugin_manager(ctx)
    state = CliState(pm=pm, insecure=tuple(insecure), verbose=0 if quiet else verbose, quiet=quiet)
    ctx.obj = state
    previous = set_plugin_manager(pm)
    ctx.call_on_close(lambda: set_plugin_manager(previous))
    from cib_core.cli.logs import cli_logging

    ctx.with_resource(cli_logging(state.verbose, quiet, state.secrets))
    for name in ctx.meta.get(HIDDEN_COMMANDS_KEY, ()):
        import logging

        logging.getLogger(__name__).warning(
            "a plugin's command %r is hidden by cib's own command of that name", name)




def main(argv: Sequence[str] | None = None) -> int:
    """The ``cib`` console script."""
    try:
        cli.main(args=list(argv) if argv is not None else None, prog_name=PROG)
    except SystemExit as exc:
        code = exc.code
        if code is None:
            return 0
        if isinstance(code, int):
            return code
        click.echo(str(code), err=True)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
