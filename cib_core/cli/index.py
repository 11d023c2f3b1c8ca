"""`cib index create` and `cib index append`: multi-platform indexes from single-platform images."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from cib_core.cli.common import cli_state, echo_json, progress_renderer

if TYPE_CHECKING:
    from cib_core.index import IndexResult


@click.group(epilog="""\b
Examples:
  cib index create localhost:5000/app:1.0 localhost:5000/app:1.0-amd64 localhost:5000/app:1.0-arm64
  cib index append localhost:5000/app:1.0 localhost:5000/app:1.0-riscv64""")
def index() -> None:
    """Assemble multi-platform indexes from single-platform images.

    Each image's platform is read from its config; a platform may appear once. The index is a
    Docker manifest list when every image is a Docker schema 2 manifest, else an OCI index.
    """


def _report(result: IndexResult, as_json: bool) -> None:
    if not as_json:
        click.echo(result.reference)
        return
    manifests: list[dict[str, Any]] = []
    for entry in result.entries:
        item: dict[str, Any] = {"digest": entry.digest, "mediaType": entry.media_type,
                                "platform": str(entry.platform) if entry.platform else None}
        if entry.source is not None:
            item["source"] = entry.source
        manifests.append(item)
    echo_json({"reference": result.reference, "digest": result.digest,
               "mediaType": result.media_type, "tags": list(result.tags),
               "manifests": manifests, "blobs": dict(result.blobs)})


@index.command(epilog="""\b
Examples:
  cib index create localhost:5000/app:1.0 localhost:5000/app:1.0-amd64 localhost:5000/app:1.0-arm64
  cib index create localhost:5000/app:1.0 oci:./amd64:1.0 gcr.io/p/app-arm64:1.0   # copied in first
  cib index create oci:./layout:1.0 localhost:5000/app:1.0-amd64 localhost:5000/app:1.0-arm64""")
@click.argument("target", metavar="TARGET")
@click.argument("sources", metavar="SRC...", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def create(target: str, sources: tuple[str, ...], as_json: bool) -> None:
    """Write an index over the images SRC... to TARGET (tag latest unless it names one).

    Images from other repositories, registries or layouts are copied into TARGET's repository
    first. Prints the index as TARGET@sha256:... on stdout.
    """
    from cib_core.index import create_index

    state = cli_state()
    with progress_renderer("copied") as progress:
        result = create_index(target, list(sources), insecure=state.insecure, pm=state.pm,
                              progress=progress)
    _report(result, as_json)


@index.command(epilog="""\b
Examples:
  cib index append localhost:5000/app:1.0 localhost:5000/app:1.0-riscv64
  cib index append oci:./layout:1.0 localhost:5000/app:1.0-s390x""")
@click.argument("index_ref", metavar="INDEX")
@click.argument("sources", metavar="SRC...", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def append(index_ref: str, sources: tuple[str, ...], as_json: bool) -> None:
    """Add the images SRC... to the index INDEX and write it back under INDEX's tag.

    The index's entries stay as they are; a platform it already has is refused. Prints the new
    index as REPO@sha256:... on stdout.
    """
    from cib_core.index import append_to_index

    state = cli_state()
    with progress_renderer("copied") as progress:
        result = append_to_index(index_ref, list(sources), insecure=state.insecure, pm=state.pm,
                                 progress=progress)
    _report(result, as_json)
