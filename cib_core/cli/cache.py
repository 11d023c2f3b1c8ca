"""`cib cache ls` and `cib cache prune`: the layer-cache records in a cache repository."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

import click

from cib_core.cli.common import echo_json, registry_client

if TYPE_CHECKING:
    from cib_core.layer_records import LayerRecord


def _duration(ctx: click.Context, param: click.Parameter, value: str) -> timedelta:
    from cib_core.errors import ConfigurationError
    from cib_core.layer_records import parse_duration

    try:
        return parse_duration(value)
    except ConfigurationError as exc:
        raise click.BadParameter(str(exc)) from None


def _line(record: LayerRecord, now: datetime) -> str:
    from cib_core.cli.bars import format_size
    from cib_core.layer_records import format_age

    return "  ".join((record.key, record.layer_digest, format_size(record.layer_size),
                      format_age(record.age(now))))


@click.group()
def cache() -> None:
    """The layer-cache records kept in a cache repository (--cache-repo)."""


@cache.command(name="ls", epilog="""\b
Examples:
  cib cache ls localhost:5000/cib-cache
  cib cache ls localhost:5000/cib-cache --json | jq '.[].layer.size'""")
@click.argument("repo", metavar="REPO")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of records.")
def ls_(repo: str, as_json: bool) -> None:
    """List the records in the cache repository REPO, oldest first.

    One a line: the content key, the layer digest, its size and the record's age.
    """
    from cib_core.layer_records import list_records
    from cib_core.reference import parse_repository

    records = list_records(registry_client(parse_repository(repo)))
    now = datetime.now(timezone.utc)
    if as_json:
        echo_json([r.to_dict(now) for r in records])
        return
    for record in records:
        click.echo(_line(record, now))


@cache.command(epilog="""\b
Examples:
  cib cache prune localhost:5000/cib-cache --older-than 7d
  cib cache prune localhost:5000/cib-cache --older-than 12h --dry-run""")
@click.argument("repo", metavar="REPO")
@click.option("--older-than", required=True, metavar="DURATION", callback=_duration,
              help="Remove records older than this: a number and a unit, s m h d w (7d, 12h, 30m, 1d12h).")
@click.option("--dry-run", is_flag=True, help="Only list what would be removed.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of the removed records.")
def prune(repo: str, older_than: timedelta, dry_run: bool, as_json: bool) -> None:
    """Remove the records in REPO older than DURATION, listing each one removed.

    Deletes the record manifests (and so their tags); the layer blobs are left to the
    registry's garbage collection. The registry must allow deletes.
    """
    from cib_core.cli.common import cli_state
    from cib_core.layer_records import prune as prune_records
    from cib_core.reference import parse_repository

    now = datetime.now(timezone.utc)
    removed = prune_records(registry_client(parse_repository(repo)), older_than, now=now,
                            dry_run=dry_run)
    if as_json:
        echo_json([r.to_dict(now) for r in removed])
    else:
        for record in removed:
            click.echo(_line(record, now))
    if not cli_state().quiet:
        verb = "would remove" if dry_run else "removed"
        noun = "record" if len(removed) == 1 else "records"
        click.echo(f"{verb} {len(removed)} {noun}", err=True)
