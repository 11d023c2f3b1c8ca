"""How a new layer reaches the registry: streamed while it is built, in one request.

``Image.add_files`` writes the layer straight into one ``PATCH`` with a chunked body (as docker,
crane and skopeo push), hashing the blob once on the way. A stream cannot be rewound, so when
that request breaks off the layer is built again into a temporary file, which is uploaded the
resumable way. The fault proxy in front of the real registry records what was sent and breaks
the streamed request; the registry is then read directly, and umoci unpacks the result.
"""

from __future__ import annotations

import gzip
import hashlib
import random
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from cib_core import Image
from cib_core.layers.pipeline import LayerInfo
from cib_core.testing import FaultProxy, PushedImage, RegistryServer, skopeo_copy, umoci_unpack

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

PAYLOAD = 12 << 20  # several pipeline pieces, so the body really is streamed in parts


@pytest.fixture
def payload(tmp_path: Path) -> Path:
    root = tmp_path / "payload"
    root.mkdir()
    rng = random.Random(17)  # noqa: S311 - test data
    (root / "random.bin").write_bytes(rng.randbytes(PAYLOAD // 2))
    (root / "text.txt").write_bytes(b"".join(b"line %d of the text\n" % i for i in range(300_000)))
    return root


def _upload_requests(proxy: FaultProxy) -> list[tuple[str, dict[str, str]]]:
    """Method and headers of each upload request the proxy saw, cross-repository mounts left out."""
    return [(method, {k.lower(): v for k, v in headers.items()})
            for method, path, headers in proxy.seen
            if "/blobs/uploads/" in path and "mount=" not in path]


def _check_blob(registry: RegistryServer, repo: str, info: LayerInfo) -> None:
    """The registry's own copy of the layer (read directly, not through the proxy) is the blob
    the manifest names: its digest and size, and its tar's diff_id."""
    resp = requests.get(f"{registry.url}/v2/{repo}/blobs/{info.digest}", timeout=60)
    assert resp.status_code == 200
    blob = resp.content
    assert len(blob) == info.size
    assert "sha256:" + hashlib.sha256(blob).hexdigest() == info.digest
    assert "sha256:" + hashlib.sha256(gzip.decompress(blob)).hexdigest() == info.diff_id


def _unpacked(registry: RegistryServer, repo: str, tmp_path: Path) -> Path:
    layout = tmp_path / "layout"
    skopeo_copy(f"docker://{registry.host}/{repo}:1", f"oci:{layout}:t")
    return umoci_unpack(layout, "t", tmp_path / "bundle")


def test_new_layer_goes_up_in_one_streamed_patch(cib_registry: RegistryServer, cib_base_image: PushedImage,
                                                 payload: Path,
                                                 cib_fault_proxy: Callable[..., FaultProxy],
                                                 tmp_path: Path) -> None:
    repo = "upload/streamed"
    proxy = cib_fault_proxy(cib_registry)
    image = Image(f"{proxy.host}/{cib_base_image.repository}:{cib_base_image.tag}", f"{proxy.host}/{repo}:1")
    info = image.add_files({"/payload": str(payload)})
    image.save()
    sent = _upload_requests(proxy)
    patches = [headers for method, headers in sent if method == "PATCH"]
    assert len(patches) == 1, sent
    assert patches[0].get("transfer-encoding") == "chunked"
    assert "content-range" not in patches[0] and "content-length" not in patches[0]
    # the layer's session (POST, the one PATCH, the closing PUT), then the config's
    # monolithic upload (POST, PUT)
    assert [method for method, _ in sent] == ["POST", "PATCH", "PUT", "POST", "PUT"], sent
    # nothing is asked about twice: blobs uploaded, mounted or found present in this build
    # are not checked again before the manifest goes up
    heads = [path for method, path, _ in proxy.seen if method == "HEAD"]
    assert len(heads) == len(set(heads)), heads
    assert not any(info.digest in path for path in heads)
    _check_blob(cib_registry, repo, info)
    rootfs = _unpacked(cib_registry, repo, tmp_path)
    for name in ("random.bin", "text.txt"):
        assert (rootfs / "payload" / name).read_bytes() == (payload / name).read_bytes()


# (the proxy's body faults need a response body, which an answer to PATCH has not)
@pytest.mark.parametrize("kind", ["503", "reset", "lost_response"])
def test_broken_streamed_patch_builds_the_layer_again_into_a_file(
        kind: str, cib_registry: RegistryServer, cib_base_image: PushedImage, payload: Path,
        cib_fault_proxy: Callable[..., FaultProxy], tmp_path: Path) -> None:
    """The streamed request fails (refused, reset, or answered but the answer lost): the layer
    is built again into a file and uploaded from it; the image is complete and the same as an
    undisturbed build's."""
    repo = f"upload/broken-{kind}"
    proxy = cib_fault_proxy(cib_registry, methods=["PATCH"])
    proxy.inject_next(kind)
    image = Image(f"{proxy.host}/{cib_base_image.repository}:{cib_base_image.tag}", f"{proxy.host}/{repo}:1")
    info = image.add_files({"/payload": str(payload)})
    result = image.save()
    assert proxy.counts == {kind: 1}
    methods = [method for method, _ in _upload_requests(proxy)]
    streamed = methods.index("PATCH")
    # the broken session is cancelled; a new one takes the blob from the file in one PUT
    assert methods[streamed + 1:streamed + 4] == ["DELETE", "POST", "PUT"], methods
    _check_blob(cib_registry, repo, info)
    rootfs = _unpacked(cib_registry, repo, tmp_path)
    assert (rootfs / "payload" / "random.bin").read_bytes() == (payload / "random.bin").read_bytes()

    undisturbed = Image(f"{cib_registry.host}/{cib_base_image.repository}:{cib_base_image.tag}",
                             f"{cib_registry.host}/{repo}-clean:1")
    assert undisturbed.add_files({"/payload": str(payload)}) == info
    assert undisturbed.save().digest == result.digest
