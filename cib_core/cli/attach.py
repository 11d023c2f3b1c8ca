"""`cib attach` and `cib referrers`: artifacts that name an image as their subject."""

from __future__ import annotations

import click

from cib_core.cli.common import cli_state, echo_json


def _media_type(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    from cib_core.errors import ConfigurationError
    from cib_core.referrers import check_media_type

    if value is None:
        return None
    try:
        return check_media_type(value, param.name.replace("_", " ") if param.name else "value")
    except ConfigurationError as exc:
        raise click.BadParameter(str(exc)) from None


def _annotations(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r}: write KEY=VALUE")
        out[key] = value
    return out


@click.command(epilog="""\b
Examples:
  cib attach localhost:5000/app:v1 --artifact-type application/spdx+json sbom.spdx.json
  cib attach localhost:5000/app:v1 --artifact-type application/vnd.example.report.v1 \\
      --media-type text/plain --annotation org.example.stage=test report.txt log.txt
  cib attach oci:./layout:v1 --artifact-type application/vnd.example.sig.v1 app.sig""")
@click.argument("ref", metavar="REF")
@click.argument("files", metavar="FILE...", nargs=-1, required=True)
@click.option("--artifact-type", required=True, metavar="TYPE", callback=_media_type,
              help="The artifact's type (a media type), as `cib referrers --artifact-type` filters it.")
@click.option("--media-type", default="application/octet-stream", show_default=True, metavar="TYPE",
              callback=_media_type, help="The media type of every FILE's layer.")
@click.option("--annotation", "annotations", metavar="KEY=VALUE", multiple=True,
              callback=_annotations, help="An annotation on the artifact manifest (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def attach(ref: str, files: tuple[str, ...], artifact_type: str, media_type: str,
           annotations: dict[str, str], as_json: bool) -> None:
    """Attach FILEs to the image REF as an OCI artifact whose subject is REF.

    Each FILE becomes one layer titled with its name. Where the registry has no referrers API,
    cib keeps the list of REF's referrers under the tag sha256-<hex>. Prints the artifact as
    REGISTRY/REPO@sha256:... on stdout.
    """
    from cib_core.referrers import attach as attach_artifact

    state = cli_state()
    result = attach_artifact(ref, list(files), artifact_type=artifact_type, media_type=media_type,
                             annotations=annotations, insecure=state.insecure, pm=state.pm)
    if as_json:
        echo_json({"reference": result.reference, "digest": result.digest,
                   "artifactType": artifact_type, "subject": result.subject,
                   "referrersTag": result.fallback_tag})
    else:
        click.echo(result.reference)


@click.command(epilog="""\b
Examples:
  cib referrers localhost:5000/app:v1
  cib referrers localhost:5000/app:v1 --artifact-type application/spdx+json --json""")
@click.argument("ref", metavar="REF")
@click.option("--artifact-type", metavar="TYPE", callback=_media_type,
              help="Only the referrers of this artifact type.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of descriptors.")
def referrers(ref: str, artifact_type: str | None, as_json: bool) -> None:
    """List the manifests whose subject is the image REF: digest, artifact type, annotations.

    Reads the registry's referrers API, else the sha256-<hex> tag; one referrer a line.
    """
    from cib_core.referrers import list_referrers

    state = cli_state()
    found = list_referrers(ref, artifact_type, insecure=state.insecure, pm=state.pm)
    if as_json:
        echo_json([r.to_descriptor() for r in found])
        return
    for r in found:
        notes = " ".join(f"{k}={v}" for k, v in sorted(r.annotations.items()))
        click.echo("\t".join(filter(None, (r.digest, r.artifact_type or "-", notes))))
