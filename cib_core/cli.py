"""The ``cib`` command line: every command of API.md's CLI table, built with click.

Results go to stdout, diagnostics to stderr. A ``CibError`` becomes one line
``cib: error: ...`` and exit status 1, a usage error exits 2, Ctrl-C exits 130; only a bug
shows a traceback. Plugins add subcommands through the ``cib_commands`` hook, called with a
fresh plugin manager (honouring ``-p no:NAME``) before click looks the subcommand up.
"""

from __future__ import annotations

import json
import logging
import os
import platform as host_platform
import re
import shlex
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO, NoReturn

import click

from cib_core import mediatypes as mt
from cib_core.errors import (
    AuthenticationError,
    AuthorizationError,
    CibError,
    ConfigurationError,
    InvalidReference,
    LayerSourceError,
    NotFound,
    RegistryError,
)

if TYPE_CHECKING:
    from cib_core.models import Descriptor, Index, Manifest, Platform
    from cib_core.plugins import CibPluginManager
    from cib_core.reference import LocalReference, Reference
    from cib_core.registry import RegistryClient
    from cib_core.stores import BlobStore

log = logging.getLogger(__name__)

PROG = "cib"
CHUNK = 1 << 16
_PM_KEY = "cib.plugin_manager"
_PLUGIN_COMMANDS_KEY = "cib.plugin_commands"
_HIDDEN_COMMANDS_KEY = "cib.hidden_plugin_commands"
_LOGIN_KEY = "cib.login"
_PLUGIN_OPTION_NAMES = ("-p", "--plugin")
_VALUE_OPTIONS = frozenset({"--insecure-registry", *_PLUGIN_OPTION_NAMES})
PROBE_REPOSITORY = "library/cib-probe"
"""The repository name of clients that only talk to the registry as a whole (the catalog, the
login check): a ``RegistryClient`` is per repository, but nothing is read from this one."""

# ---------------------------------------------------------------------------------------------
# secrets and logging
# ---------------------------------------------------------------------------------------------

_REDACTIONS: tuple[tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]], ...] = (
    (re.compile(r"(?i)\b((?:proxy-)?authorization['\"]?\s*[:=]\s*['\"]?)(?:(basic|bearer)\s+)?[^'\",}\s]+"),
     lambda m: m.group(1) + (m.group(2) + " " if m.group(2) else "") + "***"),
    (re.compile(r"(?i)\b(basic|bearer)\s+[A-Za-z0-9._~+/=-]{8,}"), r"\1 ***"),
    (re.compile(r"(?i)(['\"](?:password|secret|token|access_token|refresh_token|identitytoken|"
                r"registrytoken|auth)['\"]\s*:\s*['\"])[^'\"]*"), r"\1***"),
    (re.compile(r"(?i)\b((?:password|secret|access_token|refresh_token|token)=)[^&\s'\"]+"), r"\1***"),
    (re.compile(r"(://[^/\s:@]+:)[^/\s@]+@"), r"\1***@"),
)


def redact(text: str, secrets: Sequence[str] = ()) -> str:
    """Remove anything that looks like a credential from a diagnostic line."""
    for secret in secrets:
        if secret and len(secret) >= 3:
            text = text.replace(secret, "***")
    for pattern, replacement in _REDACTIONS:
        text = pattern.sub(replacement, text)
    return text


class _Secrets:
    """Literal secrets this run knows (a password read for ``auth login``), redacted everywhere."""

    def __init__(self) -> None:
        self.values: list[str] = []

    def add(self, value: str) -> None:
        if value:
            self.values.append(value)


class _CliLogHandler(logging.Handler):
    """Writes records to the current ``sys.stderr`` (click's runner swaps it), redacted."""

    def __init__(self, verbosity: int, secrets: _Secrets) -> None:
        super().__init__(logging.DEBUG)
        self.verbosity = verbosity
        self.secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        if self.verbosity == 1 and record.levelno < logging.INFO:
            # -v: one line per HTTP exchange (method, URL, status, time), not the headers.
            return record.name == "cib_core.transport" and str(record.msg).startswith("<--")
        return True

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.exc_info and self.verbosity >= 2:
                message += "\n" + logging.Formatter().formatException(record.exc_info)
            if record.levelno >= logging.WARNING:
                line = f"{PROG}: {record.levelname.lower()}: {message}"
            else:
                line = f"{PROG}: [{record.name}] {message}"
            click.echo(redact(line, self.secrets.values), err=True)
        except Exception:  # noqa: BLE001 - logging must never break the command
            self.handleError(record)


@contextmanager
def _logging(verbosity: int, quiet: bool, secrets: _Secrets) -> Iterator[None]:
    root = logging.getLogger()
    transport_logger = logging.getLogger("cib_core.transport")
    quiet_loggers = [logging.getLogger(n) for n in ("urllib3", "keyring")]
    saved = (root.level, transport_logger.level, [lg.level for lg in quiet_loggers])
    handler = _CliLogHandler(verbosity, secrets)
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
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(saved[0])
        transport_logger.setLevel(saved[1])
        for lg, level in zip(quiet_loggers, saved[2], strict=True):
            lg.setLevel(level)


# ---------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------

