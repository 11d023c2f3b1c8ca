"""The credential-helper plugin and credstore's helper protocol, against a real helper program."""

from __future__ import annotations

import json
import logging
import time

import pytest
from credentials_support import all_log_text, make_cred_env

from cib_core import AuthenticationError, Credentials, credstore
from cib_core.errors import ConfigurationError
from cib_plugins import credential_helper

SECRET = "s3cr3t-helper-pass"


@pytest.fixture
def cred_env(tmp_path, monkeypatch):
    yield from make_cred_env(tmp_path, monkeypatch)


def ask(registry: str, repository: str | None = "team/app") -> Credentials | None:
    return credential_helper.cib_credentials(registry=registry, repository=repository)


def test_cred_helpers_entry_runs_get_with_server_url_on_stdin(cred_env, caplog):
    caplog.set_level(logging.DEBUG)
    cred_env.install_helper("cibtest", {"127.0.0.1:5000": {"Username": "alice", "Secret": SECRET}})
    cred_env.write_docker_config({"credHelpers": {"127.0.0.1:5000": "cibtest"}})

    creds = ask("127.0.0.1:5000")

    assert creds == Credentials(username="alice", secret=SECRET)
    assert cred_env.helper_calls() == [
        {"program": "docker-credential-cibtest", "action": "get", "stdin": "127.0.0.1:5000"}]
    assert SECRET not in repr(creds) and SECRET not in str(creds)
    assert SECRET not in all_log_text(caplog.records)


def test_cred_helpers_beat_creds_store_and_keys_match_by_host(cred_env):
    cred_env.install_helper("cibtest", {"[::1]:5000": {"Username": "from-helper", "Secret": SECRET}})
    cred_env.install_helper("cibstore", {"[::1]:5000": {"Username": "from-store", "Secret": "x"},
                                         "gcr.io": {"Username": "store-gcr", "Secret": "y"}})
    cred_env.write_docker_config({"credHelpers": {"https://[::1]:5000": "cibtest"},
                                  "credsStore": "cibstore"})

    assert ask("[::1]:5000") == Credentials(username="from-helper", secret=SECRET)
    assert ask("gcr.io") == Credentials(username="store-gcr", secret="y")
    programs = [c["program"] for c in cred_env.helper_calls()]
    assert programs == ["docker-credential-cibtest", "docker-credential-cibstore"]


def test_docker_hub_asks_for_the_index_url_first(cred_env):
    cred_env.install_helper("cibtest", {credstore.DOCKER_HUB_CONFIG_KEY:
                                        {"Username": "hubuser", "Secret": SECRET}})
    cred_env.write_docker_config({"credsStore": "cibtest"})

    for name in ("docker.io", "index.docker.io", "registry-1.docker.io"):
        assert ask(name, "library/node") == Credentials(username="hubuser", secret=SECRET)
    assert {c["stdin"] for c in cred_env.helper_calls()} == {"https://index.docker.io/v1/"}


def test_server_url_variants_are_tried_in_order(cred_env):
    cred_env.install_helper("cibtest", {"https://127.0.0.1:5000":
                                        {"Username": "bob", "Secret": SECRET}})
    cred_env.write_docker_config({"credsStore": "cibtest"})

    assert ask("127.0.0.1:5000") == Credentials(username="bob", secret=SECRET)
    assert [c["stdin"] for c in cred_env.helper_calls()] == ["127.0.0.1:5000",
                                                            "https://127.0.0.1:5000"]


def test_not_found_gives_none_after_every_variant(cred_env):
    cred_env.install_helper("cibtest", {"other:5000": {"Username": "u", "Secret": "p"}})
    cred_env.write_docker_config({"credsStore": "cibtest"})

    assert ask("127.0.0.1:5000") is None
    assert ask("docker.io") is None
    assert [c["stdin"] for c in cred_env.helper_calls()] == [
        "127.0.0.1:5000", "https://127.0.0.1:5000",
        "https://index.docker.io/v1/", "docker.io", "index.docker.io"]


