"""Builtin credential provider ``credential-helper``: docker credential helpers.

Reads docker's config.json (``$DOCKER_CONFIG/config.json``, default
``~/.docker/config.json``): the helper named in ``credHelpers`` for the registry's host,
else ``credsStore``, and runs ``docker-credential-<name> get`` with the server URL on stdin
(``https://index.docker.io/v1/`` first for Docker Hub; ``HOST`` then ``https://HOST``
otherwise). A helper answering ``Username: "<token>"`` gives an identity token, returned as
``Credentials(username="<token>", secret=token)`` for the token exchange to use as an OAuth2
refresh token.

``None`` when no helper is configured, the ``credsStore`` helper is not installed (logged at
debug level: a default store left from another machine must not break anonymous pulls) or it
has no credentials. A helper that ``credHelpers`` names for this very host but that is not
installed raises ``AuthenticationError`` naming it, as docker does. Any other helper failure
or a 30 s timeout raises ``AuthenticationError`` naming the helper; a malformed config.json
raises ``ConfigurationError`` naming the file.
"""

from __future__ import annotations

import logging

from cib_core import Credentials, hookimpl

log = logging.getLogger(__name__)


@hookimpl
def cib_credentials(registry: str, repository: str | None) -> Credentials | None:
    from cib_core import credstore  # loaded when asked: plugins load at every start-up

    config = credstore.load_docker_config()
    if config is None:
        return None
    helper = credstore.configured_helper(config, registry)
    if not helper:
        return None
    log.debug("asking credential helper %s%s for %s", credstore.HELPER_PREFIX, helper, registry)
    return credstore.helper_get(helper, registry,
                                required=credstore.host_helper(config, registry) is not None)
