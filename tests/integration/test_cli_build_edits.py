"""``cib build --annotation/--port/--volume/--unset-env`` and ``--dry-run`` against the real
registries (all three auth modes), skopeo and umoci as the judges, the registry's own access log
as the witness that a dry run sends nothing."""

from __future__ import annotations

import json
import re
import urllib.parse
from pathlib import Path

import pytest
from cli_support import access_log_size, isolate_home, login, repository_dir, run

from cib_core.testing import (
    BASE_ENV,
    RegistryServer,
    push_base_image,
    skopeo_copy,
    skopeo_inspect,
    umoci_unpack,
)

pytestmark = pytest.mark.integration

VERSION = "org.opencontainers.image.version"


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return isolate_home(tmp_path, monkeypatch)


@pytest.fixture
def app(tmp_path: Path) -> Path:
    root = tmp_path / "app"
    root.mkdir()
    (root / "main.sh").write_text("#!/bin/sh\necho hello\n")
    return root


def _requests_since(server: RegistryServer, offset: int) -> list[tuple[str, int]]:
    """(request line, status) of every request ``cib`` sent ``server`` after ``offset`` of its
    access log."""
    assert server.log_path is not None
    with server.log_path.open("rb") as handle:
        handle.seek(offset)
        tail = handle.read().decode(errors="replace")
    found = []
    for line in tail.splitlines():
        if ' HTTP/1.1" ' in line and '"cib/' in line:
            request, rest = line.split('"')[1], line.split('"')[2]
            found.append((request, int(rest.split()[0])))
    return found


def _blobs_sent(requests: list[tuple[str, int]]) -> dict[str, str]:
    """digest -> "mount" or "put" for the blobs those requests made present in a repository."""
    sent = {}
    for request, status in requests:
        method, path, _version = request.split(" ")
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(path).query)
        if method == "POST" and "mount" in query and status == 201:
            sent[query["mount"][0]] = "mount"
        elif method == "PUT" and "/blobs/uploads/" in path and "digest" in query:
            sent[query["digest"][0]] = "put"
    return sent


EDITS = ("--env", "NEW=1", "--unset-env", "LANG", "--annotation", f"{VERSION}=1.2",
         "--annotation", "com.example.team=web", "--port", "8080", "--port", "53/udp",
         "--volume", "/data", "--cmd", "sh /app/main.sh")


def test_config_edits_land_in_every_platform(cib_any_registry, app, tmp_path):
    server = cib_any_registry
    base = push_base_image(server, f"edits/base-{server.mode}", "1", flavour="multiarch")
    target = f"{server.host}/edits/app-{server.mode}:1"
    login(server)
    result = run("build", "--from", base.ref, "--to", target, "--add", f"{app}:/app", *EDITS)
    assert result.exit_code == 0, result.stderr
    creds = server.creds_arg()
    index = json.loads(skopeo_inspect(target, raw=True, creds=creds))
    assert index["annotations"] == {VERSION: "1.2", "com.example.team": "web"}
    assert len(index["manifests"]) == 2
    for arch in ("amd64", "arm64"):
        manifest = json.loads(skopeo_inspect(target, raw=True, arch=arch, creds=creds))
        assert manifest["annotations"] == {VERSION: "1.2", "com.example.team": "web"}
        config = skopeo_inspect(target, config=True, arch=arch, creds=creds)["config"]
        assert config["Env"] == [e for e in BASE_ENV if not e.startswith("LANG=")] + ["NEW=1"]
        assert config["ExposedPorts"] == {"8080/tcp": {}, "53/udp": {}}
        assert config["Volumes"] == {"/data": {}}
        assert config["Cmd"] == ["sh", "/app/main.sh"]

    # umoci turns the config into a runtime bundle: LANG is gone from the process environment
    layout = tmp_path / "layout"
    amd64 = next(e for e in index["manifests"] if e["platform"]["architecture"] == "amd64")
    skopeo_copy(f"{server.host}/edits/app-{server.mode}@{amd64['digest']}", f"oci:{layout}:t",
                creds=creds)
    umoci_unpack(layout, "t", tmp_path / "bundle")
    process = json.loads((tmp_path / "bundle" / "config.json").read_text())["process"]
    assert "NEW=1" in process["env"] and not any(e.startswith("LANG=") for e in process["env"])
    assert process["args"] == ["sh", "/app/main.sh"]


