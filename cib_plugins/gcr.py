"""Builtin credential provider ``gcr``: Google Container Registry and Artifact Registry.

Serves ``gcr.io``, ``*.gcr.io`` and ``*-docker.pkg.dev``. Uses Google application default
credentials (``GOOGLE_APPLICATION_CREDENTIALS``, gcloud's
``application_default_credentials.json``, or the metadata server on Google Cloud), refreshes
them and returns ``Credentials(username="oauth2accesstoken", secret=ACCESS_TOKEN)``.

``None`` when no application default credentials exist (logged at debug level, at warning
level when ``GOOGLE_APPLICATION_CREDENTIALS`` is set but unusable). A refresh that fails
raises ``AuthenticationError``.
"""

from __future__ import annotations

import logging
import os
import re

from cib_core import AuthenticationError, Credentials, hookimpl

log = logging.getLogger(__name__)

SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
USERNAME = "oauth2accesstoken"
_HOST = re.compile(r"(?:[a-z0-9-]+\.)*gcr\.io|[a-z0-9][a-z0-9-]*-docker\.pkg\.dev")


def serves(registry: str) -> bool:
    """True for ``gcr.io``, ``*.gcr.io`` and ``*-docker.pkg.dev`` hosts (no port)."""
    return _HOST.fullmatch(registry.lower()) is not None


@hookimpl
def cib_credentials(registry: str, repository: str | None) -> Credentials | None:
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
