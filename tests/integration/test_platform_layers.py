"""Layers for one platform of a multi-platform build (``add_files(..., platform=...)``), judged
by skopeo (per platform, with ``--override-arch``) and umoci (each platform's filesystem)."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
from pathlib import Path

import pytest
from cli_support import repository_dir

from cib_core import CustomFile, Image, hookimpl
from cib_core import mediatypes as mt
from cib_core.errors import ConfigurationError
from cib_core.plugin_api import LayerOptions, file_entry
from cib_core.plugins import get_plugin_manager
from cib_core.testing import (
    RegistryServer,
    make_layer,
    require_tool,
    skopeo_inspect,
    umoci_unpack,
)

pytestmark = pytest.mark.integration

ARCHES = {"amd64": "linux/amd64", "arm64": "linux/arm64/v8"}


def _auth(server: RegistryServer) -> dict[str, dict[str, str]] | None:
    return {server.host: server.auth} if server.auth else None


def _platform_rootfs(server: RegistryServer, ref: str, arch: str, tmp_path: Path) -> Path:
    """The filesystem of ``ref``'s ``linux/ARCH`` image as umoci unpacks it, after skopeo picked
    that entry of the index (neither tool shares code with cib)."""
    architecture, _, variant = arch.partition("/")
    layout = tmp_path / f"layout-{architecture}"
    argv = [require_tool("skopeo"), "--insecure-policy", "--override-os", "linux",
            "--override-arch", architecture]
    if variant:
        argv += ["--override-variant", variant]
    argv += ["copy", "--retry-times", "0", "--src-tls-verify=false"]
    argv += ["--src-creds", server.creds_arg()] if server.creds_arg() else ["--src-no-creds"]
    argv += [f"docker://{ref}", f"oci:{layout}:t"]
    done = subprocess.run(argv, capture_output=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return umoci_unpack(layout, "t", tmp_path / f"bundle-{architecture}")


def test_a_layer_goes_to_one_platform_only(cib_any_registry, cib_multiarch_base_image, tmp_path):
    server = cib_any_registry
    target = f"{server.host}/perplatform/app:1"
    image = Image(cib_multiarch_base_image.ref, target, auth=_auth(server))
    common = image.add_files({"/app/main.txt": CustomFile("for every platform\n")})
    arm = image.add_files({"/opt/lib/native.so": CustomFile("aarch64 code\n")},
                          platform="linux/arm64")
    amd = image.add_files({"/opt/lib/native.so": CustomFile("x86_64 code\n")},
                          platform="linux/amd64")
    image.cmd = ["cat", "/app/main.txt"]
    result = image.save()
    assert result.media_type == mt.OCI_INDEX
    creds = server.creds_arg()

    index = json.loads(skopeo_inspect(target, raw=True, creds=creds))
    listed = {e["platform"]["architecture"]: e for e in index["manifests"]}
    assert sorted(listed) == ["amd64", "arm64"]
    assert listed["amd64"]["digest"] != listed["arm64"]["digest"]

    own = {"amd64": amd, "arm64": arm}
    other = {"amd64": arm, "arm64": amd}
    for arch, platform in ARCHES.items():
        base = cib_multiarch_base_image.platforms[platform]
        manifest = json.loads(skopeo_inspect(target, raw=True, arch=arch, creds=creds))
        config = skopeo_inspect(target, config=True, arch=arch, creds=creds)
        assert config["architecture"] == arch
        digests = [layer["digest"] for layer in manifest["layers"]]
        assert digests == [*(layer["digest"] for layer in base.layers), common.digest,
                           own[arch].digest], arch
        assert other[arch].digest not in digests
        assert config["rootfs"]["diff_ids"] == [*base.config["rootfs"]["diff_ids"],
                                                common.diff_id, own[arch].diff_id]
        layered_history = [h for h in config["history"] if not h.get("empty_layer")]
        assert len(layered_history) == len(digests)
        assert listed[arch]["digest"] == "sha256:" + hashlib.sha256(
            skopeo_inspect(target, raw=True, arch=arch, creds=creds)).hexdigest()

    rootfs = {arch: _platform_rootfs(server, target, arch, tmp_path) for arch in ("amd64", "arm64/v8")}
    assert (rootfs["amd64"] / "opt/lib/native.so").read_text() == "x86_64 code\n"
    assert (rootfs["arm64/v8"] / "opt/lib/native.so").read_text() == "aarch64 code\n"
    for fs in rootfs.values():
        assert (fs / "app/main.txt").read_text() == "for every platform\n"
    assert (rootfs["arm64/v8"] / "etc/platform").read_text() == "linux/arm64/v8\n"


def test_platform_spellings_pick_the_same_image(cib_registry, cib_multiarch_base_image):
    image = Image(cib_multiarch_base_image.ref, f"{cib_registry.host}/perplatform/spellings:1")
    infos = [image.add_files({f"/{i}": CustomFile(str(i))}, platform=spelling)
             for i, spelling in enumerate(("linux/arm64", "linux/arm64/v8", "linux/aarch64"))]
    arm = image.get_image_data("linux/arm64").manifest["layers"]
    amd = image.get_image_data("linux/amd64").manifest["layers"]
    assert [layer["digest"] for layer in arm[-3:]] == [info.digest for info in infos]
    assert not {info.digest for info in infos} & {layer["digest"] for layer in amd}


class _ArchSource:
    """A layer source claiming ``"arch:NAME"``: a file saying which platform it was made for."""

    def __init__(self) -> None:
        self.asked: list[str | None] = []

    @hookimpl
    def cib_layer_source(self, source: object, target: str, options: LayerOptions):  # noqa: ANN201
        if not (isinstance(source, str) and source.startswith("arch:")):
            return None
        self.asked.append(options.platform)
        data = f"{source[5:]} built for {options.platform}\n".encode()
        return [file_entry("", len(data), io.BytesIO(data))]


def test_layer_sources_are_told_the_platform(cib_registry, cib_multiarch_base_image):
    plugin = _ArchSource()
    pm = get_plugin_manager()
    pm.register(plugin, name="arch-test")
    try:
        target = f"{cib_registry.host}/perplatform/source:1"
        image = Image(cib_multiarch_base_image.ref, target, pm=pm)
        image.add_files({"/native": "arch:lib"}, platform="linux/arm64")
        image.add_files({"/any": "arch:lib"})
        image.save()
    finally:
        pm.unregister(plugin)
    assert plugin.asked == ["linux/arm64/v8", None]
    manifest = json.loads(skopeo_inspect(target, raw=True, arch="arm64"))
    blob = RegistryServerBlob(cib_registry, "perplatform/source", manifest["layers"][-2]["digest"])
    assert blob.member("native") == b"lib built for linux/arm64/v8\n"


class RegistryServerBlob:
    """A layer read straight from the registry's storage, with no cib code."""

    def __init__(self, server: RegistryServer, repo: str, digest: str) -> None:
        hexdigest = digest.split(":", 1)[1]
        self.path = (server.storage / "docker" / "registry" / "v2" / "blobs" / "sha256"
                     / hexdigest[:2] / hexdigest / "data")
        assert repository_dir(server, repo).exists()

    def member(self, name: str) -> bytes:
        with tarfile.open(self.path, "r:gz") as tar:
            handle = tar.extractfile(name)
            assert handle is not None
            return handle.read()