def _hint(exc: CibError, *, login: bool = False) -> str:
    if isinstance(exc, AuthenticationError) and login:
        return "nothing was stored"
    if isinstance(exc, AuthenticationError):
        if "cib auth login" in str(exc):  # the library already said what to do
            return ""
        where = f" {exc.registry}" if exc.registry else " REGISTRY"
        return f"check the credentials (cib auth login{where})"
    if isinstance(exc, AuthorizationError):
        return "the credentials are valid but lack access; check the repository name and permissions"
    if isinstance(exc, InvalidReference):
        return ""
    if isinstance(exc, RegistryError) and exc.status is None and exc.temporary:
        from cib_core.reference import is_loopback_host

        hint = "check the host name and that the registry is running"
        if exc.registry and not is_loopback_host(exc.registry):
            hint += f"; for a registry without TLS pass --insecure-registry {exc.registry}"
        return hint
    return ""


def error_line(exc: CibError, secrets: Sequence[str] = (), *, login: bool = False) -> str:
    """The one line a ``CibError`` becomes: ``cib: error: <message>; <hint>``."""
    message = " ".join(str(exc).split()) or type(exc).__name__
    hint = _hint(exc, login=login)
    if hint and hint not in message:
        message = f"{message}; {hint}"
    return redact(f"{PROG}: error: {message}", secrets)


def _fail(exc: CibError, ctx: click.Context | None = None) -> NoReturn:
    secrets = _state(ctx).secrets.values if ctx is not None and isinstance(ctx.obj, _State) else []
    login = bool(ctx is not None and ctx.meta.get(_LOGIN_KEY))
    click.echo(error_line(exc, secrets, login=login), err=True)
    raise click.exceptions.Exit(1)


# ---------------------------------------------------------------------------------------------
# the group and its state
# ---------------------------------------------------------------------------------------------

@dataclass
class _State:
    pm: CibPluginManager
    insecure: tuple[str, ...] = ()
    verbose: int = 0
    quiet: bool = False
    secrets: _Secrets = field(default_factory=_Secrets)


def _state(ctx: click.Context | None = None) -> _State:
    ctx = ctx or click.get_current_context()
    state = ctx.find_object(_State)
    if state is None:  # pragma: no cover - the group callback always sets it
        raise click.UsageError("cib's global options were not processed")
    return state


def prescan_plugin_options(args: Sequence[str]) -> list[str]:
    """The values of ``-p``/``--plugin`` given before the subcommand's name."""
    found: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            break
        if arg in _VALUE_OPTIONS:
            if i + 1 < len(args) and arg in _PLUGIN_OPTION_NAMES:
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
        except Exception as exc:  # noqa: BLE001 - any import failure is the plugin's
            raise PluginError(module_name, f"-p {module_name}: cannot import it "
                              f"({type(exc).__name__}: {exc})") from exc
        pm.register_plugin(module, name=module_name,
                           version=str(getattr(module, "__version__", "unknown")))
    return pm


class CibGroup(click.Group):
    """Builds the run's plugin manager before parsing, so plugin subcommands can be found, and
    turns ``CibError`` into one line."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if _PM_KEY not in ctx.meta:
            try:
                pm = build_plugin_manager(prescan_plugin_options(args))
                extra = click.Group(name=PROG)
                try:
                    pm.hook.cib_commands(cli=extra)
                except CibError:
                    raise
                except Exception as exc:  # noqa: BLE001 - a plugin's bug, named
                    from cib_core.errors import PluginError

                    raise PluginError("cib_commands", f"a plugin failed to add its commands: "
                                      f"{type(exc).__name__}: {exc}") from exc
            except CibError as exc:
                _fail(exc)
            ctx.meta[_PM_KEY] = pm
            ctx.meta[_PLUGIN_COMMANDS_KEY] = {
                name: cmd for name, cmd in extra.commands.items() if name not in self.commands}
            ctx.meta[_HIDDEN_COMMANDS_KEY] = sorted(set(extra.commands) & set(self.commands))
        return super().parse_args(ctx, args)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is None:
            command = ctx.meta.get(_PLUGIN_COMMANDS_KEY, {}).get(cmd_name)
        return command

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(ctx.meta.get(_PLUGIN_COMMANDS_KEY, {})))

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CibError as exc:
            _fail(exc, ctx)
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

    pm: CibPluginManager = ctx.meta[_PM_KEY]
    state = _State(pm=pm, insecure=tuple(insecure), verbose=0 if quiet else verbose, quiet=quiet)
    ctx.obj = state
    previous = set_plugin_manager(pm)
    ctx.call_on_close(lambda: set_plugin_manager(previous))
    ctx.with_resource(_logging(state.verbose, quiet, state.secrets))
    for name in ctx.meta.get(_HIDDEN_COMMANDS_KEY, ()):
        log.warning("a plugin's command %r is hidden by cib's own command of that name", name)


# ---------------------------------------------------------------------------------------------
# shared helpers
# ---------------------------------------------------------------------------------------------

def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=False))


def _stdout_binary() -> BinaryIO:
    sys.stdout.flush()
    return sys.stdout.buffer


def _open_store(spec: str | Reference | LocalReference, *, write: bool = False,
                progress: Callable[[str, int, int | None], None] | None = None) -> BlobStore:
    from cib_core.stores import open_store

    state = _state()
    return open_store(spec, write=write, insecure=state.insecure, pm=state.pm, progress=progress)


def _parse_spec(text: str) -> Reference | LocalReference:
    from cib_core.reference import parse_image_spec

    return parse_image_spec(text)


def _identifier(ref: Reference | LocalReference) -> str:
    from cib_core.reference import Reference

    if isinstance(ref, Reference):
        return ref.identifier
    return ref.ref or ""


def _registry_ref(text: str, what: str) -> Reference:
    from cib_core.reference import Reference

    ref = _parse_spec(text)
    if not isinstance(ref, Reference):
        raise ConfigurationError(f"{what} works on registry references, not {text!r}")
    return ref


def _client(ref: Reference) -> RegistryClient:
    from cib_core.registry import RegistryClient

    state = _state()
    return RegistryClient(ref.registry, ref.repository, None,
                          insecure=ref.registry in state.insecure, pm=state.pm)


def _progress(verb: str) -> Any:
    from cib_core.progress import ProgressRenderer

    state = _state()
    return ProgressRenderer(verb, quiet=state.quiet)


def _scratch_check(ref: Reference | LocalReference, text: str) -> None:
    from cib_core.reference import LocalReference

    if isinstance(ref, LocalReference) and ref.transport == "scratch":
        raise ConfigurationError(f"{text!r} is the empty base; it has no manifest or config")


def host_platform_name() -> str:
    """``linux/<arch>`` of this machine, in OCI's names."""
    machine = host_platform.machine().lower()
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64",
            "armv7l": "arm/v7", "armv6l": "arm/v6", "i386": "386", "i686": "386",
            "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}.get(machine, machine)
    return f"linux/{arch}"


