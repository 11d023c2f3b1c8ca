"""Real registries (Debian's docker-registry) on loopback ports, and a client that uses no cib code."""


from __future__ import annotations

import contextlib
import http.client
import http.server
import json
import logging
import secrets
import signal
import subprocess
import time
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from cib_core.errors import ConfigurationError

if TYPE_CHECKING:
    import requests

from cib_core.testing.common import (
    _HTTP_TIMEOUT,
    Mode,
    _sha256,
    free_port,
    require_tool,
)
from cib_core.testing.tokens import (
    TokenServer,
)

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class RegistryServer:
    """A running ``docker-registry``; ``host`` is ``127.0.0.1:PORT`` (plain HTTP, loopback)."""

    host: str
    mode: Mode
    storage: Path
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    token_server: TokenServer | None = field(default=None, repr=False)
    pid: int | None = None
    log_path: Path | None = None
    tls: bool = False  # served over HTTPS with a certificate from ``run_registry(tls=...)``
    read_only: bool = False  # started with ``run_registry(read_only=True)``: answers 405 to writes

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}"

    @property
    def auth(self) -> dict[str, str] | None:
        """The ``auth`` options cib takes for this host, or ``None`` for an open registry."""
        if self.username is None or self.password is None:
            return None
        return {"Username": self.username, "Secret": self.password}

    def creds_arg(self) -> str | None:
        """``user:pass`` for ``skopeo --creds``; ``None`` for an open registry."""
        if self.username is None or self.password is None:
            return None
        return f"{self.username}:{self.password}"

    def ref(self, repository: str, tag: str = "latest") -> str:
        """``127.0.0.1:PORT/repository:tag`` (or ``@digest`` when ``tag`` is a digest)."""
        sep = "@" if tag.startswith("sha256:") else ":"
        return f"{self.host}/{repository}{sep}{tag}"


def _registry_config(port: int, storage: Path, auth: Mapping[str, Any] | None,
                     tls: tuple[Path, Path] | None = None, *,
                     read_only: bool = False, deletes: bool = True) -> dict[str, Any]:
    config: dict[str, Any] = {
        "version": 0.1,
        "log": {"level": "info", "formatter": "text", "accesslog": {"disabled": False}},
        "storage": {
            "filesystem": {"rootdirectory": str(storage)},
            "delete": {"enabled": deletes},
            # readonly: distribution's maintenance mode, in which every write is refused
            "maintenance": {"uploadpurging": {"enabled": False},
                            "readonly": {"enabled": read_only}},
        },
        "http": {"addr": f"127.0.0.1:{port}", "secret": secrets.token_hex(16)},
        # Non-distributable (foreign) layers name URLs; distribution refuses every URL unless
        # allowed here. Loopback only, so foreign-layer tests stay on this machine.
        "validation": {"manifests": {"urls": {"allow": [r"^https?://127\.0\.0\.1(:[0-9]+)?/"]}}},
    }
    if auth:
        config["auth"] = dict(auth)
    if tls is not None:
        config["http"]["tls"] = {"certificate": str(tls[0]), "key": str(tls[1])}
    return config


def _probe_v2(host: str, timeout: float = 2.0, tls: bool = False) -> int | None:
    conn: http.client.HTTPConnection
    if tls:
        import ssl

        # only "is it up": the certificate is what the test under way is about
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        conn = http.client.HTTPSConnection(host, timeout=timeout, context=context)
    else:
        conn = http.client.HTTPConnection(host, timeout=timeout)
    try:
        conn.request("GET", "/v2/")
        response = conn.getresponse()
        response.read()
        return response.status
    except OSError:
        return None
    finally:
        conn.close()


