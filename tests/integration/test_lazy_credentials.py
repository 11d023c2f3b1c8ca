"""Credential providers are asked only when a registry challenges: an open registry never runs
them (the keyring alone costs tens of milliseconds), a protected one does, once per client."""

from __future__ import annotations

import pytest

from cib_core import Credentials, CustomFile, Image, hookimpl
from cib_core.plugins import create_plugin_manager
from cib_core.remote.client import RegistryClient

pytestmark = pytest.mark.integration


class CountingProvider:
    def __init__(self, answer: Credentials | None) -> None:
        self.answer = answer
        self.asked: list[tuple[str, str | None]] = []

    @hookimpl
    def cib_credentials(self, registry: str, repository: str | None) -> Credentials | None:
        self.asked.append((registry, repository))
        return self.answer


def _manager(provider: CountingProvider):
    pm = create_plugin_manager(autoload=False)
    pm.register_plugin(provider, name="counting")
    return pm


def test_open_registry_never_asks_the_providers(cib_registry, cib_base_image):
    provider = CountingProvider(None)
    pm = _manager(provider)
    image = Image(cib_base_image.ref, f"{cib_registry.host}/lazy/open:1", pm=pm)
    image.add_files({"/f": CustomFile("f")})
    image.save()
    assert RegistryClient(cib_registry.host, "lazy/open", pm=pm).tags() == ["1"]
    assert provider.asked == []


def test_protected_registry_asks_once_per_client(cib_basic_registry):
    provider = CountingProvider(Credentials(cib_basic_registry.username, cib_basic_registry.password))
    client = RegistryClient(cib_basic_registry.host, "lazy/basic", pm=_manager(provider))
    assert not client.manifest_exists("nothing-here")
    assert client.blob_exists("sha256:" + "0" * 64) is False
    assert provider.asked == [(cib_basic_registry.host, "lazy/basic")]
    assert "secret" not in repr(client) and cib_basic_registry.password not in repr(client)


def test_explicit_options_skip_the_providers(cib_basic_registry):
    provider = CountingProvider(None)
    client = RegistryClient(cib_basic_registry.host, "lazy/explicit", cib_basic_registry.auth,
                            pm=_manager(provider))
    assert not client.manifest_exists("nothing-here")
    assert provider.asked == []
