"""No credentials in clear to a token realm (issue 15, class 1).

A hostile registry on loopback challenges with ``Bearer realm=...`` pointing at a token server
on "another host": a network namespace of this test's own (10.231.N.2, see
``cib_core.testing.netns``) or a name that is not loopback though it resolves to it. The server
there logs every request, so "nothing arrived" is seen, not assumed. A realm over HTTPS on the
other host does get the credentials; a plain-HTTP one, one on another scheme, and a redirect of
the token request that breaks the rule get nothing, and the CLI says so in one line.
"""

from __future__ import annotations

import base64
import json
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

import cib_core.remote.transport as transport_module
import cib_plugins.http_transport
from cib_core.errors import RegistryError
from cib_core.plugins import CibPluginManager
from cib_core.remote.client import RegistryClient
from cib_core.remote.transport import TransportOptions
from cib_core.testing import in_ci
from cib_core.testing.hostile import HostileRegistry, run_cib, write_test_certificates
from cib_core.testing.netns import OtherHost, netns_available, recorded

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

USER, PASSWORD = "realm-user", "realm-pa55word"
BASIC = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
TOKEN = "ns-token"
TAGS = json.dumps({"name": "app", "tags": ["1"]}).encode()


def _pm() -> CibPluginManager:
    pm = CibPluginManager(autoload=False)
    pm.register(cib_plugins.http_transport, name="http-transport")
    return pm


class Other:
    """The namespace host with its servers: plain HTTP on 8080, HTTPS on 8443."""

    def __init__(self, host: OtherHost, directory: Path) -> None:
        self.host = host
        self.http_log = directory / "http.jsonl"
        self.https_log = directory / "https.jsonl"
        self.ca, cert, key = write_test_certificates(directory / "tls", (host.address,))
        self.http = host.serve(self.http_log, port=8080, token=TOKEN)
        self.https = host.serve(self.https_log, port=8443, token=TOKEN, tls=(cert, key))

    def counts(self) -> tuple[int, int]:
        return len(recorded(self.http_log)), len(recorded(self.https_log))

    def arrived_since(self, counts: tuple[int, int]) -> list[dict[str, Any]]:
        return recorded(self.http_log)[counts[0]:] + recorded(self.https_log)[counts[1]:]


@pytest.fixture(scope="module")
def other(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Other]:
    reason = netns_available()
    if reason is not None:
        if in_ci():
            pytest.fail(f"another host is needed: {reason}")
        pytest.skip(reason)
    with OtherHost() as host:
        found = Other(host, tmp_path_factory.mktemp("other-host"))
        # the servers there do answer from here: "nothing arrived" below is not a dead network
        for url in (found.http, found.https):
            answer = requests.get(f"{url}/probe", timeout=10, verify=str(found.ca))
            assert answer.json()["token"] == TOKEN
        yield found


@pytest.fixture
def nothing_arrives(other: Other) -> Iterator[None]:
    """Fails the test when any request reached the other host during it."""
    before = other.counts()
    yield
    after = other.arrived_since(before)
    assert after == [], f"requests reached the other host: {after}"


def _registry(realm: str, **options: Any) -> HostileRegistry:
    registry = HostileRegistry(challenge=f'Bearer realm="{realm}",service="hostile"',
                               accept=(f"Bearer {TOKEN}",), **options)
    registry.route("/v2/app/tags/list", lambda h: h.reply(200, TAGS))
    return registry.start()


def _one_line_refusal(exc: BaseException, realm_host: str) -> str:
    message = str(exc)
    assert "\n" not in message and "refusing to send credentials" in message, message
    assert realm_host in message and PASSWORD not in message
    return message


def _logged_in(home: Path, registry: HostileRegistry) -> Path:
    (home / ".docker").mkdir(parents=True, exist_ok=True)
    (home / ".docker" / "config.json").write_text(json.dumps(
        {"auths": {registry.host: {"auth": base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}}}))
    return home


def _assert_one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1, result.stderr
    assert len(lines) == 1 and lines[0].startswith("cib: error: "), result.stderr
    assert PASSWORD not in result.stderr + result.stdout
    return lines[0]


