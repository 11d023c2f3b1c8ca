"""The worked example plugin (examples/cib-plugin-example), installed the way a user installs
it and used through the real ``cib`` script: listed, blocked, its layer source in a build, its
credentials against a registry that requires them."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from cib_core import Credentials, PluginError
from cib_core.testing import fetch_token, skopeo_inspect, umoci_unpack

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "cib-plugin-example"
HOOKS = ["cib_commands", "cib_credentials", "cib_layer_source"]


@pytest.fixture(scope="module")
def site_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``pip install`` of the example into a private directory (a copy, so the source tree gets
    no build/ or egg-info)."""
    root = tmp_path_factory.mktemp("example-plugin")
    source = root / "src"
    shutil.copytree(EXAMPLE, source,
                    ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    target = root / "site"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "--quiet", "--target", str(target), str(source)],
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (target / "cib_plugin_example" / "__init__.py").exists()
    return target


@pytest.fixture
def plugin_env(site_dir: Path, tmp_path: Path) -> dict[str, str]:
    """The environment of a user who pip-installed the example: autoload on, a clean home."""
    env = dict(os.environ)
    env.pop("CIB_DISABLE_PLUGIN_AUTOLOAD", None)
    for name in ("CIB_EXAMPLE_REGISTRIES", "CIB_EXAMPLE_TOKEN_FILE", "REGISTRY_AUTH_FILE"):
        env.pop(name, None)
    home = tmp_path / "home"
    (home / ".docker").mkdir(parents=True)
    env.update({
        "PYTHONPATH": os.pathsep.join(p for p in (str(site_dir), env.get("PYTHONPATH")) if p),
        "HOME": str(home), "DOCKER_CONFIG": str(home / ".docker"),
        "XDG_CONFIG_HOME": str(home / ".config"), "XDG_RUNTIME_DIR": str(tmp_path / "run"),
        "PYTHON_KEYRING_BACKEND": "keyring.backends.null.Keyring",
        "NO_PROXY": "127.0.0.1,localhost,::1",
    })
    return env


def cib(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).parent / "cib"
    return subprocess.run([str(script), *args], capture_output=True, text=True, env=env, timeout=120)