def test_add_tarball_and_add_layer_take_a_platform(cib_registry, cib_multiarch_base_image, tmp_path):
    tarball = tmp_path / "arm.tar"
    tarball.write_bytes(make_layer({"opt/arm.txt": "arm\n"}))
    image = Image(cib_multiarch_base_image.ref, f"{cib_registry.host}/perplatform/tarball:1")
    arm = image.add_tarball(tarball, platform="linux/arm64")
    amd_base = cib_multiarch_base_image.platforms["linux/amd64"]
    reused = amd_base.layers[-1]
    image.add_layer(reused["digest"], amd_base.config["rootfs"]["diff_ids"][-1], reused["size"],
                    platform="linux/amd64")
    image.save()
    arm_digests = [d["digest"] for d in image.get_image_data("linux/arm64").manifest["layers"]]
    amd_digests = [d["digest"] for d in image.get_image_data("linux/amd64").manifest["layers"]]
    assert arm_digests[-1] == arm.digest and arm.digest not in amd_digests
    assert amd_digests[-1] == reused["digest"] and len(amd_digests) == len(arm_digests)


def test_one_platform_build_takes_its_own_platform_only(cib_registry, cib_multiarch_base_image):
    image = Image(cib_multiarch_base_image.ref, f"{cib_registry.host}/perplatform/single:1",
                  platform="linux/arm64")
    image.add_files({"/a": CustomFile("a")}, platform="linux/arm64/v8")
    with pytest.raises(ConfigurationError) as caught:
        image.add_files({"/b": CustomFile("b")}, platform="linux/amd64")
    message = str(caught.value)
    assert "linux/amd64" in message and "linux/arm64/v8" in message


