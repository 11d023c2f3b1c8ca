"""Builtin credential provider ``dockerhub``: Docker Hub only.

Serves ``docker.io``, ``index.docker.io`` and ``registry-1.docker.io``; ``None`` for every
other registry. In order:

1. the environment: ``DOCKERHUB_USERNAME`` and ``DOCKERHUB_TOKEN`` (a personal access token or
   password), both set and non-empty; one without the other is ignored with a warning;
2. docker's config.json ``auths``: ``https://index.docker.io/v1/`` (what ``docker login``
   writes), then ``docker.io`` / ``index.docker.io`` keys;
3. podman/skopeo's auth.json files (the same search as the ``docker-config`` plugin), keys
   ``docker.io`` or ``docker.io/NAMESPACE[/REPO]``, the most specific one wins.

Identity tokens come back as ``Credentials(username="<token>", secret=token)``.
"""

from __future__ import annotations

import logging
import os

from cib_core import Credentials, hookimpl

log = logging.getLogger(__name__)

USERNAME_ENV = "DOCKERHUB_USERNAME"
TOKEN_ENV = "DOCKERHUB_TOKEN"


def _from_environment() -> Credentials | None:
    username = os.environ.get(USERNAME_ENV, "")
    token = os.environ.get(TOKEN_ENV, "")
    if username and token:
        log.debug("Docker Hub credentials from %s/%s", USERNAME_ENV, TOKEN_ENV)
        return Credentials(username=username, secret=token)
    if username or token:
        log.warning("only one of %s and %s is set; both are needed, ignoring them",
                    USERNAME_ENV, TOKEN_ENV)
    return None


@hookimpl
def cib_credentials(registry: str, repository: str | None) -> Credentials | None:
    from cib_core import credstore  # loaded when asked: plugins load at every start-up

    if not credstore.is_docker_hub(registry):
        return None
    found = _from_environment()
    if found is not None:
        return found
    config = credstore.load_docker_config()
    if config is not None:
        entry = config.find(registry)
        if entry is not None:
            log.debug("Docker Hub credentials from %s (key %r)", entry.source, entry.key)
            return entry.credentials()
    for auth_file in credstore.iter_auth_files():
        entry = auth_file.find(registry, repository, namespaced=True)
        if entry is not None:
            log.debug("Docker Hub credentials from %s (key %r)", entry.source, entry.key)
            return entry.credentials()
    return None
