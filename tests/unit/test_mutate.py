"""The pure image edits of cib_core.mutate: dicts in, dicts out, no registry."""

from __future__ import annotations

import copy
import gzip
import hashlib
import io
import tarfile

import pytest

from cib_core import mediatypes as mt
from cib_core.errors import ConfigurationError
from cib_core.layers.tarball import layer_from_writer
from cib_core.mutate import (
    BASE_DIGEST_ANNOTATION,
    BASE_NAME_ANNOTATION,
    descriptor_in_flavour,
    flatten_config,
    flatten_manifest,
    history_in_step,
    layer_entries,
    rebase_config,
    rebase_manifest,
    replace_index_entries,
    split_history,
)


def sha(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def layer(name: str, media_type: str = mt.OCI_LAYER_GZIP) -> dict:
    return {"mediaType": media_type, "digest": sha("blob " + name), "size": len(name) + 10}


def entry(by: str, empty: bool = False) -> dict:
    out = {"created": "2024-01-01T00:00:00Z", "created_by": by}
    if empty:
        out["empty_layer"] = True
    return out


def config(ids: list[str], history: list[dict] | None, *, arch: str = "amd64", **extra) -> dict:
    out = {"architecture": arch, "os": "linux", "created": "2024-02-02T00:00:00Z",
           "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"]},
           "rootfs": {"type": "layers", "diff_ids": [sha(i) for i in ids]}}
    if history is not None:
        out["history"] = history
    out.update(extra)
    return out


def manifest(layers: list[dict], media_type: str = mt.OCI_MANIFEST) -> dict:
    docker = mt.is_docker_flavour(media_type)
    return {"schemaVersion": 2, "mediaType": media_type,
            "config": {"mediaType": mt.config_media_type(docker), "digest": sha("config"), "size": 9},
            "layers": layers}


# an old base of two layers with an ENV and a CMD entry, and an image of two own layers on it
OLD = config(["a", "b"], [entry("ADD a"), entry("ENV X=1", True), entry("ADD b"),
                          entry("CMD sh", True)])
IMAGE = config(["a", "b", "own1", "own2"],
               [entry("ADD a"), entry("ENV X=1", True), entry("ADD b"), entry("CMD sh", True),
                entry("WORKDIR /app", True), entry("COPY app"), entry("RUN build"),
                entry("CMD run", True)],
               config={"Env": ["PATH=/bin", "APP=1"], "Cmd": ["run"], "WorkingDir": "/app"})
NEW = config(["n1", "n2", "n3"], [entry("ADD n1"), entry("ADD n2"), entry("ENV Y=2", True),
                                  entry("ADD n3")], variant="v2", **{"os.version": "x"})


def test_rebase_config_swaps_diff_ids_and_history_in_step():
    before = copy.deepcopy(IMAGE)
    out = rebase_config(IMAGE, OLD, NEW)
    assert IMAGE == before  # the argument is untouched
    assert out["rootfs"]["diff_ids"] == [sha(i) for i in ("n1", "n2", "n3", "own1", "own2")]
    assert [h["created_by"] for h in out["history"]] == [
        "ADD n1", "ADD n2", "ENV Y=2", "ADD n3", "WORKDIR /app", "COPY app", "RUN build", "CMD run"]
    assert layer_entries(out["history"]) == len(out["rootfs"]["diff_ids"])
    # the image's own config stays; the platform fields are the new base's
    assert out["config"] == IMAGE["config"] and out["created"] == IMAGE["created"]
    assert (out["os"], out["architecture"], out["variant"], out["os.version"]) == (
        "linux", "amd64", "v2", "x")


def test_rebase_onto_scratch_and_from_scratch():
    away = rebase_config(IMAGE, OLD, {})
    assert away["rootfs"]["diff_ids"] == [sha("own1"), sha("own2")]
    assert [h["created_by"] for h in away["history"]] == ["WORKDIR /app", "COPY app", "RUN build",
                                                          "CMD run"]
    assert away["architecture"] == "amd64"  # scratch names no platform: the image's stays
    built_on_nothing = config(["own"], [entry("COPY app")])
    onto = rebase_config(built_on_nothing, {}, NEW)
    assert onto["rootfs"]["diff_ids"] == [sha(i) for i in ("n1", "n2", "n3", "own")]
    assert [h["created_by"] for h in onto["history"]][-1] == "COPY app"
    assert layer_entries(onto["history"]) == 4


