"""`cib validate` against real registries and OCI layouts: a valid image passes; a blob
deleted through the registry API, a blob corrupted on the registry's disk, a wrong diff_id,
size or media type are each named, all of them in one run."""

from __future__ import annotations

import gzip
import json
import os
import uuid

import pytest
import requests
from mutation_support import (
    base_config,
    blob_data_path,
    isolate_home,
    login,
    one_error_line,
    run,
    sha256,
)

from cib_core import mediatypes as mt
from cib_core.documents import canonical_json
from cib_core.formats.oci_layout import OCILayoutStore
from cib_core.testing import make_layer, push_image
from cib_core.verify import Fault, check_image, validate_image

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    return isolate_home(tmp_path, monkeypatch)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def random_layers(count: int) -> list[bytes]:
    """Layers no other test has: deleting or corrupting them touches nothing shared."""
    return [make_layer({f"data/{i}.bin": os.urandom(4096 + i)}) for i in range(count)]


def corrupt(path) -> None:
    """Flip bytes in the middle of a file, keeping its size."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 8] = bytes(b ^ 0xFF for b in data[middle:middle + 8])
    path.write_bytes(bytes(data))


def test_valid_images_pass_with_a_summary(cib_any_registry, cib_multiarch_base_image):
    server = cib_any_registry
    login(server)
    layers = random_layers(2)
    image = push_image(server, unique("validate/ok"), "1", layers, base_config(layers, ["ADD a", "ADD b"]),
                       oci=False)
    result = run("validate", image.ref)
    assert result.exit_code == 0, result.stdout + result.stderr
    assert result.stdout == (f"{image.ref}: valid (linux/amd64): 1 manifest, 1 config, 2 layers, "
                             f"{_kb(image)} read\n")
    assert result.stderr == ""
    multi = run("validate", cib_multiarch_base_image.ref, "--json")
    assert multi.exit_code == 0, multi.stdout
    out = json.loads(multi.stdout)
    assert out["valid"] is True and out["faults"] == []
    assert out["digest"] == cib_multiarch_base_image.digest and out["mediaType"] == mt.OCI_INDEX
    # the /etc layer is shared by both platforms and read once
    assert out["checked"] == {"platforms": ["linux/amd64", "linux/arm64/v8"], "manifests": 3,
                              "configs": 2, "layers": 3,
                              "bytes": sum(len(b) for b in cib_multiarch_base_image.blobs.values()),
                              "skipped": []}


def _kb(image) -> str:
    from cib_core.cli.bars import format_size

    return format_size(sum(len(b) for b in image.blobs.values()))


def test_a_deleted_and_a_corrupted_blob_and_a_wrong_diff_id_are_all_named(cib_registry):
    layers = random_layers(4)
    config = base_config(layers, ["ADD 0", "ADD 1", "ADD 2", "ADD 3"])
    wrong = sha256(b"not the content")
    config["rootfs"]["diff_ids"][3] = wrong
    repo = unique("validate/broken")
    image = push_image(cib_registry, repo, "1", layers, config, oci=True)
    assert run("validate", image.ref).exit_code == 1  # the diff_id alone
    digests = [d["digest"] for d in image.layers]
    # delete layer 1 through the registry API (delete is enabled in the test bed)
    deleted = requests.delete(f"{cib_registry.url}/v2/{repo}/blobs/{digests[0]}", timeout=30)
    assert deleted.status_code == 202
    # corrupt layer 3 where the registry keeps it, keeping its size
    corrupt(blob_data_path(cib_registry, digests[2]))

    result = run("validate", image.ref)
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [
        f"layer 1 {digests[0]}: is missing: the blob is not in the store",
        f"layer 3 {digests[2]}: content does not match its digest (it hashes to "
        f"{sha256(blob_data_path(cib_registry, digests[2]).read_bytes())})",
        f"layer 4 {digests[3]}: uncompressed content hashes to {sha256(gzip.decompress(layers[3]))}; "
        f"the config's diff_id is {wrong}",
    ]
    assert one_error_line(result.stderr) == f"cib: error: {image.ref} is not valid: 3 faults"
    # the library gives the same, as values
    faults = validate_image(image.ref)
    assert [f.where for f in faults] == [f"layer {i} {digests[i - 1]}" for i in (1, 3, 4)]
    assert isinstance(faults[0], Fault) and str(faults[0]) == result.stdout.splitlines()[0]


def test_an_index_with_a_missing_child_and_a_bad_config(cib_registry, cib_multiarch_base_image):
    """A child manifest deleted, and another platform's config deleted: both named, and the
    good parts of the index still read."""
    repo = unique("validate/index")
    copied = run("copy", cib_multiarch_base_image.ref, f"{cib_registry.host}/{repo}:1")
    assert copied.exit_code == 0, copied.stderr
    amd64 = cib_multiarch_base_image.platforms["linux/amd64"]
    arm64 = cib_multiarch_base_image.platforms["linux/arm64/v8"]
    resp = requests.delete(f"{cib_registry.url}/v2/{repo}/manifests/{amd64.digest}", timeout=30)
    assert resp.status_code == 202
    resp = requests.delete(f"{cib_registry.url}/v2/{repo}/blobs/{arm64.config_digest}", timeout=30)
    assert resp.status_code == 202
    result = check_image(f"{cib_registry.host}/{repo}:1")
    assert [str(f) for f in result.faults] == [
        f"index entry 1 (linux/amd64) {amd64.digest}: is missing: the manifest is not in the store",
        f"linux/arm64/v8 config {arm64.config_digest}: is missing: the blob is not in the store",
    ]
    assert result.layers == 2 and not result.ok


def test_a_layout_with_wrong_sizes_media_types_and_a_corrupt_blob(tmp_path):
    """In an OCI layout anything can be written: a manifest whose layer is plain tar under a
    gzip media type, with a wrong size, and a config whose platform contradicts the index."""
    store = OCILayoutStore(tmp_path / "layout", create=True)
    plain = make_layer({"a.txt": "a\n"}, compress=False)
    gz = make_layer({"b.txt": "b\n"})
    for blob in (plain, gz):
        store.put_blob(blob)
    config = base_config([plain, gz], ["ADD a", "ADD b"], architecture="arm64")
    config_raw = canonical_json(config)
    store.put_blob(config_raw)
    manifest = {"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST,
                "config": {"mediaType": mt.OCI_CONFIG, "digest": sha256(config_raw),
                           "size": len(config_raw)},
                "layers": [{"mediaType": mt.OCI_LAYER_GZIP, "digest": sha256(plain), "size": len(plain)},
                           {"mediaType": mt.DOCKER_LAYER_GZIP, "digest": sha256(gz),
                            "size": len(gz) + 1}]}
    manifest_raw = canonical_json(manifest)
    store.put_blob(manifest_raw)
    index = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": [
        {"mediaType": mt.OCI_MANIFEST, "digest": sha256(manifest_raw), "size": len(manifest_raw),
         "platform": {"os": "linux", "architecture": "amd64"}}]}
    store.put_manifest(canonical_json(index), mt.OCI_INDEX, "v1")
    result = run("validate", f"oci:{tmp_path / 'layout'}:v1")
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [
        f"linux/amd64 config {sha256(config_raw)}: is a linux/arm64 config; the index entry says "
        "linux/amd64",
        f"linux/amd64 layer 1 {sha256(plain)}: media type {mt.OCI_LAYER_GZIP} says gzip but the "
        "blob is uncompressed",
        f"linux/amd64 layer 2 {sha256(gz)}: media type {mt.DOCKER_LAYER_GZIP} is not a layer type "
        "of an OCI manifest",
        f"linux/amd64 layer 2 {sha256(gz)}: is {len(gz)} bytes; the manifest says {len(gz) + 1}",
    ]
    assert "4 faults" in one_error_line(result.stderr)
    # a blob corrupted in the layout, and one removed
    corrupt(store.blob_path(sha256(gz)))
    store.blob_path(sha256(config_raw)).unlink()
    faults = [str(f) for f in validate_image(f"oci:{tmp_path / 'layout'}:v1")]
    assert faults[0] == f"linux/amd64 config {sha256(config_raw)}: is missing: the blob is not in the store"
    assert any(f.startswith(f"linux/amd64 layer 2 {sha256(gz)}: content does not match its digest")
               for f in faults)


def test_validate_errors_that_are_not_faults(cib_registry):
    missing = run("validate", f"{cib_registry.host}/validate/none:1")
    assert missing.exit_code == 1 and "404" in one_error_line(missing.stderr)
    assert missing.stdout == ""
    scratch = run("validate", "scratch")
    assert scratch.exit_code == 1 and "scratch" in one_error_line(scratch.stderr)
