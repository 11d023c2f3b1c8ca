"""`cib build`: the Image flow from the command line."""

from __future__ import annotations

import json
import logging
import shlex
from collections.abc import Sequence

import click

from cib_core.cli.common import (
    cli_state,
    echo_json,
    parse_spec,
    progress_renderer,
)

log = logging.getLogger(__name__)

def parse_command(value: str | None, option: str) -> list[str] | None:
    """``--cmd``/``--entrypoint``: a JSON array of strings, or a shell-style string."""
    if value is None:
        return None
    text = value.strip()
    if text.startswith("["):
        try:
            parsed = json.loads(text)
        except ValueError as exc:
            raise click.BadParameter(f"{value!r} starts like a JSON array but is not valid JSON "
                                     f"({exc})", param_hint=option) from None
        if not isinstance(parsed, list) or not all(isinstance(x, str) for x in parsed):
            raise click.BadParameter(f"{value!r} must be a JSON array of strings", param_hint=option)
        return parsed
    try:
        return shlex.split(text)
    except ValueError as exc:
        raise click.BadParameter(f"{value!r} is not a valid shell-style command ({exc})",
                                 param_hint=option) from None


def parse_add(values: Sequence[str]) -> dict[str, str]:
    """``--add SRC:DEST`` values as ``{DEST: SRC}``, split at the last colon."""
    mapping: dict[str, str] = {}
    for value in values:
        src, sep, dest = value.rpartition(":")
        if not sep or not src or not dest:
            raise click.BadParameter(f"{value!r} is not SRC:DEST (for example ./app:/app)",
                                     param_hint="--add")
        if not dest.startswith("/"):
            raise click.BadParameter(
                f"{value!r}: DEST {dest!r} must be an absolute path in the image (SRC:DEST is "
                "split at the last colon)", param_hint="--add")
        if dest in mapping:
            raise click.BadParameter(f"two --add options name the destination {dest!r}",
                                     param_hint="--add")
        mapping[dest] = src
    return mapping


# add_files options that a layer source error may name, and the build flag that sets each
_BUILD_FLAGS = {"follow_symlinks=False": "--no-follow-symlinks"}


def _key_values(values: Sequence[str], option: str) -> list[tuple[str, str]]:
    pairs = []
    for value in values:
        key, sep, val = value.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{value!r} is not KEY=VALUE", param_hint=option)
        pairs.append((key, val))
    return pairs


@click.command(epilog="""\b
Examples:
  # a new image from nothing, written to an OCI layout (no registry needed)
  cib build --from scratch --to oci:./out:v1 --add ./site:/srv --cmd '["/srv/run"]'
  # add a layer to a base and push it; prints REGISTRY/REPO@sha256:...
  ref=$(cib build --from alpine:3.20 --to localhost:5000/app:v1 \\
          --add ./app:/app --workdir /app --cmd 'python3 main.py' --env MODE=prod)
  # every --add goes into one layer; a plugin's source is SRC with its prefix
  cib build --from localhost:5000/base --to localhost:5000/app \\
          --add ./bin:/usr/local/bin --add tar:rootfs.tar.gz:/ --tag v2 --tag latest
  # one platform of a multi-platform base
  cib build --from python:3.12 --to localhost:5000/py --platform linux/arm64 --add app.py:/app.py""")
@click.option("--from", "base", required=True, metavar="BASE",
              help="Base image: a reference, oci:PATH[:TAG], docker-archive:PATH or scratch.")
@click.option("--to", "target", required=True, metavar="TARGET",
              help="Where to save: a registry reference, oci:PATH[:TAG] or docker-archive:PATH[:NAME:TAG].")
@click.option("--add", "adds", metavar="SRC:DEST", multiple=True,
              help="Add SRC (a file, a directory's contents, or a plugin source like tar:FILE) at "
                   "DEST; split at the last colon. All --add options make one layer.")
@click.option("--cmd", metavar="CMD", help="The command: a JSON array or a shell-style string.")
@click.option("--entrypoint", metavar="CMD", help="The entrypoint: a JSON array or a shell-style string.")
@click.option("--workdir", metavar="DIR", help="The working directory.")
@click.option("--env", "env", metavar="K=V", multiple=True,
              help="Set an environment variable (merged over the base's by name).")
