"""The rebuild cache: unchanged inputs skip tar, gzip and upload; any change is seen."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import cib_core.layers.cache as layer_cache
from cib_core import CustomFile, Image
from cib_core.remote.client import RegistryClient

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def no_racy_window(monkeypatch):
    # Files made by a test are seconds old; let the cache trust them at once.
    monkeypatch.setattr(layer_cache, "RACY_SECONDS", 0.0)


@pytest.fixture
def src(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "mod.py").write_text("VALUE = 1\n")
    (root / "big.bin").write_bytes(os.urandom(1 << 20))
    return root


def _uploads(registry, repo: str) -> int:
    """Blob upload sessions the registry itself logged for ``repo``."""
    text = Path(registry.log_path).read_text(errors="replace")
    return text.count(f'"POST /v2/{repo}/blobs/uploads/')


def _build(base_ref: str, target: str, src: Path):
    image = Image(base_ref, target)
    info = image.add_files({"/app": str(src)})
    return image, info


def test_unchanged_inputs_reuse_the_layer_without_uploading(cib_registry, cib_base_image, src, monkeypatch):
    repo = "cache/unchanged"
    _, first = _build(cib_base_image.ref, f"{cib_registry.host}/{repo}:1", src)
    before = _uploads(cib_registry, repo)

    def no_building(*args, **kwargs):
        raise AssertionError("the layer was built again")

    from cib_core.layers.build import LayerBuilder

    monkeypatch.setattr(LayerBuilder, "write", no_building)
    _, second = _build(cib_base_image.ref, f"{cib_registry.host}/{repo}:2", src)
    assert second == first
    assert _uploads(cib_registry, repo) == before


def test_a_changed_file_is_built_again(cib_registry, cib_base_image, src):
    repo = "cache/changed"
    _, first = _build(cib_base_image.ref, f"{cib_registry.host}/{repo}:1", src)
    (src / "pkg" / "mod.py").write_text("VALUE = 2\n")  # same size, new content
    _, second = _build(cib_base_image.ref, f"{cib_registry.host}/{repo}:2", src)
    assert second.digest != first.digest
    assert RegistryClient(cib_registry.host, repo).blob_exists(second.digest)


def test_a_replaced_file_with_the_same_times_is_built_again(cib_registry, cib_base_image, src):
    repo = "cache/replaced"
    _, first = _build(cib_base_image.ref, f"{cib_registry.host}/{repo}:1", src)
    target = src / "pkg" / "mod.py"
    stat = target.stat()
    replacement = src / "pkg" / "new.tmp"
    replacement.write_text("VALUE = 3\n")
    os.utime(replacement, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    os.replace(replacement, target)  # a new inode, as editors and git checkouts make
    _, second = _build(cib_base_image.ref, f"{cib_registry.host}/{repo}:2", src)
    assert second.digest != first.digest


def test_a_hit_whose_blob_the_target_lacks_is_uploaded(cib_registry, cib_base_image, src):
    _, first = _build(cib_base_image.ref, f"{cib_registry.host}/cache/one:1", src)
    _, second = _build(cib_base_image.ref, f"{cib_registry.host}/cache/other:1", src)
    assert second == first
    assert RegistryClient(cib_registry.host, "cache/other").blob_exists(second.digest)


def test_custom_files_are_never_cached(cib_registry, cib_base_image):
    repo = "cache/custom"
    infos = []
    for text in ("one", "two"):
        image = Image(cib_base_image.ref, f"{cib_registry.host}/{repo}:{text}")
        infos.append(image.add_files({"/x": CustomFile(text)}))
    assert infos[0].digest != infos[1].digest


def test_cache_off_with_an_empty_cache_dir(cib_registry, cib_base_image, src, monkeypatch):
    monkeypatch.setenv("CIB_CACHE_DIR", "")
    assert layer_cache.cache_dir() is None
    _, first = _build(cib_base_image.ref, f"{cib_registry.host}/cache/off:1", src)
    assert first.digest.startswith("sha256:")


def test_a_layer_never_built_goes_straight_to_building(cib_registry, cib_base_image, src,
                                                       monkeypatch, tmp_path):
    """No check before a first build (it would walk the tree once more for nothing); the
    second build of the same sources checks, finds the layer unchanged and builds nothing."""
    from cib_core.layers.build import LayerBuilder

    # a machine that never built a layer at this target (the cache knows recipes by target too)
    monkeypatch.setenv("CIB_CACHE_DIR", str(tmp_path / "fresh-cache"))

    checked = []
    real_check = LayerBuilder._check

    def counting_check(self, racy_seconds):
        checked.append(racy_seconds)
        return real_check(self, racy_seconds)

    monkeypatch.setattr(LayerBuilder, "_check", counting_check)
    repo = "cache/first"
    _, first = _build(cib_base_image.ref, f"{cib_registry.host}/{repo}:1", src)
    assert checked == []
    writes = []
    real_write = LayerBuilder.write
    monkeypatch.setattr(LayerBuilder, "write",
                        lambda self, *a, **k: writes.append(1) or real_write(self, *a, **k))
    _, second = _build(cib_base_image.ref, f"{cib_registry.host}/{repo}:2", src)
    assert second == first
    assert len(checked) == 1 and writes == []

