"""Independent oracles: skopeo and umoci."""


from __future__ import annotations

import json
import logging
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast, overload

import pytest

if TYPE_CHECKING:
    pass

from cib_core.testing.common import (
    _DOCKER_LIST,
    _OCI_INDEX,
    require_tool,
)

log = logging.getLogger(__name__)

def _run(argv: Sequence[str], *, what: str, timeout: float = 300.0) -> bytes:
    result = subprocess.run(list(argv), capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL,
                            check=False)
    if result.returncode != 0:
        # argv may hold credentials: report only the tool and its error output
        pytest.fail(f"{what} failed with exit code {result.returncode}:\n"
                    f"{result.stderr.decode(errors='replace')[-2000:]}", pytrace=False)
    return result.stdout


def _docker_ref(ref: str) -> str:
    if ref.startswith(("docker://", "oci:", "docker-archive:", "oci-archive:", "dir:")):
        return ref
    return "docker://" + ref


@overload
def skopeo_inspect(ref: str, *, raw: Literal[True], config: bool = ..., creds: str | None = ...,
                   arch: str | None = ...) -> bytes: ...


@overload
def skopeo_inspect(ref: str, *, raw: Literal[False] = ..., config: bool = ...,
                   creds: str | None = ..., arch: str | None = ...) -> dict[str, Any]: ...


def skopeo_inspect(ref: str, *, raw: bool = False, config: bool = False, creds: str | None = None,
                   arch: str | None = None) -> dict[str, Any] | bytes:
    """``skopeo inspect`` of ``ref`` (``host/repo:tag`` means ``docker://``; ``oci:DIR:TAG`` works).

    ``raw`` gives the exact manifest (or with ``config`` the config) bytes; otherwise parsed JSON.
    ``arch`` (``arm64``, ``arm64/v8``) picks an index entry (linux); skopeo's ``--raw`` would still
    give the index, so with ``raw`` and ``arch`` on a registry reference the index entry's own
    manifest bytes are fetched by digest. ``creds`` is ``user:pass``.
    """
    skopeo = require_tool("skopeo")
    target = _docker_ref(ref)
    argv = [skopeo]
    architecture, _, variant = (arch or "").partition("/")
    if arch:
        argv += ["--override-os", "linux", "--override-arch", architecture]
        if variant:
            argv += ["--override-variant", variant]
    argv.append("inspect")
    if target.startswith("docker://"):
        argv.append("--tls-verify=false")
        argv += ["--creds", creds] if creds else ["--no-creds"]
    if raw:
        argv.append("--raw")
    if config:
        argv.append("--config")
    argv.append(target)
    out = _run(argv, what=f"skopeo inspect {target}")
    if raw and arch and not config and target.startswith("docker://"):
        document = json.loads(out)
        if document.get("mediaType") in (_OCI_INDEX, _DOCKER_LIST) or "manifests" in document:
            for entry in document.get("manifests", []):
                platform = entry.get("platform") or {}
                if (platform.get("os") == "linux" and platform.get("architecture") == architecture
                        and (not variant or platform.get("variant") == variant)):
                    return skopeo_inspect(_with_digest(target, entry["digest"]), raw=True, creds=creds)
            pytest.fail(f"{ref} has no linux/{arch} entry", pytrace=False)
    if raw:
        return out
    return cast(dict[str, Any], json.loads(out))


def _with_digest(docker_ref: str, digest: str) -> str:
    """``docker://host/repo:tag`` (or ``@digest``) -> ``docker://host/repo@digest``."""
    name = docker_ref.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        name = name[:colon]
    return f"{name}@{digest}"


def skopeo_copy(src: str, dst: str, *, creds: str | None = None, all: bool = False,
                src_creds: str | None = None, dest_creds: str | None = None) -> None:
    """``skopeo copy`` (``host/repo:tag`` means ``docker://``). ``creds`` applies to whichever side
    is a registry unless ``src_creds``/``dest_creds`` say otherwise; ``all`` copies every
    platform of an index."""
    skopeo = require_tool("skopeo")
    source, dest = _docker_ref(src), _docker_ref(dst)
    argv = [skopeo, "--insecure-policy", "copy", "--retry-times", "0"]
    if all:
        argv.append("--all")
    for flag, target, given in (("src", source, src_creds), ("dest", dest, dest_creds)):
        if target.startswith("docker://"):
            argv.append(f"--{flag}-tls-verify=false")
            chosen = given or creds
            argv += [f"--{flag}-creds", chosen] if chosen else [f"--{flag}-no-creds"]
    argv += [source, dest]
    _run(argv, what=f"skopeo copy {source} {dest}")


def pull_to_oci(ref: str, dest: Path | str, creds: str | None = None) -> str:
    """Copy ``ref`` (a registry reference) into the OCI layout ``dest``; returns the layout tag
    (the reference's tag, or ``latest`` for a digest reference)."""
    name = ref.removeprefix("docker://")
    tail = name.rsplit("/", 1)[-1]
    tag = "latest"
    if "@" not in tail and ":" in tail:
        tag = tail.rsplit(":", 1)[1]
    skopeo_copy(name, f"oci:{dest}:{tag}", creds=creds)
    return tag


def umoci_unpack(layout_dir: Path | str, tag: str, bundle_dir: Path | str) -> Path:
    """``umoci unpack`` an OCI layout's ``tag`` into ``bundle_dir``; returns the rootfs path.
    Runs ``--rootless`` when not root."""
    umoci = require_tool("umoci")
    argv = [umoci, "unpack"]
    if os.geteuid() != 0:
        argv.append("--rootless")
    argv += ["--image", f"{layout_dir}:{tag}", str(bundle_dir)]
    _run(argv, what=f"umoci unpack {layout_dir}:{tag}")
    return Path(bundle_dir) / "rootfs"