def test_a_dry_run_sends_nothing_and_plans_what_the_build_sends(cib_any_registry, app, monkeypatch):
    # the rebuild cache would skip the new layer once its files are a few seconds old; off, the
    # layer is always built and sent, so what is planned does not depend on the clock
    monkeypatch.setenv("CIB_CACHE_DIR", "")
    server = cib_any_registry
    base = push_base_image(server, f"dry/base-{server.mode}", "1", flavour="multiarch")
    repo = f"dry/app-{server.mode}"
    target = f"{server.host}/{repo}:1"
    login(server)
    args = ("build", "--from", base.ref, "--to", target, "--add", f"{app}:/app", *EDITS)

    offset = access_log_size(server)
    dry = run(*args, "--dry-run", "--json")
    assert dry.exit_code == 0, dry.stderr
    seen = _requests_since(server, offset)
    writes = [r for r, _status in seen if r.split(" ")[0] in ("PUT", "POST", "PATCH", "DELETE")]
    assert writes == [], writes
    assert any(r.startswith(f"HEAD /v2/{repo}/blobs/") for r, _ in seen), \
        "the dry run asked the target nothing: the log would prove nothing"
    assert not repository_dir(server, repo).exists()
    plan = json.loads(dry.stdout)

    offset = access_log_size(server)
    real = run(*args, "--json")
    assert real.exit_code == 0, real.stderr
    pushed = json.loads(real.stdout)
    assert plan["digest"] == pushed["digest"] and plan["reference"] == pushed["reference"]
    sent = _blobs_sent(_requests_since(server, offset))
    planned = {b["digest"]: b["action"] for b in plan["blobs"]}
    assert sent == {d: "mount" if a == "mount" else "put" for d, a in planned.items()}
    # the base's layers are mounted from its repository; the new layer and configs uploaded
    base_layers = {layer["digest"] for child in base.platforms.values() for layer in child.layers}
    assert {d for d, a in planned.items() if a == "mount"} == base_layers
    assert {b["kind"] for b in plan["blobs"] if b["action"] == "upload"} == {"layer", "config"}
    assert plan["bytesToSend"] == sum(b["size"] for b in plan["blobs"])
    manifests = [(m["digest"], m["tag"]) for m in plan["manifests"]]
    index_entries = json.loads(skopeo_inspect(target, raw=True, creds=server.creds_arg()))["manifests"]
    assert manifests == [*((e["digest"], None) for e in index_entries), (pushed["digest"], "1")]

    # planned again now that the target has it all: only the new layer and the manifests
    offset = access_log_size(server)
    again = json.loads(run(*args, "--dry-run", "--json").stdout)
    assert not [r for r, _ in _requests_since(server, offset) if not r.startswith(("HEAD", "GET"))]
    assert again["digest"] == pushed["digest"]
    assert [(b["action"], b["kind"]) for b in again["blobs"]] == [("upload", "layer")]
    for image in again["images"]:
        assert [layer["present"] for layer in image["layers"]] == [True, True, False]


def test_the_plan_as_text(cib_registry, cib_multiarch_base_image, app):
    target = f"{cib_registry.host}/dry/text:1"
    result = run("build", "--from", cib_multiarch_base_image.ref, "--to", target,
                 "--add", f"{app}:/app", "--port", "8080", "--dry-run")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"dry run: nothing was sent to {cib_registry.host}/dry/text:1"
    platform_lines = [line for line in lines if re.match(r"linux/\S+: manifest sha256:", line)]
    assert [line.split(":")[0] for line in platform_lines] == ["linux/amd64", "linux/arm64/v8"]
    layer_lines = [line for line in lines if line.startswith("  layer ")]
    assert len(layer_lines) == 6
    assert sum("base, to mount from base/multiarch" in line for line in layer_lines) == 4
    assert sum("new (cib add_files /app), to upload" in line for line in layer_lines) == 2
    # three base layers (one shared), the new layer, two configs
    assert any(re.fullmatch(r"blobs to send: 6 \(\d+(\.\d)? kB\)", line) for line in lines), lines
    assert lines[-1].startswith(f"would save: {cib_registry.host}/dry/text@sha256:")
    assert not repository_dir(cib_registry, "dry/text").exists()


