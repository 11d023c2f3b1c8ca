"""Start-up: what `import cib_core`, `cib --version` and `cib --help` load, in fresh interpreters.

A command that needs no registry must not pay for requests and urllib3, and none may read the
metadata of every installed distribution (importlib.metadata) when the plugin host's list of
entry points is cached.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("requests", "urllib3", "importlib.metadata", "charset_normalizer", "keyring", "google")

PROBE = """
import io, json, sys, contextlib
args = json.loads(sys.argv[1])
if args is None:
    import cib_core
else:
    from cib_core.cli import main
    with contextlib.redirect_stdout(io.StringIO()) as out:
        code = main(args)
    assert code == 0, (code, out.getvalue())
print(json.dumps(sorted(m for m in sys.modules)))
"""


def loaded(args: list[str] | None, cache: Path) -> set[str]:
    env = dict(os.environ, CIB_CACHE_DIR=str(cache))
    env.pop("CIB_DISABLE_PLUGIN_AUTOLOAD", None)
    out = subprocess.run([sys.executable, "-c", PROBE, json.dumps(args)], env=env, check=True,
                         capture_output=True, text=True).stdout
    return set(json.loads(out))


def heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m.startswith(HEAVY))


def test_import_cib_core_loads_only_the_errors(tmp_path: Path) -> None:
    modules = loaded(None, tmp_path)
    assert heavy(modules) == []
    ours = sorted(m for m in modules if m.startswith(("cib_core", "cib_plugins", "pluggy", "click")))
    assert ours == ["cib_core", "cib_core.errors"]


@pytest.mark.parametrize("args", [["--version"], ["--help"]])
def test_version_and_help_load_no_requests_nor_distribution_metadata(tmp_path: Path,
                                                                      args: list[str]) -> None:
    loaded(["plugins"], tmp_path)  # fills the entry-point cache, as any earlier command would
    modules = loaded(args, tmp_path)
    assert heavy(modules) == []
    # no installed plugin adds commands, which the cache knows: none is loaded
    assert not any(m.startswith(("cib_plugins", "pluggy")) for m in modules), \
        f"{args[0]} loaded the plugins"


GREET = '''import click
from cib_core import hookimpl


@hookimpl
def cib_commands(cli):
    @cli.command()
    def greet():
        """Say hello."""
'''


def test_help_loads_the_plugins_that_add_commands(tmp_path: Path) -> None:
    """A plugin whose module changed since it was last seen is loaded again, so a command it
    has just gained is listed."""
    site = tmp_path / "site"
    info = site / "cmd_plugin-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: cmd-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[cib]\ncmdp = cmd_plugin\n")
    module = site / "cmd_plugin.py"
    module.write_text("from cib_core import hookimpl\n")
    env = dict(os.environ, CIB_CACHE_DIR=str(tmp_path / "cache"), PYTHONPATH=os.pathsep.join(
        [str(site), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    env.pop("CIB_DISABLE_PLUGIN_AUTOLOAD", None)

    def help_text() -> str:
        return subprocess.run([sys.executable, "-m", "cib_core.cli.app", "--help"], env=env,
                              check=True, capture_output=True, text=True).stdout

    assert "greet" not in help_text()
    assert "greet" not in help_text()  # from the cache now
    module.write_text(GREET)
    assert "greet" in help_text()
    assert "greet" in help_text()


def test_the_entry_point_cache_follows_a_new_distribution(tmp_path: Path) -> None:
    """A distribution installed after the cache was written is found: the cache is keyed on
    the sys.path directories, which change when one is added."""
    cache = tmp_path / "cache"
    site = tmp_path / "site"
    site.mkdir()
    env = dict(os.environ, CIB_CACHE_DIR=str(cache), PYTHONPATH=os.pathsep.join(
        [str(site), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    env.pop("CIB_DISABLE_PLUGIN_AUTOLOAD", None)
    listing = [sys.executable, "-m", "cib_core.cli.app", "plugins", "--json"]

    def names() -> set[str]:
        out = subprocess.run(listing, env=env, check=True, capture_output=True, text=True).stdout
        return {p["name"] for p in json.loads(out)}

    assert "late" not in names()
    (site / "late_plugin.py").write_text("from cib_core import hookimpl\n")
    dist = site / "late_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: late-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[cib]\nlate = late_plugin\n")
    assert "late" in names()


def test_the_quick_version_is_clicks(capsys: pytest.CaptureFixture[str]) -> None:
    """`cib --version` alone is answered before click loads; with other options click answers:
    the same line."""
    from cib_core.cli import main

    assert main(["--version"]) == 0
    quick = capsys.readouterr().out
    assert main(["-q", "--version"]) == 0
    assert capsys.readouterr().out == quick
    assert quick.startswith("cib ") and quick.count("\n") == 1


def test_the_command_table_describes_each_command_as_its_help_does() -> None:
    """`cib --help` lists cib's commands from app.COMMANDS without loading them: each entry
    names the right command, and its text shortens to what the command's own help would."""
    import click

    from cib_core.cli.app import COMMANDS, cli

    commands = cli.builtin_commands()
    assert sorted(commands) == sorted(COMMANDS)
    for name, command in commands.items():
        assert command.name == name or cli.commands[name] is command
        summary = click.Command(name, help=COMMANDS[name][2])
        for limit in (20, 45, 70, 200):
            assert summary.get_short_help_str(limit) == command.get_short_help_str(limit), name


def test_help_loads_no_command_module(tmp_path: Path) -> None:
    loaded(["plugins"], tmp_path)
    modules = loaded(["--help"], tmp_path)
    from cib_core.cli.app import COMMANDS

    assert not {f"cib_core.cli.{module}" for module, _, _ in COMMANDS.values()} & modules
    assert "logging" not in modules


def test_help_is_kept_as_click_renders_it_and_printed_without_click(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`cib --help` keeps click's text when no plugin adds commands; the next one prints it
    without loading click: the same bytes, for each terminal width, and click renders it
    again for a width not seen before."""
    def run(module_args: list[str], columns: int) -> str:
        env = dict(os.environ, CIB_CACHE_DIR=str(tmp_path), COLUMNS=str(columns))
        env.pop("CIB_DISABLE_PLUGIN_AUTOLOAD", None)
        return subprocess.run([sys.executable, *module_args], env=env, check=True,
                              capture_output=True, text=True).stdout

    quick = ["-c", "import sys; from cib_core.cli import main; sys.exit(main(['--help']))"]
    by_click = ["-m", "cib_core.cli.app", "--help"]
    loaded(["plugins"], tmp_path)  # the entry points and their hooks known, as after any command
    for columns in (90, 60):
        expected = run(by_click, columns)
        assert "Commands:" in expected
        assert [run(quick, columns) for _ in range(3)] == [expected] * 3
    monkeypatch.setenv("COLUMNS", "60")
    modules = loaded(["--help"], tmp_path)
    assert not any(m == "click" or m.startswith("click.") for m in modules), "click was loaded"


@pytest.mark.parametrize("columns", [None, "0", "wide", "120", "-3"])
def test_the_help_width_is_shutils(monkeypatch: pytest.MonkeyPatch, columns: str | None) -> None:
    """The kept help's key uses the width click formats for (shutil's), found without shutil."""
    import shutil

    from cib_core.cli import _columns

    if columns is None:
        monkeypatch.delenv("COLUMNS", raising=False)
    else:
        monkeypatch.setenv("COLUMNS", columns)
    assert _columns() == shutil.get_terminal_size().columns
