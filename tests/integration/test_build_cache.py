"""The layer cache in a registry (cache_repo): builds on two "machines" (separate checkouts
with other inodes and mtimes, separate CIB_CACHE_DIRs) share it through a real registry, and
the second uploads no layer bytes. Uploaded bytes are counted from the registry's own access
log (every blob upload it completed) and the blob sizes in its storage, not from cib."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cib_core import Image
from cib_core.build_cache import CacheMismatch
from cib_core.layer_records import lookup, record_tag
from cib_core.layers.keys import content_key
from cib_core.remote.client import RegistryClient

pytestmark = pytest.mark.integration

_COMPLETED = re.compile(r'"PUT /v2/(?P<repo>[^ ]+)/blobs/uploads/[^ ]*[?&]digest=(?P<digest>sha256(?::|%3A)'
                        r'[0-9a-f]{64})[^ ]* HTTP/1\.1" 201 ')


def _log_size(registry) -> int:
    return Path(registry.log_path).stat().st_size


def uploads_since(registry, offset: int) -> dict[str, int]:
    """Blobs whose upload the registry completed after ``offset`` in its access log, with
    their sizes in its storage: ``{repo@digest: bytes}``."""
    with open(registry.log_path, "rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace")
    found: dict[str, int] = {}
    for m in _COMPLETED.finditer(text):
        digest = m.group("digest").replace("%3A", ":")
        hexd = digest.split(":")[1]
        data = Path(registry.storage) / "docker/registry/v2/blobs/sha256" / hexd[:2] / hexd / "data"
        found[f"{m.group('repo')}@{digest}"] = data.stat().st_size
    return found


def layer_bytes_since(registry, offset: int, result) -> int:
    """Bytes of uploaded blobs other than the image's config (a small JSON each repository
    needs once)."""
    config = result.manifest["config"]["digest"]
    return sum(size for name, size in uploads_since(registry, offset).items()
               if not name.endswith("@" + config))


def patches_since(registry, offset: int) -> int:
    with open(registry.log_path, "rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace").count('"PATCH /v2/')


def make_checkout(root: Path, *, mtime: int, seed: int = 7) -> Path:
    """A project of a few files, the same bytes every time; its own inodes and mtimes."""
    import random

    rng = random.Random(seed)  # noqa: S311 - test data
    files = {"app/main.py": b"print('hi')\n", "app/data.bin": rng.randbytes(3 << 20),
             "app/lib/util.py": b"X = 1\n" * 100, "README": b"readme\n"}
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        os.utime(path, (mtime, mtime))
    (root / "app" / "run.sh").write_text("#!/bin/sh\nexec python3 /app/main.py\n")
    (root / "app" / "run.sh").chmod(0o755)
    return root


def build(base: str, target: str, src: Path, cache_repo: str | None, **kwargs):
    image = Image(base, target, cache_repo=cache_repo, **kwargs)
    info = image.add_files({"/srv": str(src)})
    image.cmd = ["/srv/app/run.sh"]
    return info, image.save()


@pytest.fixture
def machines(tmp_path, monkeypatch):
    """Two checkouts of one project and a CIB_CACHE_DIR for each."""
    one = make_checkout(tmp_path / "ci-1" / "checkout", mtime=1_600_000_000)
    two = make_checkout(tmp_path / "ci-2" / "somewhere" / "else", mtime=1_700_000_000)
    assert os.stat(one / "README").st_ino != os.stat(two / "README").st_ino
    monkeypatch.delenv("CIB_CACHE_REPO", raising=False)
    return (one, tmp_path / "ci-1" / "cache"), (two, tmp_path / "ci-2" / "cache")


def test_a_second_machine_uploads_no_layer_bytes(cib_registry, cib_base_image, machines, monkeypatch):
    (one, cache_one), (two, cache_two) = machines
    cache_repo = f"{cib_registry.host}/fleet/cache"
    monkeypatch.setenv("CIB_CACHE_DIR", str(cache_one))
    first_info, first = build(cib_base_image.ref, f"{cib_registry.host}/fleet/app-a:1", one, cache_repo)
    key_record = lookup(RegistryClient(cib_registry.host, "fleet/cache"),
                        _only_key(cib_registry, "fleet/cache"))
    assert key_record is not None and key_record.layer_digest == first_info.digest

    monkeypatch.setenv("CIB_CACHE_DIR", str(cache_two))
    offset = _log_size(cib_registry)
    second_info, second = build(cib_base_image.ref, f"{cib_registry.host}/fleet/app-b:1", two, cache_repo)
    assert second_info == first_info
    assert second.digest == first.digest
    assert layer_bytes_since(cib_registry, offset, second) == 0  # the layer was mounted
    assert patches_since(cib_registry, offset) == 0
    assert RegistryClient(cib_registry.host, "fleet/app-b").blob_exists(first_info.digest)


def _only_key(registry, repo: str) -> str:
    tags = [t for t in RegistryClient(registry.host, repo).tags() if t.startswith("cib-cache-")]
    assert len(tags) == 1, tags
    return tags[0].removeprefix("cib-cache-")


def test_the_cache_repository_behind_token_auth(cib_registry, cib_token_registry, cib_base_image, machines,
                                                monkeypatch):
    (one, cache_one), (two, cache_two) = machines
    auth = {cib_token_registry.host: cib_token_registry.auth}
    cache_repo = f"{cib_token_registry.host}/ci/cib-cache"
    monkeypatch.setenv("CIB_CACHE_DIR", str(cache_one))
    first_info, first = build(cib_base_image.ref, f"{cib_token_registry.host}/team/app:1", one, cache_repo,
                              auth=auth)
    monkeypatch.setenv("CIB_CACHE_DIR", str(cache_two))
    offset = _log_size(cib_token_registry)
    # the same target repository (it has the base's layers from the first build), another tag
    second_info, second = build(cib_base_image.ref, f"{cib_token_registry.host}/team/app:2", two,
                                cache_repo, auth=auth)
    assert (second_info, second.digest) == (first_info, first.digest)
    assert layer_bytes_since(cib_token_registry, offset, second) == 0
    assert patches_since(cib_token_registry, offset) == 0


def test_a_touch_needs_no_cache_repo(cib_registry, cib_base_image, machines, monkeypatch):
    (one, cache_one), _ = machines
    monkeypatch.setenv("CIB_CACHE_DIR", str(cache_one))
    first_info, first = build(cib_base_image.ref, f"{cib_registry.host}/touch/app:1", one, None)
    for path in one.rglob("*"):
        os.utime(path, None)  # new mtimes and ctimes: the inode fingerprint misses
    fresh = one.parent / "fresh-clone"
    shutil.copytree(one, fresh)  # and new inodes
    offset = _log_size(cib_registry)
    for src in (one, fresh):
        info, result = build(cib_base_image.ref, f"{cib_registry.host}/touch/app:2", src, None)
        assert (info, result.digest) == (first_info, first.digest)
    assert uploads_since(cib_registry, offset) == {}


def test_a_record_whose_blob_is_gone_is_ignored_and_rewritten(cib_registry, cib_base_image, machines,
                                                              monkeypatch):
    (one, cache_one), (two, cache_two) = machines
    cache_repo = f"{cib_registry.host}/poison/cache"
    monkeypatch.setenv("CIB_CACHE_DIR", str(cache_one))
    info, first = build(cib_base_image.ref, f"{cib_registry.host}/poison/a:1", one, cache_repo)
    cache = RegistryClient(cib_registry.host, "poison/cache")
    key = _only_key(cib_registry, "poison/cache")
    cache.delete_blob(info.digest)
    assert lookup(cache, key) is None
    monkeypatch.setenv("CIB_CACHE_DIR", str(cache_two))
    again, second = build(cib_base_image.ref, f"{cib_registry.host}/poison/b:1", two, cache_repo)
    assert (again, second.digest) == (info, first.digest)
    record = lookup(cache, key)
    assert record is not None and cache.blob_exists(record.layer_digest)


def test_a_planted_record_is_used_unless_verified(cib_registry, cib_base_image, machines, monkeypatch,
                                                   tmp_path):
    """Whoever can push to the cache repository chooses the layer: verify_cache catches it."""
    (one, cache_one), (two, cache_two) = machines
    cache_repo = f"{cib_registry.host}/planted/cache"
    other = tmp_path / "other"
    other.mkdir()
    (other / "evil").write_text("not the project\n")
    monkeypatch.setenv("CIB_CACHE_DIR", str(cache_one))
    evil_info, _ = build(cib_base_image.ref, f"{cib_registry.host}/planted/evil:1", other, None)
    # plant: a record for the project's key naming the other layer
    image = Image(cib_base_image.ref, f"{cib_registry.host}/planted/app:1")
    from cib_core.layers.build import prepare_layer
    from cib_core.plugins import get_plugin_manager

    builder = prepare_layer(get_plugin_manager(), {"/srv": str(two)})
    builder.media_type = evil_info.media_type
    key = content_key(builder)
    assert key is not None
    from cib_core.layer_records import write_record

    write_record(RegistryClient(cib_registry.host, "planted/cache"), key.key, evil_info,
                 source=RegistryClient(cib_registry.host, "planted/evil"))
    del image
    monkeypatch.setenv("CIB_CACHE_DIR", str(cache_two))
    with pytest.raises(CacheMismatch, match=record_tag(key.key)):
        build(cib_base_image.ref, f"{cib_registry.host}/planted/app:1", two, cache_repo, verify_cache=True)
    assert not RegistryClient(cib_registry.host, "planted/app").blob_exists(evil_info.digest)
    planted, _ = build(cib_base_image.ref, f"{cib_registry.host}/planted/app:2", two, cache_repo)
    assert planted == evil_info  # the threat the docs name: a cache writer picks the layer


_WORKER = """
import json, sys
from cib_core import Image
image = Image(sys.argv[1], sys.argv[2], cache_repo=sys.argv[3])
info = image.add_files({"/srv": sys.argv[4]})
print(json.dumps({"layer": info.digest, "digest": image.save().digest}))
"""


def test_eight_processes_building_at_once_agree(cib_registry, cib_base_image, tmp_path):
    src = make_checkout(tmp_path / "src", mtime=1_650_000_000, seed=11)
    env = dict(os.environ, CIB_CACHE_DIR=str(tmp_path / "shared-cache"))
    env.pop("CIB_CACHE_REPO", None)
    procs = [subprocess.Popen(
        [sys.executable, "-c", _WORKER, cib_base_image.ref, f"{cib_registry.host}/eight/app:{i}",
         f"{cib_registry.host}/eight/cache", str(src)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(8)]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()
        results.append(json.loads(out))
    assert len({r["digest"] for r in results}) == 1
    assert len({r["layer"] for r in results}) == 1
    key = _only_key(cib_registry, "eight/cache")
    record = lookup(RegistryClient(cib_registry.host, "eight/cache"), key)
    assert record is not None and record.layer_digest == results[0]["layer"]


def test_cli_says_per_layer_where_it_came_from(cib_registry, cib_base_image, machines, monkeypatch,
                                               tmp_path):
    from cli_support import isolate_home, run

    (one, cache_one), (two, cache_two) = machines
    isolate_home(tmp_path, monkeypatch)
    cache_repo = f"{cib_registry.host}/cli-cache/cache"
    monkeypatch.setenv("CIB_CACHE_DIR", str(cache_one))
    first = run("-v", "build", "--from", cib_base_image.ref, "--to", f"{cib_registry.host}/cli-cache/a:1",
                "--add", f"{one}:/srv", "--cache-repo", cache_repo)
    assert first.exit_code == 0, first.stderr
    assert "cache miss" in first.stderr
    monkeypatch.setenv("CIB_CACHE_DIR", str(cache_two))
    monkeypatch.setenv("CIB_CACHE_REPO", cache_repo)  # the variable instead of the flag
    second = run("-v", "build", "--from", cib_base_image.ref, "--to", f"{cib_registry.host}/cli-cache/b:1",
                 "--add", f"{two}:/srv", "--verify-cache")
    assert second.exit_code == 0, second.stderr
    assert "registry cache hit" in second.stderr and "(mounted)" in second.stderr
    assert "verified the cached layer" in second.stderr
    assert second.stdout.strip().split("@")[1] == first.stdout.strip().split("@")[1]
    third = run("-v", "build", "--from", cib_base_image.ref, "--to", f"{cib_registry.host}/cli-cache/b:2",
                "--add", f"{two}:/srv")
    assert third.exit_code == 0, third.stderr
    assert "local cache hit" in third.stderr
