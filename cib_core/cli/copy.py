"""`cib copy`: any reference or transport to any other."""

from __future__ import annotations

import logging

import click

from cib_core.cli.common import (
    cli_state,
    echo_json,
    progress_renderer,
)

log = logging.getLogger(__name__)

@click.command(epilog="""\b
Examples:
  cib copy docker.io/library/alpine:3.20 localhost:5000/alpine:3.20
  cib copy localhost:5000/app:v1 oci:./layout:v1          # to an OCI layout
  cib copy oci:./layout:v1 docker-archive:app.tar:app:v1  # for docker load
  cib copy python:3.12 localhost:5000/py --platform linux/amd64""")
@click.argument("src", metavar="SRC")
@click.argument("dst", metavar="DST")
@click.option("--platform", metavar="P|all",
              help="Copy one platform of a multi-platform image; default all, keeping the digest.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def copy(src: str, dst: str, platform: str | None, as_json: bool) -> None:
    """Copy an image (all platforms by default) from SRC to DST.

    Either side may be a registry reference, oci:PATH[:TAG] or docker-archive:PATH[:NAME:TAG].
    Prints the copied image as DST@sha256:... on stdout.
    """
    from cib_core.copy import copy_image

    state = cli_state()
    with progress_renderer("copied") as progress:
        result = copy_image(src, dst, platform=platform, insecure=state.insecure, pm=state.pm,
                            progress=progress)
    if as_json:
        echo_json({"reference": result.reference, "digest": result.digest,
                    "mediaType": result.media_type, "tags": list(result.tags),
                    "blobs": dict(result.blobs)})
    else:
        click.echo(result.reference)