def _log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM if the test process dies without cleaning up."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()  # SIGTERM to this PID only
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@contextlib.contextmanager
def run_registry(workdir: Path, *, mode: Mode = "open", username: str | None = None,
                 password: str | None = None, token_server: TokenServer | None = None,
                 startup_timeout: float = 30.0,
                 tls: tuple[Path, Path] | None = None,
                 read_only: bool = False, deletes: bool = True) -> Iterator[RegistryServer]:
    """Start ``docker-registry serve`` on a free loopback port and stop it (by PID) on exit.

    ``mode`` is ``"open"``, ``"basic"`` (htpasswd with a bcrypt hash) or ``"token"`` (a
    :class:`TokenServer` is started unless one is given). Credentials are generated unless given.
    ``tls`` is a (certificate, key) pair of PEM files: the registry then serves HTTPS only.
    ``read_only`` starts it in distribution's maintenance mode (``maintenance.readonly``): reads
    work, every write is answered 405. The storage is ``workdir/storage``, so a registry started
    again on the same ``workdir`` serves what an earlier one stored: push into a writable one,
    stop it, and start a read-only one there. ``deletes=False`` turns deletes off
    (``storage.delete.enabled``), as in distribution's default configuration.
    """
    binary = require_tool("docker-registry")
    if mode not in ("open", "basic", "token"):
        raise ConfigurationError(f"registry mode {mode!r}: use 'open', 'basic' or 'token'")
    workdir.mkdir(parents=True, exist_ok=True)
    storage = workdir / "storage"
    storage.mkdir(exist_ok=True)
    if mode != "open":
        username = username or f"user-{secrets.token_hex(4)}"
        password = password or secrets.token_urlsafe(18)
    else:
        username = password = None

    with contextlib.ExitStack() as stack:
        auth: dict[str, Any] | None = None
        if mode == "basic":
            import bcrypt

            assert username is not None and password is not None
            hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
            htpasswd = workdir / "htpasswd"
            htpasswd.write_text(f"{username}:{hashed}\n")
            htpasswd.chmod(0o600)
            auth = {"htpasswd": {"realm": "cib-test-registry", "path": str(htpasswd)}}
        elif mode == "token":
            if token_server is None:
                assert username is not None and password is not None
                token_server = stack.enter_context(TokenServer(users={username: password}))
            else:
                token_server.start()
            bundle = token_server.write_bundle(workdir / "token-signer.pem")
            auth = {"token": {"realm": token_server.realm, "service": token_server.service,
                              "issuer": token_server.issuer, "rootcertbundle": str(bundle)}}

        log_path = workdir / "registry.log"
        ready_status = 200 if mode == "open" else 401
        for attempt in range(5):
            port = free_port()
            config_path = workdir / "config.yml"
            # JSON is YAML: no YAML library needed.
            config_path.write_text(json.dumps(
                _registry_config(port, storage, auth, tls, read_only=read_only, deletes=deletes),
                indent=2))
            with log_path.open("ab") as log_file:
                proc = subprocess.Popen([binary, "serve", str(config_path)], stdin=subprocess.DEVNULL,
                                        stdout=log_file, stderr=subprocess.STDOUT,
                                        preexec_fn=_die_with_parent)
            host = f"127.0.0.1:{port}"
            deadline = time.monotonic() + startup_timeout
            status = None
            while time.monotonic() < deadline and proc.poll() is None:
                status = _probe_v2(host, tls=tls is not None)
                if status is not None:
                    break
                time.sleep(0.05)
            if status == ready_status:
                break
            _stop_process(proc)
            tail = _log_tail(log_path)
            if "address already in use" in tail and attempt < 4:
                continue
            pytest.fail(f"docker-registry ({mode}) did not answer GET /v2/ with {ready_status} "
                        f"on {host} within {startup_timeout:.0f}s (got {status}); log {log_path}:\n{tail}",
                        pytrace=False)
        stack.callback(_stop_process, proc)
        log.debug("docker-registry (%s) on %s, pid %d", mode, host, proc.pid)
        yield RegistryServer(host=host, mode=mode, storage=storage, username=username,
                             password=password, token_server=token_server, pid=proc.pid,
                             log_path=log_path, tls=tls is not None, read_only=read_only)



def fetch_token(server: RegistryServer, scopes: Sequence[str], *, anonymous: bool = False) -> str:
    """A bearer token from ``server``'s token server (GET with Basic credentials)."""
    import requests

    if server.token_server is None:
        raise ConfigurationError(f"registry {server.host} is not in token mode")
    auth = None if anonymous or server.username is None or server.password is None else (
        server.username, server.password)
    response = requests.get(server.token_server.realm,
                            params=[("service", server.token_server.service)]
                            + [("scope", s) for s in scopes],
                            auth=auth, timeout=_HTTP_TIMEOUT)
    if response.status_code != 200:
        raise ConfigurationError(f"token server for {server.host} answered {response.status_code}")
    return str(response.json()["token"])


class _OracleClient:
    """Just enough of the distribution API to push test images, with plain ``requests``."""

    def __init__(self, server: RegistryServer, repository: str) -> None:
        import requests

        self.server = server
        self.repository = repository
        self.session = requests.Session()
        if server.mode == "basic":
            assert server.username is not None and server.password is not None
            self.session.auth = (server.username, server.password)
        elif server.mode == "token":
            token = fetch_token(server, [f"repository:{repository}:pull,push"])
            self.session.headers["Authorization"] = f"Bearer {token}"

    def close(self) -> None:
        self.session.close()

    def _request(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        if url.startswith("/"):
            url = self.server.url + url
        return self.session.request(method, url, timeout=_HTTP_TIMEOUT, **kwargs)

    def _expect(self, response: requests.Response, *statuses: int) -> requests.Response:
        if response.status_code not in statuses:
            raise ConfigurationError(
                f"{response.request.method} {urllib.parse.urlsplit(response.url).path} on "
                f"{self.server.host}: {response.status_code} {response.text[:300]}")
        return response

    def put_blob(self, data: bytes) -> str:
        digest = _sha256(data)
        name = self.repository
        if self._request("HEAD", f"/v2/{name}/blobs/{digest}").status_code == 200:
            return digest
        started = self._expect(self._request("POST", f"/v2/{name}/blobs/uploads/"), 202)
        location = urllib.parse.urljoin(self.server.url + "/", started.headers["Location"])
        sep = "&" if "?" in location else "?"
        self._expect(self._request("PUT", f"{location}{sep}digest={digest}", data=data,
                                   headers={"Content-Type": "application/octet-stream"}), 201)
        return digest

    def put_manifest(self, reference: str, raw: bytes, media_type: str) -> str:
        response = self._expect(self._request(
            "PUT", f"/v2/{self.repository}/manifests/{reference}", data=raw,
            headers={"Content-Type": media_type}), 201)
        digest = _sha256(raw)
        echoed = response.headers.get("Docker-Content-Digest")
        if echoed and echoed != digest:
            raise ConfigurationError(f"registry {self.server.host} stored {echoed}, sent {digest}")
        return digest


