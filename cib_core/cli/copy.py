"""`cib copy`: any reference or transport to any other."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import click

from cib_core.cli.common import (
    cli_state,
    echo_json,
    progress_renderer,
)

if TYPE_CHECKING:
    from cib_core.copy import CopyResult

log = logging.getLogger(__name__)

@click.command(epilog="""\b
Examples:
  cib copy docker.io/library/alpine:3.20 localhost:5000/alpine:3.20
  cib copy localhost:5000/app:v1 oci:./layout:v1          # to an OCI layout
  cib copy oci:./layout:v1 docker-archive:app.tar:app:v1  # for docker load
  cib copy python:3.12 localhost:5000/py --platform linux/amd64
  cib copy node:22 localhost:5000/node:22 --platform linux/amd64,linux/arm64
  cib copy --all-tags docker://localhost:5000/app localhost:5001/mirror/app
  cib copy localhost:5000/app:v1 otherhost:5000/app:v1 --referrers  # with its signatures, SBOMs""")
@click.argument("src", metavar="SRC")
@click.argument("dst", metavar="DST")
@click.option("--platform", metavar="P[,P...]|all",
              help="Copy only these platforms of a multi-platform image: one gives that image, "
                   "several an index of just those. Default all, keeping the digest.")
@click.option("--all-tags", is_flag=True,
              help="Copy every tag of the registry repository SRC to the same tags in DST "
                   "(both named without a tag).")
@click.option("--referrers", "with_referrers", is_flag=True,
              help="Also copy the artifacts that refer to the image (and to each of its platforms).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def copy(src: str, dst: str, platform: str | None, all_tags: bool, with_referrers: bool,
         as_json: bool) -> None:
    """Copy an image (all platforms by default) from SRC to DST.

    Either side may be a registry reference (also written docker://REF), oci:PATH[:TAG] or
    docker-archive:PATH[:NAME:TAG]. Prints the copied image as DST@sha256:... on stdout; with
    --all-tags one line per tag, DST:TAG@sha256:... (oci:PATH:TAG for a layout).
    """
    from cib_core.copy import copy_all_tags, copy_image

    state = cli_state()
    if with_referrers:
        if all_tags:
            raise click.UsageError("--referrers copies one image's referrers; it does not go with "
                                   "--all-tags")
        from cib_core.referrers import check_copy_referrers

        check_copy_referrers(src, dst)
    if all_tags:
        with progress_renderer("copied") as progress:
            results = copy_all_tags(src, dst, platform=platform, insecure=state.insecure,
                                    pm=state.pm, progress=progress)
        if as_json:
            echo_json([_as_json(result) for result in results])
            return
        for result in results:
            where = result.reference.rpartition("@")[0]
            if where.startswith("oci:"):
                click.echo(f"{where}:{result.tags[0]}")
            else:
                click.echo(f"{where}:{result.tags[0]}@{result.digest}")
        return
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
        out = _as_json(result)
        if carried is not None:
            out["referrers"] = [r.digest for r in carried.copied]
        echo_json(out)
    else:
        click.echo(result.reference)


def _as_json(result: CopyResult) -> dict[str, Any]:
    return {"reference": result.reference, "digest": result.digest,
            "mediaType": result.media_type, "tags": list(result.tags),
            "blobs": dict(result.blobs)}
