"""Python apps end to end (issue 13): a project with a console script, a pure dependency and a
C extension compiled here, packaged onto a Python base made from this machine's Debian
interpreter, run under runc; its two-platform build checked file by file; the three kinds of
lock; the layers a code change rebuilds; reproducibility across checkouts, homes and umasks."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pyapp_support import (
    IndexServer,
    Pin,
    Wheelhouse,
    add_backend_wheel,
    build_wheelhouse,
    default_pins,
    have_python_base,
    iter_layers,
    layer_file,
    layer_members,
    push_python_base,
    push_python_index,
    python_rootfs_layer,
    run_in_runc,
    serve,
    write_project,
    write_pylock,
    write_requirements,
    write_simple_index,
    write_tiny_project,
    write_uv_lock,
)

from cib_core import Image
from cib_core.testing import RegistryServer, pull_to_oci, require_tool, skopeo_inspect

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not have_python_base(), reason="needs /usr/bin/python3.11 and ldd")]


@pytest.fixture(scope="module")
def house(tmp_path_factory: pytest.TempPathFactory) -> Wheelhouse:
    house = build_wheelhouse(tmp_path_factory.mktemp("wheelhouse"))
    add_backend_wheel(house)
    return house


@pytest.fixture(scope="module")
def index(house: Wheelhouse, tmp_path_factory: pytest.TempPathFactory) -> Iterator[IndexServer]:
    root = tmp_path_factory.mktemp("index")
    write_simple_index(house, root)
    server = serve(root)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def python_base(cib_registry: RegistryServer) -> str:
    return push_python_base(cib_registry).ref


@pytest.fixture(scope="module")
def python_index(cib_registry: RegistryServer) -> str:
    return push_python_index(cib_registry).ref


@pytest.fixture
def no_pip_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """pip's configuration of this machine must not send a test to another index."""
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    for name in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS"):
        monkeypatch.delenv(name, raising=False)


def _manifest_of(layout: Path, tag: str) -> dict[str, Any]:
    index = json.loads((layout / "index.json").read_text())
    [entry] = [m for m in index["manifests"] if m.get("annotations", {}).get(
        "org.opencontainers.image.ref.name") == tag]
    return json.loads((layout / "blobs" / "sha256" / entry["digest"].split(":")[1]).read_text())


def test_app_with_a_c_extension_runs_under_runc(
        tmp_path: Path, cib_registry: RegistryServer, python_base: str, house: Wheelhouse,
        index: IndexServer, no_pip_config: None) -> None:
    require_tool("skopeo")
    project = write_project(tmp_path / "app")
    write_pylock(project / "pylock.toml", house, index, default_pins(house))
    target = cib_registry.ref("pyapp/runs", "v1")
    image = Image(python_base, target)
    layers = image.add_python_app(project, index_url=index.simple)
    result = image.save()
    assert len(layers) == 2  # dependencies (with the venv), the project

    layout = tmp_path / "layout"
    tag = pull_to_oci(result.reference, layout)
    out = run_in_runc(layout, tag, tmp_path, "runs")
    assert "cibtest-app: pure 1.0 / compiled for x86_64" in out, out
    assert "prefix: /opt/venv" in out, out
    assert "fast from: /opt/venv/lib/python3.11/site-packages/cibtest_fast/__init__.py" in out, out

    config = skopeo_inspect(result.reference, config=True)["config"]
    assert config["Entrypoint"] == ["/opt/venv/bin/cibtest-app"]
    assert "Cmd" not in config or config["Cmd"] is None
    assert config["WorkingDir"] == "/app"
    env = dict(e.split("=", 1) for e in config["Env"])
    assert env["VIRTUAL_ENV"] == "/opt/venv"
    assert env["PATH"].startswith("/opt/venv/bin:/usr/local/sbin:")

    manifest = _manifest_of(layout, tag)
    deps_blob, project_blob = list(iter_layers(layout, manifest))[1:]
    deps = layer_members(deps_blob)
    site = "opt/venv/lib/python3.11/site-packages"
    assert deps["opt/venv/bin/python"].issym() and deps["opt/venv/bin/python"].linkname == "/usr/bin/python3"
    cfg = layer_file(deps_blob, "opt/venv/pyvenv.cfg").decode()
    assert "home = /usr/bin\n" in cfg and "include-system-site-packages = false\n" in cfg
    assert "version = 3.11.2\n" in cfg
    assert layer_file(deps_blob, f"{site}/cibtest_pure-1.0.dist-info/INSTALLER") == b"cib\n"
    so = f"{site}/cibtest_fast/_speed.cpython-311-x86_64-linux-gnu.so"
    assert deps[so].mode == 0o755 and deps[so].uid == 0 and deps[so].mtime == 0
    record = layer_file(deps_blob, f"{site}/cibtest_fast-1.0.dist-info/RECORD").decode()
    assert "cibtest_fast/_speed.cpython-311-x86_64-linux-gnu.so,sha256=" in record
    project_members = layer_members(project_blob)
    script = layer_file(project_blob, "opt/venv/bin/cibtest-app")
    assert script.startswith(b"#!/opt/venv/bin/python\n")
    assert project_members["opt/venv/bin/cibtest-app"].mode == 0o755
    assert "app" in project_members and project_members["app"].isdir()
    record = layer_file(project_blob, f"{site}/cibtest_app-1.0.dist-info/RECORD").decode()
    assert "../../../bin/cibtest-app,sha256=" in record


