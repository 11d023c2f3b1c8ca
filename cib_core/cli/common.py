"""What every cib command shares: its state, one-line errors, and how it opens and reads images."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO, NoReturn

import click

from cib_core.errors import (
    AuthenticationError,
    AuthorizationError,
    CibError,
    ConfigurationError,
    InvalidReference,
    NotFound,
    RegistryError,
)

if TYPE_CHECKING:
    from cib_core.models import Descriptor, Index, Manifest
    from cib_core.plugins import CibPluginManager
    from cib_core.reference import LocalReference, Reference
    from cib_core.remote.client import RegistryClient
    from cib_core.stores import BlobStore


PROG = "cib"
CHUNK = 1 << 16
PM_KEY = "cib.plugin_manager"
PLUGIN_OPTIONS_KEY = "cib.plugin_options"
PLUGIN_COMMANDS_KEY = "cib.plugin_commands"
HIDDEN_COMMANDS_KEY = "cib.hidden_plugin_commands"
LOGIN_KEY = "cib.login"
PLUGIN_OPTION_NAMES = ("-p", "--plugin")
VALUE_OPTIONS = frozenset({"--insecure-registry", *PLUGIN_OPTION_NAMES})
PROBE_REPOSITORY = "library/cib-probe"
"""The repository name of clients that only talk to the registry as a whole (the catalog, the
login check): a ``RegistryClient`` is per repository, but nothing is read from this one."""


# ---------------------------------------------------------------------------------------------
# secrets and logging
# ---------------------------------------------------------------------------------------------

class Secrets:
    """Literal secrets this run knows (a password read for ``auth login``), redacted everywhere."""

    def __init__(self) -> None:
        self.values: list[str] = []

    def add(self, value: str) -> None:
        if value:
            self.values.append(value)


# ---------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------

def error_hint(exc: CibError, *, login: bool = False, insecure: Sequence[str] = ()) -> str:
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
    if isinstance(exc, RegistryError) and exc.status is None:
        return connection_hint(exc, insecure)
    return ""


def connection_hint(exc: RegistryError, insecure: Sequence[str]) -> str:
    """What to try when no answer came. ``--insecure-registry`` is offered only where it can
    help: a TLS failure, or a refused HTTPS connection to a host that may serve plain HTTP on
    its default port, of a host that is not loopback, not a big public registry and not named
    insecure already. A name that does not resolve is never cured by it."""
    from urllib.parse import urlsplit

    from cib_core.remote.transport import connection_failure, may_be_insecure

    host = exc.registry or ""
    kind = connection_failure(exc)
    if kind == "dns":
        return "check the host name, and the network and DNS settings of this machine"
    offer = bool(host) and may_be_insecure(host) and host.lower() not in {
        h.lower() for h in insecure}
    flag = f"pass --insecure-registry {host}"
    if kind == "tls":
        return f"for a registry without a certificate cib can check, {flag}" if offer else ""
    if not exc.temporary:
        return ""
    hint = "check the host name and that the registry is running"
    if kind == "refused" and offer and urlsplit(f"//{host}").port is None:
        hint += f"; for a registry serving plain HTTP, {flag}"
    return hint


def error_line(exc: CibError, secrets: Sequence[str] = (), *, login: bool = False,
               insecure: Sequence[str] = ()) -> str:
    """The one line a ``CibError`` becomes: ``cib: error: <message>; <hint>``. ``insecure`` is
    the hosts this run names insecure (``--insecure-registry``)."""
    message = " ".join(str(exc).split()) or type(exc).__name__
    hint = error_hint(exc, login=login, insecure=insecure)
    if hint and hint not in message:
        message = f"{message}; {hint}"
    from cib_core.redact import redact_text  # with the first error, not at start-up

    return redact_text(f"{PROG}: error: {message}", secrets)


def fail(exc: CibError, ctx: click.Context | None = None) -> NoReturn:
    state = ctx.obj if ctx is not None and isinstance(ctx.obj, CliState) else None
    login = bool(ctx is not None and ctx.meta.get(LOGIN_KEY))
    click.echo(error_line(exc, state.secrets.values if state else [], login=login,
                          insecure=state.insecure if state else ()), err=True)
    raise click.exceptions.Exit(1)


# ---------------------------------------------------------------------------------------------
# the group and its state
# ---------------------------------------------------------------------------------------------

@dataclass
class CliState:
    pm: CibPluginManager
    insecure: tuple[str, ...] = ()
    verbose: int = 0
    quiet: bool = False
    secrets: Secrets = field(default_factory=Secrets)


def cli_state(ctx: click.Context | None = None) -> CliState:
    ctx = ctx or click.get_current_context()
    state = ctx.find_object(CliState)
    if state is None:  # pragma: no cover - the group callback always sets it
        raise click.UsageError("cib's global options were not processed")
    return state


# ---------------------------------------------------------------------------------------------
# shared helpers
# ---------------------------------------------------------------------------------------------

def echo_json(value: Any) -> None:
    import json

    click.echo(json.dumps(value, indent=2, sort_keys=False))


def stdout_binary() -> BinaryIO:
    sys.stdout.flush()
    return sys.stdout.buffer


def open_image_store(spec: str | Reference | LocalReference, *, write: bool = False,
                progress: Callable[[str, int, int | None], None] | None = None) -> BlobStore:
    from cib_core.stores import open_store

    state = cli_state()
    return open_store(spec, write=write, insecure=state.insecure, pm=state.pm, progress=progress)


def parse_spec(text: str) -> Reference | LocalReference:
    from cib_core.reference import parse_image_spec

    return parse_image_spec(text)


def identifier_of(ref: Reference | LocalReference) -> str:
    from cib_core.reference import Reference

    if isinstance(ref, Reference):
        return ref.identifier
    return ref.ref or ""


def registry_ref(text: str, what: str) -> Reference:
    from cib_core.reference import Reference

    ref = parse_spec(text)
    if not isinstance(ref, Reference):
        raise ConfigurationError(f"{what} works on registry references, not {text!r}")
    return ref


def registry_client(ref: Reference) -> RegistryClient:
    from cib_core.remote.client import RegistryClient
    from cib_core.remote.transport import TransportPool

    state = cli_state()
    # a pool knows every host named insecure, a token realm's among them
    pool = TransportPool(pm=state.pm, insecure=state.insecure)
    return RegistryClient(ref.registry, ref.repository, None,
                          insecure=ref.registry in state.insecure, pm=state.pm, pool=pool)


def progress_renderer(verb: str) -> Any:
    from cib_core.cli.bars import ProgressRenderer

    state = cli_state()
    return ProgressRenderer(verb, quiet=state.quiet)


def scratch_check(ref: Reference | LocalReference, text: str) -> None:
    from cib_core.reference import LocalReference

    if isinstance(ref, LocalReference) and ref.transport == "scratch":
        raise ConfigurationError(f"{text!r} is the empty base; it has no manifest or config")


def host_platform_name() -> str:
    """This machine's platform, ``linux/<arch>`` in OCI's names."""
    from cib_core.models import Platform

    return str(Platform.host())


def select_image(store: BlobStore, doc: Manifest | Index, platform: str | None,
                  what: str) -> tuple[Manifest, str]:
    """The image manifest to read (and its digest): ``doc`` itself, or the index entry for
    ``platform`` (default: the only image, else this machine's platform)."""
    from cib_core.models import Index, Manifest, Platform, parse_manifest

    if not isinstance(doc, Index):
        if platform not in (None, "all"):
            _raw, cfg = read_image_config(store, doc.config, what)
            have = Platform(os=str(cfg.get("os", "")), architecture=str(cfg.get("architecture", "")),
                            variant=cfg.get("variant"))
            if not have.matches(Platform.parse(str(platform))):
                raise NotFound(f"{what} is a single {have} image, not {platform}")
        return doc, doc.digest
    entries = doc.images()
    chosen = None
    if platform not in (None, "all"):
        wanted = Platform.parse(str(platform))
        chosen = next((d for d in entries if d.platform is not None and d.platform.matches(wanted)), None)
        if chosen is None:
            raise NotFound(f"{what} has no {platform} image; it has: {platform_list(entries)}")
    elif len(entries) == 1:
        chosen = entries[0]
    else:
        wanted = Platform.parse(host_platform_name())
        chosen = next((d for d in entries if d.platform is not None and d.platform.matches(wanted)), None)
        if chosen is None:
            raise ConfigurationError(f"{what} is a multi-platform index; pick one with --platform "
                                     f"(it has: {platform_list(entries)})")
    raw, media_type, digest = store.get_manifest(chosen.digest)
    manifest = parse_manifest(raw, media_type)
    if not isinstance(manifest, Manifest):
        raise NotFound(f"{chosen.digest} in {what} is not an image manifest")
    return manifest, digest


def platform_list(entries: Sequence[Any]) -> str:
    return ", ".join(str(d.platform) for d in entries if d.platform is not None) or "none"


def read_image_config(store: BlobStore, descriptor: Descriptor, what: str) -> tuple[bytes, dict[str, Any]]:
    from cib_core.stores import read_config

    return read_config(store, descriptor.digest, descriptor.size, what)


def load_image(spec: str) -> tuple[Reference | LocalReference, BlobStore, Manifest | Index]:
    from cib_core.models import parse_manifest

    ref = parse_spec(spec)
    scratch_check(ref, spec)
    store = open_image_store(ref)
    raw, media_type, _digest = store.get_manifest(identifier_of(ref))
    return ref, store, parse_manifest(raw, media_type)
