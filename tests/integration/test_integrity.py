"""Integrity: content that does not match its digest is refused wherever cib reads it, and
documents over distribution's 4 MiB limit are refused without being read whole.

The corruptions are real: bytes edited in the registry's own storage (``RegistryServer.storage``),
which ``docker-registry`` then serves as they are. (Blob and manifest mismatches from a fake
registry, and a manifest whose Content-Length is over the limit, are in test_registry_client.py.)
"""

from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from cib_core import CustomFile, Image
from cib_core import mediatypes as mt
from cib_core.copy import copy_image
from cib_core.errors import DigestMismatch, ManifestError, RegistryError
from cib_core.remote.client import MAX_MANIFEST_SIZE, RegistryClient
from cib_core.testing import PushedImage, RegistryServer, make_layer, push_image

pytestmark = pytest.mark.integration

LIMIT = 4 * 1024 * 1024


def _unique(prefix: str) -> str:
    return f"{prefix}/{os.getpid()}-{time.monotonic_ns()}"


def _blob_file(server: RegistryServer, digest: str) -> Path:
    hexpart = digest.split(":", 1)[1]
    return server.storage / "docker" / "registry" / "v2" / "blobs" / "sha256" / hexpart[:2] / hexpart / "data"


def _cib(*args: str, home: Path) -> subprocess.CompletedProcess[bytes]:
    """``cib ARGS`` in a subprocess with a home of its own."""
    env = dict(os.environ, HOME=str(home), DOCKER_CONFIG=str(home / ".docker"),
               XDG_CONFIG_HOME=str(home / ".config"), XDG_RUNTIME_DIR=str(home / "run"),
               PYTHON_KEYRING_BACKEND="keyring.backends.null.Keyring", NO_PROXY="127.0.0.1")
    script = str(Path(sys.executable).parent / "cib")
    return subprocess.run([script, *args], capture_output=True, env=env, timeout=120, check=False)


