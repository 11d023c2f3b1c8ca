"""Where credentials come from: explicit options first, then the ``cib_credentials`` plugins.

The order (documented in docs/guide.md): options passed to ``Image``/``RegistryClient``/``auth()``
for the registry host; then every plugin's ``cib_credentials`` answer, third-party plugins
before the builtins (credential helpers, docker's config.json, Docker Hub, gcr, keyring); the
first answer wins. Nothing answering means anonymous access.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from cib_core.authn.credentials import Credentials
from cib_core.errors import ConfigurationError, PluginError
from cib_core.reference import DOCKER_HUB_HOSTS, is_docker_hub

log = logging.getLogger(__name__)

SCOPES = ("pull", "push", "push,pull", "pull,push")



def _norm_host(key: str) -> str:
    k = key.strip().lower()
    for prefix in ("https://", "http://"):
        if k.startswith(prefix):
            k = k[len(prefix):]
    k = k.split("/", 1)[0]
    return k


def _host_keys(registry: str) -> list[str]:
    host = _norm_host(registry)
    return sorted(DOCKER_HUB_HOSTS) if is_docker_hub(host) else [host]


def _get(opts: Mapping[str, Any], *names: str) -> Any:
    for name in names:
        for key in (name, name.lower(), name.capitalize()):
            if key in opts and opts[key] is not None:
                return opts[key]
    return None


def credentials_from_options(opts: Mapping[str, Any] | Credentials | None) -> Credentials | None:
    """Credentials from one registry's options: ``{"Username", "Secret"}`` (``Password`` too)
    or ``{"token"}``, any capitalisation; None when they name no credentials."""
    if not opts:
        return None
    if isinstance(opts, Credentials):
        return opts
    if not isinstance(opts, Mapping):
        raise ConfigurationError(
            f"registry auth options must be a mapping like {{'Username': ..., 'Secret': ...}} "
            f"or {{'token': ...}}, not {type(opts).__name__}")
    token = _get(opts, "token", "Token")
    username = _get(opts, "Username")
    secret = _get(opts, "Secret", "Password")
    if token is not None:
        return Credentials(username=str(username) if username is not None else None,
                           token=str(token))
    if username is not None or secret is not None:
        return Credentials(username=None if username is None else str(username),
                           secret=None if secret is None else str(secret))
    return None


def options_for_registry(registry: str, options: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """The entry of an ``auth`` mapping (registry host → options) that serves ``registry``."""
    if not options:
        return None
    wanted = set(_host_keys(registry))
    for key, value in options.items():
        if isinstance(key, str) and _norm_host(key) in wanted:
            return value  # type: ignore[no-any-return]
    return None


def resolve_credentials(registry: str, repository: str | None = None, *,
                        options: Mapping[str, Any] | Credentials | None = None,
                        pm: Any = None) -> Credentials:
    """Credentials for (registry, repository): ``options`` is one registry's own options;
    ``{"Username", "Secret"}`` or ``{"token"}`` there win, otherwise the plugins are asked
    (with the options, so a plugin can read keys of its own); else anonymous."""
    explicit = credentials_from_options(options)
    if explicit is not None:
        log.debug("credentials for %s from explicit options", registry)
        return explicit
    if pm is None:
        from cib_core.plugins import get_plugin_manager
        pm = get_plugin_manager()
    plugin_options = dict(options) if isinstance(options, Mapping) else {}
    try:
        found = pm.hook.cib_credentials(registry=registry, repository=repository,
                                        options=plugin_options)
    except PluginError as exc:
        raise PluginError(exc.plugin, f"{exc.reason} (registry {registry})") from exc
    if found is None:
        log.debug("no credentials for %s; anonymous", registry)
        return Credentials()
    if not isinstance(found, Credentials):  # only a hook wrapper can slip past the guard
        raise PluginError("cib_credentials", f"answered {type(found).__name__} for registry "
                          f"{registry}, not Credentials")
    log.debug("credentials for %s from a plugin (user %r)", registry, found.username)
    return found


def auth(image_spec: str, scope: str = "pull", options: Mapping[str, Any] | None = None, *,
         pm: Any = None) -> Credentials:
    """Resolve credentials for an image reference the way ``Image`` does.

    ``options`` maps registry hosts to options (``{"127.0.0.1:5000": {"Username": ...,
    "Secret": ...}}``). ``scope`` is ``"pull"``, ``"push"`` or ``"push,pull"``; it is checked
    but does not change which credentials are found. Local transports need none: anonymous.
    """
    if scope.replace(" ", "") not in SCOPES:
        raise ConfigurationError(f"scope {scope!r} is not one of 'pull', 'push' or 'push,pull'")
    from cib_core.reference import Reference, parse_image_spec

    ref = parse_image_spec(image_spec)
    if not isinstance(ref, Reference):
        return Credentials()
    return resolve_credentials(ref.registry, ref.repository,
                               options=options_for_registry(ref.registry, options), pm=pm)
