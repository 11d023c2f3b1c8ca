"""The Image builder end to end: real registries in, skopeo and umoci as the judges."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from cib_core import CustomFile, Image, NotFound
from cib_core import mediatypes as mt
from cib_core.errors import ConfigurationError, LayerSourceError
from cib_core.remote.client import RegistryClient
from cib_core.testing import skopeo_inspect, umoci_unpack

pytestmark = pytest.mark.integration


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    root = tmp_path / "app"
    (root / "src").mkdir(parents=True)
    (root / "src" / "main.py").write_text("print('hello')\n")
    (root / "run.sh").write_text("#!/bin/sh\necho run\n")
    (root / "run.sh").chmod(0o755)
    (root / "secret.key").write_text("do not ship\n")
    (root / "node_modules" / "x").mkdir(parents=True)
    (root / "node_modules" / "x" / "index.js").write_text("x\n")
    (root / "logs").mkdir()
    (root / "logs" / "a.log").write_text("a\n")
    (root / "logs" / "keep.log").write_text("keep\n")
    (root / ".dockerignore").write_text("node_modules/\n*.log\n!logs/keep.log\n")
    os.symlink("src/main.py", root / "link-to-main")
    return root


def _oci_dir(tmp_path: Path, ref: str, name: str, creds: str | None = None) -> Path:
    from cib_core.testing import skopeo_copy

    layout = tmp_path / name
    skopeo_copy(f"docker://{ref}", f"oci:{layout}:t", creds=creds)
    return layout


def test_build_on_registry_base_checked_by_skopeo_and_umoci(cib_registry, cib_base_image, app_dir, tmp_path):
    target = f"{cib_registry.host}/built/app:v1"
    image = Image(cib_base_image.ref, target)
    info = image.add_files({"/app": str(app_dir)}, ignore_files=[".dockerignore"],
                           ignores=["secret.key"])
    image.add_files({"/etc/greeting": CustomFile("hi\n", mode=0o600),
                     "/kept": str(app_dir)}, ignores=["node_modules/"], follow_symlinks=False)
    image.working_dir = "/app"
    image.cmd = ["sh", "/app/run.sh"]
    image.env = ["LANG=en_US.UTF-8", "APP_MODE=prod"]
    image.labels = {"org.example.team": "builders"}
    image.exposed_ports = ["8080"]
    result = image.save()

    assert result.reference == f"{cib_registry.host}/built/app@{result.digest}"
    assert result.tags == ("v1",)
    assert info.media_type == mt.DOCKER_LAYER_GZIP  # the base is Docker flavoured

    raw = skopeo_inspect(target, raw=True)
    assert isinstance(raw, bytes)
    import hashlib

    assert "sha256:" + hashlib.sha256(raw).hexdigest() == result.digest
    manifest = json.loads(raw)
    assert manifest["mediaType"] == mt.DOCKER_MANIFEST
    config = skopeo_inspect(target, config=True)
    assert isinstance(config, dict)
    base_env = cib_base_image.config["config"]["Env"]
    env = config["config"]["Env"]
    # LANG replaced in place, PATH kept first, APP_MODE appended
    assert env[0].startswith("PATH=") and env[0] == base_env[0]
    assert "LANG=en_US.UTF-8" in env and "LANG=C.UTF-8" not in env
    assert env.index("LANG=en_US.UTF-8") == [e.split("=")[0] for e in base_env].index("LANG")
    assert env[-1] == "APP_MODE=prod"
    assert config["config"]["Cmd"] == ["sh", "/app/run.sh"]
    assert config["config"]["WorkingDir"] == "/app"
    assert config["config"]["Labels"]["org.example.team"] == "builders"
    assert "8080/tcp" in config["config"]["ExposedPorts"]
    assert len(config["rootfs"]["diff_ids"]) == len(manifest["layers"]) == len(cib_base_image.layers) + 2
    assert len([h for h in config["history"] if not h.get("empty_layer")]) == len(manifest["layers"])
    assert config["created"] == "1970-01-01T00:00:00Z"

    layout = _oci_dir(tmp_path, target, "oci")
    rootfs = umoci_unpack(layout, "t", tmp_path / "bundle")
    assert (rootfs / "bin" / "busybox").exists()  # base layers are there
    assert (rootfs / "app" / "src" / "main.py").read_text() == "print('hello')\n"
    assert stat.S_IMODE((rootfs / "app" / "run.sh").stat().st_mode) == 0o755
    assert not (rootfs / "app" / "secret.key").exists()
    assert not (rootfs / "app" / "node_modules").exists()
    assert not (rootfs / "app" / "logs" / "a.log").exists()
    assert (rootfs / "app" / "logs" / "keep.log").read_text() == "keep\n"
    # followed by default: the link became a regular file with the target's content
    assert (rootfs / "app" / "link-to-main").is_file() and not (rootfs / "app" / "link-to-main").is_symlink()
    # kept with follow_symlinks=False
    assert (rootfs / "kept" / "link-to-main").is_symlink()
    assert os.readlink(rootfs / "kept" / "link-to-main") == "src/main.py"
    assert (rootfs / "etc" / "greeting").read_text() == "hi\n"
    assert stat.S_IMODE((rootfs / "etc" / "greeting").stat().st_mode) == 0o600


def test_same_inputs_give_the_same_digest(cib_registry, cib_base_image, app_dir):
    digests = set()
    for n in range(2):
        image = Image(cib_base_image.ref, f"{cib_registry.host}/repro/app:{n}")
        image.add_files({"/app": str(app_dir)})
        image.cmd = ["python3", "main.py"]
        digests.add(image.save().digest)
        os.utime(app_dir / "src" / "main.py", (1_000_000 + n, 1_000_000 + n))
    assert len(digests) == 1


def test_source_date_epoch_sets_times(cib_registry, cib_base_image, app_dir, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    image = Image(cib_base_image.ref, f"{cib_registry.host}/sde/app:1")
    image.add_files({"/app": str(app_dir)})
    image.save()
    config = skopeo_inspect(f"{cib_registry.host}/sde/app:1", config=True)
    assert config["created"] == "2023-11-14T22:13:20Z"
    assert config["history"][-1]["created"] == "2023-11-14T22:13:20Z"


def test_same_registry_mounts_instead_of_copying(cib_registry, cib_base_image):
    image = Image(cib_base_image.ref, f"{cib_registry.host}/mounted/app:1")
    image.sync()
    assert image.sync_counts.get("mounted", 0) == len(cib_base_image.layers)  # the config is written anew at save
    assert "copied" not in image.sync_counts
    image.save()
    client = RegistryClient(cib_registry.host, "mounted/app")
    for layer in cib_base_image.layers:
        assert client.blob_exists(layer["digest"])


def test_cross_registry_copies_every_base_blob(cib_registry, cib_second_registry, cib_base_image, app_dir):
    target = f"{cib_second_registry.host}/copied/app:1"
    image = Image(cib_base_image.ref, target)
    image.add_files({"/app": str(app_dir)})
    result = image.save()
    assert image.sync_counts.get("copied", 0) == len(cib_base_image.layers)
    client = RegistryClient(cib_second_registry.host, "copied/app")
    for layer in cib_base_image.layers:
        assert client.blob_exists(layer["digest"])
    raw = skopeo_inspect(target, raw=True)
    assert json.loads(raw)["layers"][: len(cib_base_image.layers)] == cib_base_image.layers
    assert result.digest.startswith("sha256:")


def test_multi_platform_index_in_index_out(cib_registry, cib_multiarch_base_image, tmp_path):
    target = f"{cib_registry.host}/multi/app:1"
    image = Image(cib_multiarch_base_image.ref, target)
    assert sorted(image.platforms()) == ["linux/amd64", "linux/arm64/v8"]
    info = image.add_files({"/hello.txt": CustomFile(b"hello\n")})
    image.cmd = ["cat", "/hello.txt"]
    result = image.save()
    assert result.media_type == mt.OCI_INDEX
    index = json.loads(skopeo_inspect(target, raw=True))
    assert index["mediaType"] == mt.OCI_INDEX
    assert len(index["manifests"]) == 2
    for arch in ("amd64", "arm64"):
        config = skopeo_inspect(target, config=True, arch=arch)
        assert config["architecture"] == arch
        assert config["config"]["Cmd"] == ["cat", "/hello.txt"]
        assert config["rootfs"]["diff_ids"][-1] == info.diff_id
        manifest = json.loads(skopeo_inspect(target, raw=True, arch=arch))
        assert manifest["layers"][-1]["digest"] == info.digest
        assert len(manifest["layers"]) == len(config["rootfs"]["diff_ids"])


def test_single_platform_pick_from_an_index(cib_registry, cib_multiarch_base_image):
    target = f"{cib_registry.host}/multi/arm:1"
    image = Image(cib_multiarch_base_image.ref, target, platform="linux/arm64")
    assert image.platforms() == ["linux/arm64/v8"]
    image.add_files({"/x": CustomFile("x")})
    result = image.save()
    assert result.media_type == mt.OCI_MANIFEST
    config = skopeo_inspect(target, config=True)
    assert config["architecture"] == "arm64"


def test_platform_missing_from_index_is_a_clear_error(cib_registry, cib_multiarch_base_image):
    image = Image(cib_multiarch_base_image.ref, f"{cib_registry.host}/multi/s390x:1", platform="linux/s390x")
    with pytest.raises(NotFound, match="linux/s390x"):
        image.platforms()


def test_platform_contradicting_single_base_is_an_error(cib_registry, cib_base_image):
    image = Image(cib_base_image.ref, f"{cib_registry.host}/x/y:1", platform="linux/arm64")
    with pytest.raises(ConfigurationError, match="arm64"):
        image.platforms()


def test_oci_base_keeps_oci_flavour(cib_registry, cib_oci_base_image):
    image = Image(cib_oci_base_image.ref, f"{cib_registry.host}/ociflavour/app:1")
    info = image.add_files({"/a": CustomFile("a")})
    result = image.save()
    assert info.media_type == mt.OCI_LAYER_GZIP
    assert result.media_type == mt.OCI_MANIFEST
    assert result.manifest["config"]["mediaType"] == mt.OCI_CONFIG


def test_scratch_to_oci_layout_and_docker_archive(tmp_path, app_dir):
    layout = tmp_path / "layout"
    image = Image("scratch", f"oci:{layout}:v1")
    image.add_files({"/app": str(app_dir)})
    image.entrypoint = ["/app/run.sh"]
    result = image.save()
    assert result.media_type == mt.OCI_MANIFEST
    inspected = skopeo_inspect(f"oci:{layout}:v1")
    assert inspected["Digest"] == result.digest
    rootfs = umoci_unpack(layout, "v1", tmp_path / "bundle")
    assert (rootfs / "app" / "src" / "main.py").exists()

    archive = tmp_path / "image.tar"
    image2 = Image(f"oci:{layout}:v1", f"docker-archive:{archive}:example/app:v2")
    image2.add_files({"/more.txt": CustomFile("more")})
    image2.save()
    from cib_core.testing import skopeo_copy

    skopeo_copy(f"docker-archive:{archive}", f"oci:{tmp_path / 'back'}:t")
    rootfs2 = umoci_unpack(tmp_path / "back", "t", tmp_path / "bundle2")
    assert (rootfs2 / "more.txt").read_text() == "more"
    assert (rootfs2 / "app" / "run.sh").exists()


def test_add_and_remove_layer_keep_diff_ids_in_step(cib_registry, cib_base_image):
    image = Image(cib_base_image.ref, f"{cib_registry.host}/edit/app:1")
    first = cib_base_image.layers[0]
    data = image.get_image_data()
    diff_ids = list(data.config["rootfs"]["diff_ids"])
    image.remove_layer(first["digest"])
    assert [layer["digest"] for layer in data.manifest["layers"]] == [
        layer["digest"] for layer in cib_base_image.layers[1:]]
    assert data.config["rootfs"]["diff_ids"] == diff_ids[1:]
    image.add_layer(first["digest"], diff_ids[0], first["size"])
    assert data.manifest["layers"][-1]["digest"] == first["digest"]
    assert data.config["rootfs"]["diff_ids"][-1] == diff_ids[0]
    image.save()
    config = skopeo_inspect(f"{cib_registry.host}/edit/app:1", config=True)
    assert config["rootfs"]["diff_ids"] == diff_ids[1:] + diff_ids[:1]
    with pytest.raises(NotFound):
        image.remove_layer("sha256:" + "0" * 64)


def test_get_image_config_changes_are_saved(cib_registry, cib_base_image):
    image = Image(cib_base_image.ref, f"{cib_registry.host}/cfg/app:1")
    image.get_image_config()["StopSignal"] = "SIGTERM"
    image.save(tags=["a", "b"], cmd=["true"], env=["X=1"], working_dir="/w")
    for tag in ("a", "b"):
        config = skopeo_inspect(f"{cib_registry.host}/cfg/app:{tag}", config=True)
        assert config["config"]["StopSignal"] == "SIGTERM"
        assert config["config"]["Cmd"] == ["true"]
        assert config["config"]["WorkingDir"] == "/w"
        assert "X=1" in config["config"]["Env"]


def test_manifest_never_pushed_when_a_blob_is_missing(cib_registry, cib_base_image):
    image = Image(cib_base_image.ref, f"{cib_registry.host}/broken/app:1")
    image.add_layer("sha256:" + "1" * 64, "sha256:" + "2" * 64, 10)
    with pytest.raises(Exception, match="lacks"):
        image.save()
    assert not RegistryClient(cib_registry.host, "broken/app").manifest_exists("1")


def test_missing_source_is_a_layer_source_error(cib_registry, cib_base_image, tmp_path):
    image = Image(cib_base_image.ref, f"{cib_registry.host}/x/missing:1")
    with pytest.raises(LayerSourceError, match="nope"):
        image.add_files({"/app": str(tmp_path / "nope")})


@pytest.mark.parametrize("mode", ["basic", "token"])
def test_build_against_authenticated_registries(mode, cib_basic_registry, cib_token_registry, tmp_path):
    from cib_core.testing import push_base_image

    server = cib_basic_registry if mode == "basic" else cib_token_registry
    base = push_base_image(server, "auth/base", "1")
    auth = {server.host: server.auth}
    image = Image(base.ref, f"{server.host}/auth/app:1", auth=auth)
    image.add_files({"/f": CustomFile("f")})
    result = image.save()
    raw = skopeo_inspect(f"{server.host}/auth/app:1", raw=True, creds=server.creds_arg())
    import hashlib

    assert "sha256:" + hashlib.sha256(raw).hexdigest() == result.digest


def test_docker_flavoured_base_into_oci_layout_gets_oci_types(cib_registry, cib_base_image, tmp_path):
    layout = tmp_path / "layout"
    image = Image(cib_base_image.ref, f"oci:{layout}:v1")
    image.add_files({"/new.txt": CustomFile("new")})
    result = image.save()
    assert result.media_type == mt.OCI_MANIFEST
    raw = skopeo_inspect(f"oci:{layout}:v1", raw=True)
    manifest = json.loads(raw)
    assert manifest["config"]["mediaType"] == mt.OCI_CONFIG
    assert {layer["mediaType"] for layer in manifest["layers"]} == {mt.OCI_LAYER_GZIP}
    # the same blobs as in the registry: only the media types changed
    assert [layer["digest"] for layer in manifest["layers"][:-1]] == [
        layer["digest"] for layer in cib_base_image.layers]
    rootfs = umoci_unpack(layout, "v1", tmp_path / "bundle")
    assert (rootfs / "new.txt").read_text() == "new"
    assert (rootfs / "bin" / "busybox").exists()


def test_docker_archive_base_is_compressed_into_a_registry(cib_registry, cib_base_image, tmp_path):
    from cib_core.testing import skopeo_copy

    archive = tmp_path / "saved.tar"
    skopeo_copy(f"docker://{cib_base_image.ref}", f"docker-archive:{archive}:base/saved:1")
    target = f"{cib_registry.host}/from-archive/app:1"
    image = Image(f"docker-archive:{archive}", target)
    image.add_files({"/a.txt": CustomFile("a")})
    image.save()
    manifest = json.loads(skopeo_inspect(target, raw=True))
    assert {layer["mediaType"] for layer in manifest["layers"]} == {mt.DOCKER_LAYER_GZIP}
    assert image.sync_counts.get("compressed", 0) + image.sync_counts.get("present", 0) == len(
        cib_base_image.layers)
    config = skopeo_inspect(target, config=True)
    # diff_ids are of the uncompressed tars, so they survive the recompression unchanged
    assert config["rootfs"]["diff_ids"][: len(cib_base_image.layers)] == cib_base_image.config["rootfs"]["diff_ids"]
    layout = _oci_dir(tmp_path, target, "oci")
    rootfs = umoci_unpack(layout, "t", tmp_path / "bundle")
    assert (rootfs / "bin" / "busybox").exists() and (rootfs / "a.txt").read_text() == "a"


def test_existing_tarball_added_as_it_is(cib_registry, cib_base_image, tmp_path):
    import gzip
    import hashlib
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        data = b"from a tarball\n"
        info = tarfile.TarInfo("opt/tarball.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    plain = buf.getvalue()
    path = tmp_path / "layer.tar.gz"
    path.write_bytes(gzip.compress(plain, mtime=0))
    image = Image(cib_base_image.ref, f"{cib_registry.host}/tarball/app:1")
    info = image.add_tarball(path)
    assert info.digest == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    assert info.diff_id == "sha256:" + hashlib.sha256(plain).hexdigest()
    image.save()
    layout = _oci_dir(tmp_path, f"{cib_registry.host}/tarball/app:1", "oci")
    rootfs = umoci_unpack(layout, "t", tmp_path / "bundle")
    assert (rootfs / "opt" / "tarball.txt").read_text() == "from a tarball\n"


@pytest.fixture
def blob_server():
    """A plain HTTP server on loopback serving blobs by path, as a CDN would for foreign layers."""
    import http.server
    import threading

    blobs: dict[str, bytes] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            body = blobs.get(self.path)
            self.send_response(200 if body is not None else 404)
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server, blobs
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("copy_remote", [True, False])
def test_foreign_layers_follow_copy_remote_layers(cib_registry, cib_base_image, blob_server, copy_remote):
    import gzip
    import hashlib

    from cib_core.testing import make_layer

    server, blobs = blob_server
    layer = make_layer({"foreign.txt": f"foreign {copy_remote}\n"})
    digest = "sha256:" + hashlib.sha256(layer).hexdigest()
    diff_id = "sha256:" + hashlib.sha256(gzip.decompress(layer)).hexdigest()
    port = server.server_address[1]
    blobs["/blob"] = layer
    urls = [f"http://127.0.0.1:{port}/missing", f"http://127.0.0.1:{port}/blob"]
    repo = f"foreign/{'copied' if copy_remote else 'referenced'}"
    image = Image(cib_base_image.ref, f"{cib_registry.host}/{repo}:1")
    image.add_layer(digest, diff_id, len(layer), urls=urls)
    result = image.save(copy_remote_layers=copy_remote)
    client = RegistryClient(cib_registry.host, repo)
    assert client.blob_exists(digest) is copy_remote
    last = result.manifest["layers"][-1]
    assert last["mediaType"] == mt.DOCKER_FOREIGN_LAYER_GZIP and last["urls"] == urls


def test_base_is_read_while_sources_are_listed_and_its_errors_come_first(cib_registry, cib_base_image,
                                                                         tmp_path):
    """The first add_files reads the base in the background while it lists the sources: a
    base that does not exist is still the error reported, even when a source is bad too; a
    good base with a bad source gives the source's error; the base's flavour still decides
    the layer's media type (a Docker base refuses zstd layers)."""
    missing_source = str(tmp_path / "nowhere")
    image = Image(f"{cib_registry.host}/no/such-base:1", f"{cib_registry.host}/x/bg:1")
    with pytest.raises(NotFound, match="no/such-base"):
        image.add_files({"/x": missing_source})
    image = Image(cib_base_image.ref, f"{cib_registry.host}/x/bg:1")
    with pytest.raises(LayerSourceError, match="nowhere"):
        image.add_files({"/x": missing_source})
    image = Image(cib_base_image.ref, f"{cib_registry.host}/x/bg:1", compression="zstd")
    with pytest.raises(ConfigurationError, match="Docker schema 2 image .* only carries gzip"):
        image.add_files({"/a": CustomFile("a")})
