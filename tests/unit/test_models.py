"""Manifests, indexes, descriptors, platforms: the OCI schema test vectors and our own cases."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from cib_core import mediatypes as mt
from cib_core.digest import sha256_digest
from cib_core.documents import canonical_json
from cib_core.errors import ConfigurationError, ManifestError, NotFound
from cib_core.models import (
    Descriptor,
    Index,
    Manifest,
    Platform,
    config_platform,
    diff_ids,
    parse_manifest,
)
from cib_core.validate import (
    validate_config,
    validate_descriptor,
    validate_index,
    validate_layout,
    validate_manifest,
)

# copied into the repository with their sources and license: tests/data/vectors/README.md
TESTDATA = Path(__file__).resolve().parents[1] / "data" / "vectors"
OCI_DIR = TESTDATA / "oci-manifests"

VALIDATORS: dict[str, Callable[[Any], Mapping[str, Any]]] = {
    "application/vnd.oci.image.manifest.v1+json": validate_manifest,
    "application/vnd.oci.image.index.v1+json": validate_index,
    "application/vnd.oci.image.config.v1+json": validate_config,
    "application/vnd.oci.descriptor.v1+json": validate_descriptor,
    "application/vnd.oci.layout.header.v1+json": validate_layout,
}
# What the Go backwards-compatibility tests swap before validating (see the testdata README).
DOCKER_TO_OCI = {
    "application/vnd.docker.distribution.manifest.list.v2+json": "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json": "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.image.rootfs.diff.tar.gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.docker.container.image.v1+json": "application/vnd.oci.image.config.v1+json",
}
EXPECTED_COUNTS = {"manifest-cases.json": 12, "index-cases.json": 12, "config-cases.json": 10,
                   "descriptor-cases.json": 31, "imagelayout-cases.json": 2,
                   "backwards-compat-cases.json": 4}


def _load_all() -> list[tuple[str, dict[str, Any]]]:
    cases: list[tuple[str, dict[str, Any]]] = []
    for name in sorted(EXPECTED_COUNTS):
        path = OCI_DIR / name
        cases.extend((name, case) for case in json.loads(path.read_text(encoding="utf-8")))
    return cases


OCI_CASES = _load_all()
SCHEMA_CASES = [c for f, c in OCI_CASES if f != "backwards-compat-cases.json"]
COMPAT_CASES = [c for f, c in OCI_CASES if f == "backwards-compat-cases.json"]


def test_testdata_is_complete() -> None:
    # The vectors README counts the cases; a short file means a broken copy, not fewer tests.
    counts: dict[str, int] = {}
    for name, _ in OCI_CASES:
        counts[name] = counts.get(name, 0) + 1
    assert counts == EXPECTED_COUNTS


@pytest.mark.parametrize("case", SCHEMA_CASES, ids=lambda c: c["name"][:70])
def test_oci_schema_vectors(case: dict[str, Any]) -> None:
    validate = VALIDATORS[case["validator_media_type"]]
    document = case["document"]
    # The three documents that are not well-formed must fail because they are not JSON.
    try:
        json.loads(document)
        well_formed = True
    except ValueError:
        well_formed = False
    assert well_formed is case["json_well_formed"]
    if case["fail"]:
        with pytest.raises(ManifestError):
            validate(document)
    else:
        validate(document)
        # bytes and an already parsed object are accepted too, with the same outcome
        validate(document.encode("utf-8"))
        validate(json.loads(document))


@pytest.mark.parametrize("case", COMPAT_CASES, ids=lambda c: c["name"][:70])
def test_oci_backwards_compatibility_vectors(case: dict[str, Any]) -> None:
    raw = case["document"].encode("utf-8")
    # The digest is of the document as stored, before any media type substitution.
    assert sha256_digest(raw) == case["digest"]
    assert hashlib.sha256(raw).hexdigest() == case["digest"].split(":", 1)[1]
    if case["validator_media_type"] in (mt.OCI_MANIFEST, mt.OCI_INDEX):
        doc = parse_manifest(raw)
        assert doc.raw == raw
        assert doc.digest == case["digest"]
        assert doc.media_type in (mt.DOCKER_MANIFEST, mt.DOCKER_MANIFEST_LIST)
        assert isinstance(doc, Index if case["validator_media_type"] == mt.OCI_INDEX else Manifest)
    assert case["docker_media_type_substitution"] is True
    swapped = case["document"]
    for docker, oci in DOCKER_TO_OCI.items():
        swapped = swapped.replace(docker, oci)
    VALIDATORS[case["validator_media_type"]](swapped)


# --- parsing keeps bytes and unknown fields ------------------------------------------------------
CONFIG_DESC = {"mediaType": mt.OCI_CONFIG, "digest": "sha256:" + "c" * 64, "size": 7}
LAYER_DESC = {"mediaType": mt.OCI_LAYER_GZIP, "digest": "sha256:" + "1" * 64, "size": 42}


def _manifest_doc(**extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST,
                           "config": dict(CONFIG_DESC), "layers": [dict(LAYER_DESC)]}
    doc.update(extra)
    return doc


def _entry(arch: str, variant: str | None = None, os_name: str = "linux", n: int = 0) -> dict[str, Any]:
    platform = {"architecture": arch, "os": os_name}
    if variant:
        platform["variant"] = variant
    return {"mediaType": mt.OCI_MANIFEST, "digest": f"sha256:{n:064x}", "size": 100 + n,
            "platform": platform}


def test_manifest_keeps_exact_bytes_and_unknown_fields() -> None:
    # Pretty-printed, with unknown fields at every level: re-serializing would change the digest.
    doc = _manifest_doc(annotations={"a": "b"}, **{"x-custom": [1, {"y": None}]})
    doc["layers"][0]["x-layer"] = {"keep": True}
    doc["config"]["data"] = "e30="
    raw = json.dumps(doc, indent=3).encode() + b"\n"
    parsed = parse_manifest(raw, "application/vnd.oci.image.manifest.v1+json; charset=utf-8")
    assert isinstance(parsed, Manifest)
    assert parsed.raw == raw
    assert parsed.digest == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert parsed.digest != sha256_digest(canonical_json(doc))
    assert parsed.data == doc
    assert parsed.data["x-custom"] == [1, {"y": None}]
    assert parsed.layers[0].extra == {"x-layer": {"keep": True}}
    assert parsed.layers[0].to_dict() == doc["layers"][0]
    assert list(parsed.layers[0].to_dict()) == list(doc["layers"][0])  # order kept as well
    assert parsed.config.extra == {"data": "e30="}
    assert parsed.config.to_dict() == doc["config"]
    assert parsed.annotations == {"a": "b"}
    assert Manifest.from_bytes(raw) == parsed
    with pytest.raises(ManifestError, match="is an image manifest"):
        Index.from_bytes(raw)


def test_descriptor_built_from_fields_and_replaced() -> None:
    desc = Descriptor.from_dict({**LAYER_DESC, "urls": ["https://example.com/l"],
                                 "annotations": {"k": "v"}, "artifactType": "application/x.y",
                                 "platform": {"architecture": "arm64", "os": "linux", "features": ["z"]},
                                 "unknown": 1})
    assert desc.urls == ("https://example.com/l",)
    assert desc.platform == Platform("linux", "arm64")
    assert desc.platform is not None and desc.platform.extra == {"features": ["z"]}
    # A changed copy is serialized from its fields, unknown fields included.
    moved = dataclasses.replace(desc, size=43)
    out = moved.to_dict()
    assert out["size"] == 43 and out["unknown"] == 1
    assert out["platform"] == {"architecture": "arm64", "os": "linux", "features": ["z"]}
    assert {k: v for k, v in out.items() if k != "size"} == {
        k: v for k, v in desc.to_dict().items() if k != "size"}
    assert Descriptor.from_dict(out) == moved
    built = Descriptor(mt.OCI_LAYER_GZIP, "sha256:" + "2" * 64, 5)
    assert built.to_dict() == {"mediaType": mt.OCI_LAYER_GZIP, "digest": "sha256:" + "2" * 64, "size": 5}
    assert hash(built) == hash(Descriptor(mt.OCI_LAYER_GZIP, "sha256:" + "2" * 64, 5))


@pytest.mark.parametrize("bad", [
    {"digest": "sha256:" + "1" * 64, "size": 1},
    {"mediaType": mt.OCI_LAYER, "size": 1},
    {"mediaType": mt.OCI_LAYER, "digest": "nope", "size": 1},
    {"mediaType": mt.OCI_LAYER, "digest": "sha256:" + "1" * 64, "size": "1"},
    {"mediaType": mt.OCI_LAYER, "digest": "sha256:" + "1" * 64, "size": True},
    {"mediaType": mt.OCI_LAYER, "digest": "sha256:" + "1" * 64, "size": -1},
    {"mediaType": mt.OCI_LAYER, "digest": "sha256:" + "1" * 64, "size": 1, "urls": "https://x"},
    {"mediaType": mt.OCI_LAYER, "digest": "sha256:" + "1" * 64, "size": 1, "annotations": {"a": 1}},
    {"mediaType": mt.OCI_LAYER, "digest": "sha256:" + "1" * 64, "size": 1, "platform": {"os": "linux"}},
    "not an object",
])
def test_descriptor_from_dict_rejects(bad: Any) -> None:
    with pytest.raises(ManifestError):
        Descriptor.from_dict(bad)


@pytest.mark.parametrize(("doc", "header", "expected"), [
    ({"schemaVersion": 2, "mediaType": mt.DOCKER_MANIFEST, "config": CONFIG_DESC, "layers": []},
     None, mt.DOCKER_MANIFEST),
    # the document's own mediaType wins over the header
    ({"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": []}, mt.DOCKER_MANIFEST_LIST, mt.OCI_INDEX),
    ({"schemaVersion": 2, "config": CONFIG_DESC, "layers": [LAYER_DESC]}, mt.DOCKER_MANIFEST,
     mt.DOCKER_MANIFEST),
    ({"schemaVersion": 2, "manifests": []}, mt.DOCKER_MANIFEST_LIST, mt.DOCKER_MANIFEST_LIST),
    # sniffed when neither says
    ({"schemaVersion": 2, "config": CONFIG_DESC, "layers": [LAYER_DESC]}, None, mt.OCI_MANIFEST),
    ({"schemaVersion": 2, "manifests": []}, "application/json", mt.OCI_INDEX),
    ({"schemaVersion": 2, "manifests": [_entry("amd64")]}, "", mt.OCI_INDEX),
])
def test_media_type_resolution(doc: dict[str, Any], header: str | None, expected: str) -> None:
    parsed = parse_manifest(canonical_json(doc), header)
    assert parsed.media_type == expected
    assert isinstance(parsed, Index if expected in mt.INDEXES else Manifest)


@pytest.mark.parametrize(("raw", "header", "message"), [
    (b'{"schemaVersion": 1, "name": "x", "tag": "t", "fsLayers": []}', None, "schema 1"),
    (b'{"schemaVersion": 2, "config": {}, "layers": []}', mt.DOCKER_SCHEMA1_SIGNED, "schema 1"),
    (b'{"mediaType": "application/vnd.docker.distribution.manifest.v1+json"}', None, "schema 1"),
    (b"not json", None, "not valid JSON"),
    (b"[1, 2]", None, "not a JSON object"),
    (b'{"schemaVersion": 2, "x": NaN}', None, "not valid JSON"),
    (b"\xef\xbb\xbf{}", None, "not valid JSON"),
    (b'{"schemaVersion": 2}', None, "neither an image manifest nor an index"),
    (b'{"schemaVersion": 2, "mediaType": "application/vnd.oci.artifact.manifest.v1+json"}', None,
     "does not support"),
    (b'{"schemaVersion": 2, "mediaType": 7}', None, "not a string"),
    (b'{"schemaVersion": 3, "manifests": []}', None, "schemaVersion 3"),
    (b'{"schemaVersion": "2", "manifests": []}', None, "schemaVersion"),
    (b'{"schemaVersion": 2, "manifests": {}}', None, "'manifests' list"),
    (b'{"schemaVersion": 2, "config": [], "layers": []}', None, "config is not a JSON object"),
    (b'{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", '
     b'"config": {}, "layers": []}', None, "'manifests' list"),
])
def test_parse_manifest_rejects(raw: bytes, header: str | None, message: str) -> None:
    with pytest.raises(ManifestError, match=message) as info:
        parse_manifest(raw, header)
    assert "sha256:" in str(info.value) or "schema 1" in str(info.value)


def test_canonical_json_and_digest() -> None:
    doc = {"z": 1, "a": ["é", {"b": None}]}
    raw = canonical_json(doc)
    assert raw == '{"z":1,"a":["é",{"b":null}]}'.encode()
    assert sha256_digest(b"") == "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})
    built = _manifest_doc()
    parsed = parse_manifest(canonical_json(built))
    assert parsed.data == built and list(parsed.data) == list(built)
    assert canonical_json(parsed.data) == parsed.raw


def test_config_helpers() -> None:
    configs = [c for c in COMPAT_CASES if c["validator_media_type"] == mt.OCI_CONFIG]
    config = json.loads(configs[0]["document"]) if configs else dict(_GOOD_CONFIG)
    ids = diff_ids(config)
    assert ids == config["rootfs"]["diff_ids"] and ids and ids is not config["rootfs"]["diff_ids"]
    assert diff_ids({"architecture": "amd64", "os": "linux"}) == []
    with pytest.raises(ManifestError):
        diff_ids({"rootfs": {"diff_ids": "sha256:x"}})
    platform = config_platform({"architecture": "arm64", "os": "linux", "variant": "v8",
                                "config": {}, "rootfs": {}})
    assert platform == Platform("linux", "arm64", "v8") and platform.extra == {}


# --- platforms -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("have", "wanted", "match"), [
    ("linux/amd64", "linux/amd64", True),
    ("linux/x86_64", "linux/amd64", True),
    ("linux/amd64", "linux/x86_64", True),
    ("linux/aarch64", "linux/arm64", True),
    ("linux/arm64", "linux/arm64/v8", True),
    ("linux/arm64/v8", "linux/arm64", True),
    ("linux/aarch64", "linux/arm64/v8", True),
    ("linux/arm", "linux/arm/v7", True),
    ("linux/arm/v7", "linux/arm", True),
    ("linux/arm/v6", "linux/arm", True),  # no variant wanted: any variant will do
    ("linux/arm/v6", "linux/arm/v7", False),
    ("linux/arm", "linux/arm/v6", False),
    ("linux/arm64/v9", "linux/arm64/v8", False),
    ("linux/arm64", "linux/amd64", False),
    ("windows/amd64", "linux/amd64", False),
    ("Linux/AMD64", "linux/amd64", True),
    ("linux/i386", "linux/386", True),
    ("linux/armhf", "linux/arm/v7", True),
    ("linux/amd64", "linux/amd64/v2", False),
    ("linux/amd64/v1", "linux/amd64", True),
])
def test_platform_matches(have: str, wanted: str, match: bool) -> None:
    assert Platform.parse(have).matches(Platform.parse(wanted)) is match


def test_platform_parse_normalize_and_dicts() -> None:
    assert Platform.parse("linux/arm64/v8") == Platform("linux", "arm64", "v8")
    assert str(Platform.parse("linux/arm64")) == "linux/arm64"
    assert Platform.parse("linux/aarch64").normalized() == Platform("linux", "arm64", "v8")
    assert Platform.parse("linux/amd64").normalized() == Platform("linux", "amd64")
    assert Platform.parse("linux/arm").normalized() == Platform("linux", "arm", "v7")
    for bad in ("linux", "linux/", "/amd64", "linux/arm/v7/x", ""):
        with pytest.raises(ConfigurationError, match="OS/ARCH"):
            Platform.parse(bad)
    data = {"architecture": "amd64", "os": "windows", "os.version": "10.0.17763.1",
            "os.features": ["win32k"], "variant": "v3"}
    platform = Platform.from_dict(data)
    assert platform.os_version == "10.0.17763.1" and platform.os_features == ("win32k",)
    assert platform.to_dict() == data
    wanted = dataclasses.replace(Platform.parse("windows/amd64/v3"), os_version="10.0.17763.1")
    assert platform.matches(wanted)
    assert not platform.matches(dataclasses.replace(wanted, os_version="10.0.20348.1"))


def _index(entries: list[dict[str, Any]]) -> Index:
    doc = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": entries}
    parsed = parse_manifest(json.dumps(doc, indent=2).encode())
    assert isinstance(parsed, Index)
    return parsed


def test_index_select() -> None:
    index = _index([
        _entry("amd64", n=1), _entry("arm", "v6", n=2), _entry("arm", "v7", n=3),
        _entry("arm64", "v8", n=4), _entry("unknown", os_name="unknown", n=5),
        {"mediaType": mt.OCI_MANIFEST, "digest": f"sha256:{6:064x}", "size": 9},  # no platform
    ])
    assert index.select(Platform.parse("linux/amd64")).digest == f"sha256:{1:064x}"
    assert index.select(Platform.parse("linux/x86_64")).digest == f"sha256:{1:064x}"
    assert index.select(Platform.parse("linux/arm64")).digest == f"sha256:{4:064x}"
    assert index.select(Platform.parse("linux/aarch64/v8")).digest == f"sha256:{4:064x}"
    # linux/arm means v7 first, though v6 comes earlier in the index
    assert index.select(Platform.parse("linux/arm")).digest == f"sha256:{3:064x}"
    assert [d.digest for d in index.select_all(Platform.parse("linux/arm"))] == [
        f"sha256:{3:064x}", f"sha256:{2:064x}"]
    assert index.select(Platform.parse("linux/arm/v6")).digest == f"sha256:{2:064x}"
    assert index.select_all(Platform.parse("linux/s390x")) == []
    with pytest.raises(NotFound) as info:
        index.select(Platform.parse("linux/s390x"))
    message = str(info.value)
    assert "linux/s390x" in message
    for listed in ("linux/amd64", "linux/arm/v6", "linux/arm/v7", "linux/arm64/v8"):
        assert listed in message
    assert index.platforms()[0] == Platform("linux", "amd64")
    assert len(index.manifests) == 6
    assert index.manifests[5].platform is None


def test_docker_manifest_list_from_the_vectors() -> None:
    raw = COMPAT_CASES[0]["document"].encode()
    index = Index.from_bytes(raw, mt.DOCKER_MANIFEST_LIST)
    assert index.media_type == mt.DOCKER_MANIFEST_LIST
    chosen = index.select(Platform.parse("linux/arm/v7"))
    assert chosen.platform is not None and chosen.platform.variant == "v7"
    assert chosen.media_type == mt.DOCKER_MANIFEST
    assert index.select(Platform.parse("linux/amd64")).size == 1922


@pytest.mark.parametrize(("index", "path"), [(3, "$.history"), (4, "$.config.Env"), (5, "$.config.Volumes")])
def test_config_vectors_fail_for_their_own_reason(index: int, path: str) -> None:
    """TestConfig/3-5 also have a numeric "os", which fails first; with "os" fixed, each must
    still fail, at the field its comment names."""
    cases = [c for c in SCHEMA_CASES if c["name"].startswith(f"TestConfig/{index}:")]
    assert len(cases) == 1
    doc = json.loads(cases[0]["document"])
    doc["os"] = "linux"
    with pytest.raises(ManifestError, match=f"image config: {path.replace('$', '[$]')}"):
        validate_config(doc)


_GOOD_CONFIG: dict[str, Any] = {"architecture": "amd64", "os": "linux",
                                "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "a" * 64]}}


@pytest.mark.parametrize(("change", "ok"), [
    ({}, True),
    ({"config": {"Entrypoint": None, "Cmd": None, "Volumes": None, "Labels": None}}, True),
    ({"config": {"Env": ["A=", "B==c", "x y=z"]}}, True),
    ({"config": {"Env": ["C=d\ne"]}}, False),  # Go's ^[^=]+=.*$ stops at a newline
    ({"config": {"Env": ["=x"]}}, False),
    ({"config": {"ExposedPorts": {"80/tcp": {}}}}, True),
    ({"config": {"ExposedPorts": {"80/tcp": None}}}, False),
    ({"config": {"ExposedPorts": None}}, False),
    ({"config": {"Labels": {"a": 1}}}, False),
    ({"config": {"ArgsEscaped": "yes"}}, False),
    ({"config": None}, False),
    ({"created": "2015-10-31T22:22:56.015925234Z"}, True),
    ({"created": "2015-10-31T22:22:56+01:00"}, True),
    ({"created": "2015-10-31 22:22:56Z"}, False),
    ({"created": "2015-02-30T22:22:56Z"}, False),
    ({"history": [{"created_by": "x", "empty_layer": True}]}, True),
    ({"history": [{"empty_layer": "true"}]}, False),
    ({"history": ["x"]}, False),
    ({"rootfs": {"type": "layers"}}, False),
    ({"rootfs": {"type": "other", "diff_ids": []}}, False),
    ({"rootfs": {"type": "layers", "diff_ids": [1]}}, False),
    ({"os.features": ["a"], "os.version": "1"}, True),
    ({"os.features": "a"}, False),
    ({"architecture": None}, False),
])
def test_validate_config_cases(change: dict[str, Any], ok: bool) -> None:
    doc = {**_GOOD_CONFIG, **change}
    if ok:
        assert validate_config(doc) == doc
    else:
        with pytest.raises(ManifestError):
            validate_config(doc)


@pytest.mark.parametrize(("digest", "ok"), [
    ("sha256:" + "a" * 64, True),
    ("sha256:" + "a" * 63, False),
    ("sha512:" + "b" * 128, True),
    ("sha512:" + "b" * 64, False),
    ("sha512:" + "B" * 128, False),
    ("blake3:" + "c" * 64, True),  # unknown algorithms pass on grammar alone
    ("sha256+b64u:LCa0a2j_xo_5m0U8HTBBNBNCLXBkg7-g-YpeiGJm564", True),
    ("sha256:", False),
    ("sha256:abc def", False),
])
def test_validate_descriptor_digests(digest: str, ok: bool) -> None:
    doc = {"mediaType": mt.OCI_LAYER, "digest": digest, "size": 0}
    if ok:
        validate_descriptor(doc)
    else:
        with pytest.raises(ManifestError, match="digest"):
            validate_descriptor(doc)


@pytest.mark.parametrize(("doc", "ok"), [
    ({"mediaType": mt.OCI_LAYER, "digest": "sha256:" + "a" * 64, "size": 2**63 - 1}, True),
    ({"mediaType": mt.OCI_LAYER, "digest": "sha256:" + "a" * 64, "size": 2**63}, False),
    ({"mediaType": mt.OCI_LAYER, "digest": "sha256:" + "a" * 64, "size": 1.0}, False),
    ({"mediaType": mt.OCI_LAYER, "digest": "sha256:" + "a" * 64, "size": 1, "urls": None}, False),
    ({"mediaType": mt.OCI_LAYER, "digest": "sha256:" + "a" * 64, "size": 1,
      "urls": ["https://a.example/x", "http://b.example/y?z=1"]}, True),
    ({"mediaType": mt.OCI_LAYER, "digest": "sha256:" + "a" * 64, "size": 1, "urls": ["/relative"]}, False),
    ({"mediaType": mt.OCI_LAYER, "digest": "sha256:" + "a" * 64, "size": 1, "urls": ["https://a b"]}, False),
    ({"mediaType": mt.OCI_LAYER, "digest": "sha256:" + "a" * 64, "size": 1, "annotations": {"a": "b"}}, True),
    ({"mediaType": mt.OCI_LAYER, "digest": "sha256:" + "a" * 64, "size": 1, "annotations": []}, False),
    ({"mediaType": mt.OCI_LAYER, "digest": "sha256:" + "a" * 64, "size": 1,
      "platform": {"architecture": "arm", "os": "linux", "variant": 7}}, False),
    ({"mediaType": mt.OCI_LAYER, "digest": "sha256:" + "a" * 64, "size": 1, "data": "e30="}, True),
    ({"mediaType": mt.OCI_LAYER, "digest": "sha256:" + "a" * 64, "size": 1, "data": "e30"}, False),
])
def test_validate_descriptor_fields(doc: dict[str, Any], ok: bool) -> None:
    if ok:
        validate_descriptor(doc)
    else:
        with pytest.raises(ManifestError):
            validate_descriptor(doc)


def test_validate_manifest_index_layout_extra_cases() -> None:
    good = _manifest_doc()
    validate_manifest(good)
    for bad in ({**good, "schemaVersion": 1}, {**good, "schemaVersion": True}, {**good, "layers": None},
                {**good, "annotations": {"a": None}}, {**good, "mediaType": "nope"},
                {k: v for k, v in good.items() if k != "config"}, b"[]", b'{"schemaVersion": NaN}'):
        with pytest.raises(ManifestError):
            validate_manifest(bad)
    index = {"schemaVersion": 2, "manifests": []}
    validate_index(index)
    for bad in ({"schemaVersion": 2}, {"schemaVersion": 2, "manifests": [{}]},
                {**index, "artifactType": "x"}):
        with pytest.raises(ManifestError):
            validate_index(bad)
    validate_layout('{"imageLayoutVersion": "1.0.0"}')
    for bad_layout in ('{"imageLayoutVersion": "1.1.0"}', "{}", '"1.0.0"'):
        with pytest.raises(ManifestError):
            validate_layout(bad_layout)
