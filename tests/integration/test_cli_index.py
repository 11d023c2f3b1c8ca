"""``cib index create`` / ``cib index append`` against the real registries (all three auth modes
for the writes), across registries and into OCI layouts; skopeo copies the result with
``--all`` and reads each platform back with ``--override-arch``."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from cli_support import (
    isolate_home,
    login,
    one_error_line,
    push_platform_image,
    repository_dir,
    run,
)

from cib_core.errors import ConfigurationError
from cib_core.index import append_to_index, create_index
from cib_core.testing import push_base_image, skopeo_copy, skopeo_inspect

pytestmark = pytest.mark.integration

DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return isolate_home(tmp_path, monkeypatch)


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_index_of_two_images_is_copied_by_skopeo_all(cib_any_registry, cib_second_registry):
    login(cib_any_registry)
    mode = cib_any_registry.mode
    amd = push_platform_image(cib_any_registry, f"index/{mode}-amd64", "1", "linux/amd64")
    arm = push_platform_image(cib_any_registry, f"index/{mode}-arm64", "1", "linux/arm64/v8")
    repo = f"index/{mode}"
    result = run("index", "create", cib_any_registry.ref(repo, "1"), amd.ref, arm.ref, "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    creds = cib_any_registry.creds_arg()
    raw = skopeo_inspect(cib_any_registry.ref(repo, "1"), raw=True, creds=creds)
    assert _sha256(raw) == report["digest"]
    index = json.loads(raw)
    assert index["mediaType"] == DOCKER_LIST == report["mediaType"]  # Docker images, Docker list
    assert [(e["digest"], e["platform"]) for e in index["manifests"]] == [
        (amd.digest, {"architecture": "amd64", "os": "linux"}),
        (arm.digest, {"architecture": "arm64", "os": "linux", "variant": "v8"})]
    # the sources were in other repositories: mounted into this one first
    assert report["blobs"].get("mounted", 0) == 4 and "copied" not in report["blobs"]

    copy = f"{cib_second_registry.host}/index/{mode}-skopeo:1"
    skopeo_copy(cib_any_registry.ref(repo, "1"), copy, src_creds=creds, all=True)
    assert skopeo_inspect(copy, raw=True) == raw
    for arch, image in (("amd64", amd), ("arm64/v8", arm)):
        assert skopeo_inspect(copy, raw=True, arch=arch) == image.raw
        config = skopeo_inspect(copy, config=True, arch=arch)
        assert config["architecture"] == arch.split("/")[0]


def test_sources_from_another_registry_and_a_layout_are_copied_in(cib_registry, cib_second_registry, tmp_path):
    amd = push_platform_image(cib_registry, "index/far-amd64", "1", "linux/amd64", oci=True)
    layout = tmp_path / "arm"
    skopeo_copy(push_platform_image(cib_registry, "index/far-arm", "1", "linux/arm/v7", oci=True).ref,
                f"oci:{layout}:1")
    target = f"{cib_second_registry.host}/index/far:1"
    result = create_index(target, [amd.ref, f"oci:{layout}:1"])
    assert result.media_type == OCI_INDEX  # OCI images, OCI index
    assert result.blobs == {"copied": 4}
    assert [str(e.platform) for e in result.entries] == ["linux/amd64", "linux/arm/v7"]
    assert skopeo_inspect(target, raw=True, arch="amd64") == amd.raw
    config = skopeo_inspect(target, config=True, arch="arm/v7")
    assert (config["architecture"], config["variant"]) == ("arm", "v7")


def test_mixed_flavours_make_an_oci_index(cib_registry):
    docker = push_platform_image(cib_registry, "index/mixed", "amd64", "linux/amd64")
    oci = push_platform_image(cib_registry, "index/mixed", "arm64", "linux/arm64", oci=True)
    result = create_index(cib_registry.ref("index/mixed", "both"), [docker.ref, oci.ref])
    index = json.loads(skopeo_inspect(cib_registry.ref("index/mixed", "both"), raw=True))
    assert result.media_type == index["mediaType"] == OCI_INDEX
    assert [e["mediaType"] for e in index["manifests"]] == [docker.media_type, oci.media_type]
    assert result.blobs == {"present": 4}


def test_an_index_into_an_oci_layout_is_readable_by_skopeo(cib_registry, tmp_path):
    amd = push_platform_image(cib_registry, "index/tolayout", "amd64", "linux/amd64")
    arm = push_platform_image(cib_registry, "index/tolayout", "arm64", "linux/arm64/v8")
    layout = tmp_path / "layout"
    result = run("index", "create", f"oci:{layout}:1", amd.ref, arm.ref)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith(f"oci:{layout}@sha256:")
    index = json.loads(skopeo_inspect(f"oci:{layout}:1", raw=True))
    # a layout takes OCI types only, so the Docker images were converted on their way in
    assert index["mediaType"] == OCI_INDEX
    assert {e["mediaType"] for e in index["manifests"]} == {"application/vnd.oci.image.manifest.v1+json"}
    for arch in ("amd64", "arm64/v8"):
        config = skopeo_inspect(f"oci:{layout}:1", config=True, arch=arch)
        assert config["architecture"] == arch.split("/")[0]
    copy = f"{cib_registry.host}/index/fromlayout:1"
    skopeo_copy(f"oci:{layout}:1", copy, all=True)
    assert [e["digest"] for e in json.loads(skopeo_inspect(copy, raw=True))["manifests"]] == \
        [e["digest"] for e in index["manifests"]]


def test_append_adds_a_platform_and_keeps_the_entries(cib_any_registry):
    login(cib_any_registry)
    repo = f"index/append-{cib_any_registry.mode}"
    amd = push_platform_image(cib_any_registry, repo, "amd64", "linux/amd64")
    arm = push_platform_image(cib_any_registry, repo, "arm64", "linux/arm64/v8")
    s390x = push_platform_image(cib_any_registry, f"{repo}-other", "1", "linux/s390x")
    assert run("index", "create", cib_any_registry.ref(repo, "1"), amd.ref).exit_code == 0
    creds = cib_any_registry.creds_arg()
    before = json.loads(skopeo_inspect(cib_any_registry.ref(repo, "1"), raw=True, creds=creds))
    result = run("index", "append", cib_any_registry.ref(repo, "1"), arm.ref, s390x.ref)
    assert result.exit_code == 0, result.stderr
    raw = skopeo_inspect(cib_any_registry.ref(repo, "1"), raw=True, creds=creds)
    assert result.stdout.strip() == f"{cib_any_registry.host}/{repo}@{_sha256(raw)}"
    after = json.loads(raw)
    assert after["mediaType"] == DOCKER_LIST
    assert after["manifests"][0] == before["manifests"][0]
    assert [e["digest"] for e in after["manifests"]] == [amd.digest, arm.digest, s390x.digest]
    assert skopeo_inspect(cib_any_registry.ref(repo, "1"), raw=True, creds=creds, arch="s390x") == s390x.raw


def test_append_an_oci_image_to_a_docker_list_makes_it_an_oci_index(cib_registry, tmp_path):
    amd = push_platform_image(cib_registry, "index/upgrade", "amd64", "linux/amd64")
    oci = push_platform_image(cib_registry, "index/upgrade", "arm64", "linux/arm64", oci=True)
    create_index(cib_registry.ref("index/upgrade", "1"), [amd.ref])
    result = append_to_index(cib_registry.ref("index/upgrade", "1"), [oci.ref])
    assert result.media_type == OCI_INDEX
    assert json.loads(skopeo_inspect(cib_registry.ref("index/upgrade", "1"), raw=True))["mediaType"] == OCI_INDEX
    # and in a layout: the index keeps its tag
    layout = tmp_path / "layout"
    create_index(f"oci:{layout}:v1", [amd.ref])
    appended = append_to_index(f"oci:{layout}:v1", [oci.ref])
    assert [str(e.platform) for e in appended.entries] == ["linux/amd64", "linux/arm64"]
    assert skopeo_inspect(f"oci:{layout}:v1", config=True, arch="arm64")["architecture"] == "arm64"


# -- bad input: one line each, nothing written ------------------------------------------------

def test_two_images_of_one_platform_are_refused(cib_registry):
    one = push_platform_image(cib_registry, "index/dup-a", "1", "linux/arm64")
    two = push_platform_image(cib_registry, "index/dup-b", "1", "linux/arm64/v8")  # the same slot
    line = one_error_line(run("index", "create", cib_registry.ref("index/dup", "1"), one.ref, two.ref))
    assert one.ref in line and two.ref in line and "one image per platform" in line
    assert not repository_dir(cib_registry, "index/dup").exists()


def test_append_of_a_platform_the_index_has_is_refused(cib_registry):
    repo = "index/dup-append"
    amd = push_platform_image(cib_registry, repo, "amd64", "linux/amd64")
    other = push_platform_image(cib_registry, f"{repo}-other", "amd64", "linux/amd64")
    created = create_index(cib_registry.ref(repo, "1"), [amd.ref])
    line = one_error_line(run("index", "append", cib_registry.ref(repo, "1"), other.ref))
    assert "already has a linux/amd64 image" in line and other.ref in line
    assert _sha256(skopeo_inspect(cib_registry.ref(repo, "1"), raw=True)) == created.digest
    layers = repository_dir(cib_registry, repo) / "_layers" / "sha256"
    assert sorted(p.name for p in layers.iterdir()) == sorted(
        d.split(":")[1] for d in (amd.config_digest, *(x["digest"] for x in amd.layers)))


def test_bad_sources_and_targets(cib_registry, tmp_path):
    image = push_platform_image(cib_registry, "index/src", "1", "linux/amd64")
    multi = push_base_image(cib_registry, "index/src", "multi", flavour="multiarch")
    target = cib_registry.ref("index/never", "1")
    cases = [
        (("create", target, multi.ref), "already a multi-platform index"),
        (("create", target, image.ref, cib_registry.ref("index/src", "missing")), "missing"),
        (("create", target, "scratch"), "scratch"),
        (("create", f"docker-archive:{tmp_path}/a.tar", image.ref), "docker-archive"),
        (("create", f"{target}@sha256:{'0' * 64}", image.ref), "name the target with a tag"),
        (("append", image.ref, image.ref), "a single image, not an index"),
        (("append", f"oci:{tmp_path}/layout", image.ref), "oci:PATH:TAG"),
        (("create", target, "docker-daemon:app:1"), "docker save"),
    ]
    for args, says in cases:
        line = one_error_line(run("index", *args))
        assert says in line, (args, line)
    assert not repository_dir(cib_registry, "index/never").exists()
    assert not (tmp_path / "a.tar").exists() and not (tmp_path / "layout").exists()
    assert json.loads(skopeo_inspect(image.ref, raw=True)) == image.manifest


def test_no_source_is_a_usage_error_and_none_given_to_the_library_too(cib_registry):
    assert run("index", "create", cib_registry.ref("index/never", "2")).exit_code == 2
    with pytest.raises(ConfigurationError, match="at least one image"):
        create_index(cib_registry.ref("index/never", "2"), [])
