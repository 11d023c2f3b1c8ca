"""cib through injected faults: the fault proxy in front of the real registry.

At a 10% fault rate (seeded; every kind the proxy has) a 64 MiB multi-layer build and save,
a cross-registry copy and a pull into an OCI layout complete, and skopeo and umoci, talking
to the registry directly (not through the proxy), agree with the result. At 100% each of
them fails with a ``CibError`` within a bounded time, and no tag ends up pointing at an image
that was only half pushed.

Each test prints the faults it injected (visible with ``pytest -rA``) and adds them to
``fault-figures.json`` in pytest's base temporary directory.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from cib_core import Image
from cib_core.copy import copy_image
from cib_core.errors import CibError, RegistryError
from cib_core.testing import (
    FAULT_KINDS,
    FaultProxy,
    PushedImage,
    RegistryServer,
    make_layer,
    push_image,
    skopeo_copy,
    skopeo_inspect,
    umoci_unpack,
)

# a hang (a retry loop that never ends, a deadlock) fails its test instead of the whole run
pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

FAULT_RATE = 0.1
# Seeds whose first draws hold faults, so no scenario passes without meeting any.
SEEDS = (7, 8, 35)
PULL_SEEDS = (7, 8, 3)  # a pull makes ~10 requests: seeds whose first ten draws fault
FAILING_KINDS = tuple(k for k in FAULT_KINDS if k != "slow")  # "slow" delays, it does not fail
# the request never reaches the registry ("lost_response" does reach it: the upload succeeds)
REFUSING_KINDS = ("500", "502", "503", "504", "429", "reset")
LAYERS = 4
RANDOM_BYTES = 8 << 20  # per layer, plus about as much text
BOUND_SECONDS = 60.0


# --------------------------------------------------------------------------------------------
# figures for the closing note
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def figures(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    found: dict[str, Any] = {}
    yield found
    path = tmp_path_factory.getbasetemp() / "fault-figures.json"
    path.write_text(json.dumps(found, indent=2, sort_keys=True))
    print(f"fault figures written to {path}")


def record(figures: dict[str, Any], tmp_path_factory: pytest.TempPathFactory, scenario: str,
           **values: Any) -> None:
    figures[scenario] = values
    path = tmp_path_factory.getbasetemp() / "fault-figures.json"
    path.write_text(json.dumps(figures, indent=2, sort_keys=True))
    print(f"FAULTS {scenario}: {json.dumps(values, sort_keys=True)}")


def _proxy_figures(proxy: FaultProxy) -> dict[str, Any]:
    return {"requests": proxy.requests_seen, "faults": proxy.faults_injected,
            "by_kind": dict(sorted(proxy.counts.items()))}


# --------------------------------------------------------------------------------------------
# the payload: 64 MiB over several layers, random and text, made once per module
# --------------------------------------------------------------------------------------------

def _text(rng: random.Random, size: int) -> bytes:
    words = ["registry", "layer", "manifest", "digest", "blob", "config", "tag", "index",
             "upload", "chunk", "retry", "fault", "proxy", "verify", "tarball", "gzip"]
    lines = []
    total = 0
    n = 0
    while total < size:
        line = f"{n:08d} " + " ".join(rng.choice(words) for _ in range(10)) + "\n"
        lines.append(line)
        total += len(line)
        n += 1
    return "".join(lines).encode()[:size]


@pytest.fixture(scope="module")
def payload(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, str]]:
    """``{"/dataN": {relative file: sha256}}`` for LAYERS directories under a temp dir."""
    root = tmp_path_factory.mktemp("fault-payload")
    rng = random.Random(20240601)  # noqa: S311 - test data
    out: dict[str, dict[str, str]] = {}
    total = 0
    for i in range(LAYERS):
        d = root / f"src{i}"
        (d / "sub").mkdir(parents=True)
        files = {"random.bin": rng.randbytes(RANDOM_BYTES),
                 "sub/notes.txt": _text(rng, RANDOM_BYTES - 4096),
                 "small.txt": f"layer {i}\n".encode()}
        for name, data in files.items():
            (d / name).write_bytes(data)
            total += len(data)
        out[str(d)] = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    assert total >= (64 << 20) - LAYERS * 4096
    return out


def _add_payload(image: Image, payload: dict[str, dict[str, str]]) -> None:
    for i, src in enumerate(payload):
        image.add_files({f"/data{i}": src})


def _check_rootfs(rootfs: Path, payload: dict[str, dict[str, str]]) -> None:
    for i, files in enumerate(payload.values()):
        for name, sha in files.items():
            got = hashlib.sha256((rootfs / f"data{i}" / name).read_bytes()).hexdigest()
            assert got == sha, f"/data{i}/{name} differs after unpacking"
    assert (rootfs / "bin" / "busybox").is_file()  # the base's layers are there too


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _verify_direct(server: RegistryServer, repo: str, tag: str, digest: str, tmp: Path,
                   payload: dict[str, dict[str, str]]) -> bytes:
    """skopeo and umoci against the registry itself: the tag's manifest has ``digest``, each
    layer's uncompressed digest is its config's diff_id, and the image unpacks to the payload."""
    ref = server.ref(repo, tag)
    raw = skopeo_inspect(ref, raw=True)
    assert _sha(raw) == digest
    manifest = json.loads(raw)
    config = json.loads(skopeo_inspect(ref, raw=True, config=True))
    layout = tmp / f"check-{repo.replace('/', '-')}-{tag}"
    skopeo_copy(ref, f"oci:{layout}:t")  # skopeo checks every blob's digest on the way
    diff_ids = []
    for layer in manifest["layers"]:
        blob = (layout / "blobs" / "sha256" / layer["digest"].split(":", 1)[1]).read_bytes()
        assert _sha(blob) == layer["digest"] and len(blob) == layer["size"]
        diff_ids.append(_sha(gzip.decompress(blob)))
    assert config["rootfs"]["diff_ids"] == diff_ids
    _check_rootfs(umoci_unpack(layout, "t", tmp / f"bundle-{repo.replace('/', '-')}-{tag}"), payload)
    return raw


@pytest.fixture(scope="module")
def built(cib_registry: RegistryServer, cib_oci_base_image: PushedImage,
          payload: dict[str, dict[str, str]]) -> tuple[str, str]:
    """The payload image pushed to ``registry`` without faults: (repository, digest)."""
    image = Image(cib_oci_base_image.ref, f"{cib_registry.host}/faults/source:1")
    _add_payload(image, payload)
    return "faults/source", image.save().digest


# --------------------------------------------------------------------------------------------
# 10% faults: everything completes and verifies
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", SEEDS)
def test_build_and_save_through_faults(seed: int, cib_registry: RegistryServer,
                                       cib_oci_base_image: PushedImage,
                                       cib_fault_proxy: Callable[..., FaultProxy],
                                       payload: dict[str, dict[str, str]], tmp_path: Path,
                                       tmp_path_factory: pytest.TempPathFactory,
                                       figures: dict[str, Any]) -> None:
    proxy = cib_fault_proxy(cib_registry, rate=FAULT_RATE, kinds=FAULT_KINDS, seed=seed, slow_seconds=0.3)
    repo = f"faults/build{seed}"
    started = time.monotonic()
    image = Image(f"{proxy.host}/{cib_oci_base_image.repository}:{cib_oci_base_image.tag}",
                  f"{proxy.host}/{repo}:1")
    _add_payload(image, payload)
    result = image.save()
    elapsed = time.monotonic() - started
    record(figures, tmp_path_factory, f"build+save seed {seed}", seconds=round(elapsed, 2),
           survived=True, **_proxy_figures(proxy))
    assert proxy.faults_injected >= 1
    assert len(result.manifest["layers"]) == len(cib_oci_base_image.layers) + LAYERS
    _verify_direct(cib_registry, repo, "1", result.digest, tmp_path, payload)


@pytest.mark.parametrize("seed", SEEDS)
def test_cross_registry_copy_through_faults(seed: int, cib_registry: RegistryServer,
                                            cib_second_registry: RegistryServer, built: tuple[str, str],
                                            cib_fault_proxy: Callable[..., FaultProxy],
                                            payload: dict[str, dict[str, str]], tmp_path: Path,
                                            tmp_path_factory: pytest.TempPathFactory,
                                            figures: dict[str, Any]) -> None:
    src_repo, digest = built
    src = cib_fault_proxy(cib_registry, rate=FAULT_RATE, kinds=FAULT_KINDS, seed=seed, slow_seconds=0.3)
    dst = cib_fault_proxy(cib_second_registry, rate=FAULT_RATE, kinds=FAULT_KINDS, seed=seed + 100,
                      slow_seconds=0.3)
    repo = f"faults/copy{seed}"
    started = time.monotonic()
    result = copy_image(f"{src.host}/{src_repo}:1", f"{dst.host}/{repo}:1")
    elapsed = time.monotonic() - started
    record(figures, tmp_path_factory, f"cross-registry copy seed {seed}", seconds=round(elapsed, 2),
           survived=True, source=_proxy_figures(src), destination=_proxy_figures(dst),
           faults=src.faults_injected + dst.faults_injected)
    assert src.faults_injected + dst.faults_injected >= 1
    assert result.digest == digest
    raw = _verify_direct(cib_second_registry, repo, "1", digest, tmp_path, payload)
    assert raw == skopeo_inspect(cib_registry.ref(src_repo, "1"), raw=True)


@pytest.mark.parametrize("seed", PULL_SEEDS)
def test_pull_into_oci_layout_through_faults(seed: int, cib_registry: RegistryServer,
                                             built: tuple[str, str],
                                             cib_fault_proxy: Callable[..., FaultProxy],
                                             payload: dict[str, dict[str, str]], tmp_path: Path,
                                             tmp_path_factory: pytest.TempPathFactory,
                                             figures: dict[str, Any]) -> None:
    src_repo, digest = built
    proxy = cib_fault_proxy(cib_registry, rate=FAULT_RATE, kinds=FAULT_KINDS, seed=seed, slow_seconds=0.3)
    layout = tmp_path / "pulled"
    started = time.monotonic()
    result = copy_image(f"{proxy.host}/{src_repo}:1", f"oci:{layout}:pulled")
    elapsed = time.monotonic() - started
    record(figures, tmp_path_factory, f"pull to oci layout seed {seed}", seconds=round(elapsed, 2),
           survived=True, **_proxy_figures(proxy))
    assert proxy.faults_injected >= 1
    assert result.digest == digest
    raw = skopeo_inspect(f"oci:{layout}:pulled", raw=True)
    assert raw == skopeo_inspect(cib_registry.ref(src_repo, "1"), raw=True)
    manifest = json.loads(raw)
    for layer in manifest["layers"]:
        blob = (layout / "blobs" / "sha256" / layer["digest"].split(":", 1)[1]).read_bytes()
        assert _sha(blob) == layer["digest"]
    _check_rootfs(umoci_unpack(layout, "pulled", tmp_path / "bundle"), payload)


def test_ten_percent_faults_met_every_kind(figures: dict[str, Any]) -> None:
    """Across the 10% scenarios above, every kind of fault the proxy has was injected."""
    kinds: dict[str, int] = {}
    for name, values in figures.items():
        for part in (values, values.get("source") or {}, values.get("destination") or {}):
            for kind, n in (part.get("by_kind") or {}).items():
                kinds[kind] = kinds.get(kind, 0) + n
    if not any(name.startswith("build+save") for name in figures):
        pytest.skip("run together with the 10% scenarios (it sums their figures)")
    print(f"FAULTS all 10% scenarios by kind: {json.dumps(dict(sorted(kinds.items())))}")
    assert set(kinds) == set(FAULT_KINDS), f"kinds never injected: {set(FAULT_KINDS) - set(kinds)}"


# --------------------------------------------------------------------------------------------
# 100% faults: a clear error, soon, and no tag on a half-pushed image
# --------------------------------------------------------------------------------------------

def _manifest_at(server: RegistryServer, repo: str, tag: str) -> bytes | None:
    """The tag's manifest bytes straight from the registry, or None when the tag is absent."""
    resp = requests.get(f"{server.url}/v2/{repo}/manifests/{tag}", timeout=30, headers={
        "Accept": "application/vnd.oci.image.manifest.v1+json, "
                  "application/vnd.docker.distribution.manifest.v2+json"})
    if resp.status_code == 404:
        return None
    assert resp.status_code == 200, resp.text
    return resp.content


