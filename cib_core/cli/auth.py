"""`cib auth login` and `cib auth logout`: storing credentials where docker and cib read them."""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING

import click

from cib_core.errors import (
    AuthenticationError,
    RegistryError,
)

if TYPE_CHECKING:
    from cib_core.plugins import CibPluginManager

from cib_core.cli.common import (
    LOGIN_KEY,
    PROBE_REPOSITORY,
    cli_state,
)

log = logging.getLogger(__name__)

@click.group(epilog="""\b
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
    from cib_core.remote.client import RegistryClient

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
    from cib_core.authn import credstore

    state = cli_state()
    from cib_core.reference import parse_registry_host  # not at start-up: it costs hashlib and more

    host = parse_registry_host(registry)
    if not username or ":" in username or not username.isprintable():
        # Basic authentication joins user and password with ':', and a header cannot hold
        # control characters: such a name could never log in
        raise click.BadParameter(f"{username!r} is not a user name: it must be non-empty, "
                                 "without ':' or control characters", param_hint="--username")
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
    click.get_current_context().meta[LOGIN_KEY] = True
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
    from cib_core.authn import credstore

    state = cli_state()
    from cib_core.reference import parse_registry_host  # not at start-up: it costs hashlib and more

    host = parse_registry_host(registry)
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


