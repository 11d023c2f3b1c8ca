"""The project's wheel made from its last build when only verbatim-copied modules changed
(``cib_plugins/python_app/incremental.py``): real setuptools and flit_core builds, each
incremental wheel compared member by member (``RECORD`` included) with the backend's own
wheel of the same changed project, and every change that must run the backend again."""

from __future__ import annotations

import logging
import os
import textwrap
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from pyapp_support import write_project

from cib_plugins.python_app import project as project_mod

INCREMENTAL = "from its last build"
BACKEND = "with its backend"


def _build(root: Path, out: Path, cache: Path | None, caplog: pytest.LogCaptureFixture) -> tuple[Path, str]:
    """The project's wheel, and the -v line that says how it was made."""
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="cib_plugins.python_app.project"):
        out.mkdir(parents=True)
        wheel = project_mod.build_wheel(project_mod.read_project(root), out,
                                        cache_dir=str(cache) if cache else None, sources=None)
    said = [r.getMessage() for r in caplog.records if "the wheel of" in r.getMessage()]
    return wheel, "\n".join(said)


def _members(wheel: Path) -> dict[str, tuple[bytes, int]]:
    with zipfile.ZipFile(wheel) as archive:
        return {i.filename: (archive.read(i), (i.external_attr >> 16) & 0o111)
                for i in archive.infolist() if not i.is_dir()}


class Builds:
    """Builds of one project with one cache, each into a directory of its own."""

    def __init__(self, root: Path, tmp: Path, caplog: pytest.LogCaptureFixture) -> None:
        self.root, self.tmp, self.caplog = root, tmp, caplog
        self.cache = tmp / "cache"
        self.n = 0

    def build(self) -> tuple[Path, str]:
        self.n += 1
        return _build(self.root, self.tmp / f"out{self.n}", self.cache, self.caplog)

    def reference(self) -> Path:
        """The backend's wheel of the project as it is now, with no cache at all."""
        self.n += 1
        wheel, said = _build(self.root, self.tmp / f"ref{self.n}", None, self.caplog)
        assert INCREMENTAL not in said
        return wheel


def _setuptools_project(root: Path) -> Path:
    write_project(root)
    (root / "README.md").write_text("# the app\n")
    (root / "tests").mkdir()
    (root / "tests" / "test_main.py").write_text("def test():\n    pass\n")
    (root / "src" / "cibtest_app" / "data.txt").write_text("some data\n")
    with (root / "pyproject.toml").open("a") as f:
        f.write('\n[tool.setuptools.package-data]\ncibtest_app = ["*.txt"]\n')
    return root


def _flit_project(root: Path) -> Path:
    (root / "flitapp").mkdir(parents=True)
    (root / "flitapp" / "__init__.py").write_text('"""A flit app."""\n')
    (root / "flitapp" / "main.py").write_text("def run():\n    print('flit')\n")
    (root / "pyproject.toml").write_text(textwrap.dedent("""\
        [build-system]
        requires = ["flit_core>=3.4"]
        build-backend = "flit_core.buildapi"

        [project]
        name = "flitapp"
        version = "1.0"
        description = "A flit app"

        [project.scripts]
        flitapp = "flitapp.main:run"
        """))
    return root


def _append(path: Path, text: str) -> None:
    path.write_text(path.read_text() + text)


