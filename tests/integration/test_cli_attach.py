"""`cib attach`, `cib referrers` and `cib copy --referrers` against the real registry.

distribution 2.8 has no referrers API, so every list here is the `sha256-<hex>` tag cib keeps;
skopeo reads the artifacts and the tags back as the independent judge.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import requests
from click.testing import CliRunner, Result

from cib_core import mediatypes as mt
from cib_core.cli.app import cli
from cib_core.referrers import EMPTY_DESCRIPTOR, add_referrers, attach, list_referrers, referrer_of
from cib_core.remote.client import RegistryClient
from cib_core.stores import RegistryStore
from cib_core.testing import (
    PushedImage,
    RegistryServer,
    make_layer,
    push_image,
    push_index,
    skopeo_copy,
    skopeo_inspect,
)

pytestmark = pytest.mark.integration

SBOM = "application/vnd.example.sbom.v1+json"
SIG = "application/vnd.example.sig.v1"


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Credentials only from a docker config of the test's own."""
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


def log_in(home: Path, *servers: RegistryServer) -> None:
    """What `cib auth login` stores, written directly: docker's config.json."""
    auths = {}
    for server in servers:
        if server.username is not None and server.password is not None:
            token = base64.b64encode(f"{server.username}:{server.password}".encode()).decode()
            auths[server.host] = {"auth": token}
    (home / ".docker" / "config.json").write_text(json.dumps({"auths": auths}))


def auth_of(*servers: RegistryServer) -> dict[str, dict[str, str]]:
    return {s.host: s.auth for s in servers if s.auth is not None}


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def cib_script() -> str:
    found = Path(sys.executable).parent / "cib"
    if found.exists():
        return str(found)
    which = shutil.which("cib")
    assert which, "the cib console script is not installed (pip install -e .)"
    return which


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{stderr}"
    assert lines[0].startswith("cib: error: "), lines[0]
    return lines[0]


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def fallback_tag(digest: str) -> str:
    return digest.replace(":", "-", 1)


def small_image(server: RegistryServer, repo: str, tag: str | None = "1", *,
                arch: str = "amd64", variant: str | None = None) -> PushedImage:
    config: dict[str, Any] = {"architecture": arch, "os": "linux", "config": {}}
    if variant:
        config["variant"] = variant
    layer = make_layer({"etc/which": f"{repo} {arch}\n"})
    return push_image(server, repo, tag, [layer], config, oci=True)


def files(tmp_path: Path, **contents: str) -> list[Path]:
    out = []
    for name, text in contents.items():
        path = tmp_path / name.replace("_", ".")
        path.write_text(text)
        out.append(path)
    return out


def raw_manifest(server: RegistryServer, ref: str) -> bytes:
    return skopeo_inspect(ref, raw=True, creds=server.creds_arg())


def listed(server: RegistryServer, repo: str, subject: str) -> dict[str, Any]:
    """The referrers tag, read by skopeo."""
    return json.loads(raw_manifest(server, f"{server.host}/{repo}:{fallback_tag(subject)}"))


def open_tags(server: RegistryServer, repo: str) -> list[str] | None:
    """Tags of a repository in an open registry (None: the registry does not know it)."""
    resp = requests.get(f"{server.url}/v2/{repo}/tags/list", timeout=30)
    if resp.status_code == 404:
        return None
    resp.raise_for_status()
    return sorted(resp.json().get("tags") or [])


def open_has_blob(server: RegistryServer, repo: str, digest: str) -> bool:
    return requests.head(f"{server.url}/v2/{repo}/blobs/{digest}", timeout=30).status_code == 200


# --------------------------------------------------------------------------------------------
# attach and referrers
# --------------------------------------------------------------------------------------------

