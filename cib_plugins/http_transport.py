"""The builtin transport: a pooled HTTP adapter for every registry host.

cib's own retries (with backoff and ``Retry-After``) sit above this adapter, so urllib3's
retries are off here: a request is never sent twice behind cib's back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cib_core import hookimpl

if TYPE_CHECKING:
    import requests.adapters

POOL_CONNECTIONS = 4
POOL_MAXSIZE = 16


@hookimpl(trylast=True)
def cib_transport(registry: str) -> requests.adapters.BaseAdapter | None:
    # imported here: loading the plugins (a command's start-up) must not cost requests'
    # import; whoever asks for a transport has imported requests already
    import requests.adapters

    return requests.adapters.HTTPAdapter(
        pool_connections=POOL_CONNECTIONS, pool_maxsize=POOL_MAXSIZE, max_retries=0)