def test_two_platforms_get_their_own_wheels_and_share_the_rest(
        tmp_path: Path, cib_registry: RegistryServer, python_index: str, house: Wheelhouse,
        index: IndexServer, no_pip_config: None) -> None:
    require_tool("skopeo")
    project = write_project(tmp_path / "app", dependencies=(
        "cibtest-pure", "cibtest-fast", "cibtest-amd64only; platform_machine == 'x86_64'",
        "cibtest-arm64only; platform_machine == 'aarch64'"))
    pins = [*default_pins(house),
            Pin("cibtest-amd64only", "1.0", tuple(house.of("cibtest-amd64only")),
                "platform_machine == 'x86_64'"),
            Pin("cibtest-arm64only", "1.0", tuple(house.of("cibtest-arm64only")),
                "platform_machine == 'aarch64'")]
    write_pylock(project / "pylock.toml", house, index, pins)
    image = Image(python_index, cib_registry.ref("pyapp/multi", "v1"))
    assert image.platforms() == ["linux/amd64", "linux/arm64/v8"]
    layers = image.add_python_app(project, index_url=index.simple)
    result = image.save()
    assert len(layers) == 3  # a dependency layer per platform, one project layer for both

    raw = skopeo_inspect(result.reference, raw=True)
    assert json.loads(raw)["mediaType"] == "application/vnd.oci.image.index.v1+json"
    site = "opt/venv/lib/python3.11/site-packages"
    seen: dict[str, list[str]] = {}
    for arch, machine, other in (("amd64", "x86_64", "aarch64"), ("arm64", "aarch64", "x86_64")):
        digests = skopeo_inspect(result.reference, arch=arch)["Layers"]
        seen[arch] = digests
        deps = registry_blob(cib_registry, "pyapp/multi", digests[1])
        names = layer_members(deps)
        assert f"{site}/cibtest_fast/_speed.cpython-311-{machine}-linux-gnu.so" in names
        assert not [n for n in names if other in n], f"{arch} holds files for {other}"
        only = "amd64only" if arch == "amd64" else "arm64only"
        assert f"{site}/cibtest_{only}.py" in names
        assert not [n for n in names if n.endswith(("amd64only.py", "arm64only.py"))
                    and only not in n]
        config = skopeo_inspect(result.reference, config=True, arch=arch)
        assert config["architecture"] == arch
        assert config["config"]["Entrypoint"] == ["/opt/venv/bin/cibtest-app"]
    assert seen["amd64"][0] != seen["arm64"][0]  # the bases
    assert seen["amd64"][1] != seen["arm64"][1]  # the dependencies
    assert seen["amd64"][2] == seen["arm64"][2]  # the pure project, built once

    # the amd64 image of the index runs
    layout = tmp_path / "layout"
    tag = pull_to_oci(result.reference, layout)
    assert "compiled for x86_64" in run_in_runc(layout, tag, tmp_path, "multi")


