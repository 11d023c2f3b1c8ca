"""`cib rebase`: an image's own layers on another base."""

from __future__ import annotations

import click

from cib_core.cli.common import cli_state, echo_json, parse_spec, progress_renderer


@click.command(epilog="""\b
Examples:
  cib rebase localhost:5000/app:1.4 --old-base localhost:5000/base:1 \\
      --new-base localhost:5000/base:2
  cib rebase localhost:5000/app:1.4 --old-base python:3.12.4-slim \\
      --new-base python:3.12.5-slim --to localhost:5000/app:1.4-py3.12.5
  cib rebase oci:./layout:app --old-base oci:./layout:base-1 --new-base oci:./layout:base-2""")
@click.argument("ref", metavar="REF")
@click.option("--old-base", "old_base", metavar="OLD", required=True,
              help="The base REF was built on; its layers must be REF's first layers.")
@click.option("--new-base", "new_base", metavar="NEW", required=True,
              help="The base to put under REF's own layers (each platform of an index onto "
                   "NEW's image of that platform).")
@click.option("--to", "target", metavar="TARGET",
              help="Where the result goes; default REF's repository and tag (by digest only "
                   "when REF names a digest).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def rebase(ref: str, old_base: str, new_base: str, target: str | None, as_json: bool) -> None:
    """Swap the base layers under REF's own layers: OLD's layers out, NEW's in.

    REF keeps its config (Env, Cmd, labels...), takes NEW's platform fields, and gets
    rootfs.diff_ids and history rebuilt in step. Nothing is rebuilt: the layers' blobs are
    reused. Prints the result as TARGET@sha256:... on stdout.
    """
    from cib_core.rebase import rebase_image
    from cib_core.reference import Reference

    state = cli_state()
    verb = "pushed" if isinstance(parse_spec(target or ref), Reference) else "wrote"
    with progress_renderer(verb) as progress:
        result = rebase_image(ref, old_base, new_base, to=target, insecure=state.insecure,
                              pm=state.pm, progress=progress)
    if as_json:
        echo_json({"reference": result.reference, "digest": result.digest,
                   "mediaType": result.media_type, "tags": list(result.tags),
                   "platforms": list(result.platforms), "blobs": dict(result.blobs)})
    else:
        click.echo(result.reference)
