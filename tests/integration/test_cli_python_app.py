"""``cib build --python-app``: with the other build options, ``--dry-run`` per platform, the
output of a failed project build, usage errors."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_support import run
from pyapp_support import (
    IndexServer,
    Wheelhouse,
    build_wheelhouse,
    default_pins,
    have_python_base,
    push_python_base,
    push_python_index,
    serve,
    write_project,
    write_pylock,
    write_simple_index,
)

from cib_core.testing import RegistryServer, skopeo_inspect

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not have_python_base(), reason="needs /usr/bin/python3.11 and ldd")]


@pytest.fixture(scope="module")
def house(tmp_path_factory: pytest.TempPathFactory) -> Wheelhouse:
    return build_wheelhouse(tmp_path_factory.mktemp("wheelhouse"))


@pytest.fixture(scope="module")
def index(house: Wheelhouse, tmp_path_factory: pytest.TempPathFactory) -> Iterator[IndexServer]:
    root = tmp_path_factory.mktemp("index")
    write_simple_index(house, root)
    server = serve(root)
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def no_pip_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    for name in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def project(tmp_path: Path, house: Wheelhouse, index: IndexServer) -> Path:
    project = write_project(tmp_path / "app")
    write_pylock(project / "pylock.toml", house, index, default_pins(house))
    return project


def test_build_with_other_options(tmp_path: Path, cib_registry: RegistryServer, project: Path,
                                  index: IndexServer) -> None:
    base = push_python_base(cib_registry, "cli/pybase").ref
    target = cib_registry.ref("cli/pyapp", "v1")
    (tmp_path / "extra").mkdir()
    (tmp_path / "extra" / "settings.toml").write_text("mode = 'prod'\n")
    result = run("build", "--from", base, "--to", target, "--python-app", str(project),
                 "--index-url", index.simple, "--add", f"{tmp_path / 'extra'}:/etc/app",
                 "--env", "MODE=prod", "--label", "team=py", "--tag", "v1")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip().startswith(f"{cib_registry.host}/cli/pyapp@sha256:")
    assert result.stderr.startswith("pushed ")  # the summary line, no bars off a terminal
    config = skopeo_inspect(target, config=True)
    env = dict(e.split("=", 1) for e in config["config"]["Env"])
    assert env["MODE"] == "prod" and env["VIRTUAL_ENV"] == "/opt/venv"
    assert config["config"]["Entrypoint"] == ["/opt/venv/bin/cibtest-app"]
    assert config["config"]["Labels"] == {"team": "py"}
    history = [h.get("created_by", "") for h in config["history"]][-3:]
    assert history[0].startswith("cib add_app: python dependencies: 2 wheels")
    assert history[1].startswith("cib add_app: python project cibtest-app 1.0")
    assert history[2] == "cib add_files /etc/app"


def test_entrypoint_names_a_console_script(cib_registry: RegistryServer, project: Path,
                                           index: IndexServer) -> None:
    base = push_python_base(cib_registry, "cli/pybase").ref
    target = cib_registry.ref("cli/pyapp-ep", "v1")
    result = run("build", "--from", base, "--to", target, "--python-app", str(project),
                 "--index-url", index.simple, "--entrypoint", "cibtest-app --verbose")
    assert result.exit_code == 0, result.stderr
    config = skopeo_inspect(target, config=True)["config"]
    assert config["Entrypoint"] == ["cibtest-app", "--verbose"]
    result = run("build", "--from", base, "--to", target, "--python-app", str(project),
                 "--index-url", index.simple, "--entrypoint", "cibtest-app")
    assert result.exit_code == 0, result.stderr
    assert skopeo_inspect(target, config=True)["config"]["Entrypoint"] == ["/opt/venv/bin/cibtest-app"]


def test_dry_run_shows_the_wheels_of_each_platform_and_sends_nothing(
        cib_registry: RegistryServer, project: Path, index: IndexServer) -> None:
    from cib_core import NotFound, RegistryClient

    base = push_python_index(cib_registry, "cli/pymulti").ref
    target = cib_registry.ref("cli/pyapp-dry", "v1")
    before = len(index.requests)
    result = run("build", "--from", base, "--to", target, "--python-app", str(project),
                 "--index-url", index.simple, "--dry-run")
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    amd64, arm64 = out.split("linux/arm64/v8: ")
    assert amd64.startswith("linux/amd64: CPython 3.11.2 (cp311) at /usr/bin/python3, glibc 2.36, x86_64")
    assert "cibtest-fast 1.0: cibtest_fast-1.0-cp311-cp311-manylinux_2_17_x86_64.whl" in amd64
    assert "cibtest-pure 1.0: cibtest_pure-1.0-py3-none-any.whl" in amd64
    assert arm64.startswith("CPython 3.11.2 (cp311) at /usr/bin/python3, glibc 2.36, aarch64")
    assert "cibtest-fast 1.0: cibtest_fast-1.0-cp311-cp311-manylinux_2_17_aarch64.whl" in arm64
    assert 'entrypoint: ["/opt/venv/bin/cibtest-app"]' in out
    assert not any(r.startswith("/files/") for r in index.requests[before:]), "a dry run downloaded"
    with pytest.raises(NotFound):
        RegistryClient(cib_registry.host, "cli/pyapp-dry", None).tags()

    result = run("build", "--from", base, "--to", target, "--python-app", str(project),
                 "--index-url", index.simple, "--dry-run", "--json")
    assert result.exit_code == 0, result.stderr
    plan = json.loads(result.stdout)
    assert [p["platform"] for p in plan] == ["linux/amd64", "linux/arm64/v8"]
    assert plan[1]["python"] == {"interpreter": "/usr/bin/python3", "version": "3.11.2",
                                 "abi": "cp311", "libc": "glibc 2.36", "machine": "aarch64"}
    assert {w["file"] for w in plan[1]["wheels"]} == {
        "cibtest_fast-1.0-cp311-cp311-manylinux_2_17_aarch64.whl", "cibtest_pure-1.0-py3-none-any.whl"}


def test_a_failed_project_build_prints_its_output_then_one_error_line(
        tmp_path: Path, cib_registry: RegistryServer, project: Path, index: IndexServer) -> None:
    base = push_python_base(cib_registry, "cli/pybase").ref
    (project / "setup.py").write_text("print('building step 1 of 2')\n"
                                      "raise SystemExit('broken on purpose')\n")
    result = run("build", "--from", base, "--to", f"oci:{tmp_path / 'out'}:v1", "--python-app",
                 str(project), "--index-url", index.simple)
    assert result.exit_code == 1
    lines = result.stderr.rstrip("\n").splitlines()
    assert "building step 1 of 2" in result.stderr and "broken on purpose" in lines[-2] + lines[-3]
    assert lines[-1].startswith("cib: error: the build of cibtest-app")
    assert "broken on purpose" in lines[-1]
    assert not (tmp_path / "out" / "index.json").exists()


def test_python_app_options_need_python_app(tmp_path: Path) -> None:
    result = run("build", "--from", "scratch", "--to", f"oci:{tmp_path / 'o'}", "--lock", "x.lock")
    assert result.exit_code == 2 and "--lock only apply to --python-app" in result.stderr


def test_python_target_overrides_what_the_base_says(cib_registry: RegistryServer, project: Path,
                                                    index: IndexServer) -> None:
    base = push_python_base(cib_registry, "cli/pybase").ref
    result = run("build", "--from", base, "--to", cib_registry.ref("cli/pyapp-target", "v1"),
                 "--python-app", str(project), "--index-url", index.simple, "--dry-run", "--json",
                 "--python-target", "interpreter=/usr/bin/python3.11",
                 "--python-target", "libc=glibc 2.17")
    assert result.exit_code == 0, result.stderr
    [plan] = json.loads(result.stdout)
    assert plan["python"]["interpreter"] == "/usr/bin/python3.11"
    assert plan["python"]["libc"] == "glibc 2.17"
    result = run("build", "--from", base, "--to", cib_registry.ref("cli/pyapp-target", "v1"),
                 "--python-app", str(project), "--index-url", index.simple, "--dry-run",
                 "--python-target", "libc=glibc 2.16")
    # the C extension is a manylinux_2_17 wheel: a glibc 2.16 target has no wheel for it
    assert result.exit_code == 1
    assert "cibtest-fast 1.0: has no wheel for linux/amd64" in result.stderr
    assert "manylinux_2_16_x86_64" in result.stderr
    result = run("build", "--from", base, "--to", cib_registry.ref("cli/pyapp-target", "v1"),
                 "--python-app", str(project), "--python-target", "flavour=cpython")
    assert result.exit_code == 1 and "unknown key(s) flavour" in result.stderr