@pytest.mark.parametrize("old_ids, problem", [
    (["a", "x"], "layer (diff_id) 2 is"),
    (["a", "b", "own1", "own2", "more"], "the base has 5"),
])
def test_rebase_config_refuses_an_image_not_built_on_the_old_base(old_ids, problem):
    with pytest.raises(ConfigurationError, match="is not based on") as info:
        rebase_config(IMAGE, config(old_ids, None), NEW, what="app:1", old_what="base:1")
    assert problem in str(info.value) and "app:1" in str(info.value) and "--old-base" in str(info.value)


def test_rebase_config_refuses_a_new_base_of_another_platform():
    with pytest.raises(ConfigurationError, match="linux/arm64 but the image is linux/amd64"):
        rebase_config(IMAGE, OLD, config(["n"], None, arch="arm64"), new_what="the new base")


def test_missing_or_inconsistent_history_gets_placeholders_in_step():
    no_history = config(["a", "b", "own1"], None)
    out = rebase_config(no_history, OLD, NEW)
    assert layer_entries(out["history"]) == 4
    assert out["history"][-1]["created_by"] == "cib"
    # a new base without history: placeholder entries for its layers, the image's own kept
    out = rebase_config(IMAGE, OLD, config(["n1"], None))
    assert [h["created_by"] for h in out["history"]] == ["cib", "WORKDIR /app", "COPY app",
                                                          "RUN build", "CMD run"]
    # no history anywhere: none made up either
    bare = rebase_config(config(["a", "b", "own1"], None), config(["a", "b"], None), config(["n"], None))
    assert "history" not in bare


def test_split_history_and_history_in_step():
    base, own = split_history(IMAGE["history"], 2, len(OLD["history"]))
    assert [h["created_by"] for h in base] == ["ADD a", "ENV X=1", "ADD b", "CMD sh"]
    assert [h["created_by"] for h in own][0] == "WORKDIR /app"
    assert split_history([entry("ADD a")], 2, 2) is None
    assert history_in_step([entry("x"), entry("y", True)], 1, "c") == [entry("x"), entry("y", True)]
    assert history_in_step([entry("x")], 2, "c", "2020-01-01T00:00:00Z") == [
        {"created": "2020-01-01T00:00:00Z", "created_by": "cib", "comment": "c"}] * 2


def test_rebase_manifest_swaps_layers_and_keeps_flavour():
    own = [layer("own1", mt.DOCKER_LAYER_GZIP), layer("own2", mt.DOCKER_LAYER_GZIP)]
    image = manifest([layer("a", mt.DOCKER_LAYER_GZIP), layer("b", mt.DOCKER_LAYER_GZIP), *own],
                     mt.DOCKER_MANIFEST)
    old = manifest([layer("a", mt.DOCKER_LAYER_GZIP), layer("b", mt.DOCKER_LAYER_GZIP)], mt.DOCKER_MANIFEST)
    new = manifest([layer("n1"), layer("n2", mt.OCI_LAYER)])  # OCI types under a Docker image
    cfg = {"mediaType": mt.DOCKER_CONFIG, "digest": sha("new config"), "size": 5}
    out = rebase_manifest(image, old, new, cfg, base_annotations={BASE_NAME_ANNOTATION: "b:2"})
    assert out["config"] == cfg and out["mediaType"] == mt.DOCKER_MANIFEST
    assert [d["digest"] for d in out["layers"]] == [sha("blob n1"), sha("blob n2"),
                                                    *[d["digest"] for d in own]]
    assert [d["mediaType"] for d in out["layers"][:2]] == [mt.DOCKER_LAYER_GZIP, mt.DOCKER_LAYER]
    assert "annotations" not in out  # Docker schema 2 has no annotations

    oci = manifest([layer("a"), layer("own1")])
    oci["annotations"] = {"keep": "me"}
    notes = {BASE_NAME_ANNOTATION: "r/b:2", BASE_DIGEST_ANNOTATION: sha("idx")}
    out = rebase_manifest(oci, manifest([layer("a")]), manifest([layer("n", mt.DOCKER_LAYER_GZIP)]),
                          cfg, base_annotations=notes)
    assert out["layers"][0]["mediaType"] == mt.OCI_LAYER_GZIP
    assert out["annotations"] == {"keep": "me", **notes}

    with pytest.raises(ConfigurationError, match="layer 1 is"):
        rebase_manifest(oci, manifest([layer("zzz")]), new, cfg)


