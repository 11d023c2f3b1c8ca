"""Progress for every kind of target: the library's callback for OCI layouts and docker-archive
tarballs as for registries, and the command line's labelled bars and summary line.

The command line runs as a real subprocess with its stderr on a pseudo-terminal (bars) or on a
pipe (only the summary line).
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import struct
import subprocess
import sys
import tarfile
import termios
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cib_core import CustomFile, Image
from cib_core.copy import copy_image
from cib_core.testing import PushedImage, RegistryServer

pytestmark = pytest.mark.integration

SUMMARY = re.compile(r"(pushed|wrote|copied) (\d+) blobs?, [\d.]+ k?M?G?B in [\d.]+ s")


class Recorder:
    """A progress callback that keeps every call, and every step when ``steps`` is set."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: list[tuple[str, int, int | None]] = []
        self.steps: list[tuple[str, int, int | None]] = []

    def __call__(self, name: str, done: int, total: int | None) -> None:
        with self.lock:
            self.calls.append((name, done, total))

    def step(self, label: str, done: int, total: int | None) -> None:
        with self.lock:
            self.steps.append((label, done, total))

    def finals(self) -> dict[str, tuple[int, int | None]]:
        """Each blob's last report: (bytes moved, size)."""
        return {name: (done, total) for name, done, total in self.calls}


def _blob_sizes(manifest: dict[str, Any]) -> dict[str, int]:
    return {d["digest"]: d["size"] for d in [manifest["config"], *manifest["layers"]]}


def _build(base: PushedImage, target: str, progress: Recorder) -> tuple[dict[str, Any], str]:
    """Build base + one new layer into ``target``; (the manifest, the new layer's label)."""
    image = Image(base.ref, target, progress=progress)
    image.add_files({"/srv/hello.txt": CustomFile(b"hello\n" * 10_000)})
    return image.save().manifest, "new layer /srv/hello.txt"


def _check_finals(progress: Recorder, manifest: dict[str, Any], new_layer_label: str) -> None:
    """Every blob of the image was reported up to its size; the new layer under its label."""
    sizes = _blob_sizes(manifest)
    new_layer = manifest["layers"][-1]
    expected = {d: (s, s) for d, s in sizes.items() if d != new_layer["digest"]}
    expected[new_layer_label] = (new_layer["size"], new_layer["size"])
    assert progress.finals() == expected
    for name, done, total in progress.calls:
        assert total is None or done <= total, (name, done, total)


def test_build_into_an_oci_layout_reports_every_blob(cib_base_image, tmp_path):
    progress = Recorder()
    manifest, label = _build(cib_base_image, f"oci:{tmp_path / 'layout'}:1", progress)
    _check_finals(progress, manifest, label)
    assert progress.steps == []  # nothing to do after the blobs are in a layout


def test_build_into_a_docker_archive_reports_every_blob_and_the_tarball(cib_base_image, tmp_path):
    progress = Recorder()
    archive = tmp_path / "app.tar"
    manifest, label = _build(cib_base_image, f"docker-archive:{archive}:progress/app:1", progress)
    _check_finals(progress, manifest, label)

    with tarfile.open(archive) as tar:
        entry = json.loads(tar.extractfile("manifest.json").read())[0]  # type: ignore[union-attr]
        sizes = {m.name: m.size for m in tar.getmembers()}
    step_finals = {name: (done, total) for name, done, total in progress.steps}
    assert len(entry["Layers"]) == len(manifest["layers"])
    for layer, member in zip(manifest["layers"], entry["Layers"], strict=True):
        short = layer["digest"].split(":", 1)[1][:12]
        # read back to check the diff_id, then written uncompressed into the tarball
        assert step_finals[f"check {short}"] == (layer["size"], layer["size"])
        assert step_finals[f"write {short}"] == (sizes[member], sizes[member])


@pytest.mark.parametrize("kind", ["oci", "docker-archive"])
def test_copy_into_a_local_target_reports_every_blob(cib_base_image, tmp_path, kind):
    progress = Recorder()
    target = f"oci:{tmp_path / 'layout'}:1" if kind == "oci" else \
        f"docker-archive:{tmp_path / 'app.tar'}:progress/app:1"
    copy_image(cib_base_image.ref, target, progress=progress)
    sizes = _blob_sizes(cib_base_image.manifest)
    assert progress.finals() == {d: (s, s) for d, s in sizes.items()}


def test_a_plain_callback_is_never_given_steps(cib_base_image, tmp_path):
    calls: list[tuple[str, int, int | None]] = []
    copy_image(cib_base_image.ref, f"docker-archive:{tmp_path / 'app.tar'}",
               progress=lambda *args: calls.append(args))
    assert {name for name, _done, _total in calls} == set(_blob_sizes(cib_base_image.manifest))


# --------------------------------------------------------------------------------------------
# the command line: bars on a terminal, one summary line elsewhere
# --------------------------------------------------------------------------------------------

def _cib_script() -> str:
    script = Path(sys.executable).parent / "cib"
    assert script.exists(), "the cib console script is not installed (pip install -e .)"
    return str(script)


