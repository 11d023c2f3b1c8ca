"""Error messages that fit the error: a registry that refuses writes, a tag that is not there,
a host name that does not resolve, and ``--insecure-registry`` offered only where it can help.

The registries are real (docker-registry, one of them in distribution's read-only maintenance
mode). No test sends traffic beyond loopback: a DNS failure is a real one, made in a network
namespace of its own that has no interface but a loopback that is down, and the TLS failures of
public registries come from a transport plugin that answers for them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner

import cib_core.remote.transport as transport_module
from cib_core import CustomFile, Image, NotFound, RegistryClient, RegistryError
from cib_core.cli.app import cli
from cib_core.testing import (
    PushedImage,
    RegistryServer,
    in_ci,
    push_base_image,
    run_registry,
)

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No test reads the real user's docker config or keyring."""
    home = tmp_path / "home"
    (home / ".docker").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("DOCKER_CONFIG", str(home / ".docker"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyring.backends.null.Keyring")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost,::1")
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    return home


def error_line(*args: str) -> str:
    """Run ``cib ARGS`` in-process; it must fail with exit 1 and one line on stderr."""
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 1, (result.exit_code, result.stderr)
    assert len(lines) == 1 and lines[0].startswith("cib: error: "), result.stderr
    return lines[0]


# --------------------------------------------------------------------------------------------
# a registry that refuses writes
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def read_only_registry(
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RegistryServer, PushedImage]]:
    """A base pushed into a writable registry, then the same storage served read-only."""
    workdir = tmp_path_factory.mktemp("registry-read-only")
    with run_registry(workdir) as writable:
        base = push_base_image(writable, "base/docker", "1")
    with run_registry(workdir, read_only=True) as server:
        yield server, base


def test_the_read_only_registry_serves_reads_and_answers_writes_405(read_only_registry):
    server, base = read_only_registry
    assert server.read_only
    assert RegistryClient(server.host, "base/docker").manifest("1") == base.manifest
    answer = requests.post(f"{server.url}/v2/app/blobs/uploads/", timeout=30)
    assert answer.status_code == 405
    assert "POST" not in answer.headers.get("Allow", "")


def test_library_push_says_the_registry_refuses_writes(read_only_registry, tmp_path):
    server, _base = read_only_registry
    image = Image(server.ref("base/docker", "1"), server.ref("app/library", "1"))
    with pytest.raises(RegistryError) as refused:
        image.add_files({"/hello.txt": CustomFile(b"hello\n")})
    message = str(refused.value)
    assert f"registry {server.host} refuses writes to repository app/library" in message
    assert "read-only" in message and "maintenance" in message
    assert "not valid JSON" not in message
    assert refused.value.status == 405 and not refused.value.temporary

    with pytest.raises(RegistryError, match="refuses writes to repository app/client"):
        RegistryClient(server.host, "app/client").upload(b"a blob\n")


@pytest.mark.parametrize("command", ["build", "copy", "delete"])
def test_cli_writes_to_a_read_only_registry_name_the_repository(read_only_registry, tmp_path,
                                                                command):
    server, _base = read_only_registry
    base = server.ref("base/docker", "1")
    (tmp_path / "hello.txt").write_text("hello\n")
    args = {
        "build": ["build", "--from", base, "--to", server.ref("app/built", "1"),
                  "--add", f"{tmp_path / 'hello.txt'}:/hello.txt"],
        "copy": ["copy", base, server.ref("mirror/copied", "1")],
        "delete": ["delete", base],
    }[command]
    repository = {"build": "app/built", "copy": "mirror/copied", "delete": "base/docker"}[command]
    line = error_line(*args)
    assert f"refuses writes to repository {repository}" in line
    assert "read-only" in line
    assert "--insecure-registry" not in line and "not valid JSON" not in line


# --------------------------------------------------------------------------------------------
# deleting what is not there
# --------------------------------------------------------------------------------------------

def test_delete_of_a_missing_tag_names_the_tag_and_repository(cib_registry, cib_base_image):
    line = error_line("delete", f"{cib_registry.host}/base/docker:no-such-tag")
    assert line == (f"cib: error: tag 'no-such-tag' not found in {cib_registry.host}/base/docker "
                    "(HTTP 404)")
    line = error_line("delete", f"{cib_registry.host}/no/such-repository:1")
    assert "tag '1' not found in" in line and f"{cib_registry.host}/no/such-repository" in line

    client = RegistryClient(cib_registry.host, "base/docker")
    with pytest.raises(NotFound, match=f"tag 'gone' not found in {cib_registry.host}/base/docker"):
        client.delete_manifest("gone")
    absent = "sha256:" + "0" * 64
    with pytest.raises(NotFound) as missing:
        client.delete_manifest(absent)
    assert str(missing.value).startswith(f"manifest {absent} not found in {cib_registry.host}/base/docker")
    assert missing.value.status == 404 and "MANIFEST_UNKNOWN" in missing.value.codes
    assert client.manifest_exists(cib_base_image.digest)  # nothing was deleted on the way


def test_delete_where_deletes_are_off_says_so(tmp_path):
    with run_registry(tmp_path / "registry", deletes=False) as server:
        push_base_image(server, "base/docker", "1")
        line = error_line("delete", server.ref("base/docker", "1"))
    assert f"registry {server.host} does not allow deletes" in line
    assert "storage.delete.enabled" in line and "refuses writes" not in line


