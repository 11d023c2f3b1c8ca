"""Helpers for the tests of `cib rebase`, `cib flatten` and `cib validate`: a CLI runner with
credentials from a docker config, second base images, and the judges (skopeo, umoci, runc,
and a file-tree comparison)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import stat
import subprocess
import uuid
from pathlib import Path
from typing import Any

import requests
from click.testing import CliRunner, Result

from cib_core.cli.app import cli
from cib_core.testing import (
    PushedImage,
    RegistryServer,
    fetch_token,
    make_layer,
    pull_to_oci,
    push_image,
    push_index,
    require_tool,
    skopeo_inspect,
    umoci_unpack,
)

CREATED = "2024-03-03T00:00:00Z"
ENV = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]


def isolate_home(tmp_path: Path, monkeypatch: Any) -> Path:
    """No test reads or writes the real user's docker config, auth files or keyring."""
    home = tmp_path / "home"
    (home / ".docker").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("DOCKER_CONFIG", str(home / ".docker"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost,::1")
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyring.backends.null.Keyring")
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    return home


def login(server: RegistryServer) -> None:
    """Credentials for ``server`` in the docker config the CLI reads (nothing for an open one)."""
    if server.username is None or server.password is None:
        return
    path = Path(os.environ["DOCKER_CONFIG"]) / "config.json"
    config = json.loads(path.read_text()) if path.exists() else {"auths": {}}
    token = base64.b64encode(f"{server.username}:{server.password}".encode()).decode()
    config["auths"][server.host] = {"auth": token}
    path.write_text(json.dumps(config))


def run(*args: str) -> Result:
    """``cib ARGS`` in-process; stdout and stderr apart."""
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{stderr}"
    assert lines[0].startswith("cib: error: "), lines[0]
    return lines[0]


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def diff_id(blob: bytes) -> str:
    import gzip

    return sha256(gzip.decompress(blob) if blob[:2] == b"\x1f\x8b" else blob)


def inspect_raw(server: RegistryServer, ref: str, arch: str | None = None) -> dict[str, Any]:
    return json.loads(skopeo_inspect(ref, raw=True, creds=server.creds_arg(), arch=arch))


def inspect_config(server: RegistryServer, ref: str, arch: str | None = None) -> dict[str, Any]:
    return json.loads(skopeo_inspect(ref, raw=True, config=True, creds=server.creds_arg(), arch=arch))


def config_of(image: PushedImage) -> dict[str, Any]:
    return image.config


def base_config(layers: list[bytes], history: list[str], *, architecture: str = "amd64",
                variant: str | None = None) -> dict[str, Any]:
    """A config for ``layers`` whose history has one ``ADD`` entry per layer (in order) and an
    empty-layer entry for every other line of ``history``."""
    entries = []
    for line in history:
        item: dict[str, Any] = {"created": CREATED, "created_by": line}
        if not line.startswith("ADD"):
            item["empty_layer"] = True
        entries.append(item)
    config: dict[str, Any] = {
        "architecture": architecture, "os": "linux", "created": CREATED,
        "config": {"Env": list(ENV), "Cmd": ["sh"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [diff_id(layer) for layer in layers]},
        "history": entries,
    }
    if variant:
        config["variant"] = variant
    return config


def second_base_layers(marker: str) -> list[bytes]:
    """The /etc and marker layers of a second base: its ``/etc/which-base`` says ``marker``."""
    etc = make_layer(
        {"etc/which-base": f"{marker}\n",
         "etc/passwd": "root:x:0:0:root:/root:/bin/sh\n",
         "etc/group": "root:x:0:\n"},
        dirs=("root", "tmp", "run"), modes={"root": 0o700, "tmp": 0o1777})
    extra = make_layer({f"usr/share/base-{marker.lower()}/README": f"the {marker} base\n"})
    return [etc, extra]


def push_second_base(server: RegistryServer, repo: str, tag: str, first: PushedImage) -> PushedImage:
    """An OCI base with ``first``'s busybox layer, then its own /etc and a third layer."""
    busybox = first.blobs[first.layers[0]["digest"]]
    layers = [busybox, *second_base_layers("B")]
    config = base_config(layers, ["ADD busybox", "ADD etc", "ENV B=1", "ADD readme", "CMD sh"])
    return push_image(server, repo, tag, layers, config, oci=True)


def push_second_multiarch_base(server: RegistryServer, repo: str, tag: str,
                               first: PushedImage) -> PushedImage:
    """An index like the test bed's multiarch base, each platform with other layers."""
    children = []
    for key, (architecture, variant) in (("linux/amd64", ("amd64", None)),
                                         ("linux/arm64/v8", ("arm64", "v8"))):
        own = make_layer({"etc/platform": f"{key} of base B\n"})
        shared = first.platforms[key].blobs[first.platforms[key].layers[0]["digest"]]
        layers = [shared, own, make_layer({"etc/which-base": "B\n"})]
        children.append(push_image(server, repo, None, layers,
                                   base_config(layers, ["ADD etc", "ADD platform", "ADD marker"],
                                               architecture=architecture, variant=variant),
                                   oci=True))
    return push_index(server, repo, tag, children, oci=True)


def repository_exists(server: RegistryServer, repository: str) -> bool:
    """Whether the registry's storage has anything for ``repository``: a blob link, an upload,
    a manifest. Read from disk, so no client (cib's or another) has a say."""
    return (server.storage / "docker" / "registry" / "v2" / "repositories" / repository).exists()


def blob_data_path(server: RegistryServer, digest: str) -> Path:
    hexpart = digest.split(":", 1)[1]
    return (server.storage / "docker" / "registry" / "v2" / "blobs" / "sha256" / hexpart[:2]
            / hexpart / "data")


def tag_digest(server: RegistryServer, repository: str, tag: str) -> str | None:
    """The digest a tag points at, asked with plain requests (None when there is no such tag)."""
    headers = {"Accept": ", ".join([
        "application/vnd.oci.image.index.v1+json", "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json"])}
    auth = (server.username, server.password) if server.mode == "basic" else None
    if server.mode == "token":
        headers["Authorization"] = "Bearer " + fetch_token(server, [f"repository:{repository}:pull"])
    resp = requests.head(f"{server.url}/v2/{repository}/manifests/{tag}", headers=headers, auth=auth,
                         timeout=30)
    if resp.status_code == 404:
        return None
    assert resp.status_code == 200, resp.status_code
    return resp.headers["Docker-Content-Digest"]


def unpack(ref: str, server: RegistryServer | None, work: Path, name: str) -> Path:
    """``ref`` copied by skopeo into an OCI layout and unpacked by umoci: its bundle."""
    layout = work / f"{name}-layout"
    tag = pull_to_oci(ref, layout, creds=server.creds_arg() if server else None)
    bundle = work / f"{name}-bundle"
    umoci_unpack(layout, tag, bundle)
    return bundle


def run_bundle(bundle: Path) -> str:
    """Run an umoci bundle's process under runc; its stdout."""
    runc = require_tool("runc")
    config_path = bundle / "config.json"
    config = json.loads(config_path.read_text())
    config["process"]["terminal"] = False
    config_path.write_text(json.dumps(config))
    name = f"cib-test-{uuid.uuid4().hex[:12]}"
    try:
        result = subprocess.run([runc, "run", "-b", str(bundle), name], capture_output=True,
                                timeout=120, stdin=subprocess.DEVNULL, check=False)
    finally:
        subprocess.run([runc, "delete", "-f", name], capture_output=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result.stdout.decode()


def tree(root: Path) -> dict[str, tuple[Any, ...]]:
    """Every path under ``root``: its type and mode, owner, and content or link target
    (and mtime, for what is not a directory)."""
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            st = path.lstat()
            rel = str(path.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                what: Any = ("link", os.readlink(path), st.st_mtime_ns)
            elif stat.S_ISREG(st.st_mode):
                what = ("file", hashlib.sha256(path.read_bytes()).hexdigest(), st.st_nlink,
                        st.st_mtime_ns)
            elif stat.S_ISDIR(st.st_mode):
                what = ("dir",)
            else:
                what = ("other", st.st_rdev)
            out[rel] = (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, *what)
    return out


def remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
