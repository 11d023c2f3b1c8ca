"""The ``cib_app_packager`` hook with a real third-party distribution: ``cib-plugin-toyapp`` (a
packager for a made-up language) pip-installed into a temporary directory, found through its
entry point, building a two-platform image; and the builtin python-app packager as a plugin."""

from __future__ import annotations

import gzip
import importlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cib_core import Image, PackagingError, PluginError
from cib_core.plugins import AUTOLOAD_ENV, create_plugin_manager
from cib_core.testing import PushedImage

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "cib-plugin-toyapp"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("toyapp")
    source = base / "src"
    shutil.copytree(FIXTURE, source)
    target = base / "site"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-input", "--disable-pip-version-check", "--target", str(target), str(source)],
        capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout + done.stderr
    return target


@pytest.fixture
def toyapp(installed: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(AUTOLOAD_ENV, raising=False)
    sys.path.insert(0, str(installed))
    importlib.invalidate_caches()
    try:
        yield
    finally:
        sys.path.remove(str(installed))
        sys.modules.pop("cib_plugin_toyapp", None)
        importlib.invalidate_caches()


def _toy_project(directory: Path) -> Path:
    directory.mkdir()
    (directory / "toy.json").write_text(json.dumps({"main": "hello.toy"}))
    (directory / "hello.toy").write_text("say hello\n")
    return directory


def _blob(layout: Path, digest: str) -> bytes:
    return (layout / "blobs" / "sha256" / digest.split(":")[1]).read_bytes()


def _files(layout: Path, digest: str) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(_blob(layout, digest)))) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()  # type: ignore[union-attr]
                if m.isfile()}


@pytest.mark.integration
def test_a_toy_packager_from_an_entry_point_builds_a_two_platform_image(
        toyapp: None, tmp_path: Path, cib_multiarch_base_image: PushedImage) -> None:
    pm = create_plugin_manager()
    [info] = [i for i in pm.plugin_infos() if i.name == "toyapp"]
    assert info.version == "0.3.0" and info.hooks == ("cib_app_packager",) and not info.builtin
    project = _toy_project(tmp_path / "hello")
    layout = tmp_path / "out"
    image = Image(cib_multiarch_base_image.ref, f"oci:{layout}:v1", pm=pm)
    plan = image.plan_app(project, kind="toy")
    assert [(p, a.summary) for p, a in plan] == [
        ("linux/amd64", ("linux/amd64: toy runtime for linux/amd64",)),
        ("linux/arm64/v8", ("linux/arm64/v8: toy runtime for linux/arm64/v8",))]
    layers = image.add_app(project)  # no kind: the toy packager recognizes its toy.json
    image.save()
    assert len(layers) == 3  # a runtime per platform, one project layer for both

    index = json.loads((layout / "index.json").read_text())
    top = json.loads(_blob(layout, index["manifests"][0]["digest"]))
    seen = {}
    for entry in top["manifests"]:
        manifest = json.loads(_blob(layout, entry["digest"]))
        platform = "/".join(v for k, v in sorted(entry["platform"].items()) if k != "os")
        runtime, project_layer = manifest["layers"][-2:]
        seen[platform] = project_layer["digest"]
        assert b"toy runtime for linux/" + entry["platform"]["architecture"].encode() in \
            _files(layout, runtime["digest"])["usr/local/bin/toy-run"]
        assert _files(layout, project_layer["digest"])["app/hello.toy"] == b"say hello\n"
        config = json.loads(_blob(layout, manifest["config"]["digest"]))["config"]
        assert config["Entrypoint"] == ["/usr/local/bin/toy-run", "/app/hello.toy"]
        assert "Cmd" not in config  # the base's sh was for its own entrypoint
        assert "TOY_HOME=/app" in config["Env"] and config["WorkingDir"] == "/app"
    assert len(set(seen.values())) == 1


def test_a_project_no_packager_claims(toyapp: None, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    image = Image("scratch", f"oci:{tmp_path / 'out'}", pm=create_plugin_manager())
    with pytest.raises(PackagingError, match="no app packager recognizes this project"):
        image.add_app(tmp_path / "empty")
    with pytest.raises(PackagingError, match="no app packager for the kind 'cobol'"):
        image.add_app(tmp_path / "empty", kind="cobol")
    with pytest.raises(PackagingError, match="does not exist"):
        image.add_app(tmp_path / "missing")
    with pytest.raises(PackagingError, match="has no toy.json"):
        image.add_app(tmp_path / "empty", kind="toy")


def test_the_python_packager_is_a_builtin_plugin(tmp_path: Path) -> None:
    pm = create_plugin_manager(autoload=False)
    [info] = [i for i in pm.plugin_infos() if i.name == "python-app"]
    assert info.builtin and info.hooks == ("cib_app_packager",)
    # blocked, nothing packages Python any more
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "pyproject.toml").write_text("[project]\nname = 'x'\nversion = '1'\n")
    image = Image("scratch", f"oci:{tmp_path / 'out'}", pm=create_plugin_manager(
        autoload=False, blocked=["python-app"]))
    with pytest.raises(PackagingError, match="no app packager for the kind 'python'"):
        image.add_python_app(tmp_path / "app")


def test_a_packager_that_misbehaves_is_named(tmp_path: Path) -> None:
    from cib_core import hookimpl
    from cib_core.plugin_api import AppImage, AppLayer

    class Broken:
        @hookimpl
        def cib_app_packager(self, project: str) -> Any:
            return [AppImage(layers=(AppLayer("boom", "k", lambda: 1 / 0),))]

    class Wrong:
        @hookimpl
        def cib_app_packager(self, project: str) -> Any:
            return {"not": "a list"}

    for plugin, name, expected in ((Broken(), "broken-packager", "ZeroDivisionError"),
                                   (Wrong(), "wrong-packager", "not a list of AppImage")):
        pm = create_plugin_manager(autoload=False)
        pm.register_plugin(plugin, name)
        (tmp_path / name).mkdir()
        image = Image("scratch", f"oci:{tmp_path / 'out'}", pm=pm)
        with pytest.raises(PluginError) as caught:
            image.add_app(tmp_path / name, kind="anything")
        assert caught.value.plugin == name and expected in str(caught.value)