@pytest.fixture
def example_module(site_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    monkeypatch.syspath_prepend(str(site_dir))
    import cib_plugin_example

    yield cib_plugin_example
    sys.modules.pop("cib_plugin_example", None)


# --------------------------------------------------------------------------------------------

def test_cib_plugins_lists_the_installed_example(plugin_env):
    listed = cib(plugin_env, "plugins", "--json")
    assert listed.returncode == 0, listed.stderr
    entries = {p["name"]: p for p in json.loads(listed.stdout)}
    assert entries["example"]["version"] == "0.1.0"
    assert entries["example"]["hooks"] == HOOKS
    assert entries["example"]["builtin"] is False
    assert entries["local-dir"]["builtin"] is True  # builtins are listed beside it

    text = cib(plugin_env, "plugins")
    assert any(line.split()[:2] == ["example", "0.1.0"] for line in text.stdout.splitlines())

    blocked = cib(plugin_env, "-p", "no:example", "plugins", "--json")
    assert "example" not in {p["name"] for p in json.loads(blocked.stdout)}
    builtins_only = cib({**plugin_env, "CIB_DISABLE_PLUGIN_AUTOLOAD": "1"}, "plugins", "--json")
    assert "example" not in {p["name"] for p in json.loads(builtins_only.stdout)}


def test_layer_source_in_a_build(plugin_env, tmp_path):
    layout = tmp_path / "layout"
    built = cib(plugin_env, "build", "--from", "scratch", "--to", f"oci:{layout}:v1",
                "--add", "example:hi:/greeting")
    assert built.returncode == 0, built.stderr
    assert built.stdout.startswith(f"oci:{layout}@sha256:")
    rootfs = umoci_unpack(layout, "v1", tmp_path / "bundle")
    assert (rootfs / "greeting" / "hello.txt").read_text() == "hi"

    exported = tmp_path / "fs.tar"
    assert cib(plugin_env, "export", f"oci:{layout}:v1", str(exported)).returncode == 0
    with tarfile.open(exported) as tar:
        member = tar.getmember("greeting/hello.txt")
        assert (member.uid, member.gid, member.mode) == (0, 0, 0o644)

    without = cib(plugin_env, "-p", "no:example", "build", "--from", "scratch",
                  "--to", f"oci:{tmp_path}/other:v1", "--add", "example:hi:/greeting")
    assert without.returncode == 1
    assert without.stderr.startswith("cib: error: ") and "example:hi" in without.stderr


def test_hooks_answer_only_for_their_own_input(example_module, tmp_path, monkeypatch):
    m = example_module
    entries = list(m.cib_layer_source(source="example:two words", target="/x"))
    assert [(info.name, data.read()) for info, data in entries] == [("hello.txt", b"two words")]
    for foreign in ("tar:x.tar", str(tmp_path), tmp_path, b"example:x", object()):
        assert m.cib_layer_source(source=foreign, target="/x") is None

    monkeypatch.delenv("CIB_EXAMPLE_REGISTRIES", raising=False)
    assert m.cib_credentials(registry="127.0.0.1:5000", repository=None) is None
    monkeypatch.setenv("CIB_EXAMPLE_REGISTRIES", "registry.example.com, 127.0.0.1:5000")
    assert m.cib_credentials(registry="quay.io", repository="x") is None
    with pytest.raises(PluginError, match="CIB_EXAMPLE_TOKEN_FILE is not set"):
        m.cib_credentials(registry="127.0.0.1:5000", repository=None)
    secret_file = tmp_path / "creds"
    monkeypatch.setenv("CIB_EXAMPLE_TOKEN_FILE", str(secret_file))
    with pytest.raises(PluginError, match="cannot read") as missing:
        m.cib_credentials(registry="127.0.0.1:5000", repository=None)
    assert str(secret_file) in str(missing.value)
    secret_file.write_text("bot:pa:ss\n")
    assert m.cib_credentials(registry="127.0.0.1:5000", repository=None) == Credentials("bot", "pa:ss")
    secret_file.write_text("eyJ.just-a-token\n")
    creds = m.cib_credentials(registry="REGISTRY.example.com", repository="a/b")
    assert creds == Credentials(token="eyJ.just-a-token")
    assert "just-a-token" not in repr(creds)


def test_credentials_used_against_basic_registry(plugin_env, cib_basic_registry, tmp_path):
    creds_file = tmp_path / "example-creds"
    creds_file.write_text(f"{cib_basic_registry.username}:{cib_basic_registry.password}\n")
    creds_file.chmod(0o600)
    env = {**plugin_env, "CIB_EXAMPLE_TOKEN_FILE": str(creds_file),
           "CIB_EXAMPLE_REGISTRIES": f"other.example.com,{cib_basic_registry.host}"}
    target = f"{cib_basic_registry.host}/example/app:v1"

    built = cib(env, "build", "--from", "scratch", "--to", target, "--add", "example:secured:/srv")
    assert built.returncode == 0, built.stderr
    digest = built.stdout.strip().partition("@")[2]
    raw = skopeo_inspect(target, raw=True, creds=cib_basic_registry.creds_arg())
    assert digest == "sha256:" + hashlib.sha256(raw).hexdigest()

    listed = cib(env, "ls", f"{cib_basic_registry.host}/example/app")
    assert listed.returncode == 0 and listed.stdout == "v1\n"
    info = cib(env, "example-info")
    assert info.returncode == 0 and cib_basic_registry.host in info.stdout
    assert cib_basic_registry.password not in info.stdout + info.stderr

    # the same command without the plugin, or for a host it does not serve: refused
    blocked = cib(env, "-p", "no:example", "ls", f"{cib_basic_registry.host}/example/app")
    not_listed = cib({**env, "CIB_EXAMPLE_REGISTRIES": "other.example.com"}, "ls",
                     f"{cib_basic_registry.host}/example/app")
    for refused in (blocked, not_listed):
        assert refused.returncode == 1
        assert refused.stderr.startswith("cib: error: ") and refused.stderr.count("\n") == 1
        assert "cib auth login" in refused.stderr

    creds_file.write_text(f"{cib_basic_registry.username}:wrong-secret-123\n")
    wrong = cib(env, "-vv", "ls", f"{cib_basic_registry.host}/example/app")
    assert wrong.returncode == 1
    assert "wrong-secret-123" not in wrong.stderr
    assert wrong.stderr.splitlines()[-1].startswith("cib: error: ")


def test_bare_token_goes_to_a_token_registry(plugin_env, cib_token_registry, tmp_path):
    """A line that is not USER:SECRET is sent as a ready-made bearer token."""
    repository = "example/tokened"
    token = fetch_token(cib_token_registry, [f"repository:{repository}:pull,push"])
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    env = {**plugin_env, "CIB_EXAMPLE_TOKEN_FILE": str(token_file),
           "CIB_EXAMPLE_REGISTRIES": cib_token_registry.host}
    cib_token_registry.token_server.clear_requests()
    built = cib(env, "build", "--from", "scratch", "--to", f"{cib_token_registry.host}/{repository}:v1",
                "--add", "example:with a token:/")
    assert built.returncode == 0, built.stderr
    assert cib_token_registry.token_server.requests == []  # used as is, never exchanged
    listed = cib(env, "ls", f"{cib_token_registry.host}/{repository}")
    assert listed.returncode == 0 and listed.stdout == "v1\n"