def test_attach_pushes_an_artifact_that_skopeo_reads(cib_any_registry, tmp_path, isolated_home):
    server = cib_any_registry
    log_in(isolated_home, server)
    repo = f"attach/{server.mode}"
    image = small_image(server, repo)
    sbom, notes = files(tmp_path, sbom_json='{"packages": []}\n', notes_txt="built by ci\n")
    result = run("attach", image.ref, "--artifact-type", SBOM, "--media-type", "application/json",
                 "--annotation", "org.example.stage=test", str(sbom), str(notes))
    assert result.exit_code == 0, result.stderr
    reference = result.stdout.strip()
    assert reference.startswith(f"{server.host}/{repo}@sha256:")
    digest = reference.split("@", 1)[1]

    raw = raw_manifest(server, reference)
    assert sha256(raw) == digest
    artifact = json.loads(raw)
    assert artifact == {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "artifactType": SBOM,
        "config": dict(EMPTY_DESCRIPTOR),
        "layers": [{"mediaType": "application/json", "digest": sha256(p.read_bytes()),
                    "size": p.stat().st_size,
                    "annotations": {"org.opencontainers.image.title": p.name}}
                   for p in (sbom, notes)],
        "subject": {"mediaType": mt.OCI_MANIFEST, "digest": image.digest, "size": len(image.raw)},
        "annotations": {"org.example.stage": "test"},
    }
    # the blobs are the files' bytes: skopeo copies the artifact out of the registry
    layout = tmp_path / "layout"
    skopeo_copy(reference, f"oci:{layout}:artifact", creds=server.creds_arg())
    for path in (sbom, notes):
        blob = layout / "blobs" / "sha256" / sha256(path.read_bytes()).split(":")[1]
        assert blob.read_bytes() == path.read_bytes()
    assert (layout / "blobs" / "sha256" / digest.split(":")[1]).read_bytes() == raw

    entry = {"mediaType": mt.OCI_MANIFEST, "digest": digest, "size": len(raw),
             "artifactType": SBOM, "annotations": {"org.example.stage": "test"}}
    assert listed(server, repo, image.digest) == {"schemaVersion": 2, "mediaType": mt.OCI_INDEX,
                                                  "manifests": [entry]}
    as_json = run("referrers", image.ref, "--json")
    assert as_json.exit_code == 0, as_json.stderr
    assert json.loads(as_json.stdout) == [entry]
    text = run("referrers", image.ref)
    assert text.stdout == f"{digest}\t{SBOM}\torg.example.stage=test\n"
    assert run("referrers", image.ref, "--artifact-type", SIG, "--json").stdout.strip() == "[]"

    # the same files, types and annotations again: the same artifact, listed once
    again = run("attach", image.ref, "--artifact-type", SBOM, "--media-type", "application/json",
                "--annotation", "org.example.stage=test", str(sbom), str(notes), "--json")
    assert again.exit_code == 0, again.stderr
    assert json.loads(again.stdout) == {"reference": reference, "digest": digest,
                                        "artifactType": SBOM, "subject": image.digest,
                                        "referrersTag": fallback_tag(image.digest)}
    assert [m["digest"] for m in listed(server, repo, image.digest)["manifests"]] == [digest]


@pytest.mark.parametrize("mode", ["open", "token"])
def test_concurrent_attaches_in_threads_are_all_listed(mode, cib_registry, cib_token_registry, tmp_path):
    server = cib_registry if mode == "open" else cib_token_registry
    rounds = 3 if mode == "open" else 1
    for n in range(rounds):
        repo = f"attach/threads-{mode}-{n}"
        image = small_image(server, repo)
        writers = 4
        paths = [tmp_path / f"r{n}-w{i}.txt" for i in range(writers)]
        for i, path in enumerate(paths):
            path.write_text(f"writer {i} of round {n}\n")
        barrier = threading.Barrier(writers)
        digests: list[str] = []
        failures: list[BaseException] = []

        def one(path: Path) -> None:
            try:
                barrier.wait()
                result = attach(image.ref, [path], artifact_type=SIG, auth=auth_of(server))
                digests.append(result.digest)
            except BaseException as exc:  # noqa: BLE001 - reported below
                failures.append(exc)

        threads = [threading.Thread(target=one, args=(p,)) for p in paths]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not failures, failures
        assert len(set(digests)) == writers
        found = listed(server, repo, image.digest)["manifests"]
        assert sorted(m["digest"] for m in found) == sorted(digests)
        assert sorted(r.digest for r in list_referrers(image.ref, auth=auth_of(server))) == \
            sorted(digests)


