"""The plugin host with real third-party distributions from ``tests/fixtures``: ``cib-plugin-hello``
(a credential provider and a command), ``cib-plugin-broken`` (fails on import), and two layer
sources, ``cib-plugin-sourceonly`` (takes only ``source``) and ``cib-plugin-withoptions`` (reads
the layer options), installed with pip into temporary directories and found through
``importlib.metadata``."""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from cib_core import Credentials, PluginError
from cib_core.plugins import AUTOLOAD_ENV, ENTRY_POINT_GROUP, create_plugin_manager

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
DISTRIBUTIONS = {"hello": ("cib-plugin-hello", "cib_plugin_hello"),
                 "broken": ("cib-plugin-broken", "cib_plugin_broken"),
                 "sourceonly": ("cib-plugin-sourceonly", "cib_plugin_sourceonly"),
                 "withoptions": ("cib-plugin-withoptions", "cib_plugin_withoptions")}


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The fixture distributions, each pip-installed into its own ``--target`` (in parallel)."""
    base = tmp_path_factory.mktemp("plugin-dists")
    running = {}
    for name, (project, _) in DISTRIBUTIONS.items():
        source = base / "src" / project
        shutil.copytree(FIXTURES / project, source)  # builds write egg-info next to the source
        target = base / "site" / name
        running[name] = (target, subprocess.Popen(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
             "--no-input", "--disable-pip-version-check", "--target", str(target), str(source)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
    targets = {}
    for name, (target, proc) in running.items():
        output, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"pip install of {name} failed:\n{output.decode()}"
        targets[name] = target
    return targets


def _on_path(target: Path, module: str) -> Iterator[Path]:
    sys.path.insert(0, str(target))
    importlib.invalidate_caches()
    try:
        yield target
    finally:
        sys.path.remove(str(target))
        sys.modules.pop(module, None)
        importlib.invalidate_caches()


@pytest.fixture
def hello(installed: dict[str, Path]) -> Iterator[Path]:
    yield from _on_path(installed["hello"], "cib_plugin_hello")


@pytest.fixture
def broken(installed: dict[str, Path]) -> Iterator[Path]:
    yield from _on_path(installed["broken"], "cib_plugin_broken")


@pytest.fixture
def layer_sources(installed: dict[str, Path]) -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        for name in ("sourceonly", "withoptions"):
            stack.enter_context(contextlib.contextmanager(_on_path)(installed[name], DISTRIBUTIONS[name][1]))
        yield


@pytest.fixture
def autoload(monkeypatch: pytest.MonkeyPatch) -> None:
    """Undo the suite-wide ``CIB_DISABLE_PLUGIN_AUTOLOAD=1`` for this test."""
    monkeypatch.delenv(AUTOLOAD_ENV, raising=False)


def test_entry_point_is_visible_to_importlib_metadata(hello: Path) -> None:
    [ep] = [ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP) if ep.name == "hello"]
    assert ep.value == "cib_plugin_hello"
    assert ep.dist is not None and ep.dist.version == "1.2.3"


def test_fresh_manager_loads_the_plugin_and_calls_its_hooks(hello: Path, autoload: None) -> None:
    pm = create_plugin_manager()
    assert pm.has_plugin("hello")
    creds = pm.hook.cib_credentials(registry="hello.example", repository=None, options={})
    assert creds == Credentials(username="hello-user", secret="hello-secret")
    assert "hello-secret" not in repr(creds)
    # "not mine" for every other registry
    assert pm.get_plugin("hello").cib_credentials(registry="other.example", repository=None) is None

    cli = click.Group("cib")
    pm.hook.cib_commands(cli=cli)
    assert "hello" in cli.commands
    result = CliRunner().invoke(cli, ["hello", "plugins"])
    assert result.exit_code == 0 and result.output == "hello, plugins\n"


def test_plugin_infos_list_name_version_and_hooks(hello: Path, autoload: None) -> None:
    pm = create_plugin_manager()
    [info] = [i for i in pm.plugin_infos() if i.name == "hello"]
    assert info.version == "1.2.3"
    assert info.hooks == ("cib_commands", "cib_credentials")
    assert info.builtin is False
    assert info.to_dict() == {"name": "hello", "version": "1.2.3",
                              "hooks": ["cib_commands", "cib_credentials"], "builtin": False}
    # third-party plugins are listed before the builtins
    infos = pm.plugin_infos()
    assert infos[0].name == "hello" and all(i.builtin for i in infos[1:])


def test_environment_variable_disables_autoload(hello: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(AUTOLOAD_ENV, "1")
    pm = create_plugin_manager()
    assert not pm.has_plugin("hello")
    assert pm.hook.cib_credentials(registry="hello.example", repository=None, options={}) != Credentials(
        username="hello-user", secret="hello-secret")
    assert create_plugin_manager(autoload=True).has_plugin("hello")


def test_blocked_plugin_is_not_loaded(hello: Path, autoload: None) -> None:
    pm = create_plugin_manager(blocked=["hello"])
    assert not pm.has_plugin("hello")
    assert pm.is_blocked("hello")
    assert "hello" not in [i.name for i in pm.plugin_infos()]


def test_import_failure_names_the_plugin(broken: Path, autoload: None) -> None:
    with pytest.raises(PluginError) as caught:
        create_plugin_manager()
    assert caught.value.plugin == "broken"
    message = str(caught.value)
    assert "'broken'" in message and "cib_plugin_broken" in message
    assert "RuntimeError" in message and "on purpose" in message
    # the broken plugin can be blocked, or autoload turned off, to get going again
    assert not create_plugin_manager(blocked=["broken"]).has_plugin("broken")
    assert not create_plugin_manager(autoload=False).has_plugin("broken")


def test_without_the_distribution_nothing_is_loaded(installed: dict[str, Path], autoload: None) -> None:
    # the other tests' sys.path changes were undone
    assert not any(str(t) in sys.path for t in installed.values())
    assert "hello" not in [ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)]
    assert "cib_plugin_hello" not in sys.modules
    assert not create_plugin_manager().has_plugin("hello")


def _layer_files(layer_path: Path) -> dict[str, bytes]:
    import gzip
    import io
    import tarfile

    with open(layer_path, "rb") as f, tarfile.open(fileobj=io.BytesIO(gzip.decompress(f.read()))) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def test_layer_sources_of_both_signatures_build_through_entry_points(
        layer_sources: None, autoload: None, tmp_path: Path) -> None:
    from cib_core import Image

    pm = create_plugin_manager()
    assert {"sourceonly", "withoptions"} <= {name for name, _ in pm.list_name_plugin()}
    image = Image("scratch", f"oci:{tmp_path / 'layout'}:v1", pm=pm)
    image.add_files({"/greeting": "hello:plugins", "/listed": "listing:a,b,secret"},
                    ignores=["secret"], follow_symlinks=False)
    image.save()
    layout = tmp_path / "layout"
    index = json.loads((layout / "index.json").read_text())
    manifest = json.loads((layout / "blobs" / "sha256" /
                           index["manifests"][0]["digest"].split(":")[1]).read_text())
    [layer] = manifest["layers"]
    files = _layer_files(layout / "blobs" / "sha256" / layer["digest"].split(":")[1])
    assert files["greeting"] == b"hello, plugins\n"
    assert files["listed/a"] == b"a" and files["listed/b"] == b"b"
    assert "listed/secret" not in files, "the plugin saw add_files' ignores"
    assert files["listed/options.txt"] == (
        b"target=/listed ignores=secret follow_symlinks=False platform=None\n")


def test_cli_add_reaches_a_third_party_source_with_its_options(
        layer_sources: None, autoload: None, tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    result = subprocess.run(
        [sys.executable, "-c", "import sys; from cib_core.cli import main; sys.exit(main())",
         "build", "--from", "scratch", "--to", f"oci:{layout}:v1", "--add", "listing:x,y:/l",
         "--ignore", "y"],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(p) for p in sys.path if p.endswith(("sourceonly", "withoptions"))])})
    assert result.returncode == 0, result.stderr
    index = json.loads((layout / "index.json").read_text())
    manifest = json.loads((layout / "blobs" / "sha256" /
                           index["manifests"][0]["digest"].split(":")[1]).read_text())
    files = _layer_files(layout / "blobs" / "sha256" / manifest["layers"][0]["digest"].split(":")[1])
    assert files["l/x"] == b"x" and "l/y" not in files
    assert b"ignores=y " in files["l/options.txt"]
