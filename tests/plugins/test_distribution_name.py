"""cib is published as the distribution ``cib-core`` (``cib`` on the package index is another
project); the import packages, the ``cib`` command and the ``cib`` entry-point group keep
their names, and the builtin plugins report cib-core's version."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import cib_core

ROOT = Path(__file__).resolve().parents[2]
BUILTIN_PLUGINS = {
    "credential-helper": "cib_plugins.credential_helper",
    "custom-files": "cib_plugins.custom_files",
    "docker-config": "cib_plugins.docker_config",
    "dockerhub": "cib_plugins.dockerhub",
    "gcr": "cib_plugins.gcr",
    "http-transport": "cib_plugins.http_transport",
    "keyring": "cib_plugins.keyring_store",
    "local-dir": "cib_plugins.local_dir",
    "python-app": "cib_plugins.python_app",
    "tarball": "cib_plugins.tarball",
}


def test_the_distribution_is_cib_core() -> None:
    dist = importlib.metadata.distribution("cib-core")
    assert dist.metadata["Name"] == "cib-core"
    assert importlib.metadata.version("cib-core") == dist.version == cib_core.__version__
    assert cib_core.__version__ != "0+unknown"
    points = dist.entry_points
    assert {(ep.name, ep.value) for ep in points if ep.group == "console_scripts"} == \
        {("cib", "cib_core.cli:main")}
    assert {ep.name: ep.value for ep in points if ep.group == "cib"} == BUILTIN_PLUGINS


def test_cib_plugins_lists_the_builtins_with_the_cib_core_version() -> None:
    script = Path(sys.executable).parent / "cib"
    env = {k: v for k, v in os.environ.items() if k != "CIB_DISABLE_PLUGIN_AUTOLOAD"}
    done = subprocess.run([str(script), "plugins", "--json"], capture_output=True, text=True,
                          env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    listed = {p["name"]: p for p in json.loads(done.stdout)}
    version = importlib.metadata.version("cib-core")
    for name in BUILTIN_PLUGINS:
        assert listed[name]["builtin"] is True, name
        assert listed[name]["version"] == version, name
    shown = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=60)
    assert shown.stdout.strip() == f"cib {version}"
    assert shown.stdout.strip() == f"cib {version}"


def test_the_test_bed_is_opt_in(tmp_path: Path) -> None:
    """Installing cib adds no fixture to another project's test session; asking for the test
    bed (``-p cib_core.testing``) adds the ``cib_`` fixtures."""
    (tmp_path / "test_nothing.py").write_text("def test_nothing():\n    pass\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}

    def fixtures(*extra: str) -> str:
        done = subprocess.run([sys.executable, "-m", "pytest", "--fixtures", "-p", "no:cacheprovider",
                               *extra, str(tmp_path)], capture_output=True, text=True, cwd=tmp_path,
                              env=env, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    plain = fixtures()
    assert "cib_registry" not in plain and "base_image" not in plain, plain
    loaded = fixtures("-p", "cib_core.testing")
    for name in ("cib_registry", "cib_basic_registry", "cib_token_registry", "cib_base_image",
                 "cib_fault_proxy"):
        assert name in loaded, name