def test_concurrent_attach_processes_are_all_listed(cib_registry, tmp_path):
    repo = "attach/processes"
    image = small_image(cib_registry, repo)
    procs = []
    for i in range(3):
        path = tmp_path / f"p{i}.sig"
        path.write_text(f"process {i}\n")
        procs.append(subprocess.Popen(
            [cib_script(), "attach", image.ref, "--artifact-type", SIG, str(path)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ)))
    printed = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
        printed.append(out.decode().strip().split("@", 1)[1])
    assert len(set(printed)) == 3
    found = listed(cib_registry, repo, image.digest)["manifests"]
    assert sorted(m["digest"] for m in found) == sorted(printed)
    listing = run("referrers", image.ref)
    assert sorted(line.split("\t")[0] for line in listing.stdout.splitlines()) == sorted(printed)


def push_artifact(server: RegistryServer, repo: str, subject: PushedImage, text: str) -> bytes:
    """An artifact with ``subject`` pushed by plain HTTP (open registry): its manifest bytes."""
    base = f"{server.url}/v2/{repo}"
    blob = text.encode()
    for data in (b"{}", blob):
        started = requests.post(f"{base}/blobs/uploads/", timeout=30)
        assert started.status_code == 202
        location = requests.compat.urljoin(server.url, started.headers["Location"])
        sep = "&" if "?" in location else "?"
        assert requests.put(f"{location}{sep}digest={sha256(data)}", data=data,
                            timeout=30).status_code == 201
    raw = json.dumps({
        "schemaVersion": 2, "mediaType": mt.OCI_MANIFEST, "artifactType": SIG,
        "config": {"mediaType": mt.OCI_EMPTY, "digest": sha256(b"{}"), "size": 2},
        "layers": [{"mediaType": "text/plain", "digest": sha256(blob), "size": len(blob)}],
        "subject": {"mediaType": subject.media_type, "digest": subject.digest,
                    "size": len(subject.raw)},
    }).encode()
    resp = requests.put(f"{base}/manifests/{sha256(raw)}", data=raw,
                        headers={"Content-Type": mt.OCI_MANIFEST}, timeout=30)
    assert resp.status_code == 201
    return raw


def put_list(server: RegistryServer, repo: str, subject: str, raws: list[bytes]) -> None:
    index = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX,
             "manifests": [referrer_of(r, mt.OCI_MANIFEST, "x").to_descriptor() for r in raws]}
    resp = requests.put(f"{server.url}/v2/{repo}/manifests/{fallback_tag(subject)}",
                        data=json.dumps(index), headers={"Content-Type": mt.OCI_INDEX}, timeout=30)
    assert resp.status_code == 201, resp.text


def test_a_stale_write_by_another_client_is_merged_again(cib_registry):
    """Another writer read the list before cib's write and writes its own after it: the real
    registry takes the overwrite, and cib must notice and merge again."""
    repo = "attach/stale"
    image = small_image(cib_registry, repo)
    tag = fallback_tag(image.digest)
    other = push_artifact(cib_registry, repo, image, "other writer")
    ours = push_artifact(cib_registry, repo, image, "ours")

    class OverwrittenOnce(RegistryStore):
        overwritten = False

        def put_manifest(self, raw: bytes, media_type: str, tag_: str | None) -> str:
            digest = super().put_manifest(raw, media_type, tag_)
            if tag_ == tag and not self.overwritten:
                self.overwritten = True
                put_list(cib_registry, repo, image.digest, [other])  # what it read: no entry of ours
            return digest

    store = OverwrittenOnce(RegistryClient(cib_registry.host, repo))
    add_referrers(store, image.digest, [referrer_of(ours, mt.OCI_MANIFEST, "ours")], settle=0.3)
    assert store.overwritten
    found = listed(cib_registry, repo, image.digest)["manifests"]
    assert sorted(m["digest"] for m in found) == sorted([sha256(other), sha256(ours)])


