"""Shared test setup.

The real-registry fixtures live in ``cib_core.testing``, an opt-in pytest plugin (installing cib
adds no fixture to anyone's test session): cib's own tests load it here, as a plugin author's
tests do with ``pytest_plugins = ["cib_core.testing"]`` or ``pytest -p cib_core.testing``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator

import pytest

from cib_core import plugins
from cib_core.plugins import CibPluginManager

pytest_plugins = ["cib_core.testing"]


def pytest_configure(config: pytest.Config) -> None:
    # google-auth probes the GCE metadata server (a link-local address) when it finds no
    # credentials; tests must only ever talk to loopback, so turn the probe off for good.
    os.environ.setdefault("NO_GCE_CHECK", "True")
    os.environ["GCE_METADATA_HOST"] = "127.0.0.1:9"
    os.environ["GCE_METADATA_IP"] = "127.0.0.1:9"
    # The rebuild cache must not read or fill the user's ~/.cache/cib during tests.
    cache = tempfile.mkdtemp(prefix="cib-test-cache-")
    os.environ["CIB_CACHE_DIR"] = cache
    config.add_cleanup(lambda: shutil.rmtree(cache, ignore_errors=True))


@pytest.fixture(autouse=True)
def fresh_plugin_manager(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test gets its own plugin manager, with entry-point autoloading off.

    The manager is created lazily, on first use (builtin plugins load then); autoload is turned
    off through the documented environment variable, so a lazily created manager honours it.
    Tests of autoloading itself unset it with ``monkeypatch.delenv``.
    """
    monkeypatch.setenv(plugins.AUTOLOAD_ENV, "1")
    previous = plugins.set_plugin_manager(None)
    try:
        yield
    finally:
        plugins.set_plugin_manager(previous)


@pytest.fixture
def pm() -> CibPluginManager:
    """A plugin manager holding only the builtin layer sources (local-dir, tarball,
    custom-files), for layer tests; test modules needing other plugins define their own."""
    from cib_plugins import custom_files, local_dir, tarball

    manager = CibPluginManager(autoload=False)
    manager.register(local_dir, name="local-dir")
    manager.register(tarball, name="tarball")
    manager.register(custom_files, name="custom-files")
    return manager