def test_identity_token_is_username_token_marker(cred_env, caplog):
    caplog.set_level(logging.DEBUG)
    token = "identity-refresh-token-123"
    cred_env.install_helper("cibtest", {"127.0.0.1:5000": {"Username": "<token>", "Secret": token}})
    cred_env.write_docker_config({"credHelpers": {"127.0.0.1:5000": "cibtest"}})

    creds = ask("127.0.0.1:5000")

    assert creds == Credentials(username=credstore.IDENTITY_TOKEN_USER, secret=token)
    assert creds.is_identity_token
    assert not Credentials(username="alice", secret="pw").is_identity_token
    assert token not in repr(creds)
    assert token not in all_log_text(caplog.records)


def test_helper_missing_from_path_is_none_with_debug_log(cred_env, caplog):
    caplog.set_level(logging.DEBUG, logger="cib_core.authn.credstore")
    cred_env.write_docker_config({"credsStore": "cib-not-installed"})

    assert ask("127.0.0.1:5000") is None
    messages = [r for r in caplog.records if "docker-credential-cib-not-installed" in r.getMessage()]
    assert messages and all(r.levelno == logging.DEBUG for r in messages)


def test_a_helper_named_for_this_host_but_missing_is_an_error_naming_it(cred_env):
    # a credHelpers entry says "this host's credentials are there": without the helper the
    # registry's refusal would not say why, so (as docker does) say it now
    cred_env.write_docker_config({"credHelpers": {"127.0.0.1:5000": "cib-not-installed"}})
    with pytest.raises(AuthenticationError) as info:
        ask("127.0.0.1:5000")
    assert "docker-credential-cib-not-installed" in str(info.value)
    assert "not installed" in str(info.value) and "127.0.0.1:5000" in str(info.value)
    assert ask("127.0.0.1:6000") is None  # another host's entry is not this one's business


def test_a_helper_answering_credentials_of_the_wrong_type_is_named(cred_env):
    cred_env.install_helper("cibtest", {"127.0.0.1:5000": {"Username": 5, "Secret": [SECRET]}})
    cred_env.write_docker_config({"credsStore": "cibtest"})
    with pytest.raises(AuthenticationError) as info:
        ask("127.0.0.1:5000")
    assert "docker-credential-cibtest" in str(info.value) and "not a string" in str(info.value)
    assert SECRET not in str(info.value)


def test_no_config_or_no_helper_configured_runs_nothing(cred_env):
    cred_env.install_helper("cibtest", {"127.0.0.1:5000": {"Username": "u", "Secret": "p"}})
    assert ask("127.0.0.1:5000") is None
    cred_env.write_docker_config({"auths": {}, "credHelpers": {"gcr.io": "cibtest"}})
    assert ask("127.0.0.1:5000") is None
    assert cred_env.helper_calls() == []


@pytest.mark.parametrize("mode, words", [("fail", "(exit status 3): the cibtest store is locked"),
                                         ("garbage", "not the JSON object")])
def test_helper_failures_raise_authentication_error_naming_the_helper(cred_env, monkeypatch,
                                                                      mode, words):
    cred_env.install_helper("cibtest", {"127.0.0.1:5000": {"Username": "u", "Secret": SECRET}})
    cred_env.write_docker_config({"credsStore": "cibtest"})
    monkeypatch.setenv("CIBTEST_MODE", mode)

    with pytest.raises(AuthenticationError) as info:
        ask("127.0.0.1:5000")
    message = str(info.value)
    assert "docker-credential-cibtest" in message and words in message
    assert SECRET not in message


def test_helper_that_hangs_times_out(cred_env, monkeypatch):
    cred_env.install_helper("cibtest")
    cred_env.write_docker_config({"credsStore": "cibtest"})
    monkeypatch.setenv("CIBTEST_MODE", "hang")
    monkeypatch.setattr(credstore, "HELPER_TIMEOUT", 1.0)

    started = time.monotonic()
    with pytest.raises(AuthenticationError, match="docker-credential-cibtest get did not answer "
                                                  "within 1 s"):
        ask("127.0.0.1:5000")
    assert time.monotonic() - started < 10