def _env(home: Path) -> dict[str, str]:
    return dict(os.environ, HOME=str(home), DOCKER_CONFIG=str(home / ".docker"),
                XDG_CONFIG_HOME=str(home / ".config"), XDG_RUNTIME_DIR=str(home / "run"),
                PYTHON_KEYRING_BACKEND="keyring.backends.null.Keyring", NO_PROXY="127.0.0.1")


def on_a_terminal(argv: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    """Run ``argv`` with stderr on a pseudo-terminal 120 columns wide: (exit code, stdout,
    everything written to the terminal)."""
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    drawn: list[bytes] = []

    def read() -> None:
        while True:
            try:
                data = os.read(controller, 65536)
            except OSError:  # the terminal side is closed: all read
                return
            if not data:
                return
            drawn.append(data)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        result = subprocess.run(argv, stdout=subprocess.PIPE, stderr=terminal,
                                stdin=subprocess.DEVNULL, env=env, timeout=120, check=False)
    finally:
        os.close(terminal)
        reader.join(timeout=60)
        os.close(controller)
    return result.returncode, result.stdout.decode(), b"".join(drawn).decode(errors="replace")


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    root = tmp_path / "app"
    root.mkdir()
    (root / "hello.txt").write_text("hello\n" * 10_000)
    return root


def _target(kind: str, registry: RegistryServer, tmp_path: Path, name: str) -> str:
    return {"registry": registry.ref(f"progress/{name}", "1"),
            "oci": f"oci:{tmp_path / name}:1",
            "docker-archive": f"docker-archive:{tmp_path / name}.tar:progress/{name}:1"}[kind]


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "home"
    (path / ".docker").mkdir(parents=True)
    yield path


@pytest.mark.parametrize("kind", ["registry", "oci", "docker-archive"])
def test_build_on_a_terminal_draws_labelled_bars_and_the_summary(cib_registry, cib_base_image, app_dir,
                                                                 tmp_path, home, kind):
    target = _target(kind, cib_registry, tmp_path, f"build-{kind}")
    code, stdout, drawn = on_a_terminal(
        [_cib_script(), "build", "--from", cib_base_image.ref, "--to", target,
         "--add", f"{app_dir}:/app"], _env(home))
    assert code == 0, drawn
    assert re.fullmatch(r"\S+@sha256:[0-9a-f]{64}\n", stdout)  # only the result on stdout
    assert "new layer /app" in drawn  # the new layer's bar, labelled
    assert "B/s" in drawn  # bars with transfer rates
    if kind != "registry":  # a registry mounts the base layers; a local target copies them
        assert cib_base_image.layers[0]["digest"].split(":", 1)[1][:12] in drawn
    last = drawn.replace("\r", "\n").strip().splitlines()[-1]
    found = SUMMARY.fullmatch(last.strip())
    assert found is not None, last
    assert found.group(1) == ("pushed" if kind == "registry" else "wrote")
    assert int(found.group(2)) == (2 if kind == "registry" else 2 + len(cib_base_image.layers))


@pytest.mark.parametrize("kind", ["registry", "oci", "docker-archive"])
def test_copy_on_a_terminal_draws_labelled_bars_and_the_summary(cib_second_registry, cib_base_image,
                                                                tmp_path, home, kind):
    target = _target(kind, cib_second_registry, tmp_path, f"copy-{kind}")
    code, _stdout, drawn = on_a_terminal([_cib_script(), "copy", cib_base_image.ref, target],
                                         _env(home))
    assert code == 0, drawn
    for layer in cib_base_image.layers:
        assert layer["digest"].split(":", 1)[1][:12] in drawn
    if kind == "docker-archive":  # the tarball is written from the blobs at the end
        assert "write " + cib_base_image.layers[0]["digest"].split(":", 1)[1][:12] in drawn
    last = drawn.replace("\r", "\n").strip().splitlines()[-1]
    found = SUMMARY.fullmatch(last.strip())
    assert found is not None and found.group(1) == "copied", last
    assert int(found.group(2)) == 1 + len(cib_base_image.layers)


@pytest.mark.parametrize("kind", ["registry", "oci", "docker-archive"])
def test_off_a_terminal_only_the_summary_line(cib_registry, cib_base_image, app_dir, tmp_path, home, kind):
    target = _target(kind, cib_registry, tmp_path, f"plain-{kind}")
    result = subprocess.run([_cib_script(), "build", "--from", cib_base_image.ref, "--to", target,
                             "--add", f"{app_dir}:/app"], capture_output=True, text=True,
                            env=_env(home), timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stderr and "\x1b" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and SUMMARY.fullmatch(lines[0]), result.stderr
    quiet = subprocess.run([_cib_script(), "-q", "build", "--from", cib_base_image.ref, "--to",
                            _target(kind, cib_registry, tmp_path, f"quiet-{kind}"),
                            "--add", f"{app_dir}:/app"], capture_output=True, text=True,
                           env=_env(home), timeout=120, check=False)
    assert quiet.returncode == 0 and quiet.stderr == ""
