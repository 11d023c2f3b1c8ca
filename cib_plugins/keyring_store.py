"""Builtin credential provider ``keyring``: the system keyring (the ``keyring`` package).

Looks up the service ``"cib:" + registry`` (for example ``cib:127.0.0.1:5000`` or
``cib:docker.io``), as written by ``cib auth login REGISTRY --store keyring``. ``None`` when
nothing is stored or no keyring backend works (logged at debug level); never raises.
"""

from __future__ import annotations

from cib_core import Credentials, hookimpl


@hookimpl
def cib_credentials(registry: str, repository: str | None) -> Credentials | None:
    from cib_core import credstore  # loaded when asked: plugins load at every start-up

    return credstore.get_keyring_credentials(registry)
