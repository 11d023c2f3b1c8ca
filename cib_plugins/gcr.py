"""Builtin credential provider ``gcr``: Google Container Registry and Artifact Registry.

Serves ``gcr.io``, ``*.gcr.io`` and ``*-docker.pkg.dev``. Uses Google application default
credentials (``GOOGLE_APPLICATION_CREDENTIALS``, gcloud's
``application_default_credentials.json``, or the metadata server on Google Cloud), refreshes
them and returns ``Credentials(username="oauth2accesstoken", secret=ACCESS_TOKEN)``.

``None`` when no application default credentials exist (logged at debug level, at warning
level when ``GOOGLE_APPLICATION_CREDENTIALS`` is set but unusable). A refresh that fails
raises ``AuthenticationError``.

The caller's auth options for the registry may carry google-auth options, as the seed passed
``auth["gcr.io"]`` to google-auth-library: a key file (``keyFilename``, ``keyfile`` or
``credentials_file``), a key as a dict (``credentials_info``), a google-auth credentials object
(``credentials``) and ``scopes``; only ``scopes`` means application default credentials with
those scopes. Options like these are the caller's explicit choice, so they are used for
whichever registry they are given for.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping
from typing import Any

from cib_core import AuthenticationError, Credentials, hookimpl

log = logging.getLogger(__name__)

SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
USERNAME = "oauth2accesstoken"
_HOST = re.compile(r"(?:[a-z0-9-]+\.)*gcr\.io|[a-z0-9][a-z0-9-]*-docker\.pkg\.dev")
GOOGLE_OPTION_KEYS = frozenset({"keyfilename", "keyfile", "credentials_file", "credentials",
                                "credentials_info", "scopes"})


def serves(registry: str) -> bool:
    """True for ``gcr.io``, ``*.gcr.io`` and ``*-docker.pkg.dev`` hosts (no port)."""
    return _HOST.fullmatch(registry.lower()) is not None


@hookimpl
def cib_credentials(registry: str, options: Mapping[str, Any]) -> Credentials | None:
    google_options = {str(k).lower(): v for k, v in options.items()
                      if str(k).lower() in GOOGLE_OPTION_KEYS}
    if google_options:
        return _from_options(google_options)
    if not serves(registry):
        return None
    try:
        import google.auth
        import google.auth.exceptions
        import google.auth.transport.requests
    except ImportError:
        log.debug("google-auth is not installed; no credentials for %s", registry)
        return None
    try:
        credentials, _project = google.auth.default(scopes=list(SCOPES))
    except google.auth.exceptions.DefaultCredentialsError as exc:
        level = logging.WARNING if os.environ.get("GOOGLE_APPLICATION_CREDENTIALS") else logging.DEBUG
        log.log(level, "no Google application default credentials for %s: %s", registry, exc)
        return None
    try:
        credentials.refresh(google.auth.transport.requests.Request())  # type: ignore[no-untyped-call]
    except google.auth.exceptions.GoogleAuthError as exc:
        raise AuthenticationError(
            f"could not get a Google access token for {registry} "
            f"({type(exc).__name__}: {str(exc)[:200]}); check the application default "
            "credentials (gcloud auth application-default login)", registry=registry) from None
    token = getattr(credentials, "token", None)
    if not token:
        raise AuthenticationError(f"Google application default credentials gave no access "
                                  f"token for {registry}", registry=registry)
    return Credentials(username=USERNAME, secret=str(token))


def _from_options(options: Mapping[str, Any]) -> Credentials:
    """An access token from google-auth options (keys lower-cased)."""
    import google.auth
    import google.auth.exceptions
    import google.auth.transport.requests

    scopes = list(options.get("scopes") or SCOPES)
    path = options.get("keyfilename") or options.get("keyfile") or options.get("credentials_file")
    info = options.get("credentials_info")
    given = options.get("credentials")
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
            google_creds = _from_key(dict(info), scopes, str(path or "credentials_info"))
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
    return Credentials(username=USERNAME, secret=str(token))


def _from_key(info: dict[str, Any], scopes: list[str], source: str) -> Any:
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
