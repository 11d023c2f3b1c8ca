"""`cib tag`: more tags for a manifest, no blob moved."""

from __future__ import annotations

import click

from cib_core.cli.common import cli_state, echo_json


@click.command(epilog="""\b
Examples:
  cib tag localhost:5000/app:1.4.2 1.4 1 latest
  cib tag localhost:5000/app@sha256:4f5e... stable
  cib tag oci:./layout:1.4.2 1.4          # another index.json entry""")
@click.argument("ref", metavar="REF")
@click.argument("tags", metavar="TAG...", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def tag(ref: str, tags: tuple[str, ...], as_json: bool) -> None:
    """Give the manifest REF names each TAG as well, in REF's own repository or OCI layout.

    The manifest's bytes and digest stay; no blob moves. Prints each new reference, one a line.
    """
    from cib_core.tagging import tag_image

    state = cli_state()
    result = tag_image(ref, tags, insecure=state.insecure, pm=state.pm)
    if as_json:
        echo_json({"digest": result.digest, "mediaType": result.media_type,
                   "tags": list(result.tags), "references": list(result.references)})
    else:
        for reference in result.references:
            click.echo(reference)
