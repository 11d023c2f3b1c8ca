"""``cib tag``: more names for a manifest, in a registry (all three auth modes) and in an OCI
layout; skopeo reads the new tags back, the registry's access log shows no blob moved."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_support import (
    access_log_size,
    cib_requests_since,
    isolate_home,
    login,
    one_error_line,
    repository_dir,
    run,
)

from cib_core.tagging import tag_image
from cib_core.testing import push_base_image, skopeo_copy, skopeo_inspect

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return isolate_home(tmp_path, monkeypatch)


def test_tag_puts_the_same_bytes_under_each_tag_and_moves_no_blob(cib_any_registry):
    repo = f"tag/{cib_any_registry.mode}"
    image = push_base_image(cib_any_registry, repo, "1.4.2")
    login(cib_any_registry)
    offset = access_log_size(cib_any_registry)
    result = run("tag", image.ref, "1.4", "1", "latest")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == [f"{cib_any_registry.host}/{repo}:{t}" for t in ("1.4", "1", "latest")]
    creds = cib_any_registry.creds_arg()
    for tag in ("1.4", "1", "latest"):
        assert skopeo_inspect(cib_any_registry.ref(repo, tag), raw=True, creds=creds) == image.raw
    sent = cib_requests_since(cib_any_registry, offset)
    assert not [line for line in sent if "/blobs/" in line], sent
    assert sorted(line for line in sent if line.startswith("PUT")) == sorted(
        f"PUT /v2/{repo}/manifests/{t} HTTP/1.1" for t in ("1.4", "1", "latest"))


def test_tag_an_index_by_digest_keeps_its_bytes(cib_registry, cib_multiarch_base_image):
    repo = cib_multiarch_base_image.repository
    result = run("tag", "--json", cib_multiarch_base_image.ref_by_digest, "stable")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["digest"] == cib_multiarch_base_image.digest
    assert report["mediaType"] == "application/vnd.oci.image.index.v1+json"
    assert report["references"] == [f"{cib_registry.host}/{repo}:stable"]
    assert skopeo_inspect(cib_registry.ref(repo, "stable"), raw=True) == cib_multiarch_base_image.raw


def test_tag_in_an_oci_layout_adds_index_entries_only(cib_base_image, tmp_path):
    layout = tmp_path / "layout"
    skopeo_copy(cib_base_image.ref, f"oci:{layout}:1")
    blobs_before = sorted(p.name for p in (layout / "blobs" / "sha256").iterdir())
    before = skopeo_inspect(f"oci:{layout}:1", raw=True)
    result = tag_image(f"oci:{layout}:1", ["2", "stable"])
    assert result.references == (f"oci:{layout}:2", f"oci:{layout}:stable")
    for tag in ("2", "stable"):
        assert skopeo_inspect(f"oci:{layout}:{tag}", raw=True) == before
    entries = json.loads((layout / "index.json").read_text())["manifests"]
    assert [e["annotations"]["org.opencontainers.image.ref.name"] for e in entries] == ["1", "2", "stable"]
    assert {e["digest"] for e in entries} == {result.digest}
    assert sorted(p.name for p in (layout / "blobs" / "sha256").iterdir()) == blobs_before


# -- bad input: one line each, nothing written ------------------------------------------------

def test_an_invalid_tag_among_good_ones_writes_none(cib_registry, cib_base_image):
    repo = cib_base_image.repository
    result = run("tag", cib_base_image.ref, "good", "bad/tag")
    line = one_error_line(result)
    assert "'bad/tag'" in line and "cib copy" in line
    assert skopeo_inspect(cib_registry.ref(repo, "1"), raw=True) == cib_base_image.raw
    tags_dir = repository_dir(cib_registry, repo) / "_manifests" / "tags"
    assert not (tags_dir / "good").exists()


def test_a_missing_source_is_one_line(cib_registry):
    line = one_error_line(run("tag", f"{cib_registry.host}/tag/missing:1", "2"))
    assert "tag/missing" in line
    assert not repository_dir(cib_registry, "tag/missing").exists()


def test_a_docker_archive_cannot_take_tags(tmp_path):
    archive = tmp_path / "a.tar"
    archive.write_bytes(b"")
    line = one_error_line(run("tag", f"docker-archive:{archive}", "2"))
    assert "docker-archive" in line and "cib copy" in line
    assert archive.read_bytes() == b""


def test_no_tag_is_a_usage_error(cib_base_image):
    result = run("tag", cib_base_image.ref)
    assert result.exit_code == 2
    assert "TAG..." in result.stderr
