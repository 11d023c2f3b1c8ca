"""Shared pieces of the command tests (tag, index, copy's platform subsets, completion): running
``cib`` in-process with stdout and stderr apart, logging in to a registry of the test bed the
way a user would (a docker config entry), images of a chosen platform, and looks at a
registry's storage and access log that use no cib code."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

from click.testing import CliRunner, Result

from cib_core.cli.app import cli
from cib_core.testing import PushedImage, RegistryServer, make_layer, push_image


def isolate_home(tmp_path: Path, monkeypatch: object) -> Path:
    """HOME, DOCKER_CONFIG, XDG directories and the keyring inside ``tmp_path``."""
    home = tmp_path / "home"
    (home / ".docker").mkdir(parents=True)
    for name, value in {
        "HOME": str(home), "DOCKER_CONFIG": str(home / ".docker"),
        "XDG_RUNTIME_DIR": str(tmp_path / "run"), "XDG_CONFIG_HOME": str(home / ".config"),
        "NO_PROXY": "127.0.0.1,localhost,::1",
        "PYTHON_KEYRING_BACKEND": "keyring.backends.null.Keyring",
    }.items():
        monkeypatch.setenv(name, value)  # type: ignore[attr-defined]
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)  # type: ignore[attr-defined]
    return home


def login(server: RegistryServer) -> None:
    """Store ``server``'s credentials in $DOCKER_CONFIG/config.json (nothing for an open one)."""
    if server.username is None or server.password is None:
        return
    path = Path(os.environ["DOCKER_CONFIG"]) / "config.json"
    config = json.loads(path.read_text()) if path.exists() else {}
    token = base64.b64encode(f"{server.username}:{server.password}".encode()).decode()
    config.setdefault("auths", {})[server.host] = {"auth": token}
    path.write_text(json.dumps(config))


def run(*args: str, input: str | None = None) -> Result:
    """``cib ARGS`` in-process; stdout and stderr are separate."""
    return CliRunner().invoke(cli, list(args), input=input, catch_exceptions=False)


def one_error_line(result: Result) -> str:
    """The single ``cib: error:`` line of a failed run (exit status 1)."""
    assert result.exit_code == 1, (result.exit_code, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{result.stderr}"
    assert lines[0].startswith("cib: error: "), lines[0]
    assert result.stdout == ""
    return lines[0]


def push_platform_image(server: RegistryServer, repo: str, tag: str | None, platform: str, *,
                        oci: bool = False) -> PushedImage:
    """A small image whose config says ``platform`` (``linux/arm64/v8``) and whose one layer
    holds ``/etc/platform`` with that name, so each platform's image differs."""
    os_name, architecture, *rest = platform.split("/")
    layer = make_layer({"etc/platform": f"{platform}\n"})
    config: dict[str, object] = {"architecture": architecture, "os": os_name,
                                 "config": {"Cmd": ["sh"]}}
    if rest:
        config["variant"] = rest[0]
    return push_image(server, repo, tag, [layer], config, oci=oci)


def repository_dir(server: RegistryServer, repo: str) -> Path:
    """Where the registry keeps ``repo`` on disk; absent until something is written to it."""
    return server.storage / "docker" / "registry" / "v2" / "repositories" / repo


def access_log_size(server: RegistryServer) -> int:
    assert server.log_path is not None
    return server.log_path.stat().st_size


def cib_requests_since(server: RegistryServer, offset: int) -> list[str]:
    """The request lines ``cib`` sent ``server`` after ``offset`` of its access log."""
    assert server.log_path is not None
    with server.log_path.open("rb") as handle:
        handle.seek(offset)
        tail = handle.read().decode(errors="replace")
    return [line.split('"')[1] for line in tail.splitlines()
            if ' HTTP/1.1" ' in line and '"cib/' in line]
