"""`cib ls`, `cib catalog`, `cib blob` and `cib delete`: a registry's tags, repositories and blobs."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable

import click

from cib_core.cli.common import (
    CHUNK,
    PROBE_REPOSITORY,
    parse_spec,
    registry_client,
    registry_ref,
    stdout_binary,
)
from cib_core.errors import (
    InvalidReference,
    NotFound,
)

log = logging.getLogger(__name__)


def echo_list(items: Iterable[str], as_json: bool) -> None:
    """Print ``items`` as they come, one a line or as the JSON list ``echo_json`` would print
    (with ``indent=2``), holding one item back to know where the list ends."""
    if not as_json:
        for item in items:
            click.echo(item)
        return
    held: str | None = None
    for item in items:
        if held is None:
            click.echo("[")
        else:
            click.echo(f"  {json.dumps(held)},")
        held = item
    click.echo("[]" if held is None else f"  {json.dumps(held)}\n]")

@click.command(name="ls", epilog="""\b
Examples:
  cib ls localhost:5000/app
  cib ls oci:./layout           # the tags in an OCI layout
  cib ls localhost:5000/app --json""")
@click.argument("repo", metavar="REPO")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
def ls_(repo: str, as_json: bool) -> None:
    """List every tag of REPO, one a line."""
    from cib_core.reference import LocalReference, parse_repository

    local = parse_spec(repo) if repo.startswith("oci:") else None
    if isinstance(local, LocalReference):
        if local.ref:
            raise InvalidReference(repo, "name the layout without a tag: oci:PATH")
        from cib_core.formats.oci_layout import OCILayoutStore

        assert local.path is not None
        if not os.path.isdir(local.path):
            raise NotFound(f"{repo}: no OCI layout at {local.path}")
        tags: Iterable[str] = OCILayoutStore(local.path).tags()
    else:
        # page by page as the registry sends them: an endless list costs time, never memory
        tags = registry_client(parse_repository(repo)).iter_tags()
    echo_list(tags, as_json)


@click.command(epilog="""\b
Examples:
  cib catalog localhost:5000
  cib catalog localhost:5000 --json""")
@click.argument("registry", metavar="REGISTRY")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
def catalog(registry: str, as_json: bool) -> None:
    """List every repository of REGISTRY, one a line."""
    from cib_core.reference import Reference, parse_registry_host

    host = parse_registry_host(registry)
    # A client is per repository; the catalog request does not use the name.
    echo_list(registry_client(Reference(host, PROBE_REPOSITORY)).iter_catalog(), as_json)


@click.command(epilog="""\b
Examples:
  cib blob localhost:5000/app@sha256:4f5e... > layer.tar.gz
  cib blob localhost:5000/app@$(cib manifest localhost:5000/app | jq -r .config.digest) | jq .""")
@click.argument("ref", metavar="REPO@DIGEST")
def blob(ref: str) -> None:
    """Write the blob DIGEST of REPO to stdout, verified against its digest."""
    parsed = registry_ref(ref, "cib blob")
    if not parsed.digest:
        raise InvalidReference(ref, "name the blob as REPO@sha256:<64 hex digits>")
    stream = registry_client(parsed).blob(parsed.digest, stream=True)
    out = stdout_binary()
    if isinstance(stream, bytes):
        out.write(stream)
    else:
        with stream:
            while True:
                chunk = stream.read(CHUNK)
                if not chunk:
                    break
                out.write(chunk)
    out.flush()


@click.command(epilog="""\b
Examples:
  cib delete localhost:5000/app:old
  cib delete localhost:5000/app@sha256:4f5e...
The registry must allow deletes (docker-registry: storage.delete.enabled: true).""")
@click.argument("ref", metavar="REF")
def delete(ref: str) -> None:
    """Delete the manifest REF names (a tag is resolved to its digest first).

    Prints the deleted REGISTRY/REPO@sha256:... on stdout.
    """
    parsed = registry_ref(ref, "cib delete")
    client = registry_client(parsed)
    target = parsed.digest or client.manifest_digest(parsed.identifier)
    client.delete_manifest(target)
    click.echo(f"{parsed.name}@{target}")


