"""`cib flatten` against real registries: umoci unpacks the original and the flattened image,
and the two file trees must be the same."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
import uuid

import pytest
from mutation_support import (
    base_config,
    diff_id,
    inspect_config,
    inspect_raw,
    isolate_home,
    login,
    one_error_line,
    repository_exists,
    run,
    run_bundle,
    tag_digest,
    tree,
    unpack,
)

from cib_core import mediatypes as mt
from cib_core.squash import flatten_image
from cib_core.testing import make_layer, push_base_image, push_image, umoci_unpack

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    return isolate_home(tmp_path, monkeypatch)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def push_layered_image(server, repo: str, *, oci: bool = False):
    """The test bed's busybox base and three layers on it that overwrite, delete (whiteouts)
    and hide (an opaque directory) what lower layers wrote."""
    base = push_base_image(server, "flatten/base-oci" if oci else "flatten/base", "1",
                           flavour="oci" if oci else "docker")
    base_layers = [base.blobs[d["digest"]] for d in base.layers]
    app = make_layer(
        {"app/keep.txt": "kept\n", "app/gone.txt": "deleted above\n", "app/run.sh":
         "#!/bin/sh\nls /data\ncat /app/keep.txt /app/changed.txt\n",
         "app/changed.txt": "first\n", "data/old/a": "a\n", "data/old/b": "b\n",
         "opt/tool": "tool\n"},
        dirs=("var/cache/app",), symlinks={"app/link": "keep.txt", "usr/bin/tool": "/opt/tool"},
        modes={"app/run.sh": 0o755, "opt/tool": 0o4755, "var/cache/app": 0o700})
    upper = make_layer(
        {"app/.wh.gone.txt": "", "app/changed.txt": "second\n", "data/.wh..wh..opq": "",
         "data/new": "new\n", "etc/.wh.group": ""},
        modes={"data": 0o750})
    top = make_layer({"app/added-last": "last\n", "etc/which-base": "flat\n"},
                     symlinks={"app/link": "changed.txt"})
    layers = [*base_layers, app, upper, top]
    config = base_config(layers, ["ADD busybox", "ADD etc", "CMD sh", "ADD app", "ADD upper",
                                  "ADD top", "CMD app"])
    config["config"]["Cmd"] = ["/bin/sh", "/app/run.sh"]
    config["config"]["Labels"] = {"org.example.kept": "yes"}
    return push_image(server, repo, "1", layers, config, oci=oci)


def test_flatten_keeps_the_filesystem_in_every_auth_mode(cib_any_registry, tmp_path):
    server = cib_any_registry
    login(server)
    repo = unique("flatten/app")
    image = push_layered_image(server, repo)
    result = run("flatten", image.ref, "--to", f"{server.host}/{repo}:flat")
    assert result.exit_code == 0, result.stderr
    digest = result.stdout.strip().rsplit("@", 1)[1]
    assert result.stdout.strip() == f"{server.host}/{repo}@{digest}"
    assert tag_digest(server, repo, "flat") == digest
    flat_ref = f"{server.host}/{repo}:flat"
    manifest = inspect_raw(server, flat_ref)
    config = inspect_config(server, flat_ref)
    assert manifest["mediaType"] == mt.DOCKER_MANIFEST
    assert [d["mediaType"] for d in manifest["layers"]] == [mt.DOCKER_LAYER_GZIP]
    assert config["history"] == [{"created": image.config["created"],
                                  "created_by": f"cib flatten {image.digest}",
                                  "comment": "5 layers merged into one"}]
    kept = {k: v for k, v in config.items() if k not in ("rootfs", "history")}
    assert kept == {k: v for k, v in image.config.items() if k not in ("rootfs", "history")}

    original = tree(unpack(image.ref, server, tmp_path, "original") / "rootfs")
    flattened = tree(unpack(flat_ref, server, tmp_path, "flat") / "rootfs")
    blob = (tmp_path / "flat-layout" / "blobs" / "sha256"
            / manifest["layers"][0]["digest"].split(":")[1]).read_bytes()
    assert config["rootfs"]["diff_ids"] == [diff_id(blob)]
    assert flattened == original
    # the whiteouts were applied, not copied
    assert "app/gone.txt" not in flattened and "etc/group" not in flattened
    assert "data/old" not in flattened and "data/new" in flattened
    assert not any(".wh." in path for path in flattened)
    if server.mode == "open":
        bundle = unpack(flat_ref, server, tmp_path, "run")
        assert run_bundle(bundle).split() == ["new", "kept", "second"]


def test_flatten_every_platform_of_an_index_to_a_layout(cib_registry, cib_multiarch_base_image, tmp_path):
    layout = tmp_path / "layout"
    result = run("flatten", cib_multiarch_base_image.ref, "--to", f"oci:{layout}:flat", "--json")
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["mediaType"] == mt.OCI_INDEX and sorted(out["platforms"]) == ["linux/amd64",
                                                                             "linux/arm64/v8"]
    index = json.loads((layout / "blobs" / "sha256" / out["digest"].split(":")[1]).read_bytes())
    assert [e["platform"] for e in index["manifests"]] == [
        e["platform"] for e in cib_multiarch_base_image.manifest["manifests"]]
    for entry, (key, original) in zip(index["manifests"], cib_multiarch_base_image.platforms.items(),
                                      strict=True):
        child = json.loads((layout / "blobs" / "sha256" / entry["digest"].split(":")[1]).read_bytes())
        assert len(child["layers"]) == 1, key
        config = json.loads((layout / "blobs" / "sha256" / child["config"]["digest"].split(":")[1])
                            .read_bytes())
        assert (config["architecture"], config.get("variant")) == (
            original.config["architecture"], original.config.get("variant"))
        assert config["config"] == original.config["config"]
    # umoci reads the amd64 image (its unpack picks by tag, so tag it alone first)
    single = run("flatten", f"{cib_registry.host}/{cib_multiarch_base_image.repository}@"
                 f"{cib_multiarch_base_image.platforms['linux/amd64'].digest}",
                 "--to", f"oci:{layout}:amd64")
    assert single.exit_code == 0, single.stderr
    bundle = tmp_path / "bundle"
    umoci_unpack(layout, "amd64", bundle)
    assert (bundle / "rootfs" / "etc" / "platform").read_text() == "linux/amd64\n"
    assert run("validate", f"oci:{layout}:flat").exit_code == 0


def test_flatten_by_digest_writes_by_digest_and_library_call(cib_registry, tmp_path):
    repo = unique("flatten/digest")
    image = push_layered_image(cib_registry, repo, oci=True)
    result = run("flatten", image.ref_by_digest)
    assert result.exit_code == 0, result.stderr
    digest = result.stdout.strip().rsplit("@", 1)[1]
    assert tag_digest(cib_registry, repo, "1") == image.digest  # no tag moved
    assert tag_digest(cib_registry, repo, digest) == digest
    assert inspect_raw(cib_registry, f"{cib_registry.host}/{repo}@{digest}")["mediaType"] == mt.OCI_MANIFEST
    # the same bytes from the library, again: flattening is reproducible
    again = flatten_image(image.ref_by_digest, to=f"{cib_registry.host}/{repo}:lib")
    assert again.digest == digest and again.tags == ("lib",)


def test_flatten_refuses_bad_input_and_writes_nothing(cib_registry, tmp_path):
    # a layer whose entry escapes the root is found while building, before any write
    evil = make_layer({"ok.txt": "fine\n"})
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("../escape.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    bad = gzip.compress(buffer.getvalue(), mtime=0)
    image = push_image(cib_registry, unique("flatten/evil"), "1", [evil, bad],
                       base_config([evil, bad], ["ADD ok", "ADD evil"]), oci=True)
    target = unique("flatten/never")
    result = run("flatten", image.ref, "--to", f"{cib_registry.host}/{target}:1")
    assert result.exit_code == 1
    assert "escapes the root" in one_error_line(result.stderr)
    assert not repository_exists(cib_registry, target)
    scratch = run("flatten", "scratch", "--to", f"oci:{tmp_path / 'out'}")
    assert scratch.exit_code == 1 and "scratch" in one_error_line(scratch.stderr)
    missing = run("flatten", f"{cib_registry.host}/{target}:nope", "--to", f"oci:{tmp_path / 'out'}")
    assert missing.exit_code == 1 and "404" in one_error_line(missing.stderr)
    assert not (tmp_path / "out").exists()
