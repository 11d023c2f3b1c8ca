"""The docker-config plugin: docker's config.json and podman/skopeo's auth.json, and
credstore's writer, checked against skopeo's own reading of the same files."""

from __future__ import annotations

import json
import logging
import stat
import subprocess

import pytest
from credentials_support import all_log_text, b64, make_cred_env

from cib_core import Credentials, credstore
from cib_core.errors import ConfigurationError
from cib_plugins import docker_config

SECRET = "pa:ss:word-docker-config"


@pytest.fixture
def cred_env(tmp_path, monkeypatch):
    yield from make_cred_env(tmp_path, monkeypatch)


def ask(registry: str, repository: str | None = "team/app") -> Credentials | None:
    return docker_config.cib_credentials(registry=registry, repository=repository)


@pytest.mark.parametrize("key", ["127.0.0.1:5000", "https://127.0.0.1:5000/v1/",
                                 "http://127.0.0.1:5000", "https://127.0.0.1:5000"])
def test_auth_keys_match_by_host_with_or_without_scheme_and_path(cred_env, key):
    cred_env.write_docker_config({"auths": {key: {"auth": b64("alice:" + SECRET)}}})
    assert ask("127.0.0.1:5000") == Credentials(username="alice", secret=SECRET)
    assert ask("127.0.0.1:50001") is None
    assert ask("127.0.0.1") is None


def test_ipv6_hosts_and_exact_key_first(cred_env):
    cred_env.write_docker_config({"auths": {
        "https://[::1]:5000/v1/": {"auth": b64("scheme:x")},
        "[::1]:5000": {"auth": b64("exact:y")},
        "localhost:5000": {"username": "fields", "password": "z"},
    }})
    assert ask("[::1]:5000") == Credentials(username="exact", secret="y")
    assert ask("localhost:5000") == Credentials(username="fields", secret="z")


def test_identity_and_registry_tokens(cred_env):
    cred_env.write_docker_config({"auths": {
        "id.example.com": {"auth": b64("alice:"), "identitytoken": "refresh-me"},
        "reg.example.com": {"registrytoken": "bearer-me"},
    }})
    assert ask("id.example.com") == Credentials(username="<token>", secret="refresh-me")
    assert ask("reg.example.com") == Credentials(token="bearer-me")
    config = credstore.load_docker_config()
    assert "refresh-me" not in repr(config) and "bearer-me" not in repr(config)
    for key in config.auths:
        text = repr(config.entry(key))
        assert "refresh-me" not in text and "bearer-me" not in text and key in text
    assert SECRET not in repr(credstore.AuthEntry(source=cred_env.docker_config, key="k",
                                                  username="u", password=SECRET))


def test_auth_json_search_order_and_most_specific_key(cred_env, tmp_path, monkeypatch):
    cred_env.write_json(cred_env.home_auth, {"auths": {"quay.io": {"auth": b64("home:1")},
                                                       "ghcr.io": {"auth": b64("home:2")}}})
    assert ask("quay.io") == Credentials(username="home", secret="1")
    cred_env.write_json(cred_env.runtime_auth, {"auths": {
        "quay.io": {"auth": b64("run-host:1")},
        "quay.io/org": {"auth": b64("run-org:2")},
        "quay.io/org/repo": {"auth": b64("run-repo:3")},
    }})
    assert ask("quay.io", "org/repo") == Credentials(username="run-repo", secret="3")
    assert ask("quay.io", "org/repo/sub") == Credentials(username="run-repo", secret="3")
    assert ask("quay.io", "org/other") == Credentials(username="run-org", secret="2")
    assert ask("quay.io", "orgx/repo") == Credentials(username="run-host", secret="1")
    assert ask("quay.io", None) == Credentials(username="run-host", secret="1")
    # the first file with a match wins, later files still serve other hosts
    assert ask("ghcr.io") == Credentials(username="home", secret="2")

    explicit = cred_env.write_json(tmp_path / "explicit.json",
                                   {"auths": {"quay.io": {"auth": b64("explicit:4")}}})
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(explicit))
    assert ask("quay.io", "org/repo") == Credentials(username="explicit", secret="4")

    cred_env.write_docker_config({"auths": {"quay.io": {"auth": b64("docker:5")}}})
    assert ask("quay.io", "org/repo") == Credentials(username="docker", secret="5")


def test_xdg_config_home_is_honoured(cred_env, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    cred_env.write_json(tmp_path / "xdg" / "containers" / "auth.json",
                        {"auths": {"quay.io": {"auth": b64("xdg:1")}}})
    assert ask("quay.io") == Credentials(username="xdg", secret="1")


def test_empty_placeholder_falls_through_to_auth_json(cred_env):
    cred_env.write_docker_config({"auths": {"quay.io": {}}, "credsStore": "cib-none"})
    assert ask("quay.io") is None
    cred_env.write_json(cred_env.runtime_auth, {"auths": {"quay.io": {"auth": b64("podman:1")}}})
    assert ask("quay.io") == Credentials(username="podman", secret="1")


def test_docker_hub_is_left_to_the_dockerhub_plugin(cred_env):
    cred_env.write_docker_config({"auths": {
        "https://index.docker.io/v1/": {"auth": b64("hub:1")},
        "docker.io": {"auth": b64("hub:2")}, "index.docker.io": {"auth": b64("hub:3")}}})
    cred_env.write_json(cred_env.runtime_auth, {"auths": {"docker.io": {"auth": b64("hub:4")}}})
    for name in ("docker.io", "index.docker.io", "registry-1.docker.io"):
        assert ask(name, "library/node") is None


@pytest.mark.parametrize("content, words", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "top level"),
    ('{"auths": ["quay.io"]}', '"auths" must be an object'),
    ('{"auths": {"quay.io": {"auth": "%%%"}}}', "not base64"),
    ('{"auths": {"quay.io": {"auth": "' + b64("no-colon") + '"}}}', 'decode to "user:password"'),
    ('{"auths": {"quay.io": {"username": 5, "password": "x"}}}', '"username"'),
])
def test_malformed_files_raise_configuration_error_naming_file(cred_env, content, words):
    cred_env.docker_config.write_text(content)
    with pytest.raises(ConfigurationError) as info:
        ask("quay.io")
    assert str(cred_env.docker_config) in str(info.value)
    assert words in str(info.value)


