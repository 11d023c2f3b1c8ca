"""HTTPS against a real docker-registry serving TLS with a certificate from a test CA.

Loopback registries are plain HTTP by rule, so these tests make the transport treat the
loopback address like any remote host (the one thing patched); everything else is real: the
registry's TLS, certificate verification, CA bundles from the environment, --insecure-registry.
"""

from __future__ import annotations

import warnings

import pytest
import requests
import urllib3
from click.testing import CliRunner

import cib_core.remote.transport as transport_module
from cib_core import RegistryError
from cib_core.cli.app import cli
from cib_core.remote.client import RegistryClient
from cib_core.testing import run_registry
from cib_core.testing.hostile import write_test_certificates

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tls_registry(tmp_path_factory):
    directory = tmp_path_factory.mktemp("registry-tls")
    ca, cert, key = write_test_certificates(directory)
    with run_registry(directory / "run", mode="open", tls=(cert, key)) as server:
        yield server, ca


@pytest.fixture
def remote_rules(monkeypatch):
    """Treat 127.0.0.1 like a remote host, and start from an environment with no CA bundle."""
    monkeypatch.setattr(transport_module, "is_loopback_host", lambda host: False)
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE"):
        monkeypatch.delenv(name, raising=False)


def _round_trip(client: RegistryClient) -> None:
    result = client.upload(b"over tls\n")
    assert client.blob(result.digest) == b"over tls\n"
    assert client.transport.base_url.startswith("https://")


def test_unknown_ca_is_refused_with_a_hint(tls_registry, remote_rules):
    server, _ca = tls_registry
    with pytest.raises(RegistryError, match=f"TLS with registry {server.host} failed") as err:
        RegistryClient(server.host, "tls/app").tags()
    assert "REQUESTS_CA_BUNDLE" in str(err.value) and "insecure" in str(err.value)


@pytest.mark.parametrize("variable", ["SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"])
def test_ca_bundle_from_the_environment_is_trusted(tls_registry, remote_rules, monkeypatch, variable):
    server, ca = tls_registry
    monkeypatch.setenv(variable, str(ca))
    _round_trip(RegistryClient(server.host, f"tls/{variable.lower()}"))


def test_insecure_registry_gets_unverified_https_not_plain_http(tls_registry, remote_rules):
    server, _ca = tls_registry
    client = RegistryClient(server.host, "tls/insecure", insecure=True)
    _round_trip(client)
    assert client.transport.verify is False


def test_insecure_registry_warns_nothing_and_sets_no_warning_filter(tls_registry, remote_rules):
    server, _ca = tls_registry
    filters_outside = list(warnings.filters)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # record every warning, each time
        filters = list(warnings.filters)
        _round_trip(RegistryClient(server.host, "tls/quiet", insecure=True))
        assert warnings.filters == filters
        quiet = [w for w in caught if issubclass(w.category, urllib3.exceptions.InsecureRequestWarning)]
        # the same unverified request without cib does warn: the recording works
        requests.get(f"{server.url}/v2/", verify=False, timeout=10).close()
        loud = [w for w in caught if issubclass(w.category, urllib3.exceptions.InsecureRequestWarning)]
    assert quiet == [] and len(loud) == 1
    assert warnings.filters == filters_outside


def test_cli_insecure_registry_flag(tls_registry, remote_rules):
    server, _ca = tls_registry
    runner = CliRunner()
    refused = runner.invoke(cli, ["catalog", server.host])
    assert refused.exit_code == 1
    assert refused.output.strip().startswith("cib: error: TLS with registry")
    allowed = runner.invoke(cli, ["--insecure-registry", server.host, "catalog", server.host])
    assert allowed.exit_code == 0, allowed.output


def test_image_insecure_true_means_the_base_and_target_hosts(tls_registry, remote_rules, tmp_path):
    from cib_core import Image

    server, _ca = tls_registry
    with pytest.raises(RegistryError, match=f"TLS with registry {server.host} failed"):
        Image("scratch", f"{server.host}/tls/built:1").save()
    pushed = Image("scratch", f"{server.host}/tls/built:1", insecure=True)
    pushed.cmd = ["true"]
    result = pushed.save()  # the target's host
    back = Image(f"{server.host}/tls/built:1", f"oci:{tmp_path / 'layout'}:1", insecure=True)
    assert back.get_image_config()["Cmd"] == ["true"]  # the base's host
    assert back.save().digest == result.digest