def _one_error_line(result: subprocess.CompletedProcess[bytes]) -> str:
    stderr = result.stderr.decode(errors="replace")
    assert result.returncode == 1, (result.returncode, stderr)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("cib: error: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


def _tag_absent(server: RegistryServer, repo: str, tag: str) -> bool:
    return requests.get(f"{server.url}/v2/{repo}/manifests/{tag}", timeout=30,
                        headers={"Accept": mt.OCI_MANIFEST}).status_code == 404


def _unique_image(server: RegistryServer, repo: str, **config_extra: Any) -> PushedImage:
    """An OCI image whose layer is random, so no other test shares its blob."""
    layer = make_layer({"payload.bin": os.urandom(2 << 20), "hello.txt": "hello\n"})
    config: dict[str, Any] = {"architecture": "amd64", "os": "linux", "config": {}}
    config.update(config_extra)
    return push_image(server, repo, "1", [layer], config, oci=True)


# --------------------------------------------------------------------------------------------
# a corrupted blob
# --------------------------------------------------------------------------------------------

def test_corrupted_layer_is_a_digest_mismatch_on_every_path(cib_registry: RegistryServer,
                                                            cib_second_registry: RegistryServer,
                                                            tmp_path: Path) -> None:
    repo = _unique("integrity/blob")
    image = _unique_image(cib_registry, repo)
    digest = image.layers[0]["digest"]
    data = _blob_file(cib_registry, digest)
    raw = bytearray(data.read_bytes())
    middle = len(raw) // 2
    raw[middle:middle + 16] = bytes(b ^ 0xFF for b in raw[middle:middle + 16])  # same size
    data.write_bytes(bytes(raw))

    client = RegistryClient(cib_registry.host, repo)
    with pytest.raises(DigestMismatch) as err:
        client.blob(digest)
    assert err.value.expected == digest and digest in str(err.value) and repo in str(err.value)
    with pytest.raises(DigestMismatch), client.blob(digest, stream=True) as stream:
        while stream.read(1 << 16):
            pass

    # a copy to another registry, a pull into a layout, a build on it: refused, nothing tagged
    with pytest.raises(DigestMismatch):
        copy_image(image.ref, f"{cib_second_registry.host}/{repo}:1")
    assert _tag_absent(cib_second_registry, repo, "1")
    layout = tmp_path / "layout"
    with pytest.raises(DigestMismatch):
        copy_image(image.ref, f"oci:{layout}:pulled")
    assert not (layout / "index.json").exists() or "pulled" not in (layout / "index.json").read_text()
    build = Image(image.ref, f"{cib_second_registry.host}/{repo}-built:1")
    build.add_files({"/extra.txt": CustomFile("x")})
    with pytest.raises(DigestMismatch):
        build.save()
    assert _tag_absent(cib_second_registry, f"{repo}-built", "1")

    home = tmp_path / "home"
    blob = _cib("blob", f"{cib_registry.host}/{repo}@{digest}", home=home)
    line = _one_error_line(blob)
    assert "digest mismatch" in line and digest in line
    assert len(blob.stdout) < len(raw)  # the unverified tail never reached stdout
    line = _one_error_line(_cib("copy", image.ref, f"{cib_second_registry.host}/{repo}-cli:1", home=home))
    assert "digest mismatch" in line
    assert _tag_absent(cib_second_registry, f"{repo}-cli", "1")


def test_corrupted_config_is_a_digest_mismatch(cib_registry: RegistryServer, tmp_path: Path) -> None:
    repo = _unique("integrity/config")
    image = _unique_image(cib_registry, repo, config={"Env": ["A=aaaa"]})
    data = _blob_file(cib_registry, image.config_digest)
    data.write_bytes(data.read_bytes().replace(b"A=aaaa", b"A=bbbb"))
    with pytest.raises(DigestMismatch) as err:
        Image(image.ref, f"{cib_registry.host}/{repo}-built:1").get_image_config()
    assert image.config_digest in str(err.value)
    line = _one_error_line(_cib("config", image.ref, home=tmp_path / "home"))
    assert "digest mismatch" in line


# --------------------------------------------------------------------------------------------
# a manifest whose bytes are not what its digest says
# --------------------------------------------------------------------------------------------

def test_tampered_manifest_is_rejected_by_tag_and_by_digest(cib_registry: RegistryServer,
                                                            cib_second_registry: RegistryServer,
                                                            tmp_path: Path) -> None:
    repo = _unique("integrity/manifest")
    image = _unique_image(cib_registry, repo)
    stored = _blob_file(cib_registry, image.digest)
    before = stored.read_bytes()
    # keep it valid JSON of the same shape: only a size changes, as an attacker would do it
    size = image.layers[0]["size"]
    after = before.replace(f'"size": {size}'.encode(), f'"size": {size + 1}'.encode())
    assert after != before
    stored.write_bytes(after)
    answer = requests.get(f"{cib_registry.url}/v2/{repo}/manifests/1", timeout=30,
                          headers={"Accept": mt.OCI_MANIFEST})
    assert answer.content == after  # the registry serves what it has, unchecked

    client = RegistryClient(cib_registry.host, repo)
    with pytest.raises(DigestMismatch) as by_digest:
        client.manifest_raw(image.digest)
    assert by_digest.value.expected == image.digest
    with pytest.raises(DigestMismatch):
        client.manifest_raw("1")  # the registry's Docker-Content-Digest names the original
    with pytest.raises(DigestMismatch):
        client.manifest(image.digest)
    with pytest.raises(DigestMismatch):
        copy_image(image.ref, f"{cib_second_registry.host}/{repo}:1")
    assert _tag_absent(cib_second_registry, repo, "1")
    with pytest.raises(DigestMismatch):
        Image(image.ref_by_digest, f"{cib_second_registry.host}/{repo}-built:1").get_image_config()
    line = _one_error_line(_cib("manifest", image.ref_by_digest, home=tmp_path / "home"))
    assert "digest mismatch" in line and image.digest in line


# --------------------------------------------------------------------------------------------
# documents over the 4 MiB limit
# --------------------------------------------------------------------------------------------

def _big_config() -> dict[str, Any]:
    return {"architecture": "amd64", "os": "linux",
            "config": {"Labels": {"padding": "p" * (LIMIT + 1024)}}}


def test_config_over_the_limit_is_refused_before_it_is_fetched(cib_registry: RegistryServer,
                                                               tmp_path: Path) -> None:
    repo = _unique("integrity/bigconfig")
    image = push_image(cib_registry, repo, "1", [make_layer({"a": "a"})], _big_config(), oci=True)
    assert len(image.config_raw) > LIMIT
    assert cib_registry.log_path is not None
    with pytest.raises(ManifestError) as err:
        Image(image.ref, f"{cib_registry.host}/{repo}-built:1").get_image_config()
    assert image.config_digest in str(err.value) and str(LIMIT) in str(err.value)
    fetched = [line for line in cib_registry.log_path.read_text(errors="replace").splitlines()
               if f"GET /v2/{repo}/blobs/{image.config_digest}" in line]
    assert fetched == [], "the config was fetched although its descriptor says it is too big"


def test_cli_config_over_the_limit_is_refused(cib_registry: RegistryServer, tmp_path: Path) -> None:
    repo = _unique("integrity/bigconfig-cli")
    image = push_image(cib_registry, repo, "1", [make_layer({"a": "a"})], _big_config(), oci=True)
    line = _one_error_line(_cib("config", image.ref, home=tmp_path / "home"))
    assert image.config_digest in line


def test_config_larger_than_its_descriptor_says_is_read_only_up_to_the_limit(
        cib_registry: RegistryServer) -> None:
    """The manifest claims a small config; the blob is over the limit: cib stops reading at
    the limit and refuses, instead of reading the whole blob to find the digest wrong."""
    repo = _unique("integrity/lyingconfig")
    config_raw = json.dumps(_big_config()).encode()
    session = requests.Session()
    start = session.post(f"{cib_registry.url}/v2/{repo}/blobs/uploads/", timeout=30)
    location = requests.compat.urljoin(cib_registry.url + "/", start.headers["Location"])
    import hashlib

    config_digest = "sha256:" + hashlib.sha256(config_raw).hexdigest()
    assert session.put(f"{location}&digest={config_digest}", data=config_raw,
                       timeout=30).status_code == 201
    manifest = {"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST,
                "config": {"mediaType": mt.OCI_CONFIG, "digest": config_digest, "size": 1000},
                "layers": []}
    put = session.put(f"{cib_registry.url}/v2/{repo}/manifests/1", data=json.dumps(manifest),
                      headers={"Content-Type": mt.OCI_MANIFEST}, timeout=30)
    assert put.status_code == 201, put.text  # docker-registry does not check config sizes
    with pytest.raises(ManifestError, match="larger than"):
        Image(f"{cib_registry.host}/{repo}:1", f"{cib_registry.host}/{repo}-built:1").get_image_config()


class _EndlessManifest(http.server.BaseHTTPRequestHandler):
    """Answers a manifest GET with a chunked body (no Content-Length) that goes on for 64 MiB,
    counting what it managed to send before the client hung up."""

    protocol_version = "HTTP/1.1"
    sent = 0

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        if self.path == "/v2/":
            body = b"{}"
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        # A fixed, small send buffer: what the kernel holds on our side no longer grows with
        # autotuning (up to tcp_wmem's 4 MiB), so `sent` measures what the client took.
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 256 * 1024)
        self.send_response(200)
        self.send_header("Content-Type", mt.OCI_MANIFEST)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        piece = b'{"padding":"' + b"x" * (256 * 1024)
        try:
            for _ in range(256):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                type(self).sent += len(piece)
            self.wfile.write(b"0\r\n\r\n")
        except OSError:
            pass
        self.close_connection = True


