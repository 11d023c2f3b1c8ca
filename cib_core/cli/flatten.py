"""`cib flatten`: an image squashed into one layer."""

from __future__ import annotations

import click

from cib_core.cli.common import cli_state, echo_json, parse_spec, progress_renderer


@click.command(epilog="""\b
Examples:
  cib flatten localhost:5000/app:1.4 --to localhost:5000/app:1.4-flat
  cib flatten oci:./layout:v1 --to oci:./layout:v1-flat
  cib flatten localhost:5000/app@sha256:...     # pushed by digest to the same repository""")
@click.argument("ref", metavar="REF")
@click.option("--to", "target", metavar="TARGET",
              help="Where the result goes; default REF's repository and tag (by digest only "
                   "when REF names a digest).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def flatten(ref: str, target: str | None, as_json: bool) -> None:
    """Squash REF's layers into one layer holding its merged filesystem (whiteouts applied).

    The config is kept but for rootfs.diff_ids (the one layer) and history (one entry);
    every platform of an index is flattened. Prints the result as TARGET@sha256:... on stdout.
    """
    from cib_core.reference import Reference
    from cib_core.squash import flatten_image

    state = cli_state()
    verb = "pushed" if isinstance(parse_spec(target or ref), Reference) else "wrote"
    with progress_renderer(verb) as progress:
        result = flatten_image(ref, to=target, insecure=state.insecure, pm=state.pm,
                               progress=progress)
    if as_json:
        echo_json({"reference": result.reference, "digest": result.digest,
                   "mediaType": result.media_type, "tags": list(result.tags),
                   "platforms": list(result.platforms), "blobs": dict(result.blobs)})
    else:
        click.echo(result.reference)
