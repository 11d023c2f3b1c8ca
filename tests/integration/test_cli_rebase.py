"""`cib rebase` against real registries: skopeo reads the result, umoci unpacks it and runc
runs it on the new base."""

from __future__ import annotations

import json
import uuid

import pytest
from mutation_support import (
    base_config,
    inspect_config,
    inspect_raw,
    isolate_home,
    login,
    one_error_line,
    push_second_base,
    push_second_multiarch_base,
    repository_exists,
    run,
    run_bundle,
    tag_digest,
    unpack,
)

from cib_core import mediatypes as mt
from cib_core.errors import ConfigurationError
from cib_core.formats.oci_layout import OCILayoutStore
from cib_core.rebase import rebase_image
from cib_core.testing import make_layer, push_base_image, push_image, umoci_unpack

pytestmark = pytest.mark.integration

APP_SCRIPT = "#!/bin/sh\ncat /etc/which-base 2>/dev/null || echo none\necho app-ok\n"


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    return isolate_home(tmp_path, monkeypatch)


@pytest.fixture
def app_dir(tmp_path):
    root = tmp_path / "app"
    root.mkdir()
    (root / "run.sh").write_text(APP_SCRIPT)
    (root / "run.sh").chmod(0o755)
    return root


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def build_app(server, base_ref: str, app_dir, repo: str, *extra: str) -> str:
    result = run("build", "--from", base_ref, "--to", f"{server.host}/{repo}:1",
                 "--add", f"{app_dir}:/app", "--cmd", '["/bin/sh", "/app/run.sh"]',
                 "--env", "APP=1", *extra)
    assert result.exit_code == 0, result.stderr
    return f"{server.host}/{repo}:1"


def non_empty(history):
    return [h for h in history if not h.get("empty_layer")]


def test_rebase_swaps_the_base_in_every_auth_mode(cib_any_registry, app_dir, tmp_path):
    server = cib_any_registry
    login(server)
    repo = unique("rebase/app")
    old = push_base_image(server, "rebase/base-a", "1", flavour="docker")
    new = push_second_base(server, "rebase/base-b", "2", old)
    app = build_app(server, old.ref, app_dir, repo)
    app_manifest = inspect_raw(server, app)
    app_config = inspect_config(server, app)
    own_layers = app_manifest["layers"][len(old.layers):]
    assert len(own_layers) == 1

    result = run("rebase", app, "--old-base", old.ref, "--new-base", new.ref,
                 "--to", f"{server.host}/{repo}:rebased")
    assert result.exit_code == 0, result.stderr
    digest = result.stdout.strip().rsplit("@", 1)[1]
    assert result.stdout.strip() == f"{server.host}/{repo}@{digest}"
    assert tag_digest(server, repo, "rebased") == digest

    rebased = f"{server.host}/{repo}:rebased"
    manifest = inspect_raw(server, rebased)
    config = inspect_config(server, rebased)
    # the image's flavour stays; the new base's OCI layers take its Docker media types
    assert manifest["mediaType"] == mt.DOCKER_MANIFEST
    assert [d["digest"] for d in manifest["layers"]] == (
        [d["digest"] for d in new.layers] + [d["digest"] for d in own_layers])
    assert {d["mediaType"] for d in manifest["layers"]} == {mt.DOCKER_LAYER_GZIP}
    assert config["rootfs"]["diff_ids"] == (new.config["rootfs"]["diff_ids"]
                                            + app_config["rootfs"]["diff_ids"][len(old.layers):])
    # history: the new base's entries, then the image's own, in step with the layers
    own_history = app_config["history"][len(old.config["history"]):]
    assert config["history"] == new.config["history"] + own_history
    assert len(non_empty(config["history"])) == len(manifest["layers"])
    # the image's config stays
    assert config["config"] == app_config["config"]
    assert "APP=1" in config["config"]["Env"]
    # the source is untouched
    assert inspect_raw(server, app) == app_manifest

    if server.mode == "open":
        before = run_bundle(unpack(app, server, tmp_path, "before"))
        assert before.split() == ["none", "app-ok"]
        after = run_bundle(unpack(rebased, server, tmp_path, "after"))
        assert after.split() == ["B", "app-ok"]