def test_a_single_image_base_has_its_own_platform(cib_registry, cib_base_image):
    image = Image(cib_base_image.ref, f"{cib_registry.host}/perplatform/docker:1")
    info = image.add_files({"/a": CustomFile("a")}, platform="linux/amd64")
    assert image.get_image_data().manifest["layers"][-1]["digest"] == info.digest
    with pytest.raises(ConfigurationError, match=r"linux/arm64.*its platforms are linux/amd64"):
        image.add_files({"/b": CustomFile("b")}, platform="linux/arm64")


@pytest.mark.parametrize(("platform", "expected"), [
    ("linux/s390x", r"has no linux/s390x image; its platforms are linux/amd64, linux/arm64/v8"),
    ("linux/arm64/v7", r"has no linux/arm64/v7 image; its platforms are"),
    ("windows/amd64", r"has no windows/amd64 image"),
    ("arm64", r"'arm64' is not of the form OS/ARCH\[/VARIANT\]"),
    ("linux/", r"is not of the form OS/ARCH"),
    (["linux/arm64"], r"add_files's platform must be a str like \"linux/arm64\", not list"),
])
def test_a_platform_the_build_lacks_is_refused_before_anything_is_sent(
        cib_any_registry, cib_multiarch_base_image, tmp_path, platform, expected):
    server = cib_any_registry
    repo = f"perplatform/refused-{hashlib.sha256(repr(platform).encode()).hexdigest()[:8]}"
    plugin = _ArchSource()
    pm = get_plugin_manager()
    pm.register(plugin, name="arch-test")
    try:
        image = Image(cib_multiarch_base_image.ref, f"{server.host}/{repo}:1", auth=_auth(server), pm=pm)
        with pytest.raises(ConfigurationError, match=expected):
            image.add_files({"/native": "arch:lib"}, platform=platform)
    finally:
        pm.unregister(plugin)
    assert plugin.asked == [], "a layer source was asked for a platform the build lacks"
    assert not repository_dir(server, repo).exists(), "something was written to the target"


def test_refused_for_every_way_of_adding_a_layer(cib_registry, cib_multiarch_base_image, tmp_path):
    tarball = tmp_path / "t.tar"
    tarball.write_bytes(make_layer({"t": "t"}))
    image = Image(cib_multiarch_base_image.ref, f"{cib_registry.host}/perplatform/ways:1")
    with pytest.raises(ConfigurationError, match=r"add_tarball\(platform='linux/ppc64le'\)"):
        image.add_tarball(tarball, platform="linux/ppc64le")
    with pytest.raises(ConfigurationError, match=r"add_layer\(platform='linux/ppc64le'\)"):
        image.add_layer("sha256:" + "0" * 64, "sha256:" + "1" * 64, 1, platform="linux/ppc64le")
    for platform in ARCHES.values():
        assert len(image.get_image_data(platform).manifest["layers"]) == 2


def test_an_ambiguous_platform_is_refused(cib_registry):
    from cib_core.testing import push_image, push_index

    layer = make_layer({"etc/x": "x"})
    diff_ids = ["sha256:" + hashlib.sha256(layer).hexdigest()]
    children = [
        push_image(cib_registry, "perplatform/armbase", None, [layer], {
            "architecture": "arm", "os": "linux", "variant": variant, "config": {"Env": env},
            "rootfs": {"type": "layers", "diff_ids": diff_ids}}, oci=True)
        for variant, env in (("v6", []), ("v7", []), ("v6", ["X=1"]))]
    base = push_index(cib_registry, "perplatform/armbase", "1", children)
    image = Image(base.ref, f"{cib_registry.host}/perplatform/arm:1")
    # "linux/arm" means v7, as when an entry of an index is picked
    info = image.add_files({"/a": CustomFile("a")}, platform="linux/arm")
    assert image.get_image_data("linux/arm/v7").manifest["layers"][-1]["digest"] == info.digest
    with pytest.raises(ConfigurationError, match=r"matches 2 images .*linux/arm/v6, linux/arm/v6"):
        image.add_files({"/b": CustomFile("b")}, platform="linux/arm/v6")


def test_the_default_still_goes_to_every_platform(cib_registry, cib_multiarch_base_image):
    image = Image(cib_multiarch_base_image.ref, f"{cib_registry.host}/perplatform/all:1")
    info = image.add_files({"/a": CustomFile("a")})
    for platform in ARCHES.values():
        assert image.get_image_data(platform).manifest["layers"][-1]["digest"] == info.digest
