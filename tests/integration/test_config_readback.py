"""The config attributes as the real tools see them: an image built on a registry base, read
back with skopeo (config, manifest, index) and unpacked by umoci into the runtime spec a
container would run with."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cib_core import Image
from cib_core.errors import ConfigurationError
from cib_core.testing import skopeo_copy, skopeo_inspect, umoci_unpack

pytestmark = pytest.mark.integration


def test_saved_config_read_back_by_skopeo_and_umoci(cib_registry, cib_base_image, tmp_path: Path):
    target = f"{cib_registry.host}/config/app:1"
    image = Image(cib_base_image.ref, target)
    with pytest.raises(ConfigurationError):
        image.cmd = "echo hi"  # refused, so the saved Cmd below is the list
    image.entrypoint = ["/bin/sh", "-c"]
    image.cmd = ["echo hi"]
    image.working_dir = "/srv"
    image.user = "1000:1001"
    image.env = ["APP_MODE=prod", "PATH=/srv/bin:/usr/bin:/bin"]
    image.labels = {"org.example.team": "web"}
    image.exposed_ports = ["8080", "53/udp"]
    image.volumes = ["/data"]
    image.annotations = {"org.opencontainers.image.version": "1.2"}
    result = image.save()

    config = skopeo_inspect(target, config=True)["config"]
    base = cib_base_image.config["config"]
    assert config["Entrypoint"] == ["/bin/sh", "-c"]
    assert config["Cmd"] == ["echo hi"]
    assert config["WorkingDir"] == "/srv"
    assert config["User"] == "1000:1001"
    # PATH replaced where the base has it, APP_MODE (new) appended
    new_path = "PATH=/srv/bin:/usr/bin:/bin"
    base_env = base.get("Env") or []
    has_path = any(e.startswith("PATH=") for e in base_env)
    assert config["Env"] == ([new_path if e.startswith("PATH=") else e for e in base_env]
                             + ["APP_MODE=prod"] + ([] if has_path else [new_path]))
    assert config["Labels"] == {**(base.get("Labels") or {}), "org.example.team": "web"}
    assert config["ExposedPorts"] == {**(base.get("ExposedPorts") or {}), "8080/tcp": {},
                                      "53/udp": {}}
    assert config["Volumes"] == {**(base.get("Volumes") or {}), "/data": {}}
    manifest = json.loads(skopeo_inspect(target, raw=True))
    assert manifest["annotations"] == {"org.opencontainers.image.version": "1.2"}
    assert skopeo_inspect(target)["Digest"] == result.digest

    # what a runtime gets: umoci turns the config into an OCI runtime spec
    skopeo_copy(target, f"oci:{tmp_path / 'layout'}:1")
    umoci_unpack(tmp_path / "layout", "1", tmp_path / "bundle")
    spec = json.loads((tmp_path / "bundle" / "config.json").read_text())
    assert spec["process"]["args"] == ["/bin/sh", "-c", "echo hi"]
    assert spec["process"]["cwd"] == "/srv"
    assert (spec["process"]["user"]["uid"], spec["process"]["user"]["gid"]) == (1000, 1001)
    assert "APP_MODE=prod" in spec["process"]["env"]
    assert spec["annotations"]["org.opencontainers.image.exposedPorts"] == "53/udp,8080/tcp"


def test_annotations_on_the_index_and_each_platform(cib_registry, cib_multiarch_base_image):
    target = f"{cib_registry.host}/config/multi:1"
    image = Image(cib_multiarch_base_image.ref, target)
    image.annotations = {"org.opencontainers.image.version": "3.0"}
    image.cmd = ["node", "/srv/app.js"]
    image.save()
    index = json.loads(skopeo_inspect(target, raw=True))
    assert index["annotations"]["org.opencontainers.image.version"] == "3.0"
    for platform in cib_multiarch_base_image.platforms:
        arch = platform.split("/", 1)[1]
        manifest = json.loads(skopeo_inspect(target, raw=True, arch=arch))
        assert manifest["annotations"]["org.opencontainers.image.version"] == "3.0", platform
        assert skopeo_inspect(target, config=True, arch=arch)["config"]["Cmd"] == [
            "node", "/srv/app.js"], platform