def test_rebase_defaults_to_the_source_tag_and_json(cib_registry, app_dir):
    repo = unique("rebase/default")
    old = push_base_image(cib_registry, "rebase/base-a-oci", "1", flavour="oci")
    new = push_second_base(cib_registry, "rebase/base-b", "2", old)
    app = build_app(cib_registry, old.ref, app_dir, repo)
    before = tag_digest(cib_registry, repo, "1")
    result = run("rebase", app, "--old-base", old.ref, "--new-base", new.ref, "--json")
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["tags"] == ["1"] and out["mediaType"] == mt.OCI_MANIFEST
    assert out["reference"] == f"{cib_registry.host}/{repo}@{out['digest']}"
    assert set(out["blobs"]) <= {"mounted", "present", "uploaded", "copied"}
    assert out["blobs"].get("mounted", 0) >= 2  # the new base's own layers, from its repository
    after = tag_digest(cib_registry, repo, "1")
    assert after == out["digest"] != before
    manifest = inspect_raw(cib_registry, app)
    # an OCI image records where it stands now, as crane does
    assert manifest["annotations"] == {
        "org.opencontainers.image.base.name": f"{cib_registry.host}/{new.repository}:2",
        "org.opencontainers.image.base.digest": new.digest}
    # rebasing by digest writes by digest only, to the same repository
    by_digest = run("rebase", f"{cib_registry.host}/{repo}@{after}", "--old-base", new.ref,
                    "--new-base", old.ref)
    assert by_digest.exit_code == 0, by_digest.stderr
    back = by_digest.stdout.strip().rsplit("@", 1)[1]
    assert tag_digest(cib_registry, repo, "1") == after  # no tag moved
    assert tag_digest(cib_registry, repo, back) == back
    assert [d["digest"] for d in inspect_raw(cib_registry, f"{cib_registry.host}/{repo}@{back}")["layers"]][:2] \
        == [d["digest"] for d in old.layers]


def test_rebase_every_platform_of_an_index(cib_registry, cib_multiarch_base_image, app_dir):
    repo = unique("rebase/multi")
    new = push_second_multiarch_base(cib_registry, "rebase/multi-b", "1", cib_multiarch_base_image)
    app = build_app(cib_registry, cib_multiarch_base_image.ref, app_dir, repo, "--platform", "all")
    result = run("rebase", app, "--old-base", cib_multiarch_base_image.ref, "--new-base", new.ref,
                 "--to", f"{cib_registry.host}/{repo}:rebased", "--json")
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["mediaType"] == mt.OCI_INDEX
    assert sorted(out["platforms"]) == ["linux/amd64", "linux/arm64/v8"]
    index = inspect_raw(cib_registry, f"{cib_registry.host}/{repo}:rebased")
    assert [e["platform"] for e in index["manifests"]] == [
        e["platform"] for e in inspect_raw(cib_registry, app)["manifests"]]
    for key, arch in (("linux/amd64", "amd64"), ("linux/arm64/v8", "arm64/v8")):
        before = inspect_raw(cib_registry, app, arch)
        after = inspect_raw(cib_registry, f"{cib_registry.host}/{repo}:rebased", arch)
        base = new.platforms[key]
        old = cib_multiarch_base_image.platforms[key]
        own = before["layers"][len(old.layers):]
        assert [d["digest"] for d in after["layers"]] == (
            [d["digest"] for d in base.layers] + [d["digest"] for d in own])
        config = inspect_config(cib_registry, f"{cib_registry.host}/{repo}:rebased", arch)
        assert config["architecture"] == arch.split("/")[0]
        assert config["rootfs"]["diff_ids"][:len(base.layers)] == base.config["rootfs"]["diff_ids"]
        assert len(non_empty(config["history"])) == len(after["layers"])