@pytest.fixture
def endless_registry() -> Iterator[tuple[str, type[_EndlessManifest]]]:
    handler = type("Handler", (_EndlessManifest,), {"sent": 0})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


def test_manifest_over_the_limit_without_a_length_is_not_read_whole(
        endless_registry: tuple[str, type[_EndlessManifest]], tmp_path: Path) -> None:
    host, handler = endless_registry
    client = RegistryClient(host, "big/manifest")
    with pytest.raises(RegistryError, match="limit") as err:
        client.manifest_raw("1")
    assert host in str(err.value)
    time.sleep(0.3)  # let the server notice the hang-up
    # 64 MiB were on offer; cib took the limit, then hung up. What the server got out beyond
    # that is what the kernel buffers: our fixed send buffer plus the client's receive window,
    # which autotuning may grow up to tcp_rmem's maximum.
    rmem_max = int(Path("/proc/sys/net/ipv4/tcp_rmem").read_text().split()[2])
    in_kernel = 256 * 1024 * 2 + rmem_max
    assert in_kernel < (48 << 20), "the kernel could buffer the whole offer; the test proves nothing"
    assert handler.sent < MAX_MANIFEST_SIZE + in_kernel, handler.sent
    line = _one_error_line(_cib("manifest", f"{host}/big/manifest:1", home=tmp_path / "home"))
    assert "limit" in line
