"""Several writers tagging images in one OCI layout at once: every tag survives, whether the
writers are threads, processes or `cib copy` commands, and whether the layout exists yet."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from cib_core import mediatypes as mt
from cib_core.formats.oci_layout import OCILayoutStore

WRITERS = 8
TAGS_EACH = 12


def _tag_images(layout: Path, writer: int, start: threading.Barrier | None = None) -> None:
    """One writer: its own store object, one image of its own, TAGS_EACH tags for it."""
    if start is not None:
        start.wait()
    store = OCILayoutStore(layout, create=True)
    config = json.dumps({"architecture": "amd64", "os": "linux", "writer": writer,
                         "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    digest, size = store.put_blob(config)
    manifest = json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST,
                           "config": {"mediaType": mt.OCI_CONFIG, "digest": digest, "size": size},
                           "layers": []}).encode()
    for k in range(TAGS_EACH):
        store.put_manifest(manifest, mt.OCI_MANIFEST, f"w{writer}-{k}")


def _expected() -> set[str]:
    return {f"w{w}-{k}" for w in range(WRITERS) for k in range(TAGS_EACH)}


def _check(layout: Path) -> None:
    store = OCILayoutStore(layout)
    assert set(store.tags()) == _expected()
    index = json.loads((layout / "index.json").read_text())
    assert len(index["manifests"]) == WRITERS * TAGS_EACH
    for writer in range(WRITERS):
        raw, _, _ = store.get_manifest(f"w{writer}-0")
        config_digest = json.loads(raw)["config"]["digest"]
        with store.open_blob(config_digest) as stream:
            assert json.loads(stream.read())["writer"] == writer
    # nothing half-written left behind: the lock lives on the directory, not in a file
    assert sorted(p.name for p in layout.iterdir()) == ["blobs", "index.json", "oci-layout"]


def test_threads_tagging_one_new_layout_lose_nothing(tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    start = threading.Barrier(WRITERS)
    failures: list[BaseException] = []

    def run(writer: int) -> None:
        try:
            _tag_images(layout, writer, start)
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(w,)) for w in range(WRITERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert failures == []
    _check(layout)


_PROCESS = textwrap.dedent("""
    import os, sys, time
    sys.path.insert(0, {tests!r})
    from integration.test_layout_writers import _tag_images
    from pathlib import Path
    go = Path({go!r})
    while not go.exists():
        time.sleep(0.005)
    _tag_images(Path({layout!r}), int(sys.argv[1]))
""")


def test_processes_tagging_one_new_layout_lose_nothing(tmp_path: Path) -> None:
    layout, go = tmp_path / "layout", tmp_path / "go"
    script = _PROCESS.format(tests=str(Path(__file__).parent.parent), go=str(go), layout=str(layout))
    procs = [subprocess.Popen([sys.executable, "-c", script, str(w)], stderr=subprocess.PIPE, text=True)
             for w in range(WRITERS)]
    time.sleep(1.0)   # let every interpreter start, then release them together
    go.touch()
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * WRITERS, errors
    _check(layout)


@pytest.mark.integration
def test_cib_copy_commands_into_one_layout_keep_every_tag(tmp_path: Path) -> None:
    source = tmp_path / "source"
    _tag_images(source, 0)
    target = tmp_path / "target"
    env = dict(os.environ, HOME=str(tmp_path / "home"))
    cib = str(Path(sys.executable).parent / "cib")
    procs = [subprocess.Popen([cib, "copy", f"oci:{source}:w0-{k}", f"oci:{target}:copy{k}"],
                              stderr=subprocess.PIPE, text=True, env=env)
             for k in range(WRITERS)]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * WRITERS, errors
    assert set(OCILayoutStore(target).tags()) == {f"copy{k}" for k in range(WRITERS)}
