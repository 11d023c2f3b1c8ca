"""`cib manifest`, `cib config`, `cib digest` and `cib inspect`: reading an image."""

from __future__ import annotations

import json
import logging
import sys
from typing import TYPE_CHECKING, Any

import click

from cib_core.errors import (
    NotFound,
)

if TYPE_CHECKING:
    from cib_core.models import Manifest, Platform
    from cib_core.stores import BlobStore

from cib_core.cli.common import (
    echo_json,
    identifier_of,
    load_image,
    open_image_store,
    parse_spec,
    platform_list,
    read_image_config,
    registry_client,
    scratch_check,
    select_image,
    stdout_binary,
)

log = logging.getLogger(__name__)

@click.command(epilog="""\b
Examples:
  cib manifest localhost:5000/app:v1 | jq .
  cib manifest oci:./layout:v1 | sha256sum""")
@click.argument("ref", metavar="REF")
def manifest(ref: str) -> None:
    """Print the exact bytes of REF's manifest (or index)."""
    parsed = parse_spec(ref)
    scratch_check(parsed, ref)
    raw, _media_type, _digest = open_image_store(parsed).get_manifest(identifier_of(parsed))
    out = stdout_binary()
    out.write(raw)
    out.flush()


@click.command(epilog="""\b
Examples:
  cib config localhost:5000/app:v1 | jq .config.Env
  cib config python:3.12 --platform linux/arm64""")
@click.argument("ref", metavar="REF")
@click.option("--platform", metavar="P",
              help="For a multi-platform image: which one (default: the only one, else this machine's).")
def config(ref: str, platform: str | None) -> None:
    """Print the config JSON of REF, exactly as stored."""
    _parsed, store, doc = load_image(ref)
    image, _digest = select_image(store, doc, platform, ref)
    raw, _cfg = read_image_config(store, image.config, ref)
    out = stdout_binary()
    out.write(raw)
    if not raw.endswith(b"\n") and sys.stdout.isatty():
        out.write(b"\n")
    out.flush()


@click.command(epilog="""\b
Examples:
  cib digest localhost:5000/app:v1
  docker pull "localhost:5000/app@$(cib digest localhost:5000/app:v1)\"""")
@click.argument("ref", metavar="REF")
def digest(ref: str) -> None:
    """Print the digest of REF's manifest (or index)."""
    from cib_core.reference import Reference

    parsed = parse_spec(ref)
    scratch_check(parsed, ref)
    if isinstance(parsed, Reference):
        found = registry_client(parsed).manifest_digest(parsed.identifier)
    else:
        _raw, _media_type, found = open_image_store(parsed).get_manifest(identifier_of(parsed))
    click.echo(found)


def _describe_image(store: BlobStore, manifest: Manifest, digest: str,
                    platform: Platform | None) -> dict[str, Any]:
    _raw, cfg = read_image_config(store, manifest.config, store.name)
    inner = cfg.get("config") if isinstance(cfg.get("config"), dict) else {}
    assert isinstance(inner, dict)
    layers: list[dict[str, Any]] = [
        {"digest": layer.digest, "size": layer.size, "mediaType": layer.media_type}
        for layer in manifest.layers]
    if platform is not None:
        platform_name = str(platform)
    else:
        platform_name = "/".join(str(p) for p in (cfg.get("os"), cfg.get("architecture"),
                                                  cfg.get("variant")) if p)
    return {
        "platform": platform_name,
        "digest": digest,
        "mediaType": manifest.media_type,
        "config": manifest.config.digest,
        "created": cfg.get("created"),
        "entrypoint": inner.get("Entrypoint"),
        "cmd": inner.get("Cmd"),
        "workingDir": inner.get("WorkingDir") or None,
        "user": inner.get("User") or None,
        "env": inner.get("Env") or [],
        "labels": inner.get("Labels") or {},
        "exposedPorts": sorted((inner.get("ExposedPorts") or {}).keys()),
        "layers": layers,
        "size": sum(int(layer["size"] or 0) for layer in layers),
    }


def _print_image(info: dict[str, Any]) -> None:
    from cib_core.cli.bars import format_size

    def row(name: str, value: object) -> None:
        click.echo(f"  {name:<11} {value}")

    click.echo(f"{info['platform'] or 'image'}  {info['digest']}")
    row("created", info["created"] or "-")
    row("entrypoint", json.dumps(info["entrypoint"]) if info["entrypoint"] is not None else "-")
    row("cmd", json.dumps(info["cmd"]) if info["cmd"] is not None else "-")
    row("workdir", info["workingDir"] or "-")
    row("user", info["user"] or "-")
    env = info["env"] or ["-"]
    row("env", env[0])
    for entry in env[1:]:
        row("", entry)
    if info["labels"]:
        items = sorted(info["labels"].items())
        row("labels", f"{items[0][0]}={items[0][1]}")
        for key, value in items[1:]:
            row("", f"{key}={value}")
    if info["exposedPorts"]:
        row("ports", ", ".join(info["exposedPorts"]))
    count = len(info["layers"])
    row("layers", f"{count} layer{'s' if count != 1 else ''}, {format_size(info['size'])}")
    for layer in info["layers"]:
        kind = layer["mediaType"].rsplit(".", 1)[-1] if layer["mediaType"] else "?"
        click.echo(f"    {layer['digest']}  {format_size(layer['size'] or 0):>9}  {kind}")


@click.command(epilog="""\b
Examples:
  cib inspect localhost:5000/app:v1
  cib inspect oci:./out:v1 --json | jq '.platforms[0].env'
  cib inspect python:3.12 --platform linux/arm64""")
@click.argument("ref", metavar="REF")
@click.option("--platform", metavar="P", help="Only this platform of a multi-platform image.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def inspect(ref: str, platform: str | None, as_json: bool) -> None:
    """Summarize REF: platforms, layers and sizes, env, cmd, entrypoint, workdir, created."""
    from cib_core.models import Index, Manifest, Platform, parse_manifest

    parsed, store, doc = load_image(ref)
    images: list[dict[str, Any]] = []
    if isinstance(doc, Index):
        entries = doc.images()
        if platform not in (None, "all"):
            wanted = Platform.parse(str(platform))
            entries = [d for d in entries if d.platform is not None and d.platform.matches(wanted)]
            if not entries:
                raise NotFound(f"{ref} has no {platform} image; it has: "
                               f"{platform_list(doc.images())}")
        for entry in entries:
            raw, media_type, digest_ = store.get_manifest(entry.digest)
            child = parse_manifest(raw, media_type)
            if isinstance(child, Manifest):
                images.append(_describe_image(store, child, digest_, entry.platform))
    else:
        image, digest_ = select_image(store, doc, platform, ref)
        images.append(_describe_image(store, image, digest_, None))
    summary = {"reference": str(parsed), "digest": doc.digest, "mediaType": doc.media_type,
               "platforms": images}
    if as_json:
        echo_json(summary)
        return
    click.echo(f"reference   {summary['reference']}")
    click.echo(f"digest      {summary['digest']}")
    click.echo(f"media type  {summary['mediaType']}")
    if isinstance(doc, Index):
        click.echo(f"platforms   {', '.join(i['platform'] for i in images) or '-'}")
    for info in images:
        click.echo("")
        _print_image(info)