def test_descriptor_in_flavour_refuses_zstd_for_docker():
    with pytest.raises(ConfigurationError, match="zstd"):
        descriptor_in_flavour(layer("z", mt.OCI_LAYER_ZSTD), True, "layer 1 of base:2")
    foreign = dict(layer("f", mt.OCI_LAYER_NONDISTRIBUTABLE_GZIP), urls=["http://127.0.0.1/f"])
    assert descriptor_in_flavour(foreign, True)["mediaType"] == mt.DOCKER_FOREIGN_LAYER_GZIP
    assert descriptor_in_flavour(foreign, True)["urls"] == foreign["urls"]


def test_flatten_config_and_manifest():
    out = flatten_config(IMAGE, sha("flat"), sha("old manifest"))
    assert out["rootfs"] == {"type": "layers", "diff_ids": [sha("flat")]}
    assert out["history"] == [{"created": IMAGE["created"],
                               "created_by": f"cib flatten {sha('old manifest')}",
                               "comment": "4 layers merged into one"}]
    assert {k: v for k, v in out.items() if k not in ("rootfs", "history")} == {
        k: v for k, v in IMAGE.items() if k not in ("rootfs", "history")}
    image = manifest([layer("a"), layer("b")])
    image["annotations"] = {"org.example": "x"}
    one = layer("flat")
    flat = flatten_manifest(image, {"mediaType": mt.OCI_CONFIG, "digest": sha("c"), "size": 1}, one)
    assert flat["layers"] == [one] and flat["annotations"] == {"org.example": "x"}
    assert image["layers"] == [layer("a"), layer("b")]


def test_replace_index_entries_keeps_platform_and_annotations():
    index = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "annotations": {"i": "1"}, "manifests": [
        {"mediaType": mt.OCI_MANIFEST, "digest": sha("amd"), "size": 1,
         "platform": {"os": "linux", "architecture": "amd64"}, "annotations": {"a": "b"}},
        {"mediaType": mt.OCI_MANIFEST, "digest": sha("att"), "size": 2,
         "annotations": {"vnd.docker.reference.type": "attestation-manifest"}},
        {"mediaType": mt.OCI_MANIFEST, "digest": sha("other"), "size": 3}]}
    out = replace_index_entries(index, {
        sha("amd"): {"mediaType": mt.OCI_MANIFEST, "digest": sha("new"), "size": 7},
        sha("att"): None})
    assert out["annotations"] == {"i": "1"}
    assert out["manifests"] == [
        {"mediaType": mt.OCI_MANIFEST, "digest": sha("new"), "size": 7,
         "platform": {"os": "linux", "architecture": "amd64"}, "annotations": {"a": "b"}},
        {"mediaType": mt.OCI_MANIFEST, "digest": sha("other"), "size": 3}]
    assert len(index["manifests"]) == 3


def test_layer_from_writer_streams_a_tar_into_a_gzip_blob(tmp_path):
    payload = bytes(range(256)) * 20000  # 5 MB, several pipeline chunks

    def write(out):
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            info = tarfile.TarInfo("big.bin")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))

    plain = io.BytesIO()
    write(plain)
    with layer_from_writer(write, docker_flavour=True, dir=str(tmp_path)) as built:
        blob = open(built.path, "rb").read()
        assert built.info.media_type == mt.DOCKER_LAYER_GZIP
        assert built.info.digest == "sha256:" + hashlib.sha256(blob).hexdigest()
        assert built.info.size == len(blob)
        assert gzip.decompress(blob) == plain.getvalue()
        assert built.info.diff_id == "sha256:" + hashlib.sha256(plain.getvalue()).hexdigest()
        path = built.path
    assert not (tmp_path / path).exists()


def test_layer_from_writer_leaves_no_file_when_the_writer_fails(tmp_path):
    def write(out):
        out.write(b"x" * 100)
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        layer_from_writer(write, dir=str(tmp_path))
    assert list(tmp_path.iterdir()) == []