def test_malformed_config_is_a_configuration_error_naming_the_file(cred_env):
    cred_env.docker_config.write_text('{"credsStore": "cibtest", "auths": {')
    with pytest.raises(ConfigurationError) as info:
        ask("127.0.0.1:5000")
    assert str(cred_env.docker_config) in str(info.value)
    assert "not valid JSON" in str(info.value)

    cred_env.write_docker_config({"credHelpers": {"127.0.0.1:5000": 7}})
    with pytest.raises(ConfigurationError, match="credHelpers"):
        ask("127.0.0.1:5000")


@pytest.mark.parametrize("field", ["credsStore", "credHelpers"])
def test_a_helper_name_that_is_a_path_is_refused_naming_the_file(cred_env, tmp_path, monkeypatch,
                                                                 field):
    # "docker-credential-" + "x/../../run" would be looked up as a path from the current
    # directory, not on PATH: a config.json could run any program it can name
    ran = tmp_path / "ran"
    program = tmp_path / "docker-credential-x" / ".." / "run"
    (tmp_path / "docker-credential-x").mkdir()
    (tmp_path / "run").write_text(f"#!/bin/sh\ntouch {ran}\necho '{{}}'\n")
    (tmp_path / "run").chmod(0o755)
    monkeypatch.chdir(tmp_path)
    name = "x/../run"
    assert program.resolve() == (tmp_path / "run")
    cred_env.write_docker_config({"credsStore": name} if field == "credsStore"
                                 else {"credHelpers": {"127.0.0.1:5000": name}})

    with pytest.raises(ConfigurationError) as info:
        ask("127.0.0.1:5000")
    assert str(cred_env.docker_config) in str(info.value)
    assert repr(name) in str(info.value) and "docker-credential-NAME" in str(info.value)
    assert not ran.exists()


def test_store_and_erase_go_through_the_configured_helper(cred_env, caplog):
    caplog.set_level(logging.DEBUG)
    cred_env.install_helper("cibtest")
    cred_env.write_docker_config({"credsStore": "cibtest", "psFormat": "table {{.ID}}"})

    credstore.store_credentials("127.0.0.1:5000", "carol", SECRET)
    credstore.store_credentials("docker.io", "hubcarol", SECRET + "-hub")

    store_calls = [c for c in cred_env.helper_calls() if c["action"] == "store"]
    assert [json.loads(c["stdin"]) for c in store_calls] == [
        {"ServerURL": "127.0.0.1:5000", "Username": "carol", "Secret": SECRET},
        {"ServerURL": "https://index.docker.io/v1/", "Username": "hubcarol",
         "Secret": SECRET + "-hub"}]
    written = json.loads(cred_env.docker_config.read_text())
    # docker leaves empty placeholders in auths when a credential store holds the secret
    assert written == {"credsStore": "cibtest", "psFormat": "table {{.ID}}",
                       "auths": {"127.0.0.1:5000": {}, "https://index.docker.io/v1/": {}}}
    assert ask("127.0.0.1:5000") == Credentials(username="carol", secret=SECRET)
    assert ask("docker.io") == Credentials(username="hubcarol", secret=SECRET + "-hub")

    assert credstore.erase_credentials("127.0.0.1:5000") is True
    assert ask("127.0.0.1:5000") is None
    assert "127.0.0.1:5000" not in cred_env.helper_store("cibtest")
    assert json.loads(cred_env.docker_config.read_text())["auths"] == {
        "https://index.docker.io/v1/": {}}
    assert credstore.erase_credentials("127.0.0.1:5000") is False
    assert SECRET not in all_log_text(caplog.records)


def test_the_test_helper_speaks_the_protocol_list(cred_env):
    """The helper program used above is a faithful implementation (store then list)."""
    import subprocess

    program = cred_env.install_helper("cibtest")
    payload = json.dumps({"ServerURL": "quay.io", "Username": "dave", "Secret": "pw"})
    subprocess.run([str(program), "store"], input=payload, text=True, check=True)
    listed = subprocess.run([str(program), "list"], input="", text=True, check=True,
                            capture_output=True).stdout
    assert json.loads(listed) == {"quay.io": "dave"}
    assert credstore.helper_get("cibtest", "quay.io") == Credentials(username="dave", secret="pw")