def _old_image(server: RegistryServer, repo: str) -> PushedImage:
    """A complete earlier image at ``repo:1``: what the tag must still show after a failure."""
    layer = make_layer({"old.txt": f"the previous complete image of {repo}\n"})
    return push_image(server, repo, "1", [layer], {"architecture": "amd64", "os": "linux",
                                                    "config": {}}, oci=True)


def _fails_in_bounded_time(fn: Callable[[], object]) -> tuple[CibError, float]:
    started = time.monotonic()
    with pytest.raises(CibError) as err:
        fn()
    elapsed = time.monotonic() - started
    assert elapsed < BOUND_SECONDS, f"took {elapsed:.1f}s to fail"
    message = str(err.value)
    assert message and "Traceback" not in message
    return err.value, elapsed


def test_total_faults_fail_clearly_and_soon(cib_registry: RegistryServer, cib_second_registry: RegistryServer,
                                            cib_oci_base_image: PushedImage, built: tuple[str, str],
                                            cib_fault_proxy: Callable[..., FaultProxy],
                                            payload: dict[str, dict[str, str]], tmp_path: Path,
                                            tmp_path_factory: pytest.TempPathFactory,
                                            figures: dict[str, Any]) -> None:
    src_repo, _ = built
    old_build = _old_image(cib_registry, "faults/total-build")
    old_copy = _old_image(cib_second_registry, "faults/total-copy")

    def build() -> None:
        image = Image(f"{proxy.host}/{cib_oci_base_image.repository}:{cib_oci_base_image.tag}",
                      f"{proxy.host}/faults/total-build:1")
        _add_payload(image, payload)
        image.save()

    layout = tmp_path / "layout"
    operations: list[tuple[str, Callable[[], object]]] = [
        ("build+save", build),
        ("cross-registry copy", lambda: copy_image(f"{proxy.host}/{src_repo}:1",
                                                   f"{cib_second_registry.host}/faults/total-copy:1")),
        ("pull to oci layout", lambda: copy_image(f"{proxy.host}/{src_repo}:1", f"oci:{layout}:x")),
    ]
    for seed, (name, operation) in enumerate(operations):
        proxy = cib_fault_proxy(cib_registry, rate=1.0, kinds=FAILING_KINDS, seed=seed)
        error, elapsed = _fails_in_bounded_time(operation)
        assert proxy.host in str(error)
        record(figures, tmp_path_factory, f"100% faults: {name}", seconds=round(elapsed, 2),
               survived=False, error=type(error).__name__, message=str(error)[:200],
               **_proxy_figures(proxy))
        assert proxy.faults_injected >= 1 and proxy.faults_injected == proxy.requests_seen
    assert _manifest_at(cib_registry, "faults/total-build", "1") == old_build.raw
    assert _manifest_at(cib_second_registry, "faults/total-copy", "1") == old_copy.raw
    assert not (layout / "index.json").exists() or '"x"' not in (layout / "index.json").read_text()


