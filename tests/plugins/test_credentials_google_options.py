"""auth["gcr.io"] may carry google-auth options, as the seed passed them to google-auth-library.

The access token comes from a real OAuth2 token endpoint on 127.0.0.1 named by the service
account key's token_uri (never Google's)."""

from __future__ import annotations

import json

import pytest
from credentials_support import TokenServer, make_cred_env, rsa_key_pem, write_service_account

from cib_core import AuthenticationError, Credentials, auth
from cib_core.authn.resolve import options_for_registry

ACCESS_TOKEN = "ya29.options-token"


@pytest.fixture
def cred_env(tmp_path, monkeypatch):
    yield from make_cred_env(tmp_path, monkeypatch)


@pytest.mark.parametrize("key", ["keyFilename", "keyfile", "credentials_file"])
def test_key_file_option_gives_an_access_token(cred_env, key):
    with TokenServer(ACCESS_TOKEN) as server:
        path = write_service_account(cred_env.root / "sa.json", server.url)
        creds = auth("gcr.io/project/app", "push,pull", {"gcr.io": {key: str(path)}})
    assert creds == Credentials(username="oauth2accesstoken", secret=ACCESS_TOKEN)
    assert len(server.requests) == 1
    assert ACCESS_TOKEN not in repr(creds)


def test_key_as_a_dict_and_custom_scopes(cred_env):
    import jwt

    with TokenServer(ACCESS_TOKEN) as server:
        path = write_service_account(cred_env.root / "sa.json", server.url)
        info = json.loads(path.read_text())
        scope = "https://www.googleapis.com/auth/devstorage.read_only"
        creds = auth("eu.gcr.io/p/a", "pull", {"eu.gcr.io": {"credentials": info, "scopes": [scope]}})
    assert creds.secret == ACCESS_TOKEN
    claims = jwt.decode(server.requests[0]["assertion"][0], rsa_key_pem()[1], algorithms=["RS256"],
                        audience="https://oauth2.googleapis.com/token")
    assert claims["scope"] == scope


def test_refused_key_is_an_authentication_error_without_secrets(cred_env):
    with TokenServer(ACCESS_TOKEN, status=400) as server:
        path = write_service_account(cred_env.root / "sa.json", server.url)
        with pytest.raises(AuthenticationError, match="sa.json") as caught:
            auth("gcr.io/p/a", "pull", {"gcr.io": {"keyFilename": str(path)}})
    assert "PRIVATE KEY" not in str(caught.value)


@pytest.mark.parametrize("key", ["docker.io", "index.docker.io", "registry-1.docker.io",
                                 "https://index.docker.io/v1/"])
def test_docker_hub_options_match_every_alias(key):
    assert options_for_registry("docker.io", {key: {"Username": "u", "Secret": "s"}}) == {
        "Username": "u", "Secret": "s"}
