"""Shared pieces of the credential-provider tests: an isolated environment (HOME, DOCKER_CONFIG,
auth files, PATH, keyring), a real docker credential helper script, a dict-backed keyring
backend and a local OAuth2 token endpoint for google-auth."""

from __future__ import annotations

import base64
import functools
import json
import logging
import os
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import keyring
import keyring.backend
import keyring.core
import keyring.credentials
import keyring.errors
from jaraco.classes import properties

HELPER_SCRIPT = r'''#!{python}
"""A docker credential helper keeping its store in $CIBTEST_DIR/<program name>.json.

Appends what it received ({"program", "action", "stdin"}) to $CIBTEST_DIR/calls.jsonl.
$CIBTEST_MODE: "fail" (exit 3 with a message), "garbage" (exit 0, not JSON), "hang".
"""
import json, os, sys, time

directory = os.environ["CIBTEST_DIR"]
program = os.path.basename(sys.argv[0])
action = sys.argv[1] if len(sys.argv) > 1 else ""
data = sys.stdin.read()
with open(os.path.join(directory, "calls.jsonl"), "a") as log:
    log.write(json.dumps({"program": program, "action": action, "stdin": data}) + "\n")
mode = os.environ.get("CIBTEST_MODE", "")
if mode == "hang":
    time.sleep(60)
if mode == "fail":
    print("the cibtest store is locked", file=sys.stderr)
    sys.exit(3)
if mode == "garbage":
    print("this is not the protocol")
    sys.exit(0)
path = os.path.join(directory, program + ".json")
try:
    with open(path) as f:
        store = json.load(f)
except FileNotFoundError:
    store = {}

def save():
    with open(path, "w") as f:
        json.dump(store, f)

def not_found():
    print("credentials not found in native keychain")
    sys.exit(1)

if action == "get":
    if data not in store:
        not_found()
    entry = store[data]
    print(json.dumps({"ServerURL": data, "Username": entry["Username"], "Secret": entry["Secret"]}))
elif action == "store":
    request = json.loads(data)
    store[request["ServerURL"]] = {"Username": request["Username"], "Secret": request["Secret"]}
    save()
elif action == "erase":
    if data not in store:
        not_found()
    del store[data]
    save()
elif action == "list":
    print(json.dumps({url: entry["Username"] for url, entry in store.items()}))
else:
    print("unknown action " + action, file=sys.stderr)
    sys.exit(2)
'''


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class DictKeyring(keyring.backend.KeyringBackend):
    """An in-process keyring backend. Never chosen by keyring's own detection (not viable);
    installed with keyring.set_keyring by the tests."""

    @properties.classproperty
    def priority(cls) -> float:  # noqa: N805
        raise RuntimeError("test backend, installed explicitly only")

    def __init__(self, *, username_lookup: bool = True) -> None:
        super().__init__()
        self.items: dict[tuple[str, str], str] = {}
        self.username_lookup = username_lookup

    def get_password(self, service: str, username: str) -> str | None:
        return self.items.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self.items[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        try:
            del self.items[(service, username)]
        except KeyError:
            raise keyring.errors.PasswordDeleteError(username) from None

    def get_credential(self, service: str, username: str | None):  # type: ignore[no-untyped-def]
        if username is None and self.username_lookup:
            for (svc, user), password in self.items.items():
                if svc == service:
                    return keyring.credentials.SimpleCredential(user, password)
            return None
        return super().get_credential(service, username)


@dataclass
class CredEnv:
    """Paths of an isolated credential environment."""

    root: Path
    home: Path
    docker_config_dir: Path
    runtime_dir: Path
    bin_dir: Path
    helper_dir: Path
    keyring: DictKeyring
    monkeypatch: Any = field(repr=False)

    @property
    def docker_config(self) -> Path:
        return self.docker_config_dir / "config.json"

    @property
    def runtime_auth(self) -> Path:
        return self.runtime_dir / "containers" / "auth.json"

    @property
    def home_auth(self) -> Path:
        return self.home / ".config" / "containers" / "auth.json"

    def write_json(self, path: Path, data: Any) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data))
        return path

    def write_docker_config(self, data: Any) -> Path:
        return self.write_json(self.docker_config, data)

    def install_helper(self, name: str, store: dict[str, dict[str, str]] | None = None) -> Path:
        """Put docker-credential-NAME on PATH with ``store`` ({server_url: {Username, Secret}})."""
        program = self.bin_dir / f"docker-credential-{name}"
        program.write_text(HELPER_SCRIPT.replace("{python}", sys.executable))
        program.chmod(0o755)
        if store is not None:
            (self.helper_dir / f"{program.name}.json").write_text(json.dumps(store))
        return program

    def helper_store(self, name: str) -> dict[str, Any]:
        path = self.helper_dir / f"docker-credential-{name}.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def helper_calls(self) -> list[dict[str, str]]:
        path = self.helper_dir / "calls.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines()]