@pytest.mark.parametrize("kind", ["setuptools", "flit_core"])
def test_a_one_line_change_gives_the_backend_s_own_wheel(
        kind: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    if kind == "setuptools":
        root = _setuptools_project(tmp_path / "app")
        package = root / "src" / "cibtest_app"
        edits = [(package / "main.py", "# one more line\n", "cibtest_app/main.py"),
                 (package / "__init__.py", "VALUE = 2\n", "cibtest_app/__init__.py"),
                 (package / "data.txt", "more data\n", "cibtest_app/data.txt")]
    else:
        root = _flit_project(tmp_path / "app")
        edits = [(root / "flitapp" / "main.py", "# one more line\n", "flitapp/main.py"),
                 (root / "flitapp" / "__init__.py", "VALUE = 2\n", "flitapp/__init__.py")]
    builds = Builds(root, tmp_path, caplog)
    first, said = builds.build()
    assert BACKEND in said and "no earlier build of this project" in said
    unchanged, said = builds.build()
    assert INCREMENTAL in said and "nothing changed" in said
    assert _members(unchanged) == _members(first)
    for path, line, _ in edits:  # one after the other: each incremental wheel is the next's base
        _append(path, line)
        wheel, said = builds.build()
        assert INCREMENTAL in said, said
        assert str(path.relative_to(root)) in said
        made = _members(wheel)
        expected = _members(builds.reference())
        assert made == expected
        assert wheel.name == first.name
        assert made != _members(first)
    # the pieces that changed, and nothing else: the member, and its RECORD line
    [record] = [m for m in _members(first) if m.endswith(".dist-info/RECORD")]
    changed = {m for m in made if made[m] != _members(first)[m]}
    assert changed == {record} | {member for _, _, member in edits}


def _symlink(root: Path) -> None:
    os.symlink("main.py", root / "src" / "cibtest_app" / "alias.py")


def _chmod(root: Path) -> None:
    os.chmod(root / "src" / "cibtest_app" / "main.py", 0o755)


def _version_attr(root: Path) -> None:
    """A dynamic version read from a module: the module's change changes the metadata."""
    (root / "src" / "cibtest_app" / "__init__.py").write_text('__version__ = "1.1"\n')


FALLBACKS: dict[str, tuple[Callable[[Path], object], str]] = {
    "pyproject.toml": (lambda r: (r / "pyproject.toml").write_text((r / "pyproject.toml").read_text().replace(
        'version = "1.0"', 'version = "1.0"\ndescription = "changed"')),
        "pyproject.toml changed and is not a module the last wheel holds verbatim"),
    "a new file": (lambda r: (r / "src" / "cibtest_app" / "extra.py").write_text("X = 1\n"),
                   "src/cibtest_app/extra.py is new"),
    "a deleted file": (lambda r: (r / "tests" / "test_main.py").unlink(),
                       "tests/test_main.py was removed"),
    "a file not in the wheel": (lambda r: _append(r / "README.md", "more\n"),
                                "README.md changed and is not a module the last wheel holds verbatim"),
    "a new directory": (lambda r: (r / "docs").mkdir(), "the directory docs is new"),
    "an executable bit": (_chmod, "the executable bit of src/cibtest_app/main.py changed"),
    "a symbolic link": (_symlink, "src/cibtest_app/alias.py is a symbolic link"),
    "build code of its own": (lambda r: (r / "setup.py").write_text("from setuptools import setup\nsetup()\n"),
                              "the project has a setup.py (build code of its own)"),
    "Hatch build hooks": (lambda r: _append(r / "pyproject.toml", "[tool.hatch.build.hooks.custom]\n"),
                          "the project configures Hatch build hooks"),
    "a distribution installed beside the backend": (
        lambda r: (r.parent / "site" / "cibtest_plugin-1.0.dist-info").mkdir(),
        "the build inputs changed"),
    "an environment variable backends read": (
        lambda r: os.environ.__setitem__("SETUPTOOLS_CIBTEST", "1"),  # restored by monkeypatch
        "the build inputs changed"),
}


@pytest.mark.parametrize("change", sorted(FALLBACKS))
def test_every_other_change_runs_the_backend(
        change: str, tmp_path: Path, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SETUPTOOLS_CIBTEST", "")
    monkeypatch.delenv("SETUPTOOLS_CIBTEST")  # put back as it was when the test ends
    (tmp_path / "site").mkdir()
    monkeypatch.syspath_prepend(str(tmp_path / "site"))  # where a plugin may be installed
    root = _setuptools_project(tmp_path / "app")
    builds = Builds(root, tmp_path, caplog)
    builds.build()
    make_change, reason = FALLBACKS[change]
    make_change(root)
    wheel, said = builds.build()
    assert BACKEND in said and reason in said, said
    if change != "a symbolic link":  # the backend follows the link: not a wheel to compare
        assert _members(wheel) == _members(builds.reference())
    # and the build after it, with nothing changed, is incremental again, unless the change
    # is one that always runs the backend
    again, said = builds.build()
    never = ("a symbolic link", "build code of its own", "Hatch build hooks")
    assert (INCREMENTAL in said) == (change not in never), said


def test_a_dynamic_version_runs_the_backend(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = _setuptools_project(tmp_path / "app")
    text = (root / "pyproject.toml").read_text().replace('version = "1.0"', 'dynamic = ["version"]')
    (root / "pyproject.toml").write_text(
        text + '\n[tool.setuptools.dynamic]\nversion = {attr = "cibtest_app.__version__"}\n')
    (root / "src" / "cibtest_app" / "__init__.py").write_text('__version__ = "1.0"\n')
    builds = Builds(root, tmp_path, caplog)
    first, _ = builds.build()
    assert first.name.startswith("cibtest_app-1.0-")
    _version_attr(root)
    wheel, said = builds.build()
    assert BACKEND in said and "[project] declares dynamic fields (version)" in said
    assert wheel.name.startswith("cibtest_app-1.1-"), "the module's version is the wheel's"


def test_two_modules_with_the_same_bytes_are_not_taken_for_copies(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Which of two identical files a member was copied from is unknown: both are
    configuration until they differ."""
    root = _setuptools_project(tmp_path / "app")
    package = root / "src" / "cibtest_app"
    (package / "twin.py").write_text((package / "main.py").read_text())
    builds = Builds(root, tmp_path, caplog)
    builds.build()
    _append(package / "twin.py", "# changed\n")
    wheel, said = builds.build()
    assert BACKEND in said and "src/cibtest_app/twin.py changed and is not a module" in said
    assert _members(wheel) == _members(builds.reference())
    _append(package / "twin.py", "# changed again\n")  # now its bytes are its own
    wheel, said = builds.build()
    assert INCREMENTAL in said
    assert _members(wheel) == _members(builds.reference())


def test_a_module_the_configuration_names_is_configuration(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A readme shipped in the package is also the wheel's METADATA: replacing the member
    alone would leave the metadata behind."""
    root = _setuptools_project(tmp_path / "app")
    about = root / "src" / "cibtest_app" / "about.md"
    about.write_text("# about the app\n")
    text = (root / "pyproject.toml").read_text().replace(
        'version = "1.0"', 'version = "1.0"\nreadme = "src/cibtest_app/about.md"')
    (root / "pyproject.toml").write_text(text.replace('["*.txt"]', '["*.txt", "*.md"]'))
    builds = Builds(root, tmp_path, caplog)
    first, _ = builds.build()
    assert "cibtest_app/about.md" in _members(first)
    _append(about, "more about it\n")
    wheel, said = builds.build()
    assert BACKEND in said and "src/cibtest_app/about.md changed and is not a module" in said
    [metadata] = [m for m in _members(wheel) if m.endswith(".dist-info/METADATA")]
    assert b"more about it" in _members(wheel)[metadata][0]


def test_a_file_the_wheel_holds_twice_is_configuration(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A notice shipped in the package and, by a glob, as a license file: replacing one copy
    would leave the other behind."""
    root = _setuptools_project(tmp_path / "app")
    notice = root / "src" / "cibtest_app" / "NOTICE.txt"
    notice.write_text("the notice\n")
    text = (root / "pyproject.toml").read_text().replace(
        'version = "1.0"', 'version = "1.0"\nlicense-files = ["src/*/NOTICE*"]')
    (root / "pyproject.toml").write_text(text)
    builds = Builds(root, tmp_path, caplog)
    first, _ = builds.build()
    copies = [m for m, (data, _) in _members(first).items() if data == b"the notice\n"]
    assert len(copies) == 2 and any(".dist-info/" in m for m in copies), copies
    _append(notice, "more notice\n")
    wheel, said = builds.build()
    assert BACKEND in said and "src/cibtest_app/NOTICE.txt changed and is not a module" in said
    assert _members(wheel) == _members(builds.reference())


def test_no_cache_always_runs_the_backend(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = _setuptools_project(tmp_path / "app")
    for n in (1, 2):
        _, said = _build(root, tmp_path / f"out{n}", None, caplog)
        assert INCREMENTAL not in said