def test_a_dry_run_between_registries_plans_copies(cib_registry, cib_second_registry, cib_base_image, app):
    target = f"{cib_second_registry.host}/dry/copied:1"
    offset = access_log_size(cib_second_registry)
    plan = json.loads(run("build", "--from", cib_base_image.ref, "--to", target,
                          "--add", f"{app}:/app", "--dry-run", "--json").stdout)
    assert not [r for r, _ in _requests_since(cib_second_registry, offset)
                if not r.startswith(("HEAD", "GET"))]
    copies = {b["digest"]: b["source"] for b in plan["blobs"] if b["action"] == "copy"}
    assert copies == {layer["digest"]: f"{cib_registry.host}/base/docker" for layer in cib_base_image.layers}
    pushed = json.loads(run("build", "--from", cib_base_image.ref, "--to", target,
                            "--add", f"{app}:/app", "--json").stdout)
    assert pushed["digest"] == plan["digest"]


def test_a_dry_run_from_a_docker_archive_plans_the_compressed_layers(cib_registry, cib_base_image, app,
                                                                     tmp_path):
    archive = tmp_path / "base.tar"
    skopeo_copy(cib_base_image.ref, f"docker-archive:{archive}:base:1")
    target = f"{cib_registry.host}/dry/from-archive:1"
    plan = json.loads(run("build", "--from", f"docker-archive:{archive}", "--to", target,
                          "--add", f"{app}:/app", "--dry-run", "--json").stdout)
    assert not repository_dir(cib_registry, "dry/from-archive").exists()
    pushed = json.loads(run("build", "--from", f"docker-archive:{archive}", "--to", target,
                            "--add", f"{app}:/app", "--json").stdout)
    assert pushed["digest"] == plan["digest"]
    manifest = json.loads(skopeo_inspect(target, raw=True))
    assert [layer["digest"] for layer in manifest["layers"]] == [
        layer["digest"] for layer in plan["images"][0]["layers"]]


@pytest.mark.parametrize(("args", "expected"), [
    (("--port", "http"), "'http' is not a port"),
    (("--port", "70000"), "'70000' is not a port"),
    (("--volume", "data"), "'data' is not an absolute path in the image: write \"/data\""),
    (("--unset-env", "TOKEN=s3cr3t"), "holds an '=': name the variable only, like \"TOKEN\""),
    (("--unset-env", ""), "is empty"),
    (("--env", "DEBUG=1", "--unset-env", "DEBUG"), "DEBUG is also set with --env"),
    (("--annotation", "novalue"), "'novalue' is not KEY=VALUE"),
])
def test_bad_edits_are_usage_errors_before_anything_is_sent(cib_any_registry, args, expected):
    server = cib_any_registry
    login(server)
    repo = f"edits/refused-{server.mode}"
    offset = access_log_size(server)
    result = run("build", "--from", "scratch", "--to", f"{server.host}/{repo}:1",
                 "--add", f"{Path(__file__)}:/t", *args)
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert expected in result.stderr
    assert "s3cr3t" not in result.stderr
    assert _requests_since(server, offset) == []
    assert not repository_dir(server, repo).exists()


def test_unset_env_of_a_name_the_base_lacks_warns(cib_registry, cib_base_image, app):
    result = run("build", "--from", cib_base_image.ref, "--to", f"{cib_registry.host}/edits/warn:1",
                 "--unset-env", "NOPE")
    assert result.exit_code == 0, result.stderr
    assert "NOPE is not in the environment" in result.stderr