def registry_blob(registry: RegistryServer, repository: str, digest: str) -> bytes:
    from cib_core import RegistryClient

    data = RegistryClient(registry.host, repository, None).blob(digest)
    assert isinstance(data, bytes)
    return data


@pytest.mark.parametrize("kind", ["pylock", "uv", "requirements"])
def test_every_kind_of_lock_gives_the_same_layers(
        tmp_path: Path, python_base: str, house: Wheelhouse, index: IndexServer,
        no_pip_config: None, kind: str) -> None:
    project = write_project(tmp_path / "app")
    if kind == "pylock":
        write_pylock(project / "pylock.toml", house, index, default_pins(house))
    elif kind == "uv":
        write_uv_lock(project / "uv.lock", house, index, default_pins(house))
    else:
        write_requirements(project / "requirements.txt", house, default_pins(house))
    image = Image(python_base, f"oci:{tmp_path / 'out'}:v1")
    layers = image.add_python_app(project, index_url=index.simple)
    image.save()
    # the same wheels, the same target: the same bytes whichever lock named them
    assert [layer.diff_id for layer in layers] == _reference_diff_ids(python_base, house, index)


_REFERENCE: dict[str, list[str]] = {}


def _reference_diff_ids(python_base: str, house: Wheelhouse, index: IndexServer) -> list[str]:
    if "ids" not in _REFERENCE:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            project = write_project(Path(tmp) / "app")
            write_pylock(project / "pylock.toml", house, index, default_pins(house))
            image = Image(python_base, f"oci:{tmp}/ref:v1")
            _REFERENCE["ids"] = [layer.diff_id for layer in
                                 image.add_python_app(project, index_url=index.simple)]
    return _REFERENCE["ids"]


def test_a_code_change_uploads_only_the_project_layer(
        tmp_path: Path, cib_registry: RegistryServer, python_base: str, house: Wheelhouse,
        index: IndexServer, no_pip_config: None, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    project = write_project(tmp_path / "app")
    write_pylock(project / "pylock.toml", house, index, default_pins(house))
    target = cib_registry.ref("pyapp/rebuild", "v1")

    def build() -> tuple[list[str], list[str]]:
        """The app's layer digests, and the app layers whose blobs were sent."""
        sent: set[str] = set()

        def progress(name: str, done: int, total: int | None) -> None:
            sent.add(name)

        image = Image(python_base, target, progress=progress)
        layers = image.add_python_app(project, index_url=index.simple)
        image.save()
        return [layer.digest for layer in layers], sorted(
            n.removeprefix("app layer python ").split()[0] for n in sent if n.startswith("app layer"))

    first, sent = build()
    assert sent == ["dependencies:", "project"]
    downloads = [r for r in index.requests if r.startswith("/files/")]
    again, sent = build()
    assert again == first and sent == [], "an unchanged layer was built or uploaded again"
    main = project / "src" / "cibtest_app" / "main.py"
    main.write_text(main.read_text() + "# one more line\n")
    with caplog.at_level(logging.INFO, logger="cib_plugins.python_app.project"):
        changed, sent = build()
    assert "made the wheel of cibtest-app from its last build" in caplog.text
    assert sent == ["project"]
    assert changed[0] == first[0] and changed[1] != first[1]
    assert [r for r in index.requests if r.startswith("/files/")] == downloads, \
        "a rebuild downloaded wheels again"
    # the wheel made from the last one installs as the backend's own: the same layer
    monkeypatch.setenv("CIB_CACHE_DIR", str(tmp_path / "cold-cache"))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="cib_plugins.python_app.project"):
        cold, _ = build()
    assert "building the wheel of cibtest-app with its backend" in caplog.text
    assert cold == changed


# ---------------------------------------------------------------------------------------------
# bad input: each a PackagingError naming the input, and nothing pushed
# ---------------------------------------------------------------------------------------------
def _nothing_pushed(registry: RegistryServer, repository: str) -> None:
    from cib_core import NotFound, RegistryClient

    client = RegistryClient(registry.host, repository, None)
    with pytest.raises(NotFound):
        client.tags()


def _fails(python_base: str, registry: RegistryServer, repository: str, project: Path,
           **options: Any) -> str:
    from cib_core import CibError
    from cib_core.errors import PackagingError

    image = Image(python_base, registry.ref(repository, "v1"))
    with pytest.raises(CibError) as caught:
        image.add_python_app(project, **options)
        image.save()
    assert isinstance(caught.value, PackagingError), repr(caught.value)
    _nothing_pushed(registry, repository)
    return str(caught.value)


