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
  cib copy python:3.12 localhost:5000/py --platform linux/amd64
  cib copy localhost:5000/app:v1 otherhost:5000/app:v1 --referrers  # with its signatures, SBOMs""")
@click.argument("src", metavar="SRC")
@click.argument("dst", metavar="DST")
@click.option("--platform", metavar="P|all",
              help="Copy one platform of a multi-platform image; default all, keeping the digest.")
@click.option("--referrers", "with_referrers", is_flag=True,
              help="Also copy the artifacts that refer to the image (and to each of its platforms).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def copy(src: str, dst: str, platform: str | None, with_referrers: bool, as_json: bool) -> None:
    """Copy an image (all platforms by default) from SRC to DST.

    Either side may be a registry reference, oci:PATH[:TAG] or docker-archive:PATH[:NAME:TAG].
    Prints the copied image as DST@sha256:... on stdout.
    """
    from cib_core.copy import copy_image

    state = cli_state()
    if with_referrers:
        from cib_core.referrers import check_copy_referrers

        check_copy_referrers(src, dst)
    with progress_renderer("copied") as progress:
        result = copy_image(src, dst, platform=platform, insecure=state.insecure, pm=state.pm,
                            progress=progress)
        carried = None
        if with_referrers:
            from cib_core.referrers import copy_referrers

            carried = copy_referrers(src, dst, result.digest, insecure=state.insecure,
                                     pm=state.pm, progress=progress)
    if carried is not None and not state.quiet and not as_json:
        click.echo(f"copied {len(carried.copied)} referrers", err=True)
    if as_json:
        out = {"reference": result.reference, "digest": result.digest,
               "mediaType": result.media_type, "tags": list(result.tags),
               "blobs": dict(result.blobs)}
        if carried is not None:
            out["referrers"] = [r.digest for r in carried.copied]
        echo_json(out)
    else:
        click.echo(result.reference)


