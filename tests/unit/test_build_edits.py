"""Config edits of `cib build` in the library (``image.unset_env``) and dry runs into local
targets. No network: scratch or hand-made OCI layout bases, targets in tmp_path, read back as
plain files."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest

from cib_core import CustomFile, Image
from cib_core import mediatypes as mt
from cib_core.errors import ConfigurationError, InvalidReference, LocalWriteError, ManifestError


def _blob(layout: Path, digest: str) -> bytes:
    algorithm, hexdigest = digest.split(":")
    data = (layout / "blobs" / algorithm / hexdigest).read_bytes()
    assert "sha256:" + hashlib.sha256(data).hexdigest() == digest
    return data


def _tagged(layout: Path, tag: str) -> tuple[str, dict[str, Any]]:
    index = json.loads((layout / "index.json").read_text())
    entries = [m for m in index["manifests"]
               if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag]
    assert len(entries) == 1, index
    return entries[0]["digest"], json.loads(_blob(layout, entries[0]["digest"]))


def _config(layout: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = json.loads(_blob(layout, manifest["config"]["digest"]))
    return config


def _write_blob(layout: Path, data: bytes) -> tuple[str, int]:
    hexdigest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (layout / "blobs" / "sha256" / hexdigest).write_bytes(data)
    return "sha256:" + hexdigest, len(data)


def _base(layout: Path, envs: dict[str, list[str]]) -> str:
    """An OCI layout whose tag 1 is an index of empty images, one per ``{arch: Env}``."""
    layout.mkdir()
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    entries = []
    for arch, env in envs.items():
        config = {"architecture": arch, "os": "linux", "config": {"Env": env, "Cmd": ["sh"]},
                  "rootfs": {"type": "layers", "diff_ids": []}}
        config_digest, config_size = _write_blob(layout, json.dumps(config).encode())
        manifest = {"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST, "layers": [],
                    "config": {"mediaType": mt.OCI_CONFIG, "digest": config_digest,
                               "size": config_size}}
        digest, size = _write_blob(layout, json.dumps(manifest).encode())
        entries.append({"mediaType": mt.OCI_MANIFEST, "digest": digest, "size": size,
                        "platform": {"os": "linux", "architecture": arch}})
    index = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": entries}
    digest, size = _write_blob(layout, json.dumps(index).encode())
    (layout / "index.json").write_text(json.dumps({
        "schemaVersion": 2, "mediaType": mt.OCI_INDEX,
        "manifests": [{"mediaType": mt.OCI_INDEX, "digest": digest, "size": size,
                       "annotations": {"org.opencontainers.image.ref.name": "1"}}]}))
    return f"oci:{layout}:1"


def _platform_envs(layout: Path, tag: str = "1") -> dict[str, list[str] | None]:
    _digest, index = _tagged(layout, tag)
    out = {}
    for entry in index["manifests"]:
        manifest = json.loads(_blob(layout, entry["digest"]))
        config = _config(layout, manifest)
        out[config["architecture"]] = config["config"].get("Env")
    return out


# --------------------------------------------------------------------------------------------
# image.unset_env
# --------------------------------------------------------------------------------------------

def test_unset_env_removes_the_names_from_every_platform(tmp_path: Path) -> None:
    base = _base(tmp_path / "base", {"amd64": ["PATH=/bin", "DEBUG=1", "LANG=C"],
                                     "arm64": ["DEBUG=2", "PATH=/bin", "ARM=1"]})
    image = Image(base, f"oci:{tmp_path / 'out'}:1")
    image.unset_env = ["DEBUG", "ARM"]
    image.env = ["LANG=C.UTF-8", "NEW=x"]
    image.save()
    assert _platform_envs(tmp_path / "out") == {
        "amd64": ["PATH=/bin", "LANG=C.UTF-8", "NEW=x"],
        "arm64": ["PATH=/bin", "LANG=C.UTF-8", "NEW=x"],
    }


def test_unsetting_every_name_leaves_no_env(tmp_path: Path) -> None:
    base = _base(tmp_path / "base", {"amd64": ["A=1", "B=2"]})
    image = Image(base, f"oci:{tmp_path / 'out'}:1")
    image.unset_env = ["A", "B"]
    image.save()
    assert _platform_envs(tmp_path / "out") == {"amd64": None}


def test_saving_twice_gives_the_same_image(tmp_path: Path) -> None:
    base = _base(tmp_path / "base", {"amd64": ["A=1", "B=2"]})
    image = Image(base, f"oci:{tmp_path / 'out'}:1")
    image.unset_env = ["A"]
    first = image.save()
    assert image.save().digest == first.digest


def test_a_name_no_platform_has_is_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    base = _base(tmp_path / "base", {"amd64": ["A=1"], "arm64": ["B=1"]})
    image = Image(base, f"oci:{tmp_path / 'out'}:1")
    image.unset_env = ["A", "B", "DEBGU"]
    with caplog.at_level(logging.WARNING, logger="cib_core.image"):
        image.save()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "DEBGU is not in the environment" in warnings[0], warnings
    assert _platform_envs(tmp_path / "out") == {"amd64": None, "arm64": None}


def test_setting_and_unsetting_one_name_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    image = Image("scratch", f"oci:{tmp_path / 'out'}:1")
    image.env = ["TOKEN=s3cr3t", "A=1"]
    image.unset_env = ["TOKEN"]
    with pytest.raises(ConfigurationError, match=r"image\.env sets TOKEN and image\.unset_env "
                                                 r"removes it; keep one of the two") as err:
        image.save()
    assert "s3cr3t" not in str(err.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("value", "expected"), [
    ("DEBUG", ['image.unset_env must be a list of variable names, not a str',
               'unset_env=["DEBUG"]']),
    ({"DEBUG": "1"}, ["not a dict", 'unset_env=["DEBUG"]']),
    (["DEBUG", 3], ["image.unset_env[1] is an int"]),
    ([""], ["image.unset_env[0] is empty"]),
    (["TOKEN=s3cr3t"], ["image.unset_env[0] holds an '='", '"TOKEN"']),
    (None, ["must be a list of variable names"]),
])
def test_wrong_unset_env_values_are_refused(tmp_path: Path, value: object, expected: list[str]) -> None:
    image = Image("scratch", f"oci:{tmp_path / 'out'}:1")
    with pytest.raises(ConfigurationError) as err:
        image.unset_env = value  # type: ignore[assignment]
    for text in expected:
        assert text in str(err.value), (text, str(err.value))
    assert "s3cr3t" not in str(err.value)
    assert image.unset_env == []


def test_the_npm_style_spelling_names_unset_env(tmp_path: Path) -> None:
    image = Image("scratch", f"oci:{tmp_path / 'out'}:1")
    with pytest.raises(AttributeError, match=r"image\.unset_env"):
        image.UnsetEnv = ["A"]  # type: ignore[attr-defined]


# --------------------------------------------------------------------------------------------
# dry runs into local targets
# --------------------------------------------------------------------------------------------

def _build(base: str, target: str, *, dry_run: bool) -> Image:
    image = Image(base, target, dry_run=dry_run)
    image.add_files({"/app/main.txt": CustomFile("main\n")})
    image.add_files({"/opt/native": CustomFile("arm\n")}, platform="linux/arm64")
    image.exposed_ports = ["8080"]
    image.annotations = {"org.opencontainers.image.version": "1.0"}
    return image


def test_a_dry_run_writes_nothing_and_plans_what_the_build_writes(tmp_path: Path) -> None:
    base = _base(tmp_path / "base", {"amd64": ["A=1"], "arm64": ["A=1"]})
    out = tmp_path / "out"
    plan = _build(base, f"oci:{out}:1", dry_run=True).save(["1", "latest"]).plan
    assert plan is not None
    assert not out.exists(), "a dry run created the layout"
    result = _build(base, f"oci:{out}:1", dry_run=False).save(["1", "latest"])
    assert plan.digest == result.digest
    assert plan.media_type == mt.OCI_INDEX
    written = {p.name for p in (out / "blobs" / "sha256").iterdir()}
    # every blob and manifest the plan names is what the real build wrote, and nothing else
    assert {b.digest.split(":")[1] for b in plan.blobs} | {
        m.digest.split(":")[1] for m in plan.manifests} == written
    assert {(b.action, b.kind) for b in plan.blobs} == {("write", "layer"), ("write", "config")}
    assert [m.tag for m in plan.manifests] == [None, None, "1", "latest"]
    images = {image.platform: image for image in plan.images}
    assert sorted(images) == ["linux/amd64", "linux/arm64"]
    arm, amd = images["linux/arm64"], images["linux/amd64"]
    assert [layer.created_by for layer in arm.layers] == ["cib add_files /app/main.txt",
                                                          "cib add_files /opt/native"]
    assert [layer.digest for layer in amd.layers] == [arm.layers[0].digest]
    assert all(layer.new and not layer.present for layer in arm.layers)
    _digest, index = _tagged(out, "1")
    assert {e["digest"] for e in index["manifests"]} == {amd.manifest_digest, arm.manifest_digest}


def test_a_dry_run_over_what_is_there_sends_only_new_layers_and_manifests(tmp_path: Path) -> None:
    base = _base(tmp_path / "base", {"amd64": ["A=1"], "arm64": ["A=1"]})
    out = tmp_path / "out"
    result = _build(base, f"oci:{out}:1", dry_run=False).save()
    before = sorted(os.listdir(out / "blobs" / "sha256")), (out / "index.json").read_bytes()
    plan = _build(base, f"oci:{out}:2", dry_run=True).save().plan
    assert plan is not None and plan.digest == result.digest
    # the first build recorded each CustomFile layer under its content key, so the build
    # cache finds both in the target without making them; the configs are there already
    layers = [layer for image in plan.images for layer in image.layers if layer.new]
    assert len({layer.digest for layer in layers}) == 2
    assert all(layer.present for layer in layers)
    assert list(plan.blobs) == []
    assert [m.tag for m in plan.manifests] == [None, None, "2"]
    assert (sorted(os.listdir(out / "blobs" / "sha256")), (out / "index.json").read_bytes()) == before


def test_a_dry_run_into_a_docker_archive_writes_no_file(tmp_path: Path) -> None:
    archive = tmp_path / "app.tar"
    image = Image("scratch", f"docker-archive:{archive}:app:1", dry_run=True)
    image.add_files({"/a": CustomFile("a")})
    plan = image.save().plan
    assert plan is not None and not archive.exists()
    real = Image("scratch", f"docker-archive:{archive}:app:1")
    real.add_files({"/a": CustomFile("a")})
    assert real.save().digest == plan.digest


def test_a_dry_run_refuses_what_the_build_would_refuse(tmp_path: Path) -> None:
    base = _base(tmp_path / "base", {"amd64": ["A=1"], "arm64": ["A=1"]})
    image = Image(base, f"docker-archive:{tmp_path / 'x.tar'}", dry_run=True)
    with pytest.raises(ManifestError, match="single-platform images, not an index"):
        image.save()
    (tmp_path / "file").write_text("not a directory")
    # a layout path that is a file is refused by Image() itself, dry run or not
    with pytest.raises(LocalWriteError, match="is a file"):
        Image("scratch", f"oci:{tmp_path / 'file'}:1", dry_run=True)
    image = Image("scratch", "127.0.0.1:9/app:1", dry_run=True)
    with pytest.raises(InvalidReference, match="bad tag"):
        image.target_store.put_manifest(b"{}", mt.OCI_MANIFEST, "bad tag")
