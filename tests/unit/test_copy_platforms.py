"""Which part of an image a platform-limited copy takes (``wanted_platforms``,
``select_platforms``), on an OCI layout in a temporary directory: no registry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cib_core.copy import select_platforms, wanted_platforms
from cib_core.digest import sha256_digest
from cib_core.documents import canonical_json
from cib_core.errors import ConfigurationError, ManifestError, NotFound
from cib_core.formats.oci_layout import OCILayoutStore
from cib_core.models import Platform

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


def test_wanted_platforms_parses_lists_and_commas():
    assert wanted_platforms(None) is None
    assert wanted_platforms("all") is None
    assert wanted_platforms(["all"]) is None
    assert wanted_platforms("linux/amd64, linux/arm64/v8") == [
        Platform("linux", "amd64"), Platform("linux", "arm64", "v8")]
    assert wanted_platforms(["linux/amd64", "linux/s390x,linux/amd64"]) == [
        Platform("linux", "amd64"), Platform("linux", "s390x")]


@pytest.mark.parametrize(("value", "says"), [
    ("all,linux/amd64", "'all' cannot be combined"),
    ("linux/amd64,", "separated by commas"),
    ([], "separated by commas"),
    ("linux", "OS/ARCH[/VARIANT]"),
])
def test_wanted_platforms_refuses_nonsense(value, says):
    with pytest.raises(ConfigurationError, match=says.replace("[", r"\[").replace("]", r"\]")):
        wanted_platforms(value)


def _image(store: OCILayoutStore, platform: str) -> dict[str, object]:
    os_name, arch, *variant = platform.split("/")
    config = {"os": os_name, "architecture": arch, "rootfs": {"type": "layers", "diff_ids": []}}
    if variant:
        config["variant"] = variant[0]
    config_raw = canonical_json(config)
    store.put_blob(config_raw)
    manifest = canonical_json({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": [],
                               "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                          "digest": sha256_digest(config_raw),
                                          "size": len(config_raw)}})
    store.put_manifest(manifest, OCI_MANIFEST, None)
    platform_dict = {"architecture": arch, "os": os_name, **({"variant": variant[0]} if variant else {})}
    return {"mediaType": OCI_MANIFEST, "digest": sha256_digest(manifest), "size": len(manifest),
            "platform": platform_dict}


@pytest.fixture
def layout(tmp_path: Path) -> tuple[OCILayoutStore, bytes, list[dict[str, object]]]:
    store = OCILayoutStore(tmp_path / "layout", create=True)
    entries = [_image(store, p) for p in ("linux/amd64", "linux/arm64/v8", "linux/s390x")]
    index = canonical_json({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries,
                            "annotations": {"org.example": "kept"}})
    store.put_manifest(index, OCI_INDEX, "1")
    return store, index, entries


def test_a_subset_keeps_the_source_entries_in_order(layout):
    store, index, entries = layout
    raw, media_type = select_platforms(store, index, OCI_INDEX,
                                       wanted_platforms("linux/s390x,linux/amd64"), "src")
    assert media_type == OCI_INDEX
    document = json.loads(raw)
    assert document["manifests"] == [entries[0], entries[2]]
    assert document["annotations"] == {"org.example": "kept"}


def test_one_platform_is_its_manifest_and_every_platform_the_index(layout):
    store, index, entries = layout
    raw, media_type = select_platforms(store, index, OCI_INDEX, wanted_platforms("linux/arm64"), "src")
    assert (sha256_digest(raw), media_type) == (entries[1]["digest"], OCI_MANIFEST)
    every = wanted_platforms("linux/amd64,linux/arm64,linux/s390x")
    assert select_platforms(store, index, OCI_INDEX, every, "src") == (index, OCI_INDEX)


def test_missing_platforms_are_all_named(layout):
    store, index, _entries = layout
    with pytest.raises(NotFound) as info:
        select_platforms(store, index, OCI_INDEX,
                         wanted_platforms("linux/ppc64le,linux/amd64,windows/amd64"), "src")
    assert str(info.value) == ("src has no linux/ppc64le, windows/amd64 image; it has: linux/amd64, "
                               "linux/arm64/v8, linux/s390x")


def test_a_single_image_is_checked_against_its_config(layout):
    store, _index, entries = layout
    raw, media_type, _ = store.get_manifest(str(entries[0]["digest"]))
    kept = select_platforms(store, raw, media_type, wanted_platforms("linux/amd64"), "one")
    assert kept == (raw, media_type)
    with pytest.raises(NotFound, match="one is a single linux/amd64 image; it has no linux/arm64 image"):
        select_platforms(store, raw, media_type, wanted_platforms("linux/amd64,linux/arm64"), "one")


def test_an_artifact_has_no_platform_to_pick(tmp_path):
    store = OCILayoutStore(tmp_path / "artifact", create=True)
    store.put_blob(b"{}")
    manifest = canonical_json({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                               "artifactType": "application/vnd.example.sbom",
                               "config": {"mediaType": "application/vnd.oci.empty.v1+json",
                                          "digest": sha256_digest(b"{}"), "size": 2},
                               "layers": []})
    with pytest.raises(ManifestError, match="sbom-ref names no platform in its config"):
        select_platforms(store, manifest, OCI_MANIFEST, wanted_platforms("linux/amd64"), "sbom-ref")