def test_an_entry_whose_manifest_was_deleted_is_dropped_from_the_list(cib_registry, tmp_path):
    """distribution refuses an index naming a manifest it lacks, so one deleted artifact
    would block every later attach."""
    repo = "attach/dangling"
    image = small_image(cib_registry, repo)
    gone = push_artifact(cib_registry, repo, image, "deleted later")
    kept = push_artifact(cib_registry, repo, image, "kept")
    put_list(cib_registry, repo, image.digest, [gone, kept])
    resp = requests.delete(f"{cib_registry.url}/v2/{repo}/manifests/{sha256(gone)}", timeout=30)
    assert resp.status_code == 202
    (sig,) = files(tmp_path, new_sig="new\n")
    result = attach(image.ref, [sig], artifact_type=SIG, settle=0.1)
    found = listed(cib_registry, repo, image.digest)["manifests"]
    assert [m["digest"] for m in found] == [sha256(kept), result.digest]


def test_a_registry_with_the_referrers_api_keeps_the_list_itself(cib_registry, cib_fault_proxy, tmp_path):
    repo = "attach/api"
    image = small_image(cib_registry, repo)
    # distribution 2.8 does not send OCI-Subject; a proxy adds it as an OCI 1.1 registry would
    proxy = cib_fault_proxy(cib_registry, add_headers={"PUT": {"OCI-Subject": image.digest}})
    (sig,) = files(tmp_path, app_sig="signature\n")
    result = attach(proxy.ref(repo, "1"), [sig], artifact_type=SIG)
    assert result.fallback_tag is None
    assert result.subject == image.digest
    assert open_tags(cib_registry, repo) == ["1"]  # no sha256-<hex> tag written
    assert json.loads(raw_manifest(cib_registry, f"{cib_registry.host}/{repo}@{result.digest}"))["subject"] \
        == {"mediaType": mt.OCI_MANIFEST, "digest": image.digest, "size": len(image.raw)}


def test_attach_to_a_missing_subject_writes_nothing(cib_registry, tmp_path):
    (sig,) = files(tmp_path, app_sig="signature\n")
    absent = run("attach", f"{cib_registry.host}/attach/absent:1", "--artifact-type", SIG, str(sig))
    assert absent.exit_code == 1
    line = one_error_line(absent.stderr)
    assert "attach/absent" in line and "404" in line
    assert open_tags(cib_registry, "attach/absent") is None  # the repository was never created

    image = small_image(cib_registry, "attach/present")
    missing_tag = run("attach", f"{cib_registry.host}/attach/present:nope", "--artifact-type", SIG,
                      str(sig))
    assert missing_tag.exit_code == 1
    assert "nope" in one_error_line(missing_tag.stderr)
    assert open_tags(cib_registry, "attach/present") == ["1"]
    for digest in (sha256(sig.read_bytes()), EMPTY_DESCRIPTOR["digest"]):
        assert not open_has_blob(cib_registry, "attach/present", digest)
    assert image.tag == "1"