def _is_attestation(desc: Any) -> bool:
    annotations = getattr(desc, "annotations", None) or {}
    return annotations.get("vnd.docker.reference.type") == "attestation-manifest"


def _image_entries(index: Index) -> list[Any]:
    return [d for d in index.manifests
            if d.media_type in mt.IMAGE_MANIFESTS and not _is_attestation(d)]


def _select_image(store: BlobStore, doc: Manifest | Index, platform: str | None,
                  what: str) -> tuple[Manifest, str]:
    """The image manifest to read (and its digest): ``doc`` itself, or the index entry for
    ``platform`` (default: the only image, else this machine's platform)."""
    from cib_core.models import Index, Manifest, Platform, parse_manifest

    if not isinstance(doc, Index):
        if platform not in (None, "all"):
            _raw, cfg = _read_config(store, doc.config, what)
            have = Platform(os=str(cfg.get("os", "")), architecture=str(cfg.get("architecture", "")),
                            variant=cfg.get("variant"))
            if not have.matches(Platform.parse(str(platform))):
                raise NotFound(f"{what} is a single {have} image, not {platform}")
        return doc, doc.digest
    entries = _image_entries(doc)
    chosen = None
    if platform not in (None, "all"):
        wanted = Platform.parse(str(platform))
        chosen = next((d for d in entries if d.platform is not None and d.platform.matches(wanted)), None)
        if chosen is None:
            raise NotFound(f"{what} has no {platform} image; it has: {_platform_list(entries)}")
    elif len(entries) == 1:
        chosen = entries[0]
    else:
        wanted = Platform.parse(host_platform_name())
        chosen = next((d for d in entries if d.platform is not None and d.platform.matches(wanted)), None)
        if chosen is None:
            raise ConfigurationError(f"{what} is a multi-platform index; pick one with --platform "
                                     f"(it has: {_platform_list(entries)})")
    raw, media_type, digest = store.get_manifest(chosen.digest)
    manifest = parse_manifest(raw, media_type)
    if not isinstance(manifest, Manifest):
        raise NotFound(f"{chosen.digest} in {what} is not an image manifest")
    return manifest, digest


def _platform_list(entries: Sequence[Any]) -> str:
    return ", ".join(str(d.platform) for d in entries if d.platform is not None) or "none"


def _read_config(store: BlobStore, descriptor: Descriptor, what: str) -> tuple[bytes, dict[str, Any]]:
    from cib_core.stores import read_config

    return read_config(store, descriptor.digest, descriptor.size, what)


def _load(spec: str) -> tuple[Reference | LocalReference, BlobStore, Manifest | Index]:
    from cib_core.models import parse_manifest

    ref = _parse_spec(spec)
    _scratch_check(ref, spec)
    store = _open_store(ref)
    raw, media_type, _digest = store.get_manifest(_identifier(ref))
    return ref, store, parse_manifest(raw, media_type)


# ---------------------------------------------------------------------------------------------
# build
# ---------------------------------------------------------------------------------------------

def parse_command(value: str | None, option: str) -> list[str] | None:
    """``--cmd``/``--entrypoint``: a JSON array of strings, or a shell-style string."""
    if value is None:
        return None
    text = value.strip()
    if text.startswith("["):
        try:
            parsed = json.loads(text)
        except ValueError as exc:
            raise click.BadParameter(f"{value!r} starts like a JSON array but is not valid JSON "
                                     f"({exc})", param_hint=option) from None
        if not isinstance(parsed, list) or not all(isinstance(x, str) for x in parsed):
            raise click.BadParameter(f"{value!r} must be a JSON array of strings", param_hint=option)
        return parsed
    try:
        return shlex.split(text)
    except ValueError as exc:
        raise click.BadParameter(f"{value!r} is not a valid shell-style command ({exc})",
                                 param_hint=option) from None