def test_a_file_whose_hash_differs_from_the_lock(
        tmp_path: Path, cib_registry: RegistryServer, python_base: str, house: Wheelhouse,
        index: IndexServer, no_pip_config: None) -> None:
    project = write_project(tmp_path / "app")
    write_pylock(project / "pylock.toml", house, index, default_pins(house))
    lock = project / "pylock.toml"
    right = house.sha256("cibtest_pure-1.0-py3-none-any.whl")
    lock.write_text(lock.read_text().replace(right, "0" * 64))
    message = _fails(python_base, cib_registry, "pyapp/badhash", project, index_url=index.simple)
    assert "cibtest_pure-1.0-py3-none-any.whl" in message
    assert right in message and "0" * 64 in message
    assert "nothing was built or pushed" in message


def test_a_missing_lock(tmp_path: Path, cib_registry: RegistryServer, python_base: str,
                        index: IndexServer, no_pip_config: None) -> None:
    project = write_project(tmp_path / "app")
    missing = tmp_path / "nowhere" / "pylock.toml"
    message = _fails(python_base, cib_registry, "pyapp/nolock", project, lock=missing,
                     index_url=index.simple)
    assert str(missing) in message and "does not exist" in message
    # a project with dependencies and no lock at all
    message = _fails(python_base, cib_registry, "pyapp/nolock", project, index_url=index.simple)
    assert str(project) in message and "no lock" in message and "uv lock" in message


def test_a_project_whose_build_fails_shows_its_output(
        tmp_path: Path, cib_registry: RegistryServer, python_base: str, house: Wheelhouse,
        index: IndexServer, no_pip_config: None) -> None:
    from cib_core.errors import PackagingError

    project = write_project(tmp_path / "app")
    write_pylock(project / "pylock.toml", house, index, default_pins(house))
    (project / "setup.py").write_text("raise SystemExit('the build is broken on purpose')\n")
    message = _fails(python_base, cib_registry, "pyapp/buildfails", project, index_url=index.simple)
    assert "the build of cibtest-app" in message and str(project) in message
    assert "the build is broken on purpose" in message
    image = Image(python_base, f"oci:{tmp_path / 'out'}:v1")
    with pytest.raises(PackagingError) as caught:
        image.add_python_app(project, index_url=index.simple)
    assert "the build is broken on purpose" in caught.value.output


def test_a_base_without_python_says_how_to_name_one(
        tmp_path: Path, cib_registry: RegistryServer, cib_base_image: Any, house: Wheelhouse,
        index: IndexServer, no_pip_config: None) -> None:
    project = write_project(tmp_path / "app")
    write_pylock(project / "pylock.toml", house, index, default_pins(house))
    message = _fails(cib_base_image.ref, cib_registry, "pyapp/nopython", project, index_url=index.simple)
    assert cib_base_image.ref in message and "has no Python interpreter on its PATH" in message
    assert 'python_target={"interpreter": ' in message and "--python-target interpreter=" in message


def test_a_wheel_that_is_not_a_zip_and_one_whose_record_lies(
        tmp_path: Path, cib_registry: RegistryServer, python_base: str, house: Wheelhouse,
        no_pip_config: None) -> None:
    from pyapp_support import make_wheel

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "cibtest_pure-1.0-py3-none-any.whl").write_bytes(b"<html>not a wheel</html>")
    liar = make_wheel(tmp_path / "liar", "cibtest-pure", "1.0",
                      {"cibtest_pure/__init__.py": 'VALUE = "pure 1.0"\n'},
                      lie_about="cibtest_pure/__init__.py")
    for case, directory, expected in (("notzip", bad, "is not a wheel"),
                                      ("liar", liar.parent, "has a RECORD that does not match")):
        project = write_project(tmp_path / case, dependencies=("cibtest-pure",))
        wheel = directory / "cibtest_pure-1.0-py3-none-any.whl"
        sha = __import__("hashlib").sha256(wheel.read_bytes()).hexdigest()
        write_requirements(project / "requirements.txt", house, [])
        (project / "requirements.txt").write_text(f"cibtest-pure==1.0 --hash=sha256:{sha}\n")
        message = _fails(python_base, cib_registry, f"pyapp/{case}", project, find_links=[directory])
        assert "cibtest_pure-1.0-py3-none-any.whl" in message and expected in message, message


