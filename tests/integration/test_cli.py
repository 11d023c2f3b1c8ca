"""The ``cib`` command line end to end: real registries, skopeo and umoci as the judges.

Most tests run the click group in-process (``CliRunner``, stdout and stderr kept apart); the
ones about exit codes, stream separation and tracebacks run the installed ``cib`` script.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import keyring
import keyring.backend
import keyring.core
import keyring.errors
import pytest
from click.testing import CliRunner, Result

from cib_core.authn import credstore
from cib_core.cli.app import cli, prescan_plugin_options
from cib_core.cli.build import parse_add, parse_command
from cib_core.cli.common import host_platform_name
from cib_core.testing import skopeo_inspect, umoci_unpack

pytestmark = pytest.mark.integration


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No test reads or writes the real user's docker config, auth files or keyring."""
    home = tmp_path / "home"
    (home / ".docker").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("DOCKER_CONFIG", str(home / ".docker"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost,::1")
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyring.backends.null.Keyring")
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    return home


def run(*args: str, input: str | bytes | None = None) -> Result:
    """``cib ARGS`` in-process; stdout and stderr are separate."""
    return CliRunner().invoke(cli, list(args), input=input, catch_exceptions=False)


def cib_script() -> str:
    found = Path(sys.executable).parent / "cib"
    if found.exists():
        return str(found)
    which = shutil.which("cib")
    assert which, "the cib console script is not installed (pip install -e .)"
    return which


def sub(*args: str, input: bytes | None = None, env: dict[str, str] | None = None,
        cwd: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    """The installed ``cib`` script in a real subprocess."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([cib_script(), *args], input=input, capture_output=True, env=full_env,
                          cwd=cwd, timeout=120)


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{stderr}"
    assert lines[0].startswith("cib: error: "), lines[0]
    assert "Traceback" not in stderr
    return lines[0]


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    root = tmp_path / "app"
    (root / "src").mkdir(parents=True)
    (root / "src" / "main.py").write_text("print('hello')\n")
    (root / "run.sh").write_text("#!/bin/sh\necho run\n")
    (root / "run.sh").chmod(0o755)
    (root / "debug.log").write_text("noise\n")
    (root / ".dockerignore").write_text("*.log\n")
    return root


def layer_names(blob: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:*") as tar:
        return [m.name for m in tar.getmembers()]


# --------------------------------------------------------------------------------------------
# build
# --------------------------------------------------------------------------------------------

def test_build_pushes_and_prints_only_the_reference(cib_registry, cib_base_image, app_dir):
    target = f"{cib_registry.host}/cli/build:v1"
    result = run("build", "--from", cib_base_image.ref, "--to", target,
                 "--add", f"{app_dir}:/app", "--ignore-file", ".dockerignore", "--ignore", "run.sh",
                 "--cmd", '["python3", "/app/src/main.py"]', "--entrypoint", "/bin/sh -c",
                 "--workdir", "/app", "--env", "LANG=en_US.UTF-8", "--env", "MODE=prod",
                 "--label", "org.example.team=builders", "--user", "1000:1000",
                 "--tag", "v1", "--tag", "stable")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    name, _, digest = lines[0].partition("@")
    assert name == f"{cib_registry.host}/cli/build"
    raw = skopeo_inspect(f"{cib_registry.host}/cli/build:stable", raw=True)
    assert sha256(raw) == digest
    assert skopeo_inspect(f"{cib_registry.host}/cli/build:v1", raw=True) == raw

    config = skopeo_inspect(f"{cib_registry.host}/cli/build:v1", config=True)["config"]
    assert config["Cmd"] == ["python3", "/app/src/main.py"]
    assert config["Entrypoint"] == ["/bin/sh", "-c"]
    assert config["WorkingDir"] == "/app"
    assert config["User"] == "1000:1000"
    # LANG replaced in place, MODE appended after the base's entries
    assert config["Env"] == [cib_base_image.config["config"]["Env"][0], "LANG=en_US.UTF-8", "MODE=prod"]
    assert config["Labels"] == {"org.example.team": "builders"}

    manifest = json.loads(raw)
    assert len(manifest["layers"]) == len(cib_base_image.layers) + 1
    new_layer = run("blob", f"{cib_registry.host}/cli/build@{manifest['layers'][-1]['digest']}")
    names = layer_names(new_layer.stdout_bytes)
    assert "app/src/main.py" in names
    assert "app/debug.log" not in names and "app/run.sh" not in names


def test_build_scratch_to_oci_then_inspect_offline(tmp_path, app_dir):
    """The README's quick start: no registry anywhere, the real script, checked by umoci."""
    layout = tmp_path / "layout"
    built = sub("build", "--from", "scratch", "--to", f"oci:{layout}:v1", "--add", f"{app_dir}:/app",
                "--cmd", "sh /app/run.sh", cwd=tmp_path)
    assert built.returncode == 0, built.stderr.decode()
    out = built.stdout.decode()
    assert out.startswith(f"oci:{layout}@sha256:") and out.count("\n") == 1
    # off a terminal: the summary line alone (a layer and a config written into the layout)
    assert re.fullmatch(rb"wrote 2 blobs, [\d.]+ k?B in [\d.]+ s\n", built.stderr), built.stderr

    shown = sub("inspect", f"oci:{layout}:v1")
    assert shown.returncode == 0, shown.stderr.decode()
    text = shown.stdout.decode()
    assert out.strip().partition("@")[2] in text
    assert '["sh", "/app/run.sh"]' in text
    assert "1 layer" in text

    as_json = json.loads(sub("inspect", f"oci:{layout}:v1", "--json").stdout)
    assert as_json["platforms"][0]["cmd"] == ["sh", "/app/run.sh"]
    assert skopeo_inspect(f"oci:{layout}:v1")["Digest"] == out.strip().partition("@")[2]
    rootfs = umoci_unpack(layout, "v1", tmp_path / "bundle")
    assert (rootfs / "app" / "src" / "main.py").read_text() == "print('hello')\n"


def test_every_add_goes_into_one_layer(cib_registry, cib_base_image, app_dir, tmp_path):
    tarball = tmp_path / "extra.tar"
    with tarfile.open(tarball, "w") as tar:
        data = b"from a tarball\n"
        info = tarfile.TarInfo("opt/extra.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    single = tmp_path / "notes.txt"
    single.write_text("notes\n")
    result = run("build", "--from", cib_base_image.ref, "--to", f"{cib_registry.host}/cli/onelayer",
                 "--add", f"{app_dir}:/app", "--add", f"tar:{tarball}:/", "--add", f"{single}:/doc/notes.txt",
                 "--json")
    assert result.exit_code == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["tags"] == ["latest"]
    manifest = json.loads(run("manifest", info["reference"]).stdout)
    assert len(manifest["layers"]) == len(cib_base_image.layers) + 1
    names = layer_names(run("blob", f"{cib_registry.host}/cli/onelayer@{manifest['layers'][-1]['digest']}")
                        .stdout_bytes)
    assert {"app/src/main.py", "opt/extra.txt", "doc/notes.txt"} <= set(names)


def test_build_one_platform_of_a_multiarch_base(cib_registry, cib_multiarch_base_image):
    result = run("build", "--from", cib_multiarch_base_image.ref, "--to", f"{cib_registry.host}/cli/arm",
                 "--platform", "linux/arm64", "--env", "X=1")
    assert result.exit_code == 0, result.stderr
    config = json.loads(run("config", f"{cib_registry.host}/cli/arm").stdout)
    assert config["architecture"] == "arm64"
    assert "X=1" in config["config"]["Env"]

    every = run("build", "--from", cib_multiarch_base_image.ref, "--to", f"{cib_registry.host}/cli/all",
                "--platform", "all", "--label", "a=b")
    assert every.exit_code == 0, every.stderr
    shown = json.loads(run("inspect", f"{cib_registry.host}/cli/all", "--json").stdout)
    assert sorted(p["platform"] for p in shown["platforms"]) == ["linux/amd64", "linux/arm64/v8"]
    assert all(p["labels"] == {"a": "b"} for p in shown["platforms"])


def test_build_usage_errors_exit_2(cib_registry):
    missing_from = run("build", "--to", f"{cib_registry.host}/x")
    assert missing_from.exit_code == 2
    assert "--from" in missing_from.stderr and missing_from.stdout == ""
    no_dest = run("build", "--from", "scratch", "--to", "oci:/tmp/never", "--add", "just-a-path")
    assert no_dest.exit_code == 2 and "SRC:DEST" in no_dest.stderr
    relative = run("build", "--from", "scratch", "--to", "oci:/tmp/never", "--add", "example:hi")
    assert relative.exit_code == 2 and "absolute" in relative.stderr
    bad_json = run("build", "--from", "scratch", "--to", "oci:/tmp/never", "--cmd", '["unterminated"')
    assert bad_json.exit_code == 2 and "JSON" in bad_json.stderr
    bad_env = run("build", "--from", "scratch", "--to", "oci:/tmp/never", "--env", "NOVALUE")
    assert bad_env.exit_code == 2 and "KEY=VALUE" in bad_env.stderr
    assert not Path("/tmp/never").exists()


def test_build_missing_local_source_is_one_error_line(tmp_path):
    result = run("build", "--from", "scratch", "--to", f"oci:{tmp_path}/l",
                 "--add", f"{tmp_path}/does-not-exist:/x")
    assert result.exit_code == 1
    line = one_error_line(result.stderr)
    assert "does-not-exist" in line


def test_build_quiet_and_summary_line(cib_registry, cib_base_image, app_dir):
    target = f"{cib_registry.host}/cli/summary"
    loud = sub("build", "--from", cib_base_image.ref, "--to", target, "--add", f"{app_dir}:/app")
    assert loud.returncode == 0, loud.stderr.decode()
    # not a terminal: no bars, one summary line about the pushed blobs
    stderr = loud.stderr.decode().splitlines()
    assert len(stderr) == 1 and stderr[0].startswith("pushed "), stderr
    assert " in " in stderr[0] and "\r" not in loud.stderr.decode()
    quiet = sub("-q", "build", "--from", cib_base_image.ref, "--to", target + "2", "--add",
                f"{app_dir}:/other")
    assert quiet.returncode == 0 and quiet.stderr == b""
    assert quiet.stdout.decode().startswith(f"{target}2@sha256:")


# --------------------------------------------------------------------------------------------
# copy, manifest, config, digest, inspect
# --------------------------------------------------------------------------------------------

def test_copy_between_registries_and_to_local_formats(cib_registry, cib_second_registry, cib_multiarch_base_image,
                                                      cib_oci_base_image, tmp_path):
    dst = f"{cib_second_registry.host}/cli/copied:1"
    result = run("copy", cib_multiarch_base_image.ref, dst, "--json")
    assert result.exit_code == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["digest"] == cib_multiarch_base_image.digest
    assert info["reference"] == f"{cib_second_registry.host}/cli/copied@{cib_multiarch_base_image.digest}"
    assert skopeo_inspect(dst, raw=True) == cib_multiarch_base_image.raw

    arm = run("copy", cib_multiarch_base_image.ref, f"{cib_second_registry.host}/cli/arm:1",
              "--platform", "linux/arm64")
    assert arm.exit_code == 0, arm.stderr
    assert arm.stdout.strip().endswith(cib_multiarch_base_image.platforms["linux/arm64/v8"].digest)

    layout = tmp_path / "layout"
    to_oci = run("copy", cib_oci_base_image.ref, f"oci:{layout}:base")
    assert to_oci.exit_code == 0, to_oci.stderr
    assert to_oci.stdout.strip() == f"oci:{layout}@{cib_oci_base_image.digest}"
    assert skopeo_inspect(f"oci:{layout}:base", raw=True) == cib_oci_base_image.raw

    archive = tmp_path / "base.tar"
    to_archive = run("copy", f"oci:{layout}:base", f"docker-archive:{archive}:cli/base:1")
    assert to_archive.exit_code == 0, to_archive.stderr
    back = run("copy", f"docker-archive:{archive}", f"{cib_second_registry.host}/cli/fromarchive:1")
    assert back.exit_code == 0, back.stderr
    config = skopeo_inspect(f"{cib_second_registry.host}/cli/fromarchive:1", config=True)
    assert config["rootfs"] == cib_oci_base_image.config["rootfs"]


def test_manifest_config_digest_are_exact(cib_registry, cib_base_image, cib_multiarch_base_image):
    manifest = run("manifest", cib_base_image.ref)
    assert manifest.exit_code == 0
    assert manifest.stdout_bytes == cib_base_image.raw
    assert run("config", cib_base_image.ref).stdout_bytes == cib_base_image.config_raw
    assert run("digest", cib_base_image.ref).stdout == cib_base_image.digest + "\n"
    assert run("digest", cib_base_image.ref_by_digest).stdout == cib_base_image.digest + "\n"

    assert run("manifest", cib_multiarch_base_image.ref).stdout_bytes == cib_multiarch_base_image.raw
    arm = cib_multiarch_base_image.platforms["linux/arm64/v8"]
    assert run("config", cib_multiarch_base_image.ref, "--platform", "linux/arm64").stdout_bytes == arm.config_raw
    host = host_platform_name()
    if host in ("linux/amd64", "linux/arm64"):
        key = "linux/arm64/v8" if host == "linux/arm64" else host
        default = run("config", cib_multiarch_base_image.ref)
        assert default.stdout_bytes == cib_multiarch_base_image.platforms[key].config_raw
    missing = run("config", cib_multiarch_base_image.ref, "--platform", "linux/s390x")
    assert missing.exit_code == 1
    assert "linux/amd64" in one_error_line(missing.stderr)


def test_inspect_text_and_json(cib_registry, cib_base_image, cib_multiarch_base_image):
    text = run("inspect", cib_base_image.ref)
    assert text.exit_code == 0, text.stderr
    for expected in (cib_base_image.digest, "linux/amd64", '["sh"]', "PATH=", "2 layers",
                     cib_base_image.layers[0]["digest"], "2024-01-01T00:00:00Z"):
        assert expected in text.stdout
    data = json.loads(run("inspect", cib_multiarch_base_image.ref, "--json").stdout)
    assert data["digest"] == cib_multiarch_base_image.digest
    assert [p["platform"] for p in data["platforms"]] == ["linux/amd64", "linux/arm64/v8"]
    for entry in data["platforms"]:
        pushed = cib_multiarch_base_image.platforms[entry["platform"]]
        assert entry["digest"] == pushed.digest
        assert [layer["digest"] for layer in entry["layers"]] == [layer["digest"] for layer in pushed.layers]
        assert entry["size"] == sum(layer["size"] for layer in pushed.layers)
    only = json.loads(run("inspect", cib_multiarch_base_image.ref, "--platform", "linux/arm64", "--json").stdout)
    assert [p["platform"] for p in only["platforms"]] == ["linux/arm64/v8"]


# --------------------------------------------------------------------------------------------
# ls, catalog, blob, delete, export
# --------------------------------------------------------------------------------------------

def test_ls_and_catalog(cib_registry, cib_base_image):
    assert run("copy", cib_base_image.ref, f"{cib_registry.host}/cli/tags:a").exit_code == 0
    assert run("copy", cib_base_image.ref, f"{cib_registry.host}/cli/tags:b").exit_code == 0
    listed = run("ls", f"{cib_registry.host}/cli/tags")
    assert listed.exit_code == 0
    assert sorted(listed.stdout.split()) == ["a", "b"]
    assert sorted(json.loads(run("ls", f"{cib_registry.host}/cli/tags", "--json").stdout)) == ["a", "b"]
    with_tag = run("ls", f"{cib_registry.host}/cli/tags:a")
    assert with_tag.exit_code == 1 and "repository" in one_error_line(with_tag.stderr)

    repos = run("catalog", cib_registry.host)
    assert repos.exit_code == 0
    assert {"cli/tags", cib_base_image.repository} <= set(repos.stdout.split())
    assert "cli/tags" in json.loads(run("catalog", f"http://{cib_registry.host}/", "--json").stdout)


def test_blob_is_verified_bytes(cib_registry, cib_base_image):
    layer = cib_base_image.layers[0]["digest"]
    result = run("blob", f"{cib_registry.host}/{cib_base_image.repository}@{layer}")
    assert result.exit_code == 0
    assert result.stdout_bytes == cib_base_image.blobs[layer]
    no_digest = run("blob", f"{cib_registry.host}/{cib_base_image.repository}:1")
    assert no_digest.exit_code == 1
    assert "REPO@sha256" in one_error_line(no_digest.stderr)
    unknown = run("blob", f"{cib_registry.host}/{cib_base_image.repository}@sha256:" + "0" * 64)
    assert unknown.exit_code == 1
    one_error_line(unknown.stderr)


def test_delete_by_tag_and_digest(cib_registry, cib_base_image):
    ref = f"{cib_registry.host}/cli/deleteme:1"
    assert run("copy", cib_base_image.ref, ref).exit_code == 0
    deleted = run("delete", ref)
    assert deleted.exit_code == 0, deleted.stderr
    assert deleted.stdout.strip() == f"{cib_registry.host}/cli/deleteme@{cib_base_image.digest}"
    gone = run("manifest", ref)
    assert gone.exit_code == 1
    one_error_line(gone.stderr)
    again = run("delete", f"{cib_registry.host}/cli/deleteme@{cib_base_image.digest}")
    assert again.exit_code == 1
    one_error_line(again.stderr)
    local = run("delete", "oci:/tmp/somewhere:v1")
    assert local.exit_code == 1 and "registry references" in one_error_line(local.stderr)


def test_export_file_and_stdout(cib_registry, cib_base_image, tmp_path):
    out = tmp_path / "rootfs.tar"
    result = run("export", cib_base_image.ref, str(out))
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""
    with tarfile.open(out) as tar:
        names = set(tar.getnames())
        busybox = tar.getmember("bin/busybox")
        assert busybox.mode & stat.S_IXUSR
        assert tar.getmember("bin/sh").issym()
    assert {"bin/busybox", "etc/os-release", "etc/passwd", "tmp"} <= names
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".cib-export-")]

    piped = sub("export", cib_base_image.ref, "-")
    assert piped.returncode == 0, piped.stderr.decode()
    with tarfile.open(fileobj=io.BytesIO(piped.stdout)) as tar:
        assert set(tar.getnames()) == names


# --------------------------------------------------------------------------------------------
# auth login / logout
# --------------------------------------------------------------------------------------------

def test_login_wrong_password_stores_nothing(cib_basic_registry, isolated_home):
    result = run("auth", "login", cib_basic_registry.host, "-u", cib_basic_registry.username,
                 "--password-stdin", input="not-the-password\n")
    assert result.exit_code == 1
    line = one_error_line(result.stderr)
    assert "refused" in line and line.endswith("nothing was stored")
    assert "not-the-password" not in result.stderr + result.stdout
    assert not (isolated_home / ".docker" / "config.json").exists()


def test_login_then_use_then_logout(cib_basic_registry, cib_base_image, isolated_home):
    target = f"{cib_basic_registry.host}/cli/private:1"
    anonymous = run("copy", cib_base_image.ref, target)
    assert anonymous.exit_code == 1
    assert "cib auth login" in one_error_line(anonymous.stderr)

    login = run("auth", "login", cib_basic_registry.host, "-u", cib_basic_registry.username,
                "--password-stdin", input=cib_basic_registry.password + "\n")
    assert login.exit_code == 0, login.stderr
    config_file = isolated_home / ".docker" / "config.json"
    assert stat.S_IMODE(config_file.stat().st_mode) == 0o600
    stored = json.loads(config_file.read_text())["auths"][cib_basic_registry.host]["auth"]
    assert base64.b64decode(stored).decode() == f"{cib_basic_registry.username}:{cib_basic_registry.password}"
    assert cib_basic_registry.password not in login.stdout + login.stderr

    copied = run("copy", cib_base_image.ref, target)
    assert copied.exit_code == 0, copied.stderr
    assert skopeo_inspect(target, raw=True, creds=cib_basic_registry.creds_arg()) == cib_base_image.raw

    logout = run("auth", "logout", cib_basic_registry.host)
    assert logout.exit_code == 0, logout.stderr
    assert cib_basic_registry.host not in json.loads(config_file.read_text()).get("auths", {})
    after = run("ls", f"{cib_basic_registry.host}/cli/private")
    assert after.exit_code == 1
    one_error_line(after.stderr)
    twice = run("auth", "logout", cib_basic_registry.host)
    assert twice.exit_code == 0 and "not logged in" in twice.stderr


def test_login_against_token_registry(cib_token_registry, isolated_home):
    bad = run("auth", "login", cib_token_registry.host, "-u", cib_token_registry.username,
              "--password-stdin", input="wrong")
    assert bad.exit_code == 1
    one_error_line(bad.stderr)
    assert not (isolated_home / ".docker" / "config.json").exists()
    good = run("auth", "login", cib_token_registry.host, "-u", cib_token_registry.username,
               "--password-stdin", input=cib_token_registry.password)
    assert good.exit_code == 0, good.stderr
    entry = credstore.load_docker_config().find(cib_token_registry.host)
    assert entry is not None and entry.credentials().username == cib_token_registry.username
    # authenticated now: an unknown repository is a 404, not a refusal
    empty = run("ls", f"{cib_token_registry.host}/nothing/here")
    assert empty.exit_code == 1
    assert "404" in one_error_line(empty.stderr)


class _MemoryKeyring(keyring.backend.KeyringBackend):
    priority = 1  # type: ignore[assignment]

    def __init__(self) -> None:
        super().__init__()
        self.items: dict[tuple[str, str], str] = {}

    def get_password(self, service: str, username: str) -> str | None:
        return self.items.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self.items[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        if (service, username) not in self.items:
            raise keyring.errors.PasswordDeleteError(username)
        del self.items[(service, username)]


@pytest.fixture
def memory_keyring() -> Iterator[_MemoryKeyring]:
    backend = _MemoryKeyring()
    previous = keyring.core._keyring_backend
    keyring.set_keyring(backend)
    try:
        yield backend
    finally:
        keyring.core._keyring_backend = previous


def test_login_to_keyring_is_read_back(cib_basic_registry, cib_base_image, memory_keyring, isolated_home):
    login = run("auth", "login", cib_basic_registry.host, "-u", cib_basic_registry.username,
                "--password-stdin", "--store", "keyring", input=cib_basic_registry.password)
    assert login.exit_code == 0, login.stderr
    assert memory_keyring.items[(f"cib:{cib_basic_registry.host}", cib_basic_registry.username)] \
        == cib_basic_registry.password
    assert not (isolated_home / ".docker" / "config.json").exists()
    copied = run("copy", cib_base_image.ref, f"{cib_basic_registry.host}/cli/viakeyring:1")
    assert copied.exit_code == 0, copied.stderr
    assert run("auth", "logout", cib_basic_registry.host).exit_code == 0
    assert (f"cib:{cib_basic_registry.host}", cib_basic_registry.username) not in memory_keyring.items


def test_verbose_output_never_shows_secrets(cib_basic_registry, cib_base_image, isolated_home):
    assert run("auth", "login", cib_basic_registry.host, "-u", cib_basic_registry.username,
               "--password-stdin", input=cib_basic_registry.password).exit_code == 0
    assert run("copy", cib_base_image.ref, f"{cib_basic_registry.host}/cli/verbose:1").exit_code == 0
    basic_value = base64.b64encode(
        f"{cib_basic_registry.username}:{cib_basic_registry.password}".encode()).decode()
    one = sub("-v", "ls", f"{cib_basic_registry.host}/cli/verbose")
    assert one.returncode == 0, one.stderr.decode()
    assert one.stdout.decode() == "1\n"
    assert "GET" in one.stderr.decode() and "/v2/" in one.stderr.decode()
    assert "headers" not in one.stderr.decode()
    two = sub("-vv", "ls", f"{cib_basic_registry.host}/cli/verbose")
    assert two.returncode == 0
    debug = two.stderr.decode()
    assert "authorization" in debug.lower()  # the header is there, with its value redacted
    for secret in (cib_basic_registry.password, basic_value):
        assert secret not in debug
        assert secret not in one.stderr.decode()


# --------------------------------------------------------------------------------------------
# first-hit errors, exit codes, plugins
# --------------------------------------------------------------------------------------------

def test_unknown_image_is_one_line_exit_1(cib_registry):
    result = sub("inspect", f"{cib_registry.host}/no/such/image:nope")
    assert result.returncode == 1
    line = one_error_line(result.stderr.decode())
    assert "nope" in line or "no/such/image" in line
    assert result.stdout == b""


def test_bad_reference_is_one_line_exit_1():
    for argv in (("inspect", "UPPER/Case:tag"), ("manifest", "host:5000/app@sha256:abc"),
                 ("copy", "a b", "c"), ("ls", "bad//repo")):
        result = run(*argv)
        assert result.exit_code == 1, argv
        assert one_error_line(result.stderr).startswith("cib: error: invalid image reference"), argv
    bad = sub("digest", "Not/Valid")
    assert bad.returncode == 1
    assert one_error_line(bad.stderr.decode()).startswith("cib: error: invalid image reference")


def test_unreachable_registry_names_the_host(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    result = run("ls", f"127.0.0.1:{port}/x")
    assert result.exit_code == 1
    line = one_error_line(result.stderr)
    assert f"127.0.0.1:{port}" in line


def test_usage_errors_exit_2_with_usage_on_stderr():
    for argv in (("build",), ("copy", "only-one"), ("frobnicate",), ("--no-such-flag", "plugins"),
                 ("auth", "login", "localhost:5000"), ("build", "--from", "x", "--to", "y", "--platform")):
        result = run(*argv)
        assert result.exit_code == 2, argv
        assert result.stdout == "", argv
        assert "Error:" in result.stderr, argv
    script = sub("copy")
    assert script.returncode == 2 and b"Usage:" in script.stderr and script.stdout == b""


def test_version_and_help_with_examples():
    from cib_core import __version__

    assert run("--version").stdout.strip() == f"cib {__version__}"
    for command in ("build", "copy", "manifest", "config", "digest", "inspect", "ls", "catalog",
                    "blob", "delete", "export", "plugins"):
        result = run(command, "--help")
        assert result.exit_code == 0
        assert "Examples:" in result.stdout, command
    for command in ("login", "logout"):
        assert "Examples:" in run("auth", command, "--help").stdout
    assert "Examples:" in run("--help").stdout


def test_plugins_listing_and_blocking():
    listed = json.loads(run("plugins", "--json").stdout)
    by_name = {p["name"]: p for p in listed}
    assert by_name["local-dir"]["hooks"] == ["cib_layer_source"]
    assert "cib_credentials" in by_name["keyring"]["hooks"]
    assert all(set(p) >= {"name", "version", "hooks"} for p in listed)
    blocked = json.loads(run("-p", "no:keyring", "plugins", "--json").stdout)
    assert "keyring" not in {p["name"] for p in blocked}
    unknown = run("-p", "no:xyz", "plugins")
    assert unknown.exit_code == 0 and "local-dir" in unknown.stdout
    not_importable = run("-p", "no_such_module_for_cib", "plugins")
    assert not_importable.exit_code == 1
    assert "no_such_module_for_cib" in one_error_line(not_importable.stderr)


SHADOW_MODULE = textwrap.dedent('''
    import click
    from cib_core import hookimpl

    @hookimpl
    def cib_commands(cli):
        @cli.command("build")
        def shadow():
            click.echo("never")
''')

PLUGIN_MODULE = textwrap.dedent('''
    import click
    from cib_core import hookimpl, NotFound

    @hookimpl
    def cib_commands(cli):
        @cli.command("hello")
        @click.argument("name")
        def hello(name):
            """Say hello."""
            click.echo(f"hello {name}")

        @cli.command("boom")
        def boom():
            raise RuntimeError("a genuine bug")

        @cli.command("interrupt")
        def interrupt():
            raise KeyboardInterrupt

        @cli.command("notfound")
        def notfound():
            raise NotFound("nothing called x; push it first")
''')


@pytest.fixture
def command_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    (tmp_path / "cli_test_plugin.py").write_text(PLUGIN_MODULE)
    (tmp_path / "cli_test_shadow.py").write_text(SHADOW_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    path = os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return {"PYTHONPATH": path}


def test_plugin_commands_and_exit_codes(command_plugin):
    assert run("-p", "cli_test_plugin", "hello", "world").stdout == "hello world\n"
    assert "hello" in run("-p", "cli_test_plugin", "--help").stdout
    assert run("hello", "world").exit_code == 2  # not loaded without -p
    assert run("-p", "cli_test_plugin", "notfound").exit_code == 1
    interrupted = run("-p", "cli_test_plugin", "interrupt")
    assert interrupted.exit_code == 130
    assert interrupted.stderr.strip() == "cib: interrupted"
    # cib's own command wins over a plugin's of the same name
    shadowed = run("-p", "cli_test_shadow", "build", "--help")
    assert shadowed.exit_code == 0 and "--from" in shadowed.stdout
    assert "cib: warning: a plugin's command 'build' is hidden" in shadowed.stderr

    bug = sub("-p", "cli_test_plugin", "boom", env=command_plugin)
    assert bug.returncode == 1
    assert b"Traceback" in bug.stderr and b"a genuine bug" in bug.stderr
    handled = sub("-p", "cli_test_plugin", "notfound", env=command_plugin)
    assert handled.returncode == 1
    assert one_error_line(handled.stderr.decode()) == "cib: error: nothing called x; push it first"
    listed = json.loads(sub("-p", "cli_test_plugin", "plugins", "--json", env=command_plugin).stdout)
    assert "cib_commands" in {h for p in listed if p["name"] == "cli_test_plugin" for h in p["hooks"]}


# --------------------------------------------------------------------------------------------
# the pure parts, with no registry
# --------------------------------------------------------------------------------------------

def test_add_splits_at_the_last_colon():
    assert parse_add(["./app:/app", "example:hi:/greeting", "tar:/x/y.tar:/"]) == {
        "/app": "./app", "/greeting": "example:hi", "/": "tar:/x/y.tar"}


def test_cmd_accepts_json_or_shell():
    assert parse_command('["a", "b c"]', "--cmd") == ["a", "b c"]
    assert parse_command("python3 -m http.server 'a b'", "--cmd") == ["python3", "-m", "http.server", "a b"]
    assert parse_command("", "--cmd") == []
    assert parse_command(None, "--cmd") is None


def test_prescan_finds_plugin_options_before_the_subcommand():
    assert prescan_plugin_options(["-p", "no:a", "--insecure-registry", "h", "-pno:b",
                                   "--plugin=c", "-v", "build", "-p", "x"]) == ["no:a", "no:b", "c"]