def test_plain_http_realm_on_another_host_gets_nothing(other: Other, nothing_arrives: None,
                                                       tmp_path: Path) -> None:
    realm = f"{other.http}/token"
    registry = _registry(realm)
    try:
        for auth in ({"Username": USER, "Secret": PASSWORD}, None):
            client = RegistryClient(registry.host, "app", auth, pm=_pm())
            with pytest.raises(RegistryError) as err:
                client.tags()
            message = _one_line_refusal(err.value, other.host.address)
            assert "another host" in message
        for verbosity in ((), ("-vvv",)):
            result = run_cib(_logged_in(tmp_path / "home", registry), *verbosity, "ls",
                          f"{registry.host}/app")
            line = _assert_one_error_line(result) if not verbosity else \
                [x for x in result.stderr.splitlines() if x.startswith("cib: error: ")][0]
            assert "refusing to send credentials" in line and other.host.address in line
            assert PASSWORD not in result.stderr and BASIC.split()[1] not in result.stderr
        # naming the other host insecure does not make cleartext there acceptable
        named = run_cib(tmp_path / "home", "--insecure-registry", f"{other.host.address}:8080", "ls",
                     f"{registry.host}/app")
        assert "refusing to send credentials" in _assert_one_error_line(named)
    finally:
        registry.close()


def test_https_realm_on_another_host_gets_the_credentials(other: Other) -> None:
    before = len(recorded(other.https_log))
    registry = _registry(f"{other.https}/token")
    try:
        client = RegistryClient(registry.host, "app", {"Username": USER, "Secret": PASSWORD},
                                pm=_pm(), options=TransportOptions(ca_bundle=str(other.ca)))
        assert client.tags() == ["1"]
    finally:
        registry.close()
    (request,) = recorded(other.https_log)[before:]
    assert request["headers"]["authorization"] == BASIC  # over TLS, verified with the test CA
    assert "scope=repository%3Aapp%3Apull" in request["path"]


def test_realm_over_https_is_verified_even_for_an_insecure_registry(other: Other,
                                                                    nothing_arrives: None) -> None:
    """The registry is named insecure; its realm on another host still gets full TLS checks,
    so an unknown certificate there stops the credentials before they are sent."""
    registry = _registry(f"{other.https}/token")
    try:
        client = RegistryClient(registry.host, "app", {"Username": USER, "Secret": PASSWORD},
                                pm=_pm(), insecure=True)
        with pytest.raises(RegistryError, match=f"TLS with {other.host.address}:8443 failed"):
            client.tags()
    finally:
        registry.close()


