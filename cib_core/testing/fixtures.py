"""The pytest fixtures and the end-of-session summary of the test bed."""


from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import pytest

if TYPE_CHECKING:
    pass

from cib_core.testing.common import (
    Mode,
)
from cib_core.testing.images import (
    PushedImage,
    push_base_image,
)
from cib_core.testing.proxies import (
    FaultProxy,
)
from cib_core.testing.registries import (
    RegistryServer,
    run_registry,
)

log = logging.getLogger(__name__)

_STARTED = pytest.StashKey[list["RegistryServer"]]()


def _started(config: pytest.Config) -> list[RegistryServer]:
    return config.stash.setdefault(_STARTED, [])


@contextlib.contextmanager
def _session_registry(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                      name: str, mode: Mode) -> Iterator[RegistryServer]:
    with run_registry(tmp_path_factory.mktemp(name), mode=mode) as server:
        _started(request.config).append(server)
        yield server


@pytest.fixture(scope="session")
def cib_registry(request: pytest.FixtureRequest,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """An open ``docker-registry`` for the whole session."""
    with _session_registry(request, tmp_path_factory, "registry-open", "open") as server:
        yield server


@pytest.fixture(scope="session")
def cib_second_registry(request: pytest.FixtureRequest,
                    tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """Another open registry, for copies between registries."""
    with _session_registry(request, tmp_path_factory, "registry-second", "open") as server:
        yield server


@pytest.fixture(scope="session")
def cib_basic_registry(request: pytest.FixtureRequest,
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """A registry with htpasswd (bcrypt) auth; ``.username``/``.password`` are per session."""
    with _session_registry(request, tmp_path_factory, "registry-basic", "basic") as server:
        yield server


@pytest.fixture(scope="session")
def cib_token_registry(request: pytest.FixtureRequest,
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """A registry with bearer-token auth; ``.token_server`` logs every token request."""
    with _session_registry(request, tmp_path_factory, "registry-token", "token") as server:
        yield server


def _http_requests_served(log_path: Path | None) -> tuple[int, int]:
    """(all requests, requests from cib itself) in a registry's access log."""
    if log_path is None or not log_path.exists():
        return 0, 0
    total = ours = 0
    with log_path.open("rb") as handle:
        for line in handle:
            if b' HTTP/1.1" ' in line:
                total += 1
                if b'"cib/' in line:
                    ours += 1
    return total, ours


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """Say which real registries the session ran against and how much HTTP they served."""
    servers = config.stash.get(_STARTED, [])
    if not servers:
        return
    terminalreporter.section("cib test bed: real registries on loopback")
    for server in servers:
        total, ours = _http_requests_served(server.log_path)
        line = (f"docker-registry {server.mode:<5} auth on http://{server.host}: served {total} HTTP "
                f"requests, {ours} of them from cib")
        if server.token_server is not None:
            line += f"; its token server issued {server.token_server.tokens_issued} signed JWTs"
        terminalreporter.write_line(line)


_MODE_FIXTURES = {"open": "cib_registry", "basic": "cib_basic_registry", "token": "cib_token_registry"}


@pytest.fixture(params=["open", "basic", "token"])
def cib_any_registry(request: pytest.FixtureRequest) -> RegistryServer:
    """Each of ``registry``, ``basic_registry`` and ``token_registry`` in turn."""
    return cast(RegistryServer, request.getfixturevalue(_MODE_FIXTURES[request.param]))


@pytest.fixture(scope="session")
def cib_base_image(cib_registry: RegistryServer) -> PushedImage:
    """Docker schema 2 base with busybox, at ``registry``'s ``base/docker:1``."""
    return push_base_image(cib_registry, "base/docker", "1", flavour="docker")


@pytest.fixture(scope="session")
def cib_oci_base_image(cib_registry: RegistryServer) -> PushedImage:
    """The same content with OCI media types, at ``base/oci:1``."""
    return push_base_image(cib_registry, "base/oci", "1", flavour="oci")


@pytest.fixture(scope="session")
def cib_multiarch_base_image(cib_registry: RegistryServer) -> PushedImage:
    """An OCI index (linux/amd64, linux/arm64/v8) at ``base/multiarch:1``."""
    return push_base_image(cib_registry, "base/multiarch", "1", flavour="multiarch")


@pytest.fixture
def cib_fault_proxy() -> Iterator[Callable[..., FaultProxy]]:
    """A factory: ``fault_proxy(upstream, **FaultProxy options)`` -> a started proxy, closed after
    the test. ``fault_proxy(registry, paginate=2)`` gives a paginating proxy."""
    proxies: list[FaultProxy] = []

    def make(upstream: RegistryServer | str, **options: Any) -> FaultProxy:
        proxy = FaultProxy(upstream, **options).start()
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        proxy.close()