def test_rebase_into_an_oci_layout_runs_under_runc(cib_registry, app_dir, tmp_path):
    repo = unique("rebase/to-layout")
    old = push_base_image(cib_registry, "rebase/base-a", "1", flavour="docker")
    new = push_second_base(cib_registry, "rebase/base-b", "2", old)
    app = build_app(cib_registry, old.ref, app_dir, repo)
    layout = tmp_path / "layout"
    result = run("rebase", app, "--old-base", old.ref, "--new-base", new.ref, "--to", f"oci:{layout}:b")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip().startswith(f"oci:{layout}@sha256:")
    bundle = tmp_path / "bundle"
    umoci_unpack(layout, "b", bundle)
    assert run_bundle(bundle).split() == ["B", "app-ok"]
    assert run("validate", f"oci:{layout}:b").exit_code == 0


def test_library_rebase_with_auth_options(cib_basic_registry, app_dir):
    server = cib_basic_registry
    login(server)  # for the build; the library call below passes its own auth
    repo = unique("rebase/library")
    old = push_base_image(server, "rebase/base-a", "1", flavour="docker")
    new = push_second_base(server, "rebase/base-b", "2", old)
    app = build_app(server, old.ref, app_dir, repo)
    result = rebase_image(app, old.ref, new.ref, to=f"{server.host}/{repo}:lib",
                          auth={server.host: server.auth})
    assert tag_digest(server, repo, "lib") == result.digest
    assert result.tags == ("lib",) and result.reference == f"{server.host}/{repo}@{result.digest}"


def test_wrong_old_base_is_one_line_and_writes_nothing(cib_registry, cib_base_image, app_dir):
    repo = unique("rebase/wrong")
    app = build_app(cib_registry, cib_base_image.ref, app_dir, repo)
    unrelated = push_base_image(cib_registry, "rebase/other", "1", flavour="multiarch")
    other = unrelated.platforms["linux/amd64"]
    new = push_second_base(cib_registry, "rebase/base-b", "2", cib_base_image)
    before = tag_digest(cib_registry, repo, "1")
    target = unique("rebase/never")
    result = run("rebase", app, "--old-base", f"{cib_registry.host}/{other.repository}@{other.digest}",
                 "--new-base", new.ref, "--to", f"{cib_registry.host}/{target}:x")
    assert result.exit_code == 1 and result.stdout == ""
    line = one_error_line(result.stderr)
    assert "is not based on" in line and "--old-base" in line
    assert not repository_exists(cib_registry, target)
    assert tag_digest(cib_registry, repo, "1") == before
    # the same to the source's own tag: it stays where it was
    again = run("rebase", app, "--old-base", new.ref, "--new-base", cib_base_image.ref)
    assert again.exit_code == 1
    assert "is not based on" in one_error_line(again.stderr)
    assert tag_digest(cib_registry, repo, "1") == before


@pytest.mark.parametrize("case", ["platform", "digest-target", "scratch-target", "missing-new"])
def test_bad_input_is_one_line_and_writes_nothing(case, cib_registry, cib_base_image, cib_multiarch_base_image,
                                                  app_dir, tmp_path):
    repo = unique("rebase/bad")
    target = unique("rebase/never")
    if case == "platform":
        # an index whose arm64 image has no counterpart in a single-platform new base
        app = build_app(cib_registry, cib_multiarch_base_image.ref, app_dir, repo, "--platform", "all")
        args = [app, "--old-base", cib_multiarch_base_image.ref, "--new-base", cib_base_image.ref,
                "--to", f"{cib_registry.host}/{target}:x"]
        expected = "linux/amd64 image"
    elif case == "digest-target":
        app = build_app(cib_registry, cib_base_image.ref, app_dir, repo)
        args = [app, "--old-base", cib_base_image.ref, "--new-base", cib_base_image.ref,
                "--to", f"{cib_registry.host}/{target}@sha256:{'0' * 64}"]
        expected = "cannot name a digest"
    elif case == "scratch-target":
        app = build_app(cib_registry, cib_base_image.ref, app_dir, repo)
        args = [app, "--old-base", cib_base_image.ref, "--new-base", cib_base_image.ref, "--to", "scratch"]
        expected = "not a place to write"
    else:
        app = build_app(cib_registry, cib_base_image.ref, app_dir, repo)
        args = [app, "--old-base", cib_base_image.ref, "--new-base", f"{cib_registry.host}/{target}:nope",
                "--to", f"oci:{tmp_path / 'out'}"]
        expected = "404"
    result = run("rebase", *args)
    assert result.exit_code == 1, result.stdout
    assert expected in one_error_line(result.stderr)
    assert not repository_exists(cib_registry, target)
    assert not (tmp_path / "out").exists()