def test_a_dependency_for_a_python_the_base_does_not_have(
        tmp_path: Path, cib_registry: RegistryServer, python_base: str, house: Wheelhouse,
        index: IndexServer, no_pip_config: None) -> None:
    project = write_project(tmp_path / "app", dependencies=("cibtest-new",))
    write_requirements(project / "requirements.txt", house,
                       [Pin("cibtest-new", "1.0", tuple(house.of("cibtest-new")))])
    message = _fails(python_base, cib_registry, "pyapp/newpython", project, index_url=index.simple)
    assert "cibtest-new 1.0" in message and "has no wheel for linux/amd64" in message
    assert "CPython 3.11.2" in message and "cp312-cp312-manylinux_2_17_x86_64" in message


def test_a_package_with_only_an_sdist_is_not_built(
        tmp_path: Path, cib_registry: RegistryServer, python_base: str, house: Wheelhouse,
        index: IndexServer, no_pip_config: None) -> None:
    project = write_project(tmp_path / "app", dependencies=("cibtest-sdistonly",))
    pins = [Pin("cibtest-sdistonly", "1.0", tuple(house.of("cibtest-sdistonly")))]
    for kind in ("pylock", "uv"):
        for stale in ("pylock.toml", "uv.lock"):
            (project / stale).unlink(missing_ok=True)
        if kind == "pylock":
            write_pylock(project / "pylock.toml", house, index, pins)
        else:
            write_uv_lock(project / "uv.lock", house, index, pins)
        message = _fails(python_base, cib_registry, f"pyapp/sdist-{kind}", project, index_url=index.simple)
        assert "cibtest-sdistonly 1.0" in message and "has no wheel for linux/amd64" in message
        assert "never builds an sdist" in message


def test_the_same_inputs_give_the_same_digest_from_another_checkout_home_and_umask(
        tmp_path: Path, python_base: str, house: Wheelhouse, index: IndexServer) -> None:
    """Two builds in fresh processes: another checkout path with other file times, another
    HOME, pip cache and cib cache (cold), another umask and time zone."""
    import shutil
    import subprocess
    import sys

    first = write_project(tmp_path / "checkout-1" / "app")
    write_pylock(first / "pylock.toml", house, index, default_pins(house))
    second = tmp_path / "elsewhere" / "checkout-2" / "app"
    shutil.copytree(first, second)
    for path in second.rglob("*"):
        os.utime(path, (978307200, 978307200))  # 2001-01-01

    def build(project: Path, name: str, umask: int, tz: str) -> str:
        home = tmp_path / f"home-{name}"
        home.mkdir()
        env = {**os.environ, "HOME": str(home), "CIB_CACHE_DIR": str(home / "cib-cache"),
               "PIP_CACHE_DIR": str(home / "pip-cache"), "PIP_CONFIG_FILE": os.devnull, "TZ": tz}
        env.pop("SOURCE_DATE_EPOCH", None)
        done = subprocess.run(
            [sys.executable, "-c", "import sys; from cib_core.cli import main; sys.exit(main())",
             "build", "--from", python_base, "--to", f"oci:{tmp_path / name}:v1",
             "--python-app", str(project), "--index-url", index.simple],
            capture_output=True, text=True, env=env, cwd=str(home), timeout=300,
            preexec_fn=lambda: os.umask(umask))
        assert done.returncode == 0, done.stderr
        return done.stdout.strip().rsplit("@", 1)[1]

    a = build(first, "a", 0o022, "UTC")
    b = build(second, "b", 0o077, "Asia/Tokyo")
    assert a == b
    manifest = _manifest_of(tmp_path / "b", "v1")
    project_blob = list(iter_layers(tmp_path / "b", manifest))[-1]
    assert all(m.mode in (0o644, 0o755, 0o777) for m in layer_members(project_blob).values())


