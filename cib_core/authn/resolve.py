"""Where credentials come from: explicit options first, then the ``cib_credentials`` plugins.

The order (documented in docs/guide.md): options passed to ``Image``/``RegistryClient``/``auth()``
for the registry host; then every plugin's ``cib_credentials`` answer, third-party plugins
before the builtins (credential helpers, docker's config.json, Docker Hub, gcr, keyring); the
first answer wins. Nothing answering means anonymous access.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from cib_core.authn.credentials import Credentials
from cib_core.errors import AuthenticationError, ConfigurationError, PluginError

log = logging.getLogger(__name__)

SCOPES = ("pull", "push", "push,pull", "pull,push")

# Docker Hub answers to several names; options may use any of them.
_DOCKER_HUB_ALIASES = ("docker.io", "index.docker.io", "registry-1.docker.io",
                       "https://index.docker.io/v1/", "registry.hub.docker.com")


def _norm_host(key: str) -> str:
    k = key.strip().lower()
    for prefix in ("https://", "http://"):
        if k.startswith(prefix):
            k = k[len(prefix):]
    k = k.split("/", 1)[0]
    return k


def _host_keys(registry: str) -> list[str]:
    host = _norm_host(registry)
    if host in {_norm_host(a) for a in _DOCKER_HUB_ALIASES}:
        return [_norm_host(a) for a in _DOCKER_HUB_ALIASES]
    return [host]


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
    if any(str(k).lower() in _GOOGLE_KEYS for k in opts):
        return _google_credentials(opts)
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


# Options for google-auth, as the seed passed ``auth["gcr.io"]`` to google-auth-library.
_GOOGLE_KEYS = {"keyfilename", "keyfile", "credentials_file", "credentials", "credentials_info",
                "scopes"}
_GOOGLE_SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]


def _google_credentials(opts: Mapping[str, Any]) -> Credentials:
    """An access token from google-auth options: a key file (``keyFilename``, ``keyfile`` or
    ``credentials_file``), a key as a dict (``credentials_info``), a google-auth credentials
    object (``credentials``), ``scopes``; only ``scopes`` means application default credentials."""
    import google.auth
    import google.auth.exceptions
    import google.auth.transport.requests

    lowered = {str(k).lower(): v for k, v in opts.items()}
    scopes = list(lowered.get("scopes") or _GOOGLE_SCOPES)
    path = lowered.get("keyfilename") or lowered.get("keyfile") or lowered.get("credentials_file")
    info = lowered.get("credentials_info")
    given = lowered.get("credentials")
    if isinstance(given, Mapping):
        info, given = given, None
    try:
        if path:
            try:
                with open(str(path), encoding="utf-8") as handle:
                    info = json.load(handle)
            except (OSError, ValueError) as exc:
                raise AuthenticationError(f"cannot read the Google key file {path}: "
                                          f"{getattr(exc, 'strerror', None) or exc}") from None
        if info is not None:
            google_creds = _google_from_info(dict(info), scopes, str(path or "credentials_info"))
        elif given is not None:
            google_creds = given
        else:
            google_creds, _ = google.auth.default(scopes=scopes)
        google_creds.refresh(google.auth.transport.requests.Request())
    except google.auth.exceptions.GoogleAuthError as exc:
        source = f"the key file {path}" if path else "the google-auth options"
        raise AuthenticationError(
            f"could not get a Google access token from {source} ({type(exc).__name__}); check "
            "the service account key or run gcloud auth application-default login") from None
    token = getattr(google_creds, "token", None)
    if not token:
        raise AuthenticationError("the google-auth options gave no access token")
    return Credentials(username="oauth2accesstoken", secret=str(token))


def _google_from_info(info: dict[str, Any], scopes: list[str], source: str) -> Any:
    kind = info.get("type")
    if kind == "service_account":
        from google.oauth2 import service_account

        return service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
            info, scopes=scopes)
    if kind == "authorized_user":
        from google.oauth2 import credentials as user_credentials

        return user_credentials.Credentials.from_authorized_user_info(  # type: ignore[no-untyped-call]
            info, scopes=scopes)
    raise AuthenticationError(f"{source} is a Google key of type {kind!r}; cib takes "
                              "service_account or authorized_user keys")


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
    """Credentials for (registry, repository): ``options`` is one registry's own options
    (``{"Username", "Secret"}`` or ``{"token"}``), which win; then the plugins; else anonymous."""
    explicit = credentials_from_options(options)
    if explicit is not None:
        log.debug("credentials for %s from explicit options", registry)
        return explicit
    if pm is None:
        from cib_core.plugins import get_plugin_manager
        pm = get_plugin_manager()
    try:
        found = pm.hook.cib_credentials(registry=registry, repository=repository)
    except PluginError:
        raise
    except Exception as exc:  # noqa: BLE001 - name the hook, never the secret-bearing repr
        raise PluginError("cib_credentials", f"a credential provider failed for registry "
                          f"{registry}: {type(exc).__name__}") from exc
    if found is None:
        log.debug("no credentials for %s; anonymous", registry)
        return Credentials()
    if not isinstance(found, Credentials):
        raise PluginError("cib_credentials", f"returned {type(found).__name__} for registry "
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
