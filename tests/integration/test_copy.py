"""copy_image between registries and local formats, judged by skopeo and umoci."""

from __future__ import annotations

import hashlib
import json

import pytest

from cib_core import mediatypes as mt
from cib_core.copy import copy_image
from cib_core.errors import ConfigurationError
from cib_core.testing import skopeo_copy, skopeo_inspect, umoci_unpack

pytestmark = pytest.mark.integration


def _digest(raw: bytes) -> str:
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def test_registry_to_registry_keeps_the_digest(cib_base_image, cib_second_registry):
    target = f"{cib_second_registry.host}/copy/plain:1"
    result = copy_image(cib_base_image.ref, target)
    assert result.digest == cib_base_image.digest
    assert _digest(skopeo_inspect(target, raw=True)) == cib_base_image.digest
    assert result.blobs.get("copied") == len(cib_base_image.layers) + 1


def test_index_copies_every_platform_and_keeps_the_digest(cib_multiarch_base_image, cib_second_registry):
    target = f"{cib_second_registry.host}/copy/multi:1"
    result = copy_image(cib_multiarch_base_image.ref, target)
    assert result.digest == cib_multiarch_base_image.digest
    assert result.media_type == mt.OCI_INDEX
    for arch in ("amd64", "arm64"):
        assert skopeo_inspect(target, config=True, arch=arch)["architecture"] == arch


def test_platform_pick_copies_one_manifest(cib_multiarch_base_image, cib_second_registry):
    target = f"{cib_second_registry.host}/copy/arm:1"
    result = copy_image(cib_multiarch_base_image.ref, target, platform="linux/arm64")
    assert result.media_type == mt.OCI_MANIFEST
    assert result.digest == cib_multiarch_base_image.platforms["linux/arm64/v8"].digest
    assert skopeo_inspect(target, config=True)["architecture"] == "arm64"


def test_same_registry_copy_mounts(cib_base_image, cib_registry):
    result = copy_image(cib_base_image.ref, f"{cib_registry.host}/copy/mounted:1")
    assert result.blobs.get("mounted") == len(cib_base_image.layers) + 1
    assert "copied" not in result.blobs


def test_docker_image_into_oci_layout_is_readable_by_skopeo_and_umoci(cib_base_image, tmp_path):
    layout = tmp_path / "layout"
    result = copy_image(cib_base_image.ref, f"oci:{layout}:v1")
    assert result.media_type == mt.OCI_MANIFEST
    raw = skopeo_inspect(f"oci:{layout}:v1", raw=True)
    assert _digest(raw) == result.digest
    manifest = json.loads(raw)
    assert [layer["digest"] for layer in manifest["layers"]] == [
        layer["digest"] for layer in cib_base_image.layers]
    rootfs = umoci_unpack(layout, "v1", tmp_path / "bundle")
    assert (rootfs / "bin" / "busybox").exists()


def test_docker_archive_round_trip_through_a_registry(cib_base_image, cib_registry, tmp_path):
    archive = tmp_path / "saved.tar"
    skopeo_copy(f"docker://{cib_base_image.ref}", f"docker-archive:{archive}:saved/app:1")
    target = f"{cib_registry.host}/copy/from-archive:1"
    result = copy_image(f"docker-archive:{archive}", target)
    manifest = json.loads(skopeo_inspect(target, raw=True))
    assert _digest(skopeo_inspect(target, raw=True)) == result.digest
    assert {layer["mediaType"] for layer in manifest["layers"]} == {mt.DOCKER_LAYER_GZIP}
    config = skopeo_inspect(target, config=True)
    assert config["rootfs"]["diff_ids"] == cib_base_image.config["rootfs"]["diff_ids"]

    out = tmp_path / "out.tar"
    copy_image(target, f"docker-archive:{out}:again/app:2")
    skopeo_copy(f"docker-archive:{out}", f"oci:{tmp_path / 'back'}:t")
    rootfs = umoci_unpack(tmp_path / "back", "t", tmp_path / "bundle")
    assert (rootfs / "bin" / "busybox").exists()


def test_index_into_docker_archive_asks_for_a_platform(cib_multiarch_base_image, tmp_path):
    with pytest.raises(ConfigurationError, match="--platform"):
        copy_image(cib_multiarch_base_image.ref, f"docker-archive:{tmp_path / 'x.tar'}:x/y:1")


def test_cross_registry_copy_streams_each_blob_in_one_request(cib_base_image, cib_second_registry):
    """A registry-to-registry copy sends each blob as one streamed PUT (as skopeo does), not
    as chunked PATCHes that the registry must keep resumable state for."""
    repo = "copy/streamed"
    result = copy_image(cib_base_image.ref, f"{cib_second_registry.host}/{repo}:1")
    assert result.blobs.get("copied") == len(cib_base_image.layers) + 1
    log = cib_second_registry.log_path.read_text(errors="replace")
    assert f'"PATCH /v2/{repo}/blobs/uploads/' not in log
    puts = log.count(f'"PUT /v2/{repo}/blobs/uploads/')
    assert puts == len(cib_base_image.layers) + 1
