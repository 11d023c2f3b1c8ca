"""The gcr plugin: host matching, and google-auth application default credentials refreshed
against a real OAuth2 token endpoint on 127.0.0.1 (never Google's)."""

from __future__ import annotations

import logging

import jwt
import pytest
from credentials_support import (
    TokenServer,
    all_log_text,
    make_cred_env,
    rsa_key_pem,
    write_service_account,
)

from cib_core import AuthenticationError, Credentials
from cib_plugins import gcr

ACCESS_TOKEN = "ya29.local-test-access-token"


@pytest.fixture
def cred_env(tmp_path, monkeypatch):
    yield from make_cred_env(tmp_path, monkeypatch)


@pytest.mark.parametrize("host, served", [
    ("gcr.io", True), ("eu.gcr.io", True), ("us.gcr.io", True), ("asia.gcr.io", True),
    ("GCR.IO", True), ("us-docker.pkg.dev", True), ("europe-west1-docker.pkg.dev", True),
    ("docker.pkg.dev", False), ("-docker.pkg.dev", False), ("us-maven.pkg.dev", False),
    ("pkg.dev", False), ("evilgcr.io", False), ("gcr.io.evil.example", False),
    ("gcr.io:443", False), ("docker.io", False), ("127.0.0.1:5000", False), ("[::1]:5000", False),
    ("us-docker.pkg.dev.example.com", False),
])
def test_host_table(host, served):
    assert gcr.serves(host) is served


def test_application_default_credentials_give_an_access_token(cred_env, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    with TokenServer(ACCESS_TOKEN) as server:
        adc = write_service_account(cred_env.root / "sa.json", server.url)
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(adc))

        creds = gcr.cib_credentials(registry="us-docker.pkg.dev", options={})

    assert creds == Credentials(username="oauth2accesstoken", secret=ACCESS_TOKEN)
    assert ACCESS_TOKEN not in repr(creds)
    assert len(server.requests) == 1
    form = server.requests[0]
    assert form["grant_type"] == ["urn:ietf:params:oauth:grant-type:jwt-bearer"]
    # google-auth always names Google's endpoint as the audience, wherever it posts the grant
    claims = jwt.decode(form["assertion"][0], rsa_key_pem()[1], algorithms=["RS256"],
                        audience="https://oauth2.googleapis.com/token")
    assert claims["scope"] == "https://www.googleapis.com/auth/cloud-platform"
    assert claims["iss"] == "builder@cib-test.iam.gserviceaccount.com"
    text = all_log_text(caplog.records)
    assert ACCESS_TOKEN not in text and form["assertion"][0] not in text


def test_other_registries_never_touch_google_auth(cred_env, monkeypatch):
    with TokenServer(ACCESS_TOKEN) as server:
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS",
                           str(write_service_account(cred_env.root / "sa.json", server.url)))
        for registry in ("docker.io", "127.0.0.1:5000", "quay.io", "us-maven.pkg.dev"):
            assert gcr.cib_credentials(registry=registry, options={}) is None
    assert server.requests == []


def test_refused_refresh_is_an_authentication_error(cred_env, monkeypatch):
    with TokenServer(ACCESS_TOKEN, status=400) as server:
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS",
                           str(write_service_account(cred_env.root / "sa.json", server.url)))
        with pytest.raises(AuthenticationError) as info:
            gcr.cib_credentials(registry="gcr.io", options={})
    message = str(info.value)
    assert "gcr.io" in message and "invalid_grant" in message
    assert server.requests and server.requests[0]["assertion"][0] not in message
    assert "BEGIN PRIVATE KEY" not in message


def test_no_application_default_credentials_is_none(cred_env, monkeypatch, caplog):
    """No GOOGLE_APPLICATION_CREDENTIALS, no gcloud file (CLOUDSDK_CONFIG is empty), and the
    metadata-server probe goes to a local server that says "not here"."""
    from google.auth.compute_engine import _metadata

    # google-auth also reads the SMBIOS product name; make "this is not a GCE VM" hold on any host.
    product = cred_env.root / "product_name"
    product.write_text("Standard PC\n")
    monkeypatch.setattr(_metadata, "_GCE_PRODUCT_NAME_FILE", str(product))
    caplog.set_level(logging.DEBUG, logger="cib_plugins.gcr")
    with TokenServer(ACCESS_TOKEN) as metadata:
        host, port = metadata.httpd.server_address[:2]
        monkeypatch.setenv("GCE_METADATA_IP", f"{host}:{port}")
        assert gcr.cib_credentials(registry="gcr.io", options={}) is None
    ours = [r for r in caplog.records if r.name == "cib_plugins.gcr"]
    assert ours and all(r.levelno == logging.DEBUG for r in ours)
    assert "no Google application default credentials" in ours[0].getMessage()


def test_unusable_explicit_credentials_file_is_none_with_a_warning(cred_env, monkeypatch, caplog):
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(cred_env.root / "missing.json"))
    caplog.set_level(logging.DEBUG, logger="cib_plugins.gcr")
    assert gcr.cib_credentials(registry="eu.gcr.io", options={}) is None
    ours = [r for r in caplog.records if r.name == "cib_plugins.gcr"]
    assert ours and ours[0].levelno == logging.WARNING and "missing.json" in ours[0].getMessage()