def test_scratch_bases(cib_registry, cib_base_image, tmp_path):
    """An image built from nothing gets a base; an image's base can be taken away."""
    own = make_layer({"app/hello.txt": "hello\n"})
    lonely = push_image(cib_registry, unique("rebase/lonely"), "1", [own],
                        base_config([own], ["ADD app"]), oci=True)
    result = run("rebase", lonely.ref, "--old-base", "scratch", "--new-base", cib_base_image.ref,
                 "--to", f"oci:{tmp_path / 'layout'}:based")
    assert result.exit_code == 0, result.stderr
    bundle = tmp_path / "bundle"
    umoci_unpack(tmp_path / "layout", "based", bundle)
    assert (bundle / "rootfs" / "bin" / "busybox").is_file()
    assert (bundle / "rootfs" / "app" / "hello.txt").read_text() == "hello\n"
    stripped = run("rebase", f"oci:{tmp_path / 'layout'}:based", "--old-base", cib_base_image.ref,
                   "--new-base", "scratch", "--to", f"oci:{tmp_path / 'layout'}:stripped")
    assert stripped.exit_code == 0, stripped.stderr
    store = OCILayoutStore(tmp_path / "layout")
    raw, _, _ = store.get_manifest("stripped")
    assert [d["digest"] for d in json.loads(raw)["layers"]] == [lonely.layers[0]["digest"]]


def test_library_refuses_before_writing(cib_registry, cib_base_image, cib_multiarch_base_image, tmp_path):
    other = cib_multiarch_base_image.platforms["linux/amd64"]
    with pytest.raises(ConfigurationError, match="is not based on"):
        rebase_image(cib_base_image.ref, f"{cib_registry.host}/{other.repository}@{other.digest}",
                     cib_base_image.ref, to=f"oci:{tmp_path / 'out'}")
    assert not (tmp_path / "out").exists()


def test_rebase_onto_the_same_base_changes_nothing(cib_registry, cib_base_image, app_dir):
    """cib's own documents are rebuilt byte for byte: a rebase onto the old base itself gives
    the image back, digest and all, and says so."""
    repo = unique("rebase/noop")
    app = build_app(cib_registry, cib_base_image.ref, app_dir, repo)
    before = tag_digest(cib_registry, repo, "1")
    result = run("rebase", app, "--old-base", cib_base_image.ref, "--new-base", cib_base_image.ref)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == f"{cib_registry.host}/{repo}@{before}"
    assert "cib: warning: rebasing" in result.stderr and "changed nothing" in result.stderr


def test_rebase_into_another_registry_streams_every_blob(cib_registry, cib_second_registry, app_dir):
    repo = unique("rebase/cross")
    old = push_base_image(cib_registry, "rebase/base-a", "1", flavour="docker")
    new = push_second_base(cib_registry, "rebase/base-b", "2", old)
    app = build_app(cib_registry, old.ref, app_dir, repo)
    result = run("rebase", app, "--old-base", old.ref, "--new-base", new.ref,
                 "--to", f"{cib_second_registry.host}/{repo}:b", "--json")
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    # three layers of the new base and one of the image copied, the new config uploaded
    assert out["blobs"] == {"copied": 4, "uploaded": 1}
    target = f"{cib_second_registry.host}/{repo}:b"
    assert [d["digest"] for d in inspect_raw(cib_second_registry, target)["layers"]][:3] == [
        d["digest"] for d in new.layers]
    check = run("validate", target)
    assert check.exit_code == 0, check.stdout
    assert check.stdout.startswith(f"{target}: valid (linux/amd64): 1 manifest, 1 config, 4 layers")
