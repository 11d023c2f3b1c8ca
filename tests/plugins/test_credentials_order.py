"""The five builtin credential providers together, in the order the plugin host asks them."""

from __future__ import annotations

import logging

import keyring
import pytest
from credentials_support import (
    DictKeyring,
    TokenServer,
    all_log_text,
    b64,
    make_cred_env,
    write_service_account,
)

from cib_core import Credentials, credstore, hookimpl
from cib_core.plugins import CibPluginManager, create_plugin_manager

CREDENTIAL_PLUGINS = ("credential-helper", "docker-config", "dockerhub", "gcr", "keyring")
SECRETS = ("helper-secret", "config-secret", "hub-secret", "ya29.order-token", "keyring-secret")


@pytest.fixture
def cred_env(tmp_path, monkeypatch):
    yield from make_cred_env(tmp_path, monkeypatch)


@pytest.fixture
def pm():
    """The builtins as the plugin host loads them from their entry points."""
    return create_plugin_manager(autoload=False)


def resolve(pm: CibPluginManager, registry: str, repository: str = "team/app") -> Credentials | None:
    return pm.hook.cib_credentials(registry=registry, repository=repository, options={})


def test_builtin_order_is_the_documented_one(pm):
    names = [name for name in pm.builtin_names() if name in CREDENTIAL_PLUGINS]
    assert names == list(CREDENTIAL_PLUGINS)


def test_each_provider_answers_only_when_those_before_it_do_not(cred_env, pm, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    assert [impl.plugin_name for impl in reversed(pm.hook.cib_credentials.get_hookimpls())] == \
        list(CREDENTIAL_PLUGINS)

    cred_env.install_helper("cibtest", {"gcr.io": {"Username": "helper", "Secret": SECRETS[0]}})
    config = {"credHelpers": {"gcr.io": "cibtest"},
              "auths": {"gcr.io": {"auth": b64("config:" + SECRETS[1])}}}
    cred_env.write_docker_config(config)
    credstore.set_keyring_credentials("gcr.io", "keyring", SECRETS[4])
    with TokenServer(SECRETS[3]) as server:
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS",
                           str(write_service_account(cred_env.root / "sa.json", server.url)))

        assert resolve(pm, "gcr.io") == Credentials(username="helper", secret=SECRETS[0])
        del config["credHelpers"]
        cred_env.write_docker_config(config)
        assert resolve(pm, "gcr.io") == Credentials(username="config", secret=SECRETS[1])
        assert server.requests == []  # gcr was never asked while docker-config answered
        cred_env.write_docker_config({"auths": {}})
        assert resolve(pm, "gcr.io") == Credentials(username="oauth2accesstoken",
                                                    secret=SECRETS[3])
        assert len(server.requests) == 1
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(cred_env.root / "gone.json"))
    assert resolve(pm, "gcr.io") == Credentials(username="keyring", secret=SECRETS[4])
    assert credstore.delete_keyring_credentials("gcr.io")
    assert resolve(pm, "gcr.io") is None
    assert not any(secret in all_log_text(caplog.records) for secret in SECRETS)


def test_docker_hub_chain(cred_env, pm, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    cred_env.install_helper("cibtest", {credstore.DOCKER_HUB_CONFIG_KEY:
                                        {"Username": "helper", "Secret": SECRETS[0]}})
    config = {"credsStore": "cibtest",
              "auths": {credstore.DOCKER_HUB_CONFIG_KEY: {"auth": b64("hubfile:" + SECRETS[2])}}}
    cred_env.write_docker_config(config)
    credstore.set_keyring_credentials("docker.io", "keyring", SECRETS[4])

    assert resolve(pm, "docker.io") == Credentials(username="helper", secret=SECRETS[0])
    del config["credsStore"]
    cred_env.write_docker_config(config)
    # docker-config leaves Docker Hub alone; dockerhub reads the same entry
    assert resolve(pm, "docker.io") == Credentials(username="hubfile", secret=SECRETS[2])
    monkeypatch.setenv("DOCKERHUB_USERNAME", "envuser")
    monkeypatch.setenv("DOCKERHUB_TOKEN", SECRETS[2] + "-env")
    assert resolve(pm, "registry-1.docker.io") == Credentials(username="envuser",
                                                              secret=SECRETS[2] + "-env")
    monkeypatch.delenv("DOCKERHUB_USERNAME")
    monkeypatch.delenv("DOCKERHUB_TOKEN")
    cred_env.write_docker_config({})
    assert resolve(pm, "docker.io") == Credentials(username="keyring", secret=SECRETS[4])
    keyring.set_keyring(DictKeyring())
    assert resolve(pm, "docker.io") is None
    assert not any(secret in all_log_text(caplog.records) for secret in SECRETS)


def test_a_third_party_plugin_comes_before_every_builtin(cred_env, pm):
    class Corporate:
        @hookimpl
        def cib_credentials(self, registry, repository):
            return Credentials(username="corp", secret="corp-secret") if registry == "quay.io" else None

    cred_env.write_docker_config({"auths": {"quay.io": {"auth": b64("config:x")}}})
    pm.register_plugin(Corporate(), name="corporate")
    try:
        assert resolve(pm, "quay.io") == Credentials(username="corp", secret="corp-secret")
        assert resolve(pm, "ghcr.io") is None
    finally:
        pm.unregister(name="corporate")
    assert resolve(pm, "quay.io") == Credentials(username="config", secret="x")