@click.option("--label", "labels", metavar="K=V", multiple=True, help="Set a label.")
@click.option("--user", metavar="U", help="The user (name, uid or uid:gid).")
@click.option("--tag", "tags", metavar="T", multiple=True,
              help="Tag to push (repeatable); default the target's own tag or latest.")
@click.option("--platform", metavar="P|all",
              help="Build one platform of a multi-platform base (linux/arm64); default all.")
@click.option("--ignore", "ignores", metavar="GLOB", multiple=True,
              help="gitignore-style pattern of files to leave out of local directories.")
@click.option("--ignore-file", "ignore_files", metavar="NAME", multiple=True,
              help="Read more patterns from NAME at each local directory's root (like .dockerignore).")
@click.option("--no-follow-symlinks", "no_follow_symlinks", is_flag=True,
              help="Keep symlinks inside --add directories as links; by default each is replaced by "
                   "what it points to.")
@click.option("--cache-repo", "cache_repo", metavar="REPO", envvar="CIB_CACHE_REPO",
              help="A registry repository that keeps a record per layer of its inputs' key and the "
                   "layer made from them, shared by every machine that builds (default "
                   "$CIB_CACHE_REPO); a hit is neither built nor uploaded.")
@click.option("--verify-cache", "verify_cache", is_flag=True,
              help="Build every layer found in a cache again (hashing it, not uploading it) and "
                   "stop when it differs from the cached one.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def build(base: str, target: str, adds: tuple[str, ...], cmd: str | None, entrypoint: str | None,
          workdir: str | None, env: tuple[str, ...], labels: tuple[str, ...], user: str | None,
          tags: tuple[str, ...], platform: str | None, ignores: tuple[str, ...],
          ignore_files: tuple[str, ...], no_follow_symlinks: bool, cache_repo: str | None,
          verify_cache: bool, as_json: bool) -> None:
    """Build an image: BASE plus new files and config, saved to TARGET.

    Prints the saved image as REGISTRY/REPO@sha256:... (or oci:PATH@sha256:...) on stdout,
    and nothing else, so scripts can capture it.
    """
    from cib_core.errors import LayerSourceError
    from cib_core.image import Image
    from cib_core.reference import Reference

    mapping = parse_add(adds)
    cmd_list = parse_command(cmd, "--cmd")
    entrypoint_list = parse_command(entrypoint, "--entrypoint")
    env_pairs = _key_values(env, "--env")
    label_pairs = _key_values(labels, "--label")
    if (ignores or ignore_files) and not mapping:
        log.warning("--ignore and --ignore-file only apply to --add directories; there are none")
    state = cli_state()
    target_ref = parse_spec(target)
    verb = "pushed" if isinstance(target_ref, Reference) else "wrote"
    with progress_renderer(verb) as progress:
        image = Image(base, target, platform=platform, insecure=state.insecure, pm=state.pm,
                      progress=progress, cache_repo=cache_repo or "",
                      verify_cache=verify_cache)
        if mapping:
            try:
                image.add_files(mapping, ignores=ignores, ignore_files=ignore_files,
                                follow_symlinks=not no_follow_symlinks)
            except LayerSourceError as exc:
                flag = _BUILD_FLAGS.get(exc.option or "")
                if flag is None:
                    raise
                raise LayerSourceError(exc.path, exc.reason, option=flag) from None
        if cmd_list is not None:
            image.cmd = cmd_list
        if entrypoint_list is not None:
            image.entrypoint = entrypoint_list
        if workdir is not None:
            image.working_dir = workdir
        if user is not None:
            image.user = user
        image.env = [f"{k}={v}" for k, v in env_pairs]
        image.labels = dict(label_pairs)
        result = image.save(list(tags) if tags else None)
    if as_json:
        echo_json({"reference": result.reference, "digest": result.digest,
                    "mediaType": result.media_type, "tags": list(result.tags)})
    else:
        click.echo(result.reference)


