"""`cib validate`: every manifest and blob of an image present and as described."""

from __future__ import annotations

import click

from cib_core.cli.common import PROG, cli_state, echo_json


@click.command(epilog="""\b
Examples:
  cib validate localhost:5000/app:1.4
  cib validate oci:./layout:v1
  cib validate localhost:5000/app:1.4 --json | jq '.faults[]'""")
@click.argument("ref", metavar="REF")
@click.option("--json", "as_json", is_flag=True,
              help="Print {valid, digest, faults, checked} as JSON (the exit status is the same).")
def validate(ref: str, as_json: bool) -> None:
    """Check that every manifest and blob of REF is present and right, for every platform.

    Reads every blob: digests and sizes against the descriptors, each layer decompressed and
    hashed against the config's diff_ids, media types against the manifest's flavour. Prints
    each fault on stdout, one a line, and exits 1 when there is any; prints a short summary
    and exits 0 when there is none.
    """
    from cib_core.cli.bars import format_size
    from cib_core.verify import check_image

    state = cli_state()
    result = check_image(ref, insecure=state.insecure, pm=state.pm)
    if as_json:
        echo_json({"reference": result.reference, "digest": result.digest,
                   "mediaType": result.media_type, "valid": result.ok,
                   "faults": [{"where": f.where, "problem": f.problem} for f in result.faults],
                   "checked": {"platforms": list(result.platforms), "manifests": result.manifests,
                               "configs": result.configs, "layers": result.layers,
                               "bytes": result.bytes_read,
                               "skipped": list(result.skipped)}})
    else:
        for fault in result.faults:
            click.echo(str(fault))
    if not result.ok:
        count = len(result.faults)
        click.echo(f"{PROG}: error: {ref} is not valid: {count} fault{'' if count == 1 else 's'}",
                   err=True)
        raise click.exceptions.Exit(1)
    if not as_json:
        where = f" ({', '.join(result.platforms)})" if result.platforms else ""
        skipped = (f"; {len(result.skipped)} non-distributable layer(s) not in the store, not read"
                   if result.skipped else "")
        click.echo(f"{ref}: valid{where}: {result.manifests} manifest"
                   f"{'' if result.manifests == 1 else 's'}, {result.configs} config"
                   f"{'' if result.configs == 1 else 's'}, {result.layers} layer"
                   f"{'' if result.layers == 1 else 's'}, {format_size(result.bytes_read)} read"
                   f"{skipped}")