def parse_add(values: Sequence[str]) -> dict[str, str]:
    """``--add SRC:DEST`` values as ``{DEST: SRC}``, split at the last colon."""
    mapping: dict[str, str] = {}
    for value in values:
        src, sep, dest = value.rpartition(":")
        if not sep or not src or not dest:
            raise click.BadParameter(f"{value!r} is not SRC:DEST (for example ./app:/app)",
                                     param_hint="--add")
        if not dest.startswith("/"):
            raise click.BadParameter(
                f"{value!r}: DEST {dest!r} must be an absolute path in the image (SRC:DEST is "
                "split at the last colon)", param_hint="--add")
        if dest in mapping:
            raise click.BadParameter(f"two --add options name the destination {dest!r}",
                                     param_hint="--add")
        mapping[dest] = src
    return mapping


# add_files options that a layer source error may name, and the build flag that sets each
_BUILD_FLAGS = {"follow_symlinks=False": "--no-follow-symlinks"}


def _key_values(values: Sequence[str], option: str) -> list[tuple[str, str]]:
    pairs = []
    for value in values:
        key, sep, val = value.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{value!r} is not KEY=VALUE", param_hint=option)
        pairs.append((key, val))
    return pairs


@cli.command(epilog="""\b
Examples:
  # a new image from nothing, written to an OCI layout (no registry needed)
  cib build --from scratch --to oci:./out:v1 --add ./site:/srv --cmd '["/srv/run"]'
  # add a layer to a base and push it; prints REGISTRY/REPO@sha256:...
  ref=$(cib build --from alpine:3.20 --to localhost:5000/app:v1 \\
          --add ./app:/app --workdir /app --cmd 'python3 main.py' --env MODE=prod)
  # every --add goes into one layer; a plugin's source is SRC with its prefix
  cib build --from localhost:5000/base --to localhost:5000/app \\
          --add ./bin:/usr/local/bin --add tar:rootfs.tar.gz:/ --tag v2 --tag latest
  # one platform of a multi-platform base
  cib build --from python:3.12 --to localhost:5000/py --platform linux/arm64 --add app.py:/app.py""")
@click.option("--from", "base", required=True, metavar="BASE",
              help="Base image: a reference, oci:PATH[:TAG], docker-archive:PATH or scratch.")
@click.option("--to", "target", required=True, metavar="TARGET",
              help="Where to save: a registry reference, oci:PATH[:TAG] or docker-archive:PATH[:NAME:TAG].")
@click.option("--add", "adds", metavar="SRC:DEST", multiple=True,
              help="Add SRC (a file, a directory's contents, or a plugin source like tar:FILE) at "
                   "DEST; split at the last colon. All --add options make one layer.")
@click.option("--cmd", metavar="CMD", help="The command: a JSON array or a shell-style string.")
@click.option("--entrypoint", metavar="CMD", help="The entrypoint: a JSON array or a shell-style string.")
@click.option("--workdir", metavar="DIR", help="The working directory.")
@click.option("--env", "env", metavar="K=V", multiple=True,
              help="Set an environment variable (merged over the base's by name).")
@click.option("--label", "labels", metavar="K=V", multiple=True, help="Set a label.")
@click.option("--user", metavar="U", help="The user (name, uid or uid:gid).")
@click.option("--tag", "tags", metavar="T", multiple=True,
              help="Tag to push (repeatable); default the target's own tag or latest.")
@click.option("--platform", metavar="P|all",
              help="Build one platform of a multi-platform base (linux/arm64); default all.")
@click.option("--ignore", "ignores", metavar="GLOB", multiple=True,
              help="gitignore-style pattern of files to leave out of local directories.")
@click.option("--ignore-file", "ignore_files", metavar="NAME", multiple=True,
              help="Read more patterns from NAME at each local directory's root (like .dockerignore).")
@click.option("--no-follow-symlinks", "no_follow_symlinks", is_flag=True,
              help="Keep symlinks inside --add directories as links; by default each is replaced by "
                   "what it points to.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def build(base: str, target: str, adds: tuple[str, ...], cmd: str | None, entrypoint: str | None,
          workdir: str | None, env: tuple[str, ...], labels: tuple[str, ...], user: str | None,
          tags: tuple[str, ...], platform: str | None, ignores: tuple[str, ...],
          ignore_files: tuple[str, ...], no_follow_symlinks: bool, as_json: bool) -> None:
    """Build an image: BASE plus new files and config, saved to TARGET.

    Prints the saved image as REGISTRY/REPO@sha256:... (or oci:PATH@sha256:...) on stdout,
    and nothing else, so scripts can capture it.
    """
    from cib_core.image import Image
    from cib_core.reference import Reference

    mapping = parse_add(adds)
    cmd_list = parse_command(cmd, "--cmd")
    entrypoint_list = parse_command(entrypoint, "--entrypoint")
    env_pairs = _key_values(env, "--env")
    label_pairs = _key_values(labels, "--label")
    if (ignores or ignore_files) and not mapping:
        log.warning("--ignore and --ignore-file only apply to --add directories; there are none")
    state = _state()
    target_ref = _parse_spec(target)
    verb = "pushed" if isinstance(target_ref, Reference) else "wrote"
    with _progress(verb) as progress:
        image = Image(base, target, platform=platform, insecure=state.insecure, pm=state.pm,
                      progress=progress)
        if mapping:
            try:
                image.add_files(mapping, ignores=ignores, ignore_files=ignore_files,
                                follow_symlinks=not no_follow_symlinks)
            except LayerSourceError as exc:
                flag = _BUILD_FLAGS.get(exc.option or "")
                if flag is None:
                    raise
                raise LayerSourceError(exc.path, exc.reason, option=flag) from None
        if cmd_list is not None:
            image.cmd = cmd_list
        if entrypoint_list is not None:
            image.entrypoint = entrypoint_list
        if workdir is not None:
            image.working_dir = workdir
        if user is not None:
            image.user = user
        image.env = [f"{k}={v}" for k, v in env_pairs]
        image.labels = dict(label_pairs)
        result = image.save(list(tags) if tags else None)
    if as_json:
        _echo_json({"reference": result.reference, "digest": result.digest,
                    "mediaType": result.media_type, "tags": list(result.tags)})
    else:
        click.echo(result.reference)