def test_build_cut_off_halfway_leaves_the_tag_alone(cib_registry: RegistryServer,
                                                    cib_oci_base_image: PushedImage,
                                                    cib_fault_proxy: Callable[..., FaultProxy],
                                                    tmp_path: Path,
                                                    tmp_path_factory: pytest.TempPathFactory,
                                                    figures: dict[str, Any]) -> None:
    """Two layers reach the registry, then every request fails: the build fails, its blobs
    stay unreferenced, and ``repo:1`` still shows the earlier complete image."""
    repo = "faults/halfway-build"
    old = _old_image(cib_registry, repo)
    proxy = cib_fault_proxy(cib_registry, rate=0.0, kinds=REFUSING_KINDS, seed=3)
    image = Image(f"{proxy.host}/{cib_oci_base_image.repository}:{cib_oci_base_image.tag}",
                  f"{proxy.host}/{repo}:1")
    rng = random.Random(5)  # noqa: S311 - test data
    pushed = []
    for i in range(2):
        (tmp_path / f"l{i}").write_bytes(rng.randbytes(1 << 20))
        pushed.append(image.add_files({f"/l{i}": str(tmp_path / f"l{i}")}))
    (tmp_path / "l2").write_bytes(rng.randbytes(1 << 20))
    proxy.rate = 1.0
    error, elapsed = _fails_in_bounded_time(lambda: (
        image.add_files({"/l2": str(tmp_path / "l2")}), image.save()))
    record(figures, tmp_path_factory, "100% faults after two layers: build", seconds=round(elapsed, 2),
           survived=False, error=type(error).__name__, **_proxy_figures(proxy))
    for info in pushed:  # really half pushed: its first layers are in the registry
        assert requests.head(f"{cib_registry.url}/v2/{repo}/blobs/{info.digest}", timeout=30).status_code == 200
    assert _manifest_at(cib_registry, repo, "1") == old.raw


