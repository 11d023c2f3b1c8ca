"""The dockerhub plugin: Docker Hub only, from the environment, config.json and auth.json."""

from __future__ import annotations

import logging

import pytest
from credentials_support import all_log_text, b64, make_cred_env

from cib_core import Credentials, credstore
from cib_plugins import dockerhub

HUB_NAMES = ("docker.io", "index.docker.io", "registry-1.docker.io")
TOKEN = "dckr_pat_not-a-real-token"


@pytest.fixture
def cred_env(tmp_path, monkeypatch):
    yield from make_cred_env(tmp_path, monkeypatch)


def ask(registry: str, repository: str | None = "library/node") -> Credentials | None:
    return dockerhub.cib_credentials(registry=registry, repository=repository)


def test_environment_variables_serve_every_hub_name_only(cred_env, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("DOCKERHUB_USERNAME", "ciuser")
    monkeypatch.setenv("DOCKERHUB_TOKEN", TOKEN)
    cred_env.write_docker_config({"auths": {"https://index.docker.io/v1/": {"auth": b64("file:f")}}})
    for name in HUB_NAMES:
        assert ask(name) == Credentials(username="ciuser", secret=TOKEN)
    for other in ("gcr.io", "127.0.0.1:5000", "docker.io.example.com", "quay.io"):
        assert ask(other) is None
    assert TOKEN not in all_log_text(caplog.records)


def test_half_set_environment_is_ignored_with_a_warning(cred_env, monkeypatch, caplog):
    monkeypatch.setenv("DOCKERHUB_TOKEN", TOKEN)
    monkeypatch.setenv("DOCKERHUB_USERNAME", "")
    cred_env.write_docker_config({"auths": {"https://index.docker.io/v1/": {"auth": b64("file:f")}}})
    with caplog.at_level(logging.WARNING, logger="cib_plugins.dockerhub"):
        assert ask("docker.io") == Credentials(username="file", secret="f")
    assert any("DOCKERHUB_USERNAME" in r.getMessage() for r in caplog.records)
    assert TOKEN not in all_log_text(caplog.records)


def test_config_json_index_key_first_then_aliases(cred_env):
    cred_env.write_docker_config({"auths": {"docker.io": {"auth": b64("alias:a")},
                                            "https://index.docker.io/v1/": {"auth": b64("index:i")},
                                            "127.0.0.1:5000": {"auth": b64("local:l")}}})
    for name in HUB_NAMES:
        assert ask(name) == Credentials(username="index", secret="i")
    assert ask("127.0.0.1:5000") is None

    cred_env.write_docker_config({"auths": {"index.docker.io": {"auth": b64("alias:a")}}})
    assert ask("docker.io") == Credentials(username="alias", secret="a")


def test_identity_token_from_docker_login(cred_env):
    cred_env.write_docker_config({"auths": {"https://index.docker.io/v1/": {
        "auth": b64("hubuser:"), "identitytoken": "hub-refresh-token"}}})
    creds = ask("docker.io")
    assert creds == Credentials(username="<token>", secret="hub-refresh-token")
    assert creds.is_identity_token


def test_auth_json_namespaced_keys(cred_env):
    cred_env.write_json(cred_env.runtime_auth, {"auths": {
        "docker.io": {"auth": b64("hub:1")},
        "docker.io/myorg": {"auth": b64("org:2")}}})
    assert ask("docker.io", "myorg/app") == Credentials(username="org", secret="2")
    assert ask("docker.io", "library/node") == Credentials(username="hub", secret="1")
    assert ask("registry-1.docker.io", "myorg/app") == Credentials(username="org", secret="2")


def test_nothing_configured_is_none(cred_env):
    assert ask("docker.io") is None
    cred_env.write_docker_config({"auths": {"https://index.docker.io/v1/": {}}})
    assert ask("docker.io") is None


def test_login_writes_the_key_docker_uses(cred_env):
    credstore.store_credentials("registry-1.docker.io", "hubuser", TOKEN)
    assert credstore.load_docker_config().auths == {
        "https://index.docker.io/v1/": {"auth": b64("hubuser:" + TOKEN)}}
    assert ask("docker.io") == Credentials(username="hubuser", secret=TOKEN)
    assert credstore.erase_credentials("docker.io") is True
    assert ask("docker.io") is None
