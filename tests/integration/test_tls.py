"""HTTPS against a real docker-registry serving TLS with a certificate from a test CA.

Loopback registries are plain HTTP by rule, so these tests make the transport treat the
loopback address like any remote host (the one thing patched); everything else is real: the
registry's TLS, certificate verification, CA bundles from the environment, --insecure-registry.
"""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

import pytest
from click.testing import CliRunner

import cib_core.remote.transport as transport_module
from cib_core import RegistryError
from cib_core.cli.app import cli
from cib_core.remote.client import RegistryClient
from cib_core.testing import run_registry

pytestmark = pytest.mark.integration


def _write_ca_and_server_cert(directory: Path) -> tuple[Path, Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cib test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_path, cert_path, key_path = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return ca_path, cert_path, key_path


@pytest.fixture(scope="module")
def tls_registry(tmp_path_factory):
    directory = tmp_path_factory.mktemp("registry-tls")
    ca, cert, key = _write_ca_and_server_cert(directory)
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
