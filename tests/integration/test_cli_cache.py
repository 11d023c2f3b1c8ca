"""Layer-cache records in a real registry: `layer_records` writes and reads them, `cib cache
ls` lists them and `cib cache prune` removes the old ones; skopeo reads them back."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner, Result

from cib_core import mediatypes as mt
from cib_core.cli.app import cli
from cib_core.errors import NotFound
from cib_core.layer_records import ARTIFACT_TYPE, list_records, lookup, prune, write_record
from cib_core.remote.client import RegistryClient
from cib_core.testing import RegistryServer, make_layer, push_image, skopeo_copy, skopeo_inspect

pytestmark = pytest.mark.integration



def now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


@dataclass(frozen=True)
class Layer:
    digest: str
    diff_id: str
    size: int
    media_type: str = mt.OCI_LAYER_GZIP


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    (home / ".docker").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("DOCKER_CONFIG", str(home / ".docker"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost,::1")
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyring.backends.null.Keyring")
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    return home


def log_in(home: Path, server: RegistryServer) -> None:
    auths = {}
    if server.username is not None and server.password is not None:
        token = base64.b64encode(f"{server.username}:{server.password}".encode()).decode()
        auths[server.host] = {"auth": token}
    (home / ".docker" / "config.json").write_text(json.dumps({"auths": auths}))


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{stderr}"
    assert lines[0].startswith("cib: error: "), lines[0]
    return lines[0]


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def key_of(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def client(server: RegistryServer, repo: str) -> RegistryClient:
    return RegistryClient(server.host, repo, server.auth)


def pushed_layers(server: RegistryServer, repo: str, count: int) -> list[tuple[Layer, bytes]]:
    """``count`` layers pushed into ``repo`` as one image (the repository a build pushed to)."""
    blobs = [make_layer({f"file{i}": f"content {i} of {repo}\n" * (i + 1)}) for i in range(count)]
    push_image(server, repo, "1", blobs, {"architecture": "amd64", "os": "linux"}, oci=True)
    return [(Layer(sha256(b), sha256(gzip.decompress(b)), len(b)), b) for b in blobs]


def tags_of(server: RegistryServer, repo: str) -> list[str]:
    return sorted(client(server, repo).tags())


def test_records_written_listed_and_pruned(cib_any_registry, tmp_path, isolated_home):
    server = cib_any_registry
    log_in(isolated_home, server)
    target, cache_repo = f"cache/app-{server.mode}", f"cache/records-{server.mode}"
    (old, old_blob), (middle, _), (new, _) = pushed_layers(server, target, 3)
    cache, source = client(server, cache_repo), client(server, target)
    moment = now()
    keys = {"old": key_of("old inputs"), "middle": key_of("middle inputs"),
            "new": key_of("new inputs")}
    written = {
        "old": write_record(cache, keys["old"], old, created=moment - timedelta(days=10),
                            source=source),
        "middle": write_record(cache, keys["middle"], middle, created=moment - timedelta(days=2),
                               source=source),
        "new": write_record(cache, keys["new"], new, created=moment - timedelta(hours=1),
                            source=source),
    }

    # the record, read by skopeo: the documented format, and the layer blob in the cache repo
    tag = f"cib-cache-{keys['old']}"
    raw = skopeo_inspect(f"{server.host}/{cache_repo}:{tag}", raw=True, creds=server.creds_arg())
    assert sha256(raw) == written["old"].digest
    doc = json.loads(raw)
    assert doc["artifactType"] == ARTIFACT_TYPE
    assert doc["config"]["mediaType"] == mt.OCI_EMPTY
    assert doc["layers"] == [{"mediaType": mt.OCI_LAYER_GZIP, "digest": old.digest, "size": old.size}]
    assert doc["annotations"] == {
        "dev.cib.cache.key": keys["old"], "dev.cib.cache.diff-id": old.diff_id,
        "dev.cib.cache.repository": f"{server.host}/{target}",
        "org.opencontainers.image.created": (moment - timedelta(days=10)).strftime("%Y-%m-%dT%H:%M:%SZ")}
    layout = tmp_path / "record"
    skopeo_copy(f"{server.host}/{cache_repo}:{tag}", f"oci:{layout}:r", creds=server.creds_arg())
    assert (layout / "blobs" / "sha256" / old.digest.split(":")[1]).read_bytes() == old_blob

    found = lookup(cache, keys["middle"])
    assert found is not None and (found.layer_digest, found.diff_id) == (middle.digest, middle.diff_id)
    assert lookup(cache, key_of("never built")) is None

    listing = run("cache", "ls", f"{server.host}/{cache_repo}")
    assert listing.exit_code == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert [line.split()[:2] for line in lines] == [[keys[n], layer.digest] for n, layer in
                                                   (("old", old), ("middle", middle), ("new", new))]
    ages = [line.split()[-1] for line in lines]
    assert ages[:2] == ["10d0h", "2d0h"] and re.fullmatch(r"1h[0-4]m", ages[2]), ages
    as_json = json.loads(run("cache", "ls", f"{server.host}/{cache_repo}", "--json").stdout)
    assert [r["key"] for r in as_json] == [keys["old"], keys["middle"], keys["new"]]
    assert as_json[0]["layer"] == {"mediaType": mt.OCI_LAYER_GZIP, "digest": old.digest,
                                   "size": old.size}
    assert abs(as_json[0]["ageSeconds"] - 10 * 86400) < 600

    dry = run("cache", "prune", f"{server.host}/{cache_repo}", "--older-than", "7d", "--dry-run")
    assert dry.exit_code == 0, dry.stderr
    assert dry.stdout.split()[:2] == [keys["old"], old.digest]
    assert "would remove 1 record" in dry.stderr
    assert len(tags_of(server, cache_repo)) == 3

    pruned = run("cache", "prune", f"{server.host}/{cache_repo}", "--older-than", "1d12h", "--json")
    assert pruned.exit_code == 0, pruned.stderr
    assert [r["key"] for r in json.loads(pruned.stdout)] == [keys["old"], keys["middle"]]
    assert "removed 2 records" in pruned.stderr
    assert tags_of(server, cache_repo) == [f"cib-cache-{keys['new']}"]
    with pytest.raises(NotFound):
        cache.manifest_raw(written["old"].digest)
    assert lookup(cache, keys["old"]) is None
    assert [r.key for r in list_records(cache)] == [keys["new"]]


def test_a_record_for_a_layer_in_another_registry_copies_the_blob(cib_registry, cib_second_registry):
    (layer, blob), = pushed_layers(cib_second_registry, "cache/elsewhere", 1)
    cache = client(cib_registry, "cache/cross")
    record = write_record(cache, key_of("cross"), layer, source=client(cib_second_registry,
                                                                      "cache/elsewhere"))
    assert record.repository == f"{cib_second_registry.host}/cache/elsewhere"
    assert cache.blob(layer.digest) == blob
    assert abs(record.age().total_seconds()) < 120


def test_a_record_without_its_blob_is_refused_and_one_whose_blob_is_gone_is_ignored(cib_registry):
    (layer, _), = pushed_layers(cib_registry, "cache/poison-src", 1)
    cache = client(cib_registry, "cache/poison")
    with pytest.raises(NotFound, match="lacks the layer"):
        write_record(cache, key_of("no source"), layer)
    assert cache_tags(cib_registry, "cache/poison") is None
    key = key_of("poisoned")
    write_record(cache, key, layer, source=client(cib_registry, "cache/poison-src"))
    cache.delete_blob(layer.digest)
    assert lookup(cache, key) is None
    kept = lookup(cache, key, check_blob=False)
    assert kept is not None and kept.layer_digest == layer.digest


def cache_tags(server: RegistryServer, repo: str) -> list[str] | None:
    resp = requests.get(f"{server.url}/v2/{repo}/tags/list", timeout=30)
    return None if resp.status_code == 404 else sorted(resp.json().get("tags") or [])


def test_tags_with_the_prefix_that_are_not_records_are_skipped(cib_registry):
    (layer, blob), = pushed_layers(cib_registry, "cache/foreign", 1)
    cache = client(cib_registry, "cache/foreign")
    key = key_of("foreign")
    # an image, not a record, under a record's tag
    push_image(cib_registry, "cache/foreign", f"cib-cache-{key}", [blob],
               {"architecture": "amd64", "os": "linux"}, oci=True)
    assert lookup(cache, key) is None
    listing = run("cache", "ls", f"{cib_registry.host}/cache/foreign")
    assert listing.exit_code == 0 and listing.stdout == ""
    assert f"skipping cib-cache-{key}" in listing.stderr
    assert prune(cache, timedelta(0)) == []
    assert f"cib-cache-{key}" in cache_tags(cib_registry, "cache/foreign")


@pytest.mark.parametrize("duration", ["7", "1y", "-3d", "soon", ""])
def test_a_bad_duration_is_a_usage_error_and_removes_nothing(cib_registry, duration):
    (layer, _), = pushed_layers(cib_registry, "cache/bad-duration-src", 1)
    cache = client(cib_registry, "cache/bad-duration")
    write_record(cache, key_of("kept"), layer, created=now() - timedelta(days=400),
                 source=client(cib_registry, "cache/bad-duration-src"))
    result = run("cache", "prune", f"{cib_registry.host}/cache/bad-duration", "--older-than", duration)
    assert result.exit_code == 2
    assert "like 7d, 12h, 30m" in result.stderr
    assert cache_tags(cib_registry, "cache/bad-duration") == [f"cib-cache-{key_of('kept')}"]


def test_bad_repositories_are_one_line(cib_registry):
    missing = run("cache", "ls", f"{cib_registry.host}/cache/never-written")
    assert missing.exit_code == 1
    assert "cache/never-written" in one_error_line(missing.stderr)
    tagged = run("cache", "prune", f"{cib_registry.host}/cache/x:1", "--older-than", "1d")
    assert tagged.exit_code == 1
    assert "no tag or digest" in one_error_line(tagged.stderr)