def test_verified_https_registry_with_a_plain_http_realm_elsewhere(
        other: Other, nothing_arrives: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The case the probe found: a registry reached over verified HTTPS whose realm is
    plain HTTP on another host."""
    ca, cert, key = write_test_certificates(tmp_path / "tls")
    monkeypatch.setattr(transport_module, "is_loopback_host", lambda host: False)
    registry = _registry(f"{other.http}/token", tls=(cert, key))
    try:
        client = RegistryClient(registry.host, "app", {"Username": USER, "Secret": PASSWORD},
                                pm=_pm(), options=TransportOptions(ca_bundle=str(ca)))
        with pytest.raises(RegistryError) as err:
            client.tags()
        assert client.transport.base_url.startswith("https://")
        _one_line_refusal(err.value, other.host.address)
    finally:
        registry.close()


def _loopback_name() -> str | None:
    """This machine's own name when it resolves to a loopback address (it is not a loopback
    *name*: cib does not resolve names to decide)."""
    name = socket.gethostname()
    try:
        address = socket.gethostbyname(name)
    except OSError:
        return None
    return name if address == "127.0.0.1" and name.lower() != "localhost" else None


def test_plain_http_realm_on_a_non_loopback_name_gets_nothing(tmp_path: Path) -> None:
    name = _loopback_name()
    if name is None:
        pytest.skip("this machine's name does not resolve to 127.0.0.1")
    token_server = HostileRegistry().start()  # reachable under that name: it would log a request
    token_server.route("/token", lambda h: h.reply(200, json.dumps({"token": TOKEN}).encode()))
    port = token_server.host.rsplit(":", 1)[1]
    assert requests.get(f"http://{name}:{port}/probe", timeout=10).status_code == 404
    probes = len(token_server.seen)
    registry = _registry(f"http://{name}:{port}/token")
    try:
        with pytest.raises(RegistryError) as err:
            RegistryClient(registry.host, "app", {"Username": USER, "Secret": PASSWORD},
                           pm=_pm()).tags()
        _one_line_refusal(err.value, name)
        line = _assert_one_error_line(run_cib(_logged_in(tmp_path / "home", registry), "ls",
                                           f"{registry.host}/app"))
        assert name in line
    finally:
        registry.close()
        token_server.close()
    assert token_server.seen[probes:] == []


@pytest.mark.parametrize("realm", ["file:///etc/passwd", "ftp://127.0.0.1:21/token",
                                   "gopher://127.0.0.1:70/token", "data:text/plain,token",
                                   "//127.0.0.1/token"])
def test_other_schemes_are_refused_in_one_line(realm: str, tmp_path: Path) -> None:
    registry = _registry(realm)
    try:
        with pytest.raises(RegistryError) as err:
            RegistryClient(registry.host, "app", {"Username": USER, "Secret": PASSWORD},
                           pm=_pm()).tags()
        assert "refusing to send credentials" in str(err.value) and "\n" not in str(err.value)
        line = _assert_one_error_line(run_cib(_logged_in(tmp_path / "home", registry), "ls",
                                           f"{registry.host}/app"))
        assert "refusing to send credentials" in line
    finally:
        registry.close()


def _redirecting_token_server(location: str) -> HostileRegistry:
    server = HostileRegistry().start()
    server.route("/token", lambda h: h.redirect(location))
    return server


def test_token_request_redirected_to_plain_http_on_another_host_gets_nothing(
        other: Other, nothing_arrives: None) -> None:
    """The realm is fine (loopback, the registry's machine); its answer redirects elsewhere."""
    for target in (f"{other.http}/token", "ftp://127.0.0.1/token"):
        token_server = _redirecting_token_server(target)
        registry = _registry(f"{token_server.url}/token")
        try:
            with pytest.raises(RegistryError) as err:
                RegistryClient(registry.host, "app", {"Username": USER, "Secret": PASSWORD},
                               pm=_pm()).tags()
            assert "redirects its token request to" in str(err.value)
            assert len(token_server.requests_for("/token")) == 1
        finally:
            registry.close()
            token_server.close()


def test_token_request_redirected_over_https_to_another_host_leaves_the_credentials(
        other: Other) -> None:
    """A redirect to HTTPS elsewhere is followed, but the Basic credentials stay with the realm
    (the token there is asked anonymously, as requests does for a redirect across hosts)."""
    before = len(recorded(other.https_log))
    token_server = _redirecting_token_server(f"{other.https}/token?service=hostile")
    registry = _registry(f"{token_server.url}/token")
    try:
        client = RegistryClient(registry.host, "app", {"Username": USER, "Secret": PASSWORD},
                                pm=_pm(), options=TransportOptions(ca_bundle=str(other.ca)))
        assert client.tags() == ["1"]
        (asked,) = token_server.requests_for("/token")
        assert asked.headers.get("authorization") == BASIC  # the realm itself got them
    finally:
        registry.close()
        token_server.close()
    (request,) = recorded(other.https_log)[before:]
    assert "authorization" not in request["headers"]


def test_token_server_redirect_loop_is_one_line(tmp_path: Path) -> None:
    token_server = HostileRegistry().start()
    token_server.route("/token", lambda h: h.redirect(f"{token_server.url}/token"))
    registry = _registry(f"{token_server.url}/token")
    try:
        with pytest.raises(RegistryError, match="redirects more than 5 times"):
            RegistryClient(registry.host, "app", {"Username": USER, "Secret": PASSWORD},
                           pm=_pm()).tags()
        _assert_one_error_line(run_cib(_logged_in(tmp_path / "home", registry), "ls",
                                    f"{registry.host}/app"))
    finally:
        registry.close()
        token_server.close()
