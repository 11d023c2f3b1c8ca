"""cib: build container images and talk to OCI registries, with no Docker daemon.

The public face is what this module exports; everything else may change.
"""

from __future__ import annotations

from cib_core.errors import (
    AuthenticationError,
    AuthorizationError,
    CibError,
    DigestMismatch,
    InvalidReference,
    LayerSourceError,
    LocalWriteError,
    NotFound,
    PackagingError,
    PluginError,
    RegistryError,
)

__version__ = "0.1.0"
"""The version of the ``cib-core`` distribution (``pyproject.toml`` reads it from here)."""

TYPE_CHECKING = False  # typing itself is not imported: `import cib_core` stays a millisecond
if TYPE_CHECKING:
    from typing import Any

    from cib_core.authn import credstore
    from cib_core.authn.credentials import Credentials
    from cib_core.authn.resolve import auth
    from cib_core.copy import CopyResult, copy_image
    from cib_core.hookspecs import hookimpl
    from cib_core.image import Image, ImageData, SaveResult
    from cib_core.layers.custom_file import CustomFile
    from cib_core.layers.pipeline import LayerInfo
    from cib_core.remote.client import RegistryClient, UploadResult

# Everything but the errors loads on first use, so that `import cib_core` stays cheap for plugins
# and for the command line's start-up (`hookimpl` needs pluggy).
_LAZY = {
    "hookimpl": "cib_core.hookspecs",
    "Credentials": "cib_core.authn.credentials",
    "Image": "cib_core.image",
    "ImageData": "cib_core.image",
    "SaveResult": "cib_core.image",
    "RegistryClient": "cib_core.remote.client",
    "UploadResult": "cib_core.remote.client",
    "CustomFile": "cib_core.layers.custom_file",
    "LayerInfo": "cib_core.layers.pipeline",
    "auth": "cib_core.authn.resolve",
    "copy_image": "cib_core.copy",
    "CopyResult": "cib_core.copy",
}
# Modules that are public as a whole: ``credstore`` reads and writes docker's config.json,
# podman's auth.json, credential helpers and the keyring, for credential-provider plugins
# (cib's own and third-party ones) and ``cib auth login`` alike.
_LAZY_MODULES = {"credstore": "cib_core.authn.credstore"}


def __getattr__(name: str) -> Any:
    import importlib

    if name in _LAZY_MODULES:
        value = importlib.import_module(_LAZY_MODULES[name])
        globals()[name] = value
        return value
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'cib_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


__all__ = [
    "AuthenticationError",
    "AuthorizationError",
    "CibError",
    "CopyResult",
    "Credentials",
    "CustomFile",
    "DigestMismatch",
    "Image",
    "ImageData",
    "InvalidReference",
    "LayerInfo",
    "LayerSourceError",
    "LocalWriteError",
    "NotFound",
    "PackagingError",
    "PluginError",
    "RegistryClient",
    "RegistryError",
    "SaveResult",
    "UploadResult",
    "auth",
    "copy_image",
    "credstore",
    "hookimpl",
    "__version__",
]
