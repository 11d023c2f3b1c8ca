"""Concurrency: many threads saving into one repository of the token registry through one
shared ``TransportPool`` (one session, one ping, one token cache), and eight independent
builds into one registry at once; skopeo checks every result."""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from cib_core import CustomFile, Image
from cib_core.remote.transport import TransportPool
from cib_core.testing import RegistryServer, push_base_image, skopeo_inspect

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

THREADS = 16


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_threads_saving_into_one_repository_share_tokens(cib_token_registry: RegistryServer) -> None:
    ts = cib_token_registry.token_server
    assert ts is not None
    base = push_base_image(cib_token_registry, "concurrency/base", "1", flavour="oci")
    host = cib_token_registry.host
    auth = {host: cib_token_registry.auth or {}}
    pool = TransportPool()
    ts.clear_requests()

    def save(i: int) -> tuple[str, str]:
        # every image shares one pool: one session and token cache
        image = Image(base.ref, f"{host}/concurrency/app:t{i}", auth=auth, pool=pool)
        image.add_files({f"/thread-{i}.txt": CustomFile(f"written by thread {i}\n" * 500)})
        image.env = [f"THREAD={i}"]
        return f"t{i}", image.save().digest

    with ThreadPoolExecutor(max_workers=THREADS) as executor:
        results = list(executor.map(save, range(THREADS)))
    requests_made = ts.requests
    scopes = sorted({" ".join(r.scopes) for r in requests_made})
    print(f"TOKENS {THREADS} threads saving through one pool: {len(requests_made)} token requests "
          f"(scopes: {scopes})")
    pool.close()
    assert all(r.status == 200 for r in requests_made)
    # without sharing, each image would ask at least twice (pull on the base, push on the target)
    assert len(requests_made) <= 6, scopes
    assert len({digest for _, digest in results}) == THREADS
    for tag, digest in results:
        raw = skopeo_inspect(f"{host}/concurrency/app:{tag}", raw=True, creds=cib_token_registry.creds_arg())
        assert _sha(raw) == digest
        config = skopeo_inspect(f"{host}/concurrency/app:{tag}", config=True,
                                creds=cib_token_registry.creds_arg())
        assert f"THREAD={tag[1:]}" in config["config"]["Env"]
        assert len(config["rootfs"]["diff_ids"]) == len(json.loads(raw)["layers"])


def test_eight_concurrent_builds_into_one_registry(cib_registry: RegistryServer, tmp_path: Path) -> None:
    base = push_base_image(cib_registry, "concurrency/base8", "1", flavour="docker")

    def build(i: int) -> tuple[str, str]:
        src = tmp_path / f"src{i}"
        (src / "sub").mkdir(parents=True)
        (src / "sub" / "data.bin").write_bytes(bytes([i]) * (1 << 20))
        (src / "name.txt").write_text(f"build {i}\n")
        repo = f"concurrency/build{i % 3}"  # several builds share a repository, too
        image = Image(base.ref, f"{cib_registry.host}/{repo}:b{i}")
        image.add_files({"/app": str(src)})
        image.cmd = ["cat", "/app/name.txt"]
        return f"{repo}:b{i}", image.save().digest

    with ThreadPoolExecutor(max_workers=8) as executor:
        results = list(executor.map(build, range(8)))
    for ref, digest in results:
        raw = skopeo_inspect(f"{cib_registry.host}/{ref}", raw=True)
        assert _sha(raw) == digest
        inspected = skopeo_inspect(f"{cib_registry.host}/{ref}")
        assert inspected["Digest"] == digest
        assert len(inspected["Layers"]) == len(base.layers) + 1
