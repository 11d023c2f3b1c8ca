"""Builtin credential provider ``docker-config``: stored logins of docker and podman.

For every registry except Docker Hub (the ``dockerhub`` plugin serves that), in order:

1. ``auths`` of docker's config.json (``$DOCKER_CONFIG/config.json``, default
   ``~/.docker/config.json``), keys matched by host with or without scheme and path
   (``https://127.0.0.1:5000/v1/`` serves ``127.0.0.1:5000``);
2. podman/skopeo's auth.json: ``$REGISTRY_AUTH_FILE``, ``$XDG_RUNTIME_DIR/containers/auth.json``,
   ``$XDG_CONFIG_HOME/containers/auth.json`` (default ``~/.config/containers/auth.json``);
   keys may name a repository path (``quay.io/org``), the most specific one wins.

Entries are ``auth`` (base64 ``user:password``), ``username``/``password``, ``identitytoken``
(returned as ``Credentials(username="<token>", secret=token)``) or ``registrytoken``
(returned as ``Credentials(token=...)``). A malformed file raises ``ConfigurationError``
naming it.
"""

from __future__ import annotations

import logging

from cib_core import Credentials, hookimpl

log = logging.getLogger(__name__)


@hookimpl
def cib_credentials(registry: str, repository: str | None) -> Credentials | None:
    from cib_core import credstore  # loaded when asked: plugins load at every start-up

    if credstore.is_docker_hub(registry):
        return None
    config = credstore.load_docker_config()
    if config is not None:
        entry = config.find(registry)
        if entry is not None:
            log.debug("credentials for %s from %s (key %r)", registry, entry.source, entry.key)
            return entry.credentials()
    for auth_file in credstore.iter_auth_files():
        entry = auth_file.find(registry, repository, namespaced=True)
        if entry is not None:
            log.debug("credentials for %s from %s (key %r)", registry, entry.source, entry.key)
            return entry.credentials()
    return None
