"""``cib copy --platform a,b`` (an index of just those), ``--all-tags``, ``docker://`` references
and skopeo's transports cib refuses: against the real registries, skopeo as the judge."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import requests
from cli_support import (
    isolate_home,
    login,
    one_error_line,
    push_platform_image,
    repository_dir,
    run,
)

from cib_core.copy import copy_all_tags, copy_image
from cib_core.errors import NotFound
from cib_core.testing import PushedImage, RegistryServer, push_base_image, push_index, skopeo_inspect

pytestmark = pytest.mark.integration

PLATFORMS = ("linux/amd64", "linux/arm64/v8", "linux/s390x")


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return isolate_home(tmp_path, monkeypatch)


def _three_platforms(server: RegistryServer, repo: str, tag: str = "1", *,
                     attest: bool = False) -> PushedImage:
    images = [push_platform_image(server, repo, None, p, oci=True) for p in PLATFORMS]
    index = push_index(server, repo, None if attest else tag, images, oci=True)
    if not attest:
        return index
    # a BuildKit-style attestation entry about the arm64 image, as `docker buildx` writes them
    arm = images[1]
    document = json.loads(index.raw)
    attestation = push_platform_image(server, repo, None, "unknown/unknown", oci=True)
    document["manifests"].append({
        "mediaType": attestation.media_type, "digest": attestation.digest,
        "size": len(attestation.raw), "platform": {"architecture": "unknown", "os": "unknown"},
        "annotations": {"vnd.docker.reference.digest": arm.digest,
                        "vnd.docker.reference.type": "attestation-manifest"}})
    raw = json.dumps(document, indent=3).encode()
    assert server.mode == "open"
    answer = requests.put(f"{server.url}/v2/{repo}/manifests/{tag}", data=raw, timeout=30,
                          headers={"Content-Type": "application/vnd.oci.image.index.v1+json"})
    assert answer.status_code == 201, answer.text
    digest = "sha256:" + hashlib.sha256(raw).hexdigest()
    return PushedImage(server=server, repository=repo, tag=tag, digest=digest,
                       media_type="application/vnd.oci.image.index.v1+json", raw=raw,
                       config_raw=index.config_raw, blobs=index.blobs, platforms=index.platforms)


@pytest.fixture(scope="module")
def three(cib_registry: RegistryServer) -> PushedImage:
    return _three_platforms(cib_registry, "subset/src")


def test_two_of_three_platforms_make_an_index_of_those(three, cib_any_registry):
    login(cib_any_registry)
    repo = f"subset/{cib_any_registry.mode}"
    result = run("copy", three.ref, f"{cib_any_registry.host}/{repo}:2", "--platform",
                 "linux/arm64,linux/amd64", "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    creds = cib_any_registry.creds_arg()
    raw = skopeo_inspect(cib_any_registry.ref(repo, "2"), raw=True, creds=creds)
    index = json.loads(raw)
    assert report["digest"] == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert index["mediaType"] == "application/vnd.oci.image.index.v1+json"
    source_entries = json.loads(three.raw)["manifests"]
    # the kept entries are the source's, in the source's order: the images keep their digests
    assert index["manifests"] == source_entries[:2]
    for arch, platform in (("amd64", "linux/amd64"), ("arm64/v8", "linux/arm64/v8")):
        child = skopeo_inspect(cib_any_registry.ref(repo, "2"), raw=True, creds=creds, arch=arch)
        assert child == three.platforms[platform].raw
        config = skopeo_inspect(cib_any_registry.ref(repo, "2"), config=True, creds=creds, arch=arch)
        assert config["architecture"] == arch.split("/")[0]


def test_one_platform_gives_that_image_and_all_of_them_keep_the_index(three, cib_registry):
    one = copy_image(three.ref, f"{cib_registry.host}/subset/one:1", platform=["linux/s390x"])
    assert one.digest == three.platforms["linux/s390x"].digest
    every = copy_image(three.ref, f"{cib_registry.host}/subset/every:1",
                       platform="linux/s390x,linux/amd64,linux/arm64")
    assert every.digest == three.digest
    assert skopeo_inspect(cib_registry.ref("subset/every", "1"), raw=True) == three.raw


def test_attestations_follow_the_images_they_are_about(cib_registry):
    source = _three_platforms(cib_registry, "subset/attested", attest=True)
    kept = copy_image(source.ref, f"{cib_registry.host}/subset/attested-copy:1",
                      platform="linux/arm64,linux/s390x")
    entries = json.loads(skopeo_inspect(cib_registry.ref("subset/attested-copy", "1"), raw=True))["manifests"]
    assert [e["platform"]["architecture"] for e in entries] == ["arm64", "s390x", "unknown"]
    assert kept.media_type == "application/vnd.oci.image.index.v1+json"
    dropped = copy_image(source.ref, f"{cib_registry.host}/subset/attested-copy:2",
                         platform="linux/amd64,linux/s390x")
    entries = json.loads(skopeo_inspect(cib_registry.ref("subset/attested-copy", "2"), raw=True))["manifests"]
    assert [e["platform"]["architecture"] for e in entries] == ["amd64", "s390x"]
    assert dropped.digest != source.digest


def test_a_single_image_source_is_checked_against_the_platform(cib_base_image, cib_registry):
    fine = copy_image(cib_base_image.ref, f"{cib_registry.host}/subset/single:1", platform="linux/amd64")
    assert fine.digest == cib_base_image.digest
    with pytest.raises(NotFound, match=r"single linux/amd64 image; it has no linux/arm64 image"):
        copy_image(cib_base_image.ref, f"{cib_registry.host}/subset/single-wrong:1", platform="linux/arm64")
    assert not repository_dir(cib_registry, "subset/single-wrong").exists()


def test_copy_all_tags_to_another_registry(cib_registry, cib_any_registry):
    source_repo = "alltags/src"
    image = push_base_image(cib_registry, source_repo, "1.0")
    push_base_image(cib_registry, source_repo, "1.0-oci", flavour="oci")
    multi = push_base_image(cib_registry, source_repo, "multi", flavour="multiarch")
    login(cib_any_registry)
    repo = f"alltags/{cib_any_registry.mode}"
    result = run("copy", "--all-tags", f"docker://{cib_registry.host}/{source_repo}",
                 f"{cib_any_registry.host}/{repo}")
    assert result.exit_code == 0, result.stderr
    creds = cib_any_registry.creds_arg()
    expected = {"1.0": image.raw, "multi": multi.raw}
    lines = result.stdout.splitlines()
    assert [line.split("@")[0] for line in lines] == [
        f"{cib_any_registry.host}/{repo}:{t}" for t in ("1.0", "1.0-oci", "multi")]
    for tag, raw in expected.items():
        assert skopeo_inspect(cib_any_registry.ref(repo, tag), raw=True, creds=creds) == raw
    assert f"{cib_any_registry.host}/{repo}:multi@{multi.digest}" in lines


def test_copy_all_tags_into_an_oci_layout(cib_registry, tmp_path):
    source_repo = "alltags/tolayout"
    first = push_base_image(cib_registry, source_repo, "a", flavour="oci")
    second = push_base_image(cib_registry, source_repo, "b", flavour="multiarch")
    layout = tmp_path / "layout"
    results = copy_all_tags(f"{cib_registry.host}/{source_repo}", f"oci:{layout}")
    assert [(r.tags, r.digest) for r in results] == [(("a",), first.digest), (("b",), second.digest)]
    assert skopeo_inspect(f"oci:{layout}:a", raw=True) == first.raw
    assert skopeo_inspect(f"oci:{layout}:b", raw=True) == second.raw
    arm = skopeo_inspect(f"oci:{layout}:b", config=True, arch="arm64/v8")
    assert (arm["architecture"], arm["variant"]) == ("arm64", "v8")


# -- bad input: one line each, nothing written ------------------------------------------------

def test_a_platform_the_source_lacks_names_it_and_what_it_has(three, cib_registry, tmp_path):
    line = one_error_line(run("copy", three.ref, f"{cib_registry.host}/subset/none:1",
                              "--platform", "linux/amd64,linux/ppc64le"))
    assert "linux/ppc64le" in line
    assert "it has: linux/amd64, linux/arm64/v8, linux/s390x" in line
    assert not repository_dir(cib_registry, "subset/none").exists()
    layout = tmp_path / "never"
    one_error_line(run("copy", three.ref, f"oci:{layout}:1", "--platform", "linux/riscv64"))
    assert not layout.exists()


def test_all_tags_checks_every_tag_before_writing(cib_registry, tmp_path):
    source_repo = "alltags/mixed"
    push_base_image(cib_registry, source_repo, "a", flavour="multiarch")
    push_base_image(cib_registry, source_repo, "b")  # linux/amd64 only
    line = one_error_line(run("copy", "--all-tags", f"{cib_registry.host}/{source_repo}",
                              f"{cib_registry.host}/alltags/mixed-copy", "--platform", "linux/arm64"))
    assert f"{source_repo}:b" in line and "linux/arm64" in line
    assert not repository_dir(cib_registry, "alltags/mixed-copy").exists()


@pytest.mark.parametrize(("src", "dst", "says"), [
    ("{host}/alltags/src:1.0", "{host}/x/y", "name it without a tag"),
    ("{host}/alltags/src", "{host}/x/y:1", "destination without a tag"),
    ("{host}/alltags/src", "docker-archive:{tmp}/a.tar", "registry repository or an OCI layout"),
    ("oci:{tmp}/layout", "{host}/x/y", "tags of a registry repository"),
])
def test_all_tags_bad_references(cib_registry, tmp_path, src, dst, says):
    fill = {"host": cib_registry.host, "tmp": tmp_path}
    line = one_error_line(run("copy", "--all-tags", src.format(**fill), dst.format(**fill)))
    assert says in line
    assert not repository_dir(cib_registry, "x/y").exists()
    assert not (tmp_path / "a.tar").exists()


@pytest.mark.parametrize(("transport", "says"), [
    ("docker-daemon:alpine:latest", "docker save"),
    ("containers-storage:localhost/app:1", "podman save"),
    ("oci-archive:app.tar", "tar -xf"),
])
def test_skopeo_transports_cib_cannot_read_are_refused(cib_registry, transport, says):
    line = one_error_line(run("copy", transport, f"{cib_registry.host}/refused/x:1"))
    assert transport in line and says in line
    assert not repository_dir(cib_registry, "refused/x").exists()
    # and as a destination, too
    line = one_error_line(run("copy", f"{cib_registry.host}/refused/none:1", transport))
    assert says in line


def test_docker_transport_is_a_registry_reference_everywhere(cib_base_image, cib_registry):
    source = f"docker://{cib_base_image.ref}"
    assert run("digest", source).stdout.strip() == cib_base_image.digest
    copied = run("copy", source, f"docker://{cib_registry.host}/dockerprefix/app:1")
    assert copied.exit_code == 0, copied.stderr
    assert copied.stdout.strip() == f"{cib_registry.host}/dockerprefix/app@{cib_base_image.digest}"
    assert run("ls", f"docker://{cib_registry.host}/dockerprefix/app").stdout.split() == ["1"]
    tagged = run("tag", f"docker://{cib_registry.host}/dockerprefix/app:1", "2")
    assert tagged.exit_code == 0, tagged.stderr
    assert skopeo_inspect(cib_registry.ref("dockerprefix/app", "2"), raw=True) == cib_base_image.raw
