"""Real registries, a token server and fault injection for tests: a pytest plugin.

Opt-in, as pytest's ``pytester`` is: ``pytest -p cib_core.testing``, or
``pytest_plugins = ["cib_core.testing"]`` in a ``conftest.py``. Installing cib adds no fixture
to anyone's test session. Its fixtures are the ones cib's own tests use:

- ``cib_registry``, ``cib_second_registry``: open registries (Debian's ``docker-registry``, distribution
  2.8) on free loopback ports; ``cib_basic_registry`` (htpasswd); ``cib_token_registry`` (bearer tokens from
  a :class:`TokenServer` in this module); ``cib_any_registry`` runs a test once per mode.
  Each is a :class:`RegistryServer`, started once per session and stopped by its own PID.
- ``cib_base_image``, ``cib_oci_base_image``, ``cib_multiarch_base_image``: small images with a static
  busybox, pushed into ``cib_registry`` by plain ``requests`` calls (an oracle independent of cib's
  client). ``push_image``/``push_base_image`` push the same into any registry.
- ``cib_fault_proxy``: a factory of :class:`FaultProxy` (5xx, 429, resets, truncation, slowness,
  tag-list pagination) in front of a registry.
- Oracles: :func:`skopeo_inspect`, :func:`skopeo_copy`, :func:`pull_to_oci`, :func:`umoci_unpack`.

With ``CI=true`` a missing tool fails the test; elsewhere the test is skipped with the reason.
This module only defines fixtures and helpers; heavy libraries load inside the functions.
"""

from __future__ import annotations

from cib_core.testing.common import (
    Mode,
    free_port,
    in_ci,
    require_tool,
)
from cib_core.testing.fixtures import (
    cib_any_registry,
    cib_base_image,
    cib_basic_registry,
    cib_fault_proxy,
    cib_multiarch_base_image,
    cib_oci_base_image,
    cib_registry,
    cib_second_registry,
    cib_token_registry,
    pytest_terminal_summary,
)
from cib_core.testing.images import (
    BASE_ENV,
    PushedImage,
    make_layer,
    push_base_image,
    push_image,
    push_index,
)
from cib_core.testing.oracles import (
    pull_to_oci,
    skopeo_copy,
    skopeo_inspect,
    umoci_unpack,
)
from cib_core.testing.proxies import (
    DEFAULT_FAULT_KINDS,
    FAULT_KINDS,
    FaultProxy,
    PaginatingProxy,
)
from cib_core.testing.registries import (
    RegistryServer,
    fetch_token,
    run_registry,
)
from cib_core.testing.tokens import (
    TokenRequest,
    TokenServer,
)

__all__ = [
    "BASE_ENV",
    "DEFAULT_FAULT_KINDS",
    "FAULT_KINDS",
    "FaultProxy",
    "Mode",
    "PaginatingProxy",
    "PushedImage",
    "RegistryServer",
    "TokenRequest",
    "TokenServer",
    "cib_any_registry",
    "cib_base_image",
    "cib_basic_registry",
    "cib_fault_proxy",
    "fetch_token",
    "free_port",
    "in_ci",
    "make_layer",
    "cib_multiarch_base_image",
    "cib_oci_base_image",
    "pull_to_oci",
    "push_base_image",
    "push_image",
    "push_index",
    "pytest_terminal_summary",
    "cib_registry",
    "require_tool",
    "run_registry",
    "cib_second_registry",
    "skopeo_copy",
    "skopeo_inspect",
    "cib_token_registry",
    "umoci_unpack",
]
