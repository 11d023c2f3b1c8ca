"""No credential anywhere it should not be: the ``cib`` script against the token registry at
every verbosity, with good and wrong passwords, scanned for the password, every token the
token server issued and any ``Authorization`` value; tokens asked with the least scope; the
credential file written 0600. (The in-process variant over both auth modes, the redirect
test and the export escape tests are in test_registry_client.py, test_cli.py and
tests/unit/test_flatten.py.)"""

from __future__ import annotations

import base64
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cib_core.testing import RegistryServer, push_base_image

pytestmark = pytest.mark.integration


def _cib(home: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, HOME=str(home), DOCKER_CONFIG=str(home / ".docker"),
               XDG_CONFIG_HOME=str(home / ".config"), XDG_RUNTIME_DIR=str(home / "run"),
               PYTHON_KEYRING_BACKEND="keyring.backends.null.Keyring", NO_PROXY="127.0.0.1",
               CIB_DISABLE_PLUGIN_AUTOLOAD="1")
    env.pop("REGISTRY_AUTH_FILE", None)
    script = str(Path(sys.executable).parent / "cib")
    return subprocess.run([script, *args], input=stdin, capture_output=True, text=True, env=env,
                          timeout=120, check=False)


def test_cli_at_every_verbosity_never_shows_a_secret(cib_token_registry: RegistryServer, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    ts = cib_token_registry.token_server
    assert ts is not None and cib_token_registry.password and cib_token_registry.username
    issued: list[str] = []
    original = ts.issue

    def recording_issue(*args: Any, **kwargs: Any) -> str:
        token = original(*args, **kwargs)
        issued.append(token)
        return token

    monkeypatch.setattr(ts, "issue", recording_issue)  # the server runs in this process
    host = cib_token_registry.host
    base = push_base_image(cib_token_registry, "secrets/base", "1", flavour="oci")
    home = tmp_path / "home"
    (home / ".docker").mkdir(parents=True)
    outputs: list[str] = []

    def run(*args: str, stdin: str | None = None, ok: bool = True) -> None:
        result = _cib(home, *args, stdin=stdin)
        outputs.extend([result.stdout, result.stderr])
        assert (result.returncode == 0) == ok, (args, result.stderr)
        assert "Traceback" not in result.stderr

    run("auth", "login", host, "-u", cib_token_registry.username, "--password-stdin",
        stdin="wrong-" + cib_token_registry.password, ok=False)
    assert not (home / ".docker" / "config.json").exists()
    run("-vv", "auth", "login", host, "-u", cib_token_registry.username, "--password-stdin",
        stdin=cib_token_registry.password)
    config_file = home / ".docker" / "config.json"
    assert stat.S_IMODE(config_file.stat().st_mode) == 0o600

    app = tmp_path / "app"
    app.mkdir()
    (app / "hello.txt").write_text("hello\n")
    ts.clear_requests()
    run("-vv", "build", "--from", base.ref, "--to", f"{host}/secrets/app:1", "--add", f"{app}:/app")
    build_scopes = {scope for r in ts.requests for scope in r.scopes}
    # least privilege: the base is only read, the target written, nothing else asked
    assert build_scopes <= {"repository:secrets/base:pull", "repository:secrets/app:pull,push"}, \
        build_scopes
    assert "repository:secrets/app:pull,push" in build_scopes
    ts.clear_requests()
    run("-v", "ls", f"{host}/secrets/app")
    run("-vv", "inspect", f"{host}/secrets/app:1")
    run("-vv", "manifest", f"{host}/secrets/app:1")
    read_scopes = {scope for r in ts.requests for scope in r.scopes}
    assert read_scopes == {"repository:secrets/app:pull"}, read_scopes  # reads ask pull only
    run("-vv", "ls", f"{host}/secrets/nothing-here", ok=False)
    run("-vv", "copy", f"{host}/secrets/app:1", f"{host}/secrets/copy:1")

    # a wrong password stored: refused, and still not shown
    config_file.write_text(config_file.read_text().replace(
        base64.b64encode(f"{cib_token_registry.username}:{cib_token_registry.password}".encode()).decode(),
        base64.b64encode(f"{cib_token_registry.username}:not-{cib_token_registry.password}".encode()).decode()))
    run("-vv", "ls", f"{host}/secrets/app", ok=False)

    assert issued, "the token flow ran"
    assert any("authorization" in text.lower() for text in outputs)  # logged, redacted
    secrets = [cib_token_registry.password, f"not-{cib_token_registry.password}", *issued,
               base64.b64encode(f"{cib_token_registry.username}:{cib_token_registry.password}".encode()).decode()]
    for text in outputs:
        for secret in secrets:
            assert secret not in text
        for line in text.splitlines():
            if "authorization" in line.lower():
                assert "Bearer ey" not in line, line  # a JWT after "Bearer": a leaked token
    print(f"SECRETS scanned {len(outputs)} CLI outputs for {len(secrets)} secrets "
          f"({len(issued)} issued tokens): none found")