def make_cred_env(tmp_path: Path, monkeypatch: Any) -> Iterator[CredEnv]:
    root = tmp_path / "credenv"
    env = CredEnv(root=root, home=root / "home", docker_config_dir=root / "docker",
                  runtime_dir=root / "run", bin_dir=root / "bin", helper_dir=root / "helper",
                  keyring=DictKeyring(), monkeypatch=monkeypatch)
    for directory in (env.home, env.docker_config_dir, env.runtime_dir, env.bin_dir,
                      env.helper_dir, root / "gcloud"):
        directory.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(env.home))
    monkeypatch.setenv("DOCKER_CONFIG", str(env.docker_config_dir))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(env.runtime_dir))
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(root / "gcloud"))
    monkeypatch.setenv("CIBTEST_DIR", str(env.helper_dir))
    monkeypatch.setenv("PATH", f"{env.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost,::1")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost,::1")
    for name in ("REGISTRY_AUTH_FILE", "XDG_CONFIG_HOME", "DOCKERHUB_USERNAME", "DOCKERHUB_TOKEN",
                 "GOOGLE_APPLICATION_CREDENTIALS", "CIBTEST_MODE", "GOOGLE_CLOUD_PROJECT"):
        monkeypatch.delenv(name, raising=False)
    previous = keyring.core._keyring_backend
    keyring.set_keyring(env.keyring)
    try:
        yield env
    finally:
        keyring.core._keyring_backend = previous


# -- google-auth against a local token endpoint -------------------------------------------------

@functools.lru_cache(maxsize=1)
def rsa_key_pem() -> tuple[str, str]:
    """(private PKCS#8 PEM, public PEM), generated once per test run."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return private, public


class TokenServer:
    """A real HTTP OAuth2 token endpoint on 127.0.0.1 that records every request."""

    def __init__(self, access_token: str, *, status: int = 200) -> None:
        self.access_token = access_token
        self.status = status
        self.requests: list[dict[str, list[str]]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length", "0"))
                form = urllib.parse.parse_qs(self.rfile.read(length).decode())
                server.requests.append(form)
                if server.status == 200:
                    body = {"access_token": server.access_token, "expires_in": 3600,
                            "token_type": "Bearer"}
                else:
                    body = {"error": "invalid_grant", "error_description": "account disabled"}
                payload = json.dumps(body).encode()
                self.send_response(server.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self) -> None:  # noqa: N802 - e.g. a GCE metadata probe: "not here"
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/token"

    def __enter__(self) -> TokenServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


def write_service_account(path: Path, token_uri: str) -> Path:
    """A service-account ADC file whose token_uri is the local endpoint (google-auth honours
    token_uri for service accounts; for authorized_user files it always uses Google's)."""
    private, _ = rsa_key_pem()
    info = {
        "type": "service_account",
        "project_id": "cib-test",
        "private_key_id": "cib-test-key",
        "private_key": private,
        "client_email": "builder@cib-test.iam.gserviceaccount.com",
        "client_id": "1234567890",
        "token_uri": token_uri,
    }
    path.write_text(json.dumps(info))
    return path


def all_log_text(records: list[logging.LogRecord]) -> str:
    parts = []
    for record in records:
        parts.append(record.getMessage())
        parts.append(repr(record.args))
        if record.exc_info:
            parts.append(logging.Formatter().formatException(record.exc_info))
        if record.exc_text:
            parts.append(record.exc_text)
    return "\n".join(parts)