# ---------------------------------------------------------------------------------------------
# copy
# ---------------------------------------------------------------------------------------------

@cli.command(epilog="""\b
Examples:
  cib copy docker.io/library/alpine:3.20 localhost:5000/alpine:3.20
  cib copy localhost:5000/app:v1 oci:./layout:v1          # to an OCI layout
  cib copy oci:./layout:v1 docker-archive:app.tar:app:v1  # for docker load
  cib copy python:3.12 localhost:5000/py --platform linux/amd64""")
@click.argument("src", metavar="SRC")
@click.argument("dst", metavar="DST")
@click.option("--platform", metavar="P|all",
              help="Copy one platform of a multi-platform image; default all, keeping the digest.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def copy(src: str, dst: str, platform: str | None, as_json: bool) -> None:
    """Copy an image (all platforms by default) from SRC to DST.

    Either side may be a registry reference, oci:PATH[:TAG] or docker-archive:PATH[:NAME:TAG].
    Prints the copied image as DST@sha256:... on stdout.
    """
    from cib_core.copy import copy_image

    state = _state()
    with _progress("copied") as progress:
        result = copy_image(src, dst, platform=platform, insecure=state.insecure, pm=state.pm,
                            progress=progress)
    if as_json:
        _echo_json({"reference": result.reference, "digest": result.digest,
                    "mediaType": result.media_type, "tags": list(result.tags),
                    "blobs": dict(result.blobs)})
    else:
        click.echo(result.reference)


# ---------------------------------------------------------------------------------------------
# manifest, config, digest, inspect
# ---------------------------------------------------------------------------------------------

@cli.command(epilog="""\b
Examples:
  cib manifest localhost:5000/app:v1 | jq .
  cib manifest oci:./layout:v1 | sha256sum""")
@click.argument("ref", metavar="REF")
def manifest(ref: str) -> None:
    """Print the exact bytes of REF's manifest (or index)."""
    parsed = _parse_spec(ref)
    _scratch_check(parsed, ref)
    raw, _media_type, _digest = _open_store(parsed).get_manifest(_identifier(parsed))
    out = _stdout_binary()
    out.write(raw)
    out.flush()


@cli.command(epilog="""\b
Examples:
  cib config localhost:5000/app:v1 | jq .config.Env
  cib config python:3.12 --platform linux/arm64""")
@click.argument("ref", metavar="REF")
@click.option("--platform", metavar="P",
              help="For a multi-platform image: which one (default: the only one, else this machine's).")
def config(ref: str, platform: str | None) -> None:
    """Print the config JSON of REF, exactly as stored."""
    _parsed, store, doc = _load(ref)
    image, _digest = _select_image(store, doc, platform, ref)
    raw, _cfg = _read_config(store, image.config, ref)
    out = _stdout_binary()
    out.write(raw)
    if not raw.endswith(b"\n") and sys.stdout.isatty():
        out.write(b"\n")
    out.flush()


@cli.command(epilog="""\b
Examples:
  cib digest localhost:5000/app:v1
  docker pull "localhost:5000/app@$(cib digest localhost:5000/app:v1)\"""")
@click.argument("ref", metavar="REF")
def digest(ref: str) -> None:
    """Print the digest of REF's manifest (or index)."""
    from cib_core.reference import Reference

    parsed = _parse_spec(ref)
    _scratch_check(parsed, ref)
    if isinstance(parsed, Reference):
        found = _client(parsed).manifest_digest(parsed.identifier)
    else:
        _raw, _media_type, found = _open_store(parsed).get_manifest(_identifier(parsed))
    click.echo(found)


def _describe_image(store: BlobStore, manifest: Manifest, digest: str,
                    platform: Platform | None) -> dict[str, Any]:
    _raw, cfg = _read_config(store, manifest.config, store.name)
    inner = cfg.get("config") if isinstance(cfg.get("config"), dict) else {}
    assert isinstance(inner, dict)
    layers: list[dict[str, Any]] = [
        {"digest": layer.digest, "size": layer.size, "mediaType": layer.media_type}
        for layer in manifest.layers]
    if platform is not None:
        platform_name = str(platform)
    else:
        platform_name = "/".join(str(p) for p in (cfg.get("os"), cfg.get("architecture"),
                                                  cfg.get("variant")) if p)
    return {
        "platform": platform_name,
        "digest": digest,
        "mediaType": manifest.media_type,
        "config": manifest.config.digest,
        "created": cfg.get("created"),
        "entrypoint": inner.get("Entrypoint"),
        "cmd": inner.get("Cmd"),
        "workingDir": inner.get("WorkingDir") or None,
        "user": inner.get("User") or None,
        "env": inner.get("Env") or [],
        "labels": inner.get("Labels") or {},
        "exposedPorts": sorted((inner.get("ExposedPorts") or {}).keys()),
        "layers": layers,
        "size": sum(int(layer["size"] or 0) for layer in layers),
    }


def _print_image(info: dict[str, Any]) -> None:
    from cib_core.progress import format_size

    def row(name: str, value: object) -> None:
        click.echo(f"  {name:<11} {value}")

    click.echo(f"{info['platform'] or 'image'}  {info['digest']}")
    row("created", info["created"] or "-")
    row("entrypoint", json.dumps(info["entrypoint"]) if info["entrypoint"] is not None else "-")
    row("cmd", json.dumps(info["cmd"]) if info["cmd"] is not None else "-")
    row("workdir", info["workingDir"] or "-")
    row("user", info["user"] or "-")
    env = info["env"] or ["-"]
    row("env", env[0])
    for entry in env[1:]:
        row("", entry)
    if info["labels"]:
        items = sorted(info["labels"].items())
        row("labels", f"{items[0][0]}={items[0][1]}")
        for key, value in items[1:]:
            row("", f"{key}={value}")
    if info["exposedPorts"]:
        row("ports", ", ".join(info["exposedPorts"]))
    count = len(info["layers"])
    row("layers", f"{count} layer{'s' if count != 1 else ''}, {format_size(info['size'])}")
    for layer in info["layers"]:
        kind = layer["mediaType"].rsplit(".", 1)[-1] if layer["mediaType"] else "?"
        click.echo(f"    {layer['digest']}  {format_size(layer['size'] or 0):>9}  {kind}")


@cli.command(epilog="""\b
Examples:
  cib inspect localhost:5000/app:v1
  cib inspect oci:./out:v1 --json | jq '.platforms[0].env'
  cib inspect python:3.12 --platform linux/arm64""")
@click.argument("ref", metavar="REF")
@click.option("--platform", metavar="P", help="Only this platform of a multi-platform image.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def inspect(ref: str, platform: str | None, as_json: bool) -> None:
    """Summarize REF: platforms, layers and sizes, env, cmd, entrypoint, workdir, created."""
    from cib_core.models import Index, Manifest, Platform, parse_manifest

    parsed, store, doc = _load(ref)
    images: list[dict[str, Any]] = []
    if isinstance(doc, Index):
        entries = _image_entries(doc)
        if platform not in (None, "all"):
            wanted = Platform.parse(str(platform))
            entries = [d for d in entries if d.platform is not None and d.platform.matches(wanted)]
            if not entries:
                raise NotFound(f"{ref} has no {platform} image; it has: "
                               f"{_platform_list(_image_entries(doc))}")
        for entry in entries:
            raw, media_type, digest_ = store.get_manifest(entry.digest)
            child = parse_manifest(raw, media_type)
            if isinstance(child, Manifest):
                images.append(_describe_image(store, child, digest_, entry.platform))
    else:
        image, digest_ = _select_image(store, doc, platform, ref)
        images.append(_describe_image(store, image, digest_, None))
    summary = {"reference": str(parsed), "digest": doc.digest, "mediaType": doc.media_type,
               "platforms": images}
    if as_json:
        _echo_json(summary)
        return
    click.echo(f"reference   {summary['reference']}")
    click.echo(f"digest      {summary['digest']}")
    click.echo(f"media type  {summary['mediaType']}")
    if isinstance(doc, Index):
        click.echo(f"platforms   {', '.join(i['platform'] for i in images) or '-'}")
    for info in images:
        click.echo("")
        _print_image(info)


# ---------------------------------------------------------------------------------------------
# ls, catalog, blob, delete
# ---------------------------------------------------------------------------------------------

@cli.command(name="ls", epilog="""\b
Examples:
  cib ls localhost:5000/app
  cib ls oci:./layout           # the tags in an OCI layout
  cib ls localhost:5000/app --json""")
@click.argument("repo", metavar="REPO")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
def ls_(repo: str, as_json: bool) -> None:
    """List every tag of REPO, one a line."""
    from cib_core.reference import LocalReference, parse_repository

    local = _parse_spec(repo) if repo.startswith("oci:") else None
    if isinstance(local, LocalReference):
        if local.ref:
            raise InvalidReference(repo, "name the layout without a tag: oci:PATH")
        from cib_core.oci_layout import OCILayoutStore

        assert local.path is not None
        if not os.path.isdir(local.path):
            raise NotFound(f"{repo}: no OCI layout at {local.path}")
        tags = OCILayoutStore(local.path).tags()
    else:
        tags = _client(parse_repository(repo)).tags()
    if as_json:
        _echo_json(tags)
    else:
        for tag in tags:
            click.echo(tag)


def _parse_registry_host(text: str) -> str:
    from cib_core.reference import parse_reference

    host = text.strip()
    for scheme in ("https://", "http://"):
        if host.lower().startswith(scheme):
            host = host[len(scheme):]
    host = host.rstrip("/")
    if host.endswith("/v1") or host.endswith("/v2"):
        host = host[:-3]
    if not host or "/" in host or "@" in host:
        raise InvalidReference(text, "name a registry host such as localhost:5000 or ghcr.io")
    ref = parse_reference(f"{host}/x") if ("." in host or ":" in host or host == "localhost") \
        else None
    if ref is None or ref.registry.lower() != host.lower():
        if host in ("docker.io", "index.docker.io", "registry-1.docker.io"):
            return "docker.io"
        raise InvalidReference(text, "name a registry host such as localhost:5000 or ghcr.io "
                                     "(a host has a '.' or ':' or is localhost)")
    return ref.registry


@cli.command(epilog="""\b
Examples:
  cib catalog localhost:5000
  cib catalog localhost:5000 --json""")
@click.argument("registry", metavar="REGISTRY")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
def catalog(registry: str, as_json: bool) -> None:
    """List every repository of REGISTRY, one a line."""
    from cib_core.reference import Reference

    host = _parse_registry_host(registry)
    # A client is per repository; the catalog request does not use the name.
    repositories = _client(Reference(host, PROBE_REPOSITORY)).catalog()
    if as_json:
        _echo_json(repositories)
    else:
        for name in repositories:
            click.echo(name)


@cli.command(epilog="""\b
Examples:
  cib blob localhost:5000/app@sha256:4f5e... > layer.tar.gz
  cib blob localhost:5000/app@$(cib manifest localhost:5000/app | jq -r .config.digest) | jq .""")
@click.argument("ref", metavar="REPO@DIGEST")
def blob(ref: str) -> None:
    """Write the blob DIGEST of REPO to stdout, verified against its digest."""
    parsed = _registry_ref(ref, "cib blob")
    if not parsed.digest:
        raise InvalidReference(ref, "name the blob as REPO@sha256:<64 hex digits>")
    stream = _client(parsed).blob(parsed.digest, stream=True)
    out = _stdout_binary()
    if isinstance(stream, bytes):
        out.write(stream)
    else:
        with stream:
            while True:
                chunk = stream.read(CHUNK)
                if not chunk:
                    break
                out.write(chunk)
    out.flush()


@cli.command(epilog="""\b
Examples:
  cib delete localhost:5000/app:old
  cib delete localhost:5000/app@sha256:4f5e...
The registry must allow deletes (docker-registry: storage.delete.enabled: true).""")
@click.argument("ref", metavar="REF")
def delete(ref: str) -> None:
    """Delete the manifest REF names (a tag is resolved to its digest first).

    Prints the deleted REGISTRY/REPO@sha256:... on stdout.
    """
    parsed = _registry_ref(ref, "cib delete")
    client = _client(parsed)
    target = parsed.digest or client.manifest_digest(parsed.identifier)
    client.delete_manifest(target)
    click.echo(f"{parsed.name}@{target}")


# ---------------------------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------------------------

@cli.command(epilog="""\b
Examples:
  cib export localhost:5000/app:v1 rootfs.tar
  cib export oci:./out:v1 - | tar -t
  cib export python:3.12 - --platform linux/arm64 | tar -x -C rootfs""")
@click.argument("ref", metavar="REF")
@click.argument("out", metavar="OUT.tar|-")
@click.option("--platform", metavar="P",
              help="For a multi-platform image: which one (default: the only one, else this machine's).")
def export(ref: str, out: str, platform: str | None) -> None:
    """Write REF's flattened filesystem (whiteouts applied) as a tarball to OUT, or - for stdout."""
    from cib_core.flatten import export_filesystem

    if out == "-" and sys.stdout.isatty():
        raise click.UsageError("refusing to write a tarball to a terminal; redirect stdout or "
                               "name a file")
    _parsed, store, doc = _load(ref)
    image, _digest = _select_image(store, doc, platform, ref)
    layers = [_opener(store, layer.digest) for layer in image.layers]
    if out == "-":
        stdout = _stdout_binary()
        export_filesystem(layers, stdout)
        stdout.flush()
        return
    from cib_core.atomic import replacing

    with replacing(os.path.abspath(out), mode=0o666 & ~_umask(), fsync=False) as handle:
        export_filesystem(layers, handle)


def _opener(store: BlobStore, digest: str) -> Callable[[], BinaryIO]:
    return lambda: store.open_blob(digest)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ---------------------------------------------------------------------------------------------
# auth login / logout
# ---------------------------------------------------------------------------------------------

@cli.group(epilog="""\b
Examples:
  echo "$TOKEN" | cib auth login ghcr.io -u me --password-stdin
  cib auth login localhost:5000 -u me --password-stdin --store keyring < pw.txt
  cib auth logout ghcr.io""")
def auth() -> None:
    """Store or remove registry credentials (docker's config.json or the keyring)."""


def verify_login(registry: str, username: str, secret: str, *, insecure: bool,
                 pm: CibPluginManager) -> str:
    """Check ``username``/``secret`` against ``registry`` the way ``docker login`` does: ping
    ``/v2/``, then authenticate as its challenge asks (a token exchange for Bearer, an
    authenticated ``/v2/`` for Basic).

    Returns ``"bearer"``, ``"basic"`` or ``"none"`` (the registry asks for no credentials).
    Raises ``AuthenticationError`` when the registry or its token server refuses them.
    """
    from cib_core.registry import RegistryClient

    client = RegistryClient(registry, PROBE_REPOSITORY,
                            {"Username": username, "Secret": secret}, insecure=insecure, pm=pm)
    transport = client.transport
    try:
        state = transport.registry_auth(client.credentials)
        schemes = {c.scheme for c in state.ping()}
        if "bearer" in schemes:
            state.authorization(())  # the token exchange; a refusal raises AuthenticationError
            return "bearer"
        if "basic" not in schemes:
            return "none"
        header = state.authorization(())
        resp = transport.request("GET", transport.url("/v2/"),
                                 headers={"Authorization": header or ""})
        try:
            if resp.status_code == 401:
                raise AuthenticationError(
                    f"registry {registry} refused the password of user {username!r}",
                    status=401, registry=registry)
            if resp.status_code >= 400:
                raise RegistryError(f"registry {registry} answered HTTP {resp.status_code} to the "
                                    "login check", status=resp.status_code, registry=registry)
        finally:
            resp.close()
        return "basic"
    finally:
        transport.close()


@auth.command(epilog="""\b
Examples:
  echo "$REGISTRY_PASSWORD" | cib auth login registry.example.com -u ci-bot --password-stdin
  cib auth login localhost:5000 -u me --password-stdin --store keyring < pw.txt
The credentials are checked against the registry first; nothing is stored when it refuses them.""")
@click.argument("registry", metavar="REGISTRY")
@click.option("-u", "--username", required=True, metavar="USER", help="The user name.")
@click.option("--password-stdin", is_flag=True,
              help="Read the password (or token) from stdin; without it, prompt on a terminal.")
@click.option("--store", type=click.Choice(["config", "keyring"]), default="config", show_default=True,
              help="config: docker's config.json (read by docker, podman and cib); keyring: the "
                   "system keyring (read by cib).")
def login(registry: str, username: str, password_stdin: bool, store: str) -> None:
    """Check credentials for REGISTRY and store them."""
    from cib_core import credstore

    state = _state()
    host = _parse_registry_host(registry)
    if password_stdin:
        secret = sys.stdin.read()
        secret = secret.rstrip("\r\n")
    elif sys.stdin.isatty():
        secret = click.prompt("Password", hide_input=True, err=True)
    else:
        raise click.UsageError("stdin is not a terminal: pass --password-stdin and pipe the "
                               "password in")
    if not secret:
        raise click.UsageError("the password is empty")
    state.secrets.add(secret)
    click.get_current_context().meta[_LOGIN_KEY] = True
    method = verify_login(host, username, secret, insecure=host in state.insecure, pm=state.pm)
    if method == "none":
        log.warning("%s does not ask for credentials; storing them anyway", host)
    if store == "keyring":
        credstore.set_keyring_credentials(host, username, secret)
        where = "the keyring"
    else:
        where = str(credstore.store_credentials(host, username, secret))
    if not state.quiet:
        click.echo(f"login succeeded for {host}; credentials stored in {where}")


@auth.command(epilog="""\b
Examples:
  cib auth logout localhost:5000""")
@click.argument("registry", metavar="REGISTRY")
def logout(registry: str) -> None:
    """Remove stored credentials for REGISTRY (config.json and the keyring)."""
    from cib_core import credstore

    state = _state()
    host = _parse_registry_host(registry)
    removed = []
    if credstore.erase_credentials(host):
        removed.append(str(credstore.docker_config_path()))
    try:
        if credstore.delete_keyring_credentials(host):
            removed.append("the keyring")
    except ImportError:
        pass
    except Exception as exc:  # noqa: BLE001 - a missing keyring backend is not an error here
        log.debug("keyring not available for logout: %s", type(exc).__name__)
    if not removed:
        log.warning("not logged in to %s: no stored credentials found", host)
        return
    if not state.quiet:
        click.echo(f"removed credentials for {host} from {' and '.join(removed)}")


# ---------------------------------------------------------------------------------------------
# plugins
# ---------------------------------------------------------------------------------------------

@cli.command(epilog="""\b
Examples:
  cib plugins
  cib plugins --json | jq '.[].name'
  CIB_DISABLE_PLUGIN_AUTOLOAD=1 cib plugins     # builtins only
  cib -p no:keyring plugins                     # without the keyring plugin""")
@click.option("--json", "as_json", is_flag=True,
              help='Print a JSON list of {"name", "version", "hooks", "builtin"}.')
def plugins(as_json: bool) -> None:
    """List the loaded plugins: name, version and the hooks each implements."""
    infos = _state().pm.plugin_infos()
    if as_json:
        _echo_json([info.to_dict() for info in infos])
        return
    width = max((len(i.name) for i in infos), default=4)
    vwidth = max((len(i.version) for i in infos), default=7)
    for info in infos:
        kind = " (builtin)" if info.builtin else ""
        click.echo(f"{info.name:<{width}}  {info.version:<{vwidth}}  "
                   f"{', '.join(info.hooks) or '-'}{kind}")


# ---------------------------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------------------------

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