# --------------------------------------------------------------------------------------------
# no answer at all: DNS, TLS, refused connections
# --------------------------------------------------------------------------------------------

def _cib_script() -> str:
    script = Path(sys.executable).parent / "cib"
    assert script.exists(), "the cib console script is not installed (pip install -e .)"
    return str(script)


def _without_network(*argv: str) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` in a new network namespace: only a loopback interface, and it is down, so
    nothing can leave the process, not even a DNS query."""
    unshare = shutil.which("unshare")
    if unshare is None or os.geteuid() != 0:
        reason = "needs root and unshare(1) to make a network namespace"
        if in_ci():
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    return subprocess.run([unshare, "--net", *argv], capture_output=True, text=True, timeout=120,
                          check=False)


def test_the_network_namespace_has_no_way_out():
    links = _without_network("ip", "-o", "link", "show")
    assert links.returncode == 0, links.stderr
    interfaces = [line.split(":")[1].strip() for line in links.stdout.splitlines()]
    assert interfaces == ["lo"] and "state DOWN" in links.stdout


@pytest.mark.parametrize("args", [
    ("manifest", "alpine"),  # Docker Hub: registry-1.docker.io
    ("manifest", "registry.cib-test.invalid/app:1"),
    ("--insecure-registry", "registry.cib-test.invalid", "manifest", "registry.cib-test.invalid/app:1"),
])
def test_a_name_that_does_not_resolve_says_so_and_offers_no_insecure_registry(args):
    result = _without_network(_cib_script(), *args)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    host = "registry-1.docker.io" if "alpine" in args else "registry.cib-test.invalid"
    assert lines[0].startswith(f"cib: error: the host name of registry {host} could not be resolved")
    assert "DNS" in lines[0]
    assert "--insecure-registry" not in lines[0] and "Traceback" not in result.stderr


@pytest.fixture
def remote_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    """Treat the loopback registries like remote hosts, which are HTTPS unless named insecure."""
    monkeypatch.setattr(transport_module, "is_loopback_host", lambda host: False)


def test_a_plain_http_registry_reached_over_https_gets_the_insecure_registry_hint(
        cib_registry, cib_base_image, remote_rules):
    line = error_line("ls", f"{cib_registry.host}/base/docker")
    assert line.startswith(f"cib: error: TLS with registry {cib_registry.host} failed")
    assert line.endswith(f"pass --insecure-registry {cib_registry.host}")
    allowed = CliRunner().invoke(cli, ["--insecure-registry", cib_registry.host, "ls",
                                       f"{cib_registry.host}/base/docker"])
    assert allowed.exit_code == 0, allowed.stderr
    assert "1" in allowed.stdout.split()


def test_a_refused_connection_with_a_port_is_not_an_insecure_registry_matter(remote_rules):
    from cib_core.testing import free_port

    host = f"127.0.0.1:{free_port()}"  # nothing listens there
    line = error_line("ls", f"{host}/app")
    assert f"cannot reach registry {host}" in line and "ConnectionRefusedError" in line
    assert line.endswith("check the host name and that the registry is running")


def test_a_refused_https_connection_on_the_default_port_offers_insecure_registry(remote_rules):
    import socket

    with socket.socket() as probe:  # the premise: nothing serves 127.0.0.1:443
        assert probe.connect_ex(("127.0.0.1", 443)) != 0
    line = error_line("ls", "127.0.0.1/app")
    assert "cannot reach registry 127.0.0.1 (GET https://127.0.0.1/v2/)" in line
    assert line.endswith("for a registry serving plain HTTP, pass --insecure-registry 127.0.0.1")


_TLS_FAILING_PLUGIN = '''
    import ssl

    import requests.adapters
    import requests.exceptions

    from cib_core import hookimpl


    class FailingTLS(requests.adapters.BaseAdapter):
        """Answers every request the way a TLS interception proxy's certificate would."""

        def send(self, request, **kwargs):
            cause = ssl.SSLCertVerificationError(
                1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed "
                   "certificate in certificate chain")
            raise requests.exceptions.SSLError(cause, request=request)

        def close(self):
            pass


    @hookimpl
    def cib_transport(registry):
        if registry in ("registry-1.docker.io", "registry.corp.example"):
            return FailingTLS()
        return None
'''


@pytest.fixture
def tls_failing_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    name = "cib_test_tls_failing_transport"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(_TLS_FAILING_PLUGIN))
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_a_tls_failure_of_docker_hub_offers_a_ca_bundle_not_insecure_registry(tls_failing_plugin):
    line = error_line("-p", tls_failing_plugin, "manifest", "alpine")
    assert line.startswith("cib: error: TLS with registry registry-1.docker.io failed")
    assert "CERTIFICATE_VERIFY_FAILED" in line and "REQUESTS_CA_BUNDLE" in line
    assert "insecure" not in line


def test_a_tls_failure_of_a_private_registry_offers_insecure_registry(tls_failing_plugin):
    line = error_line("-p", tls_failing_plugin, "manifest", "registry.corp.example/team/app:1")
    assert line.startswith("cib: error: TLS with registry registry.corp.example failed")
    assert line.endswith("pass --insecure-registry registry.corp.example")