@pytest.mark.parametrize(("args", "status", "expected"), [
    (["--artifact-type", SIG, "{dir}/missing.sig"], 1, "missing.sig"),
    (["--artifact-type", SIG, "{dir}"], 1, "is a directory"),
    (["--artifact-type", SIG, "{dir}/a.sig", "{dir}/sub/a.sig"], 1, "same name"),
    (["--artifact-type", "signature", "{dir}/a.sig"], 2, "not a media type"),
    (["--artifact-type", SIG, "--media-type", "text", "{dir}/a.sig"], 2, "not a media type"),
    (["--artifact-type", SIG, "--annotation", "novalue", "{dir}/a.sig"], 2, "KEY=VALUE"),
    (["{dir}/a.sig"], 2, "--artifact-type"),
    (["--artifact-type", SIG], 2, "FILE"),
])
def test_bad_attach_input_is_refused_before_anything_is_written(cib_registry, tmp_path, args, status,
                                                                expected):
    repo = "attach/bad-input"
    image = small_image(cib_registry, repo)
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.sig").write_text("a\n")
    (tmp_path / "sub" / "a.sig").write_text("another a\n")
    result = run("attach", image.ref, *[a.format(dir=tmp_path) for a in args])
    assert result.exit_code == status, result.stderr
    if status == 1:
        assert expected in one_error_line(result.stderr)
    else:
        assert expected in result.stderr
    assert open_tags(cib_registry, repo) == ["1"]
    for digest in (sha256(b"a\n"), sha256(b"another a\n"), EMPTY_DESCRIPTOR["digest"]):
        assert not open_has_blob(cib_registry, repo, digest)


def test_attach_refuses_a_docker_archive(tmp_path):
    (sig,) = files(tmp_path, app_sig="signature\n")
    archive = tmp_path / "app.tar"
    result = run("attach", f"docker-archive:{archive}", "--artifact-type", SIG, str(sig))
    assert result.exit_code == 1
    assert "cannot hold artifacts" in one_error_line(result.stderr)
    assert not archive.exists()


def test_attach_and_list_in_an_oci_layout(cib_registry, tmp_path):
    image = small_image(cib_registry, "attach/layout-src")
    layout = tmp_path / "layout"
    skopeo_copy(image.ref, f"oci:{layout}:v1")
    (sig,) = files(tmp_path, app_sig="signature\n")
    result = run("attach", f"oci:{layout}:v1", "--artifact-type", SIG, str(sig), "--json")
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["subject"] == image.digest and out["referrersTag"] == fallback_tag(image.digest)
    index = json.loads(skopeo_inspect(f"oci:{layout}:{fallback_tag(image.digest)}", raw=True))
    assert [m["digest"] for m in index["manifests"]] == [out["digest"]]
    artifact = (layout / "blobs" / "sha256" / out["digest"].split(":")[1]).read_bytes()
    assert json.loads(artifact)["subject"]["digest"] == image.digest
    listing = run("referrers", f"oci:{layout}:v1")
    assert listing.stdout == f"{out['digest']}\t{SIG}\n"


# --------------------------------------------------------------------------------------------
# copy --referrers
# --------------------------------------------------------------------------------------------

def _index_with_referrers(server: RegistryServer, repo: str, tmp_path: Path) -> dict[str, Any]:
    """An index of two platforms with an SBOM on the index, a signature on the amd64 image and
    a signature on the SBOM."""
    amd64 = small_image(server, repo, None)
    arm64 = small_image(server, repo, None, arch="arm64", variant="v8")
    index = push_index(server, repo, "1", [amd64, arm64])
    sbom, sig, sbom_sig = files(tmp_path, sbom_json="{}\n", amd64_sig="amd64\n", sbom_sig="sbom\n")
    auth = auth_of(server)
    on_index = attach(index.ref, [sbom], artifact_type=SBOM, auth=auth, settle=0.1)
    on_child = attach(f"{server.host}/{repo}@{amd64.digest}", [sig], artifact_type=SIG, auth=auth,
                      settle=0.1)
    on_sbom = attach(f"{server.host}/{repo}@{on_index.digest}", [sbom_sig], artifact_type=SIG,
                     auth=auth, settle=0.1)
    return {"index": index, "amd64": amd64, "sbom": on_index.digest, "sig": on_child.digest,
            "sbom_sig": on_sbom.digest}


