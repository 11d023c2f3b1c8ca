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
    if args == ["--version"]:
        assert not any(m.startswith(("cib_plugins", "pluggy")) for m in modules), \
            "--version loaded the plugins"


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