def test_a_build_backend_the_host_lacks_is_installed_once_from_the_index(
        tmp_path: Path, python_base: str, index: IndexServer, no_pip_config: None) -> None:
    from cib_core.caches import cache_root

    project = write_tiny_project(tmp_path / "tiny")
    for n in (1, 2):
        image = Image(python_base, f"oci:{tmp_path / 'out'}:v{n}")
        [deps, layer] = image.add_python_app(project, index_url=index.simple)
        image.save()
    root = cache_root()
    assert root is not None
    [env] = (Path(root) / "apps" / "python" / "build-envs").iterdir()
    assert (env / "cibtest_backend.py").is_file()
    assert [r for r in index.requests if "cibtest-backend" in r or "cibtest_backend" in r].count(
        "/files/cibtest_backend-1.0-py3-none-any.whl") == 1, "the build environment was made twice"
    manifest = _manifest_of(tmp_path / "out", "v2")
    project_blob = list(iter_layers(tmp_path / "out", manifest))[-1]
    script = layer_file(project_blob, "opt/venv/bin/tiny")
    assert script.startswith(b"#!/opt/venv/bin/python\n")
    assert "opt/venv/lib/python3.11/site-packages/cibtest_tiny.py" in layer_members(project_blob)


def test_a_large_distribution_gets_a_layer_of_its_own(
        tmp_path: Path, python_base: str, house: Wheelhouse, index: IndexServer,
        no_pip_config: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Over the threshold (64 MiB unpacked; lowered here so the test's C extension is over it)
    a distribution is a layer, before the one of the other dependencies."""
    from cib_plugins.python_app import packager

    fast = house.files["cibtest_fast-1.0-cp311-cp311-manylinux_2_17_x86_64.whl"]
    import zipfile

    unpacked = sum(i.file_size for i in zipfile.ZipFile(fast).infolist())
    monkeypatch.setattr(packager, "BIG_DISTRIBUTION", unpacked - 1)
    project = write_project(tmp_path / "app")
    write_pylock(project / "pylock.toml", house, index, default_pins(house))
    image = Image(python_base, f"oci:{tmp_path / 'out'}:v1")
    layers = image.add_python_app(project, index_url=index.simple)
    image.save()
    assert len(layers) == 3
    manifest = _manifest_of(tmp_path / "out", "v1")
    big, deps, app = list(iter_layers(tmp_path / "out", manifest))[1:]
    site = "opt/venv/lib/python3.11/site-packages"
    assert {n for n in layer_members(big) if n.startswith(site + "/")} >= {
        f"{site}/cibtest_fast/__init__.py", f"{site}/cibtest_fast-1.0.dist-info/RECORD"}
    assert not [n for n in layer_members(big) if "cibtest_pure" in n or n.endswith("pyvenv.cfg")]
    assert f"{site}/cibtest_pure/__init__.py" in layer_members(deps)
    assert "opt/venv/pyvenv.cfg" in layer_members(deps)
    assert not [n for n in layer_members(deps) if "cibtest_fast" in n]
    history = json.loads((tmp_path / "out" / "blobs" / "sha256" / manifest["config"]["digest"].split(":")[1])
                         .read_text())["history"]
    assert [h["created_by"] for h in history[-3:]] == [
        "cib add_app: python cibtest-fast 1.0", "cib add_app: python dependencies: 1 wheel",
        "cib add_app: python project cibtest-app 1.0"]


def test_a_plain_directory_with_requirements_is_copied_to_the_app_directory(
        tmp_path: Path, python_base: str, house: Wheelhouse, index: IndexServer,
        no_pip_config: None) -> None:
    require_tool("skopeo")
    app = tmp_path / "scripts"
    (app / "lib").mkdir(parents=True)
    (app / "main.py").write_text("import cibtest_pure, helper\nprint('plain:', cibtest_pure.VALUE, "
                                 "helper.WHO)\n")
    (app / "lib" / "helper.py").write_text("WHO = 'helper'\n")
    (app / "__pycache__").mkdir()
    (app / "__pycache__" / "main.cpython-311.pyc").write_bytes(b"stale")
    write_requirements(app / "requirements.txt", house,
                       [Pin("cibtest-pure", "1.0", tuple(house.of("cibtest-pure")))])
    image = Image(python_base, f"oci:{tmp_path / 'out'}:v1")
    image.add_python_app(app, index_url=index.simple, entrypoint=["python", "/app/main.py"])
    image.env = ["PYTHONPATH=/app/lib"]
    image.save()
    manifest = _manifest_of(tmp_path / "out", "v1")
    names = layer_members(list(iter_layers(tmp_path / "out", manifest))[-1])
    assert {"app/main.py", "app/lib/helper.py", "app/requirements.txt"} <= set(names)
    assert not [n for n in names if "__pycache__" in n]
    out = run_in_runc(tmp_path / "out", "v1", tmp_path, "plain")
    assert out.strip() == "plain: pure 1.0 helper"


def test_progress_per_download_and_per_layer(
        tmp_path: Path, python_base: str, house: Wheelhouse, index: IndexServer,
        no_pip_config: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIB_CACHE_DIR", str(tmp_path / "cold-cache"))
    steps: dict[str, list[tuple[int, int | None]]] = {}

    class Progress:
        def __call__(self, name: str, done: int, total: int | None) -> None:
            pass

        def step(self, label: str, done: int, total: int | None) -> None:
            steps.setdefault(label, []).append((done, total))

    project = write_project(tmp_path / "app")
    write_pylock(project / "pylock.toml", house, index, default_pins(house))
    image = Image(python_base, f"oci:{tmp_path / 'out'}:v1", progress=Progress())
    image.add_python_app(project, index_url=index.simple)
    for wheel in ("cibtest_pure-1.0-py3-none-any.whl",
                  "cibtest_fast-1.0-cp311-cp311-manylinux_2_17_x86_64.whl"):
        size = house.files[wheel].stat().st_size
        assert steps[wheel][-1] == (size, size), steps.get(wheel)
    assert "cibtest_fast-1.0-cp311-cp311-manylinux_2_17_aarch64.whl" not in steps
    layers = [label for label in steps if label.startswith("app layer")]
    assert layers == ["app layer python dependencies: 2 wheels", "app layer python project cibtest-app 1.0"]
    assert all(steps[label][-1] == (1, 1) for label in layers)


def test_a_second_machine_gets_the_app_layers_from_the_cache_repository(
        tmp_path: Path, cib_registry: RegistryServer, python_base: str, house: Wheelhouse,
        index: IndexServer, no_pip_config: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 14 with the packager's own keys: two checkouts of one commit (other paths, inodes
    and mtimes), each with an empty cib cache, share a cache repository. The second machine
    downloads no wheel, builds no wheel layer, completes no blob upload (the registry's access
    log says so), and pushes the same image."""
    import re
    import shutil

    first = write_project(tmp_path / "runner-1" / "app")
    write_pylock(first / "pylock.toml", house, index, default_pins(house))
    second = tmp_path / "runner-2" / "somewhere" / "app"
    shutil.copytree(first, second)
    for path in second.rglob("*"):
        os.utime(path, (978307200, 978307200))
    cache_repo = f"{cib_registry.host}/ci/pyapp-cache"
    target = cib_registry.ref("pyapp/fleet", "v1")

    def build(project: Path, machine: str) -> tuple[list[str], str, set[str]]:
        monkeypatch.setenv("CIB_CACHE_DIR", str(tmp_path / machine / "cib-cache"))
        monkeypatch.setenv("PIP_CACHE_DIR", str(tmp_path / machine / "pip-cache"))
        sent: set[str] = set()

        def progress(name: str, done: int, total: int | None) -> None:
            sent.add(name)

        image = Image(python_base, target, progress=progress, cache_repo=cache_repo)
        layers = image.add_python_app(project, index_url=index.simple)
        return [layer.digest for layer in layers], image.save().digest, sent

    layers, digest, _ = build(first, "machine-1")
    from cib_core.remote.client import RegistryClient

    records = RegistryClient(cib_registry.host, "ci/pyapp-cache").tags()
    assert len([t for t in records if t.startswith("cib-cache-")]) >= len(layers)
    downloads = [r for r in index.requests if r.startswith("/files/")]
    offset = Path(cib_registry.log_path).stat().st_size
    again, again_digest, sent = build(second, "machine-2")
    with open(cib_registry.log_path, "rb") as f:
        f.seek(offset)
        log = f.read().decode(errors="replace")
    assert (again, again_digest) == (layers, digest)
    assert not [n for n in sent if n.startswith("app layer")], sent
    assert [r for r in index.requests if r.startswith("/files/")] == downloads, \
        "the second machine downloaded wheels"
    assert not re.findall(r'"(?:PATCH|PUT) /v2/pyapp/fleet/blobs/uploads', log), \
        "the second machine uploaded blobs to the target"
    # the Python the base runs was remembered in the cache repository: the second machine
    # read none of the base's layers to find it
    assert [t for t in records if t.startswith("cib-facts-")]
    fetched = _base_layer_gets(log, python_base)
    assert not fetched, f"the second machine read base layers {fetched}"


def _base_layer_gets(log: str, ref: str) -> list[str]:
    """The GETs of the Python base's layer blob (``ref``, pushed by ``push_python_base``) in
    ``log``, a part of the registry's access log."""
    import hashlib
    import re

    repository = ref.split("/", 1)[1].rsplit(":", 1)[0]
    layer = "sha256:" + hashlib.sha256(python_rootfs_layer()).hexdigest()
    return re.findall(rf'"GET /v2/{re.escape(repository)}/blobs/({layer})', log)


def test_a_bad_python_target_in_the_cache_repository_is_ignored(
        tmp_path: Path, cib_registry: RegistryServer, python_base: str, house: Wheelhouse,
        index: IndexServer, no_pip_config: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """A facts record of the wrong shape (planted, or written by another version) is ignored:
    the base's layers are read again, the image is the same, and the record is rewritten. With
    verify_cache a well-formed record that lies is not trusted either."""
    from cib_core.layer_records import FACTS_ANNOTATION, FACTS_ARTIFACT_TYPE, KEY_ANNOTATION
    from cib_core.referrers import artifact_manifest
    from cib_core.remote.client import RegistryClient

    project = write_project(tmp_path / "app")
    write_pylock(project / "pylock.toml", house, index, default_pins(house))
    cache_repo = f"{cib_registry.host}/ci/pyapp-facts"
    target = cib_registry.ref("pyapp/facts", "v1")
    repo = RegistryClient(cib_registry.host, "ci/pyapp-facts")

    def build(machine: str, **options: object) -> tuple[str, str]:
        monkeypatch.setenv("CIB_CACHE_DIR", str(tmp_path / machine / "cib-cache"))
        offset = Path(cib_registry.log_path).stat().st_size
        image = Image(python_base, target, cache_repo=cache_repo, **options)  # type: ignore[arg-type]
        image.add_python_app(project, index_url=index.simple)
        digest = image.save().digest
        with open(cib_registry.log_path, "rb") as f:
            f.seek(offset)
            return digest, f.read().decode(errors="replace")

    def plant(change: Callable[[dict[str, object]], object]) -> None:
        for tag in (t for t in repo.tags() if t.startswith("cib-facts-")):
            notes = json.loads(repo.manifest_raw(tag)[0])["annotations"]
            facts = json.loads(notes[FACTS_ANNOTATION])
            change(facts)
            doc = artifact_manifest(FACTS_ARTIFACT_TYPE, [], annotations={
                KEY_ANNOTATION: notes[KEY_ANNOTATION], FACTS_ANNOTATION: json.dumps(facts)})
            repo.manifest_upload(tag, json.dumps(doc).encode(),
                                 "application/vnd.oci.image.manifest.v1+json")

    digest, _ = build("machine-1")
    good = {t: json.loads(repo.manifest_raw(t)[0])["annotations"][FACTS_ANNOTATION]
            for t in repo.tags() if t.startswith("cib-facts-")}
    assert good
    plant(lambda facts: facts.update(libc_version="2.36"))  # not a pair of integers
    again, log = build("machine-2")
    assert again == digest
    assert _base_layer_gets(log, python_base), "the bad record was trusted"
    assert {t: json.loads(repo.manifest_raw(t)[0])["annotations"][FACTS_ANNOTATION]
            for t in good} == good, "the bad record was not rewritten"
    # well-formed, and wrong: no wheel has this ABI, so trusting it would fail the build
    plant(lambda facts: facts.update(abi="cp399"))
    verified, log = build("machine-3", verify_cache=True)
    assert verified == digest
    assert _base_layer_gets(log, python_base), "verify_cache trusted the record"