def test_copy_carries_referrers_to_another_registry(cib_registry, cib_any_registry, tmp_path,
                                                    isolated_home):
    src = _index_with_referrers(cib_registry, "copyref/src", tmp_path)
    dst_server = cib_any_registry
    log_in(isolated_home, dst_server)
    dst_repo = f"copyref/dst-{dst_server.mode}"
    dst = f"{dst_server.host}/{dst_repo}:1"
    result = run("copy", src["index"].ref, dst, "--referrers", "--json")
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["digest"] == src["index"].digest
    assert sorted(out["referrers"]) == sorted([src["sbom"], src["sig"], src["sbom_sig"]])
    for artifact in (src["sbom"], src["sig"], src["sbom_sig"]):
        assert raw_manifest(dst_server, f"{dst_server.host}/{dst_repo}@{artifact}") == \
            raw_manifest(cib_registry, f"{cib_registry.host}/copyref/src@{artifact}")
    # each subject's list in the destination, read by skopeo
    for subject, artifact in ((src["index"].digest, src["sbom"]), (src["amd64"].digest, src["sig"]),
                              (src["sbom"], src["sbom_sig"])):
        assert [m["digest"] for m in listed(dst_server, dst_repo, subject)["manifests"]] == [artifact]
    # and the blobs came along: skopeo copies the signature of the SBOM out of the destination
    layout = tmp_path / "out"
    skopeo_copy(f"{dst_server.host}/{dst_repo}@{src['sbom_sig']}", f"oci:{layout}:sig",
                creds=dst_server.creds_arg())
    assert (layout / "blobs" / "sha256" / hashlib.sha256(b"sbom\n").hexdigest()).read_bytes() == \
        b"sbom\n"
    listing = run("referrers", dst)
    assert listing.stdout == f"{src['sbom']}\t{SBOM}\n"


def test_copy_referrers_into_an_oci_layout(cib_registry, tmp_path):
    src = _index_with_referrers(cib_registry, "copyref/to-layout", tmp_path)
    layout = tmp_path / "layout"
    result = run("copy", src["index"].ref, f"oci:{layout}:1", "--referrers")
    assert result.exit_code == 0, result.stderr
    assert "copied 3 referrers" in result.stderr
    listing = run("referrers", f"oci:{layout}:1", "--json")
    assert [r["digest"] for r in json.loads(listing.stdout)] == [src["sbom"]]
    for subject, artifact in ((src["amd64"].digest, src["sig"]), (src["sbom"], src["sbom_sig"])):
        index = json.loads(skopeo_inspect(f"oci:{layout}:{fallback_tag(subject)}", raw=True))
        assert [m["digest"] for m in index["manifests"]] == [artifact]
    # the layout holds the artifacts' blobs too
    assert (layout / "blobs" / "sha256" / hashlib.sha256(b"sbom\n").hexdigest()).read_bytes() == \
        b"sbom\n"


def test_copy_of_one_platform_leaves_the_index_referrers_behind_with_a_warning(cib_registry, tmp_path):
    src = _index_with_referrers(cib_registry, "copyref/one-platform", tmp_path)
    dst = f"{cib_registry.host}/copyref/one-platform-dst:amd64"
    result = run("copy", src["index"].ref, dst, "--platform", "linux/amd64", "--referrers", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["referrers"] == [src["sig"]]
    assert "stay behind" in result.stderr and src["index"].digest in result.stderr
    assert open_tags(cib_registry, "copyref/one-platform-dst") == sorted(
        ["amd64", fallback_tag(src["amd64"].digest)])


def test_copy_referrers_to_a_docker_archive_is_refused_before_writing(cib_registry, tmp_path):
    image = small_image(cib_registry, "copyref/archive")
    archive = tmp_path / "app.tar"
    result = run("copy", image.ref, f"docker-archive:{archive}", "--referrers")
    assert result.exit_code == 1
    assert "cannot hold artifacts" in one_error_line(result.stderr)
    assert not archive.exists()