def test_copy_with_one_blob_that_never_arrives_leaves_the_tag_alone(
        cib_registry: RegistryServer, cib_second_registry: RegistryServer, built: tuple[str, str],
        cib_fault_proxy: Callable[..., FaultProxy], tmp_path_factory: pytest.TempPathFactory,
        figures: dict[str, Any]) -> None:
    """Every upload of the last layer fails (the others arrive): the copy fails and neither the
    old tag nor a new one points at the incomplete image."""
    src_repo, digest = built
    manifest = json.loads(skopeo_inspect(cib_registry.ref(src_repo, "1"), raw=True))
    last = manifest["layers"][-1]["digest"]
    old = _old_image(cib_second_registry, "faults/halfway-copy")
    proxy = cib_fault_proxy(cib_second_registry, rate=1.0, kinds=REFUSING_KINDS, seed=4,
                        path_pattern=f"digest={last}")
    error, elapsed = _fails_in_bounded_time(
        lambda: copy_image(f"{cib_registry.host}/{src_repo}:1", f"{proxy.host}/faults/halfway-copy:1"))
    assert isinstance(error, RegistryError) and error.temporary
    record(figures, tmp_path_factory, "100% faults on one blob: cross-registry copy",
           seconds=round(elapsed, 2), survived=False, error=type(error).__name__,
           **_proxy_figures(proxy))
    first = manifest["layers"][0]["digest"]
    assert requests.head(f"{cib_second_registry.url}/v2/faults/halfway-copy/blobs/{first}",
                         timeout=30).status_code == 200
    assert requests.head(f"{cib_second_registry.url}/v2/faults/halfway-copy/blobs/{last}",
                         timeout=30).status_code == 404
    assert _manifest_at(cib_second_registry, "faults/halfway-copy", "1") == old.raw
    assert requests.get(f"{cib_second_registry.url}/v2/faults/halfway-copy/manifests/{digest}",
                        timeout=30).status_code == 404
