"""The ``cib`` command line: the click group, its global options, plugin commands and the entry point.

Results go to stdout, diagnostics to stderr. A ``CibError`` becomes one line
``cib: error: ...`` and exit status 1, a usage error exits 2, Ctrl-C exits 130; only a bug
shows a traceback. Plugins add subcommands through the ``cib_commands`` hook, called with a
fresh plugin manager (honouring ``-p no:NAME``) before click looks the subcommand up.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
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
    CliLogHandler,
    CliState,
    Secrets,
    fail,
)

log = logging.getLogger(__name__)

@contextmanager
def _logging(verbosity: int, quiet: bool, secrets: Secrets) -> Iterator[None]:
    root = logging.getLogger()
    transport_logger = logging.getLogger("cib_core.remote.transport")
    quiet_loggers = [logging.getLogger(n) for n in ("urllib3", "keyring")]
    saved = (root.level, transport_logger.level, [lg.level for lg in quiet_loggers])
    handler = CliLogHandler(verbosity, secrets)
    if quiet:
        root.setLevel(logging.ERROR)
    elif verbosity <= 0:
        root.setLevel(logging.WARNING)
    elif verbosity == 1:
        root.setLevel(logging.INFO)
        transport_logger.setLevel(logging.DEBUG)
    else:
        root.setLevel(logging.DEBUG)
    if verbosity < 3:
        for lg in quiet_loggers:
            lg.setLevel(logging.WARNING)
    root.addHandler(handler)
    try:
        with warnings.catch_warnings():
            # a host named with --insecure-registry is said once, at -v, by the transport;
            # urllib3's warning per host would break the one-line output
            import urllib3

            warnings.filterwarnings("ignore", category=urllib3.exceptions.InsecureRequestWarning)
            yield
    finally:
        root.removeHandler(handler)
        root.setLevel(saved[0])
        transport_logger.setLevel(saved[1])
        for lg, level in zip(quiet_loggers, saved[2], strict=True):
            lg.setLevel(level)


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


class CibGroup(click.Group):
    """Builds the run's plugin manager when the run first needs it (not for ``--version``), so
    plugin subcommands can be found, and turns ``CibError`` into one line."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta.setdefault(PLUGIN_OPTIONS_KEY, prescan_plugin_options(args))
        return super().parse_args(ctx, args)

    def _plugin_commands(self, ctx: click.Context) -> dict[str, click.Command]:
        """The plugins' subcommands; loads the plugins (and their commands) the first time."""
        if PM_KEY not in ctx.meta:
            try:
                pm = build_plugin_manager(ctx.meta.get(PLUGIN_OPTIONS_KEY, ()))
                extra = click.Group(name=PROG)
                try:
                    pm.hook.cib_commands(cli=extra)
                except CibError:
                    raise
                except Exception as exc:
                    from cib_core.errors import PluginError

                    raise PluginError("cib_commands", f"a plugin failed to add its commands: "
                                      f"{type(exc).__name__}: {exc}") from exc
            except CibError as exc:
                fail(exc)
            ctx.meta[PM_KEY] = pm
            ctx.meta[PLUGIN_COMMANDS_KEY] = {
                name: cmd for name, cmd in extra.commands.items() if name not in self.commands}
            ctx.meta[HIDDEN_COMMANDS_KEY] = sorted(set(extra.commands) & set(self.commands))
        commands: dict[str, click.Command] = ctx.meta[PLUGIN_COMMANDS_KEY]
        return commands

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        plugin_commands = self._plugin_commands(ctx)
        command = super().get_command(ctx, cmd_name)
        return command if command is not None else plugin_commands.get(cmd_name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self._plugin_commands(ctx)))

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

    if PM_KEY not in ctx.meta:
        cast(CibGroup, ctx.command)._plugin_commands(ctx)
    pm: CibPluginManager = ctx.meta[PM_KEY]
    state = CliState(pm=pm, insecure=tuple(insecure), verbose=0 if quiet else verbose, quiet=quiet)
    ctx.obj = state
    previous = set_plugin_manager(pm)
    ctx.call_on_close(lambda: set_plugin_manager(previous))
    ctx.with_resource(_logging(state.verbose, quiet, state.secrets))
    for name in ctx.meta.get(HIDDEN_COMMANDS_KEY, ()):
        log.warning("a plugin's command %r is hidden by cib's own command of that name", name)




def _add_commands() -> None:
    from cib_core.cli import attach, auth, build, cache, copy, export, inspect, plugins, registry
    from cib_core.cli import completion as completion_cli
    from cib_core.cli import flatten as flatten_cli
    from cib_core.cli import index as index_cli
    from cib_core.cli import rebase as rebase_cli
    from cib_core.cli import tag as tag_cli
    from cib_core.cli import validate as validate_cli

    for command in (
        build.build,
        copy.copy,
        inspect.manifest,
        inspect.config,
        inspect.digest,
        inspect.inspect,
        registry.ls_,
        registry.catalog,
        registry.blob,
        registry.delete,
        export.export,
        auth.auth,
        plugins.plugins,
        tag_cli.tag,
        index_cli.index,
        completion_cli.completion,
        attach.attach,
        attach.referrers,
        cache.cache,
        rebase_cli.rebase,
        flatten_cli.flatten,
        validate_cli.validate,
    ):
        cli.add_command(command)


_add_commands()


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