def test_a_bad_entry_of_another_registry_does_not_break_this_one(cred_env):
    cred_env.write_docker_config({"auths": {"broken.example": {"auth": "%%%"},
                                            "quay.io": {"auth": b64("ok:1")}}})
    assert ask("quay.io") == Credentials(username="ok", secret="1")
    with pytest.raises(ConfigurationError, match="'broken.example'"):
        ask("broken.example")


def test_malformed_auth_json_names_it_and_hides_secrets(cred_env):
    cred_env.runtime_auth.parent.mkdir(parents=True)
    cred_env.runtime_auth.write_text('{"auths": {"quay.io": {"auth": "' + b64("u:" + SECRET) + '"}')
    with pytest.raises(ConfigurationError) as info:
        ask("quay.io")
    assert str(cred_env.runtime_auth) in str(info.value)
    assert SECRET not in str(info.value) and b64("u:" + SECRET) not in str(info.value)


def test_store_credentials_keeps_other_keys_and_is_private(cred_env, caplog):
    caplog.set_level(logging.DEBUG)
    cred_env.write_docker_config({"auths": {"https://127.0.0.1:5000/v1/": {"auth": b64("old:o")},
                                            "quay.io": {"auth": b64("q:1")}},
                                  "psFormat": "table", "proxies": {"default": {}}})
    cred_env.docker_config.chmod(0o644)

    path = credstore.store_credentials("127.0.0.1:5000", "alice", SECRET)

    assert path == cred_env.docker_config
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    written = json.loads(path.read_text())
    assert written == {"auths": {"quay.io": {"auth": b64("q:1")},
                                 "127.0.0.1:5000": {"auth": b64("alice:" + SECRET)}},
                       "psFormat": "table", "proxies": {"default": {}}}
    assert ask("127.0.0.1:5000") == Credentials(username="alice", secret=SECRET)
    assert [p.name for p in path.parent.iterdir()] == ["config.json"]  # no temp file left

    assert credstore.erase_credentials("127.0.0.1:5000") is True
    assert ask("127.0.0.1:5000") is None
    assert json.loads(path.read_text())["auths"] == {"quay.io": {"auth": b64("q:1")}}
    assert credstore.erase_credentials("127.0.0.1:5000") is False
    assert SECRET not in all_log_text(caplog.records)


def test_store_credentials_creates_a_missing_file_and_directory(cred_env, tmp_path):
    target = tmp_path / "new" / "dir" / "config.json"
    credstore.store_credentials("[::1]:5000", "bob", "pw", path=target)
    assert json.loads(target.read_text()) == {"auths": {"[::1]:5000": {"auth": b64("bob:pw")}}}
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert credstore.erase_credentials("[::1]:5000", path=tmp_path / "absent.json") is False


def test_store_credentials_through_a_symlink_keeps_the_link(cred_env, tmp_path):
    real = tmp_path / "dotfiles" / "config.json"
    cred_env.write_json(real, {"auths": {}})
    cred_env.docker_config.symlink_to(real)
    credstore.store_credentials("quay.io", "carol", "pw")
    assert cred_env.docker_config.is_symlink()
    assert json.loads(real.read_text())["auths"] == {"quay.io": {"auth": b64("carol:pw")}}


def skopeo_login_user(authfile, target: str) -> str | None:
    done = subprocess.run(["skopeo", "login", "--get-login", "--authfile", str(authfile), target],
                          capture_output=True, text=True, timeout=60)
    return done.stdout.strip() if done.returncode == 0 else None


def test_written_file_and_key_matching_agree_with_skopeo(cred_env):
    """skopeo (containers/image) reads the same files; its answers are the oracle."""
    credstore.store_credentials("127.0.0.1:5000", "alice", SECRET)
    credstore.store_credentials("docker.io", "hubuser", "hubpw")
    assert skopeo_login_user(cred_env.docker_config, "127.0.0.1:5000") == "alice"
    assert skopeo_login_user(cred_env.docker_config, "docker.io") == "hubuser"

    authfile = cred_env.write_json(cred_env.runtime_auth, {"auths": {
        "quay.io": {"auth": b64("host:1")},
        "quay.io/org": {"auth": b64("org:2")},
        "quay.io/org/repo": {"auth": b64("repo:3")},
        "https://[::1]:5000/v1/": {"auth": b64("six:4")},
    }})
    config = credstore.load_auth_config(authfile)
    assert config is not None
    for registry, repository in [("quay.io", "org/repo"), ("quay.io", "org/other"),
                                 ("quay.io", "orgx/repo"), ("quay.io", None),
                                 # skopeo 1.9 cannot parse "[::1]:5000/x": ask for the host only
                                 ("[::1]:5000", None), ("ghcr.io", "org/repo")]:
        entry = config.find(registry, repository, namespaced=True)
        ours = entry.username if entry else None
        target = registry if repository is None else f"{registry}/{repository}"
        assert ours == skopeo_login_user(authfile, target), (registry, repository)
