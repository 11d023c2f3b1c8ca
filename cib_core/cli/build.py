"""`cib build`: the Image flow from the command line."""

from __future__ import annotations

import contextlib
import json
import logging
import shlex
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import click

from cib_core.cli.common import (
    cli_state,
    echo_json,
    parse_spec,
    progress_renderer,
)

if TYPE_CHECKING:
    from cib_core.plan import BuildPlan

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


def _checked(values: Sequence[str], option: str, problem_of: Callable[[str], str | None],
             *, quote: bool = True) -> list[str]:
    """Option values checked one by one, as the library checks them, named by the option."""
    for value in values:
        problem = problem_of(value)
        if problem:
            shown = f"{value!r} " if quote else ""
            raise click.BadParameter(f"{shown}{problem}", param_hint=option)
    return list(values)


def _key_values(values: Sequence[str], option: str) -> list[tuple[str, str]]:
    pairs = []
    for value in values:
        key, sep, val = value.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{value!r} is not KEY=VALUE", param_hint=option)
        pairs.append((key, val))
    return pairs


def plan_lines(plan: BuildPlan, reference: str) -> list[str]:
    """A dry run's plan as text: each platform's layers and sizes, the blobs and manifests
    the build would send, and the reference it would print."""
    from cib_core.cli.bars import format_size

    blobs = {blob.digest: blob for blob in plan.blobs}
    verb = "sent to" if plan.target_kind == "registry" else "written to"
    lines = [f"dry run: nothing was {verb} {plan.target}"]

    def sending(digest: str) -> str:
        blob = blobs[digest]
        if blob.action == "mount":
            return f"to mount from {blob.source}"
        if blob.action == "copy":
            return f"to copy from {blob.source}"
        return f"to {blob.action}"

    def size(value: int | None) -> str:
        return format_size(value) if value is not None else "size unknown"

    for image in plan.images:
        lines.append(f"{image.platform}: manifest {image.manifest_digest}, config "
                     f"{image.config_digest} ({size(image.config_size)})")
        for layer in image.layers:
            origin = (f"new ({layer.created_by})" if layer.new and layer.created_by
                      else "new" if layer.new else "base")
            status = "in the target" if layer.present else sending(layer.digest)
            lines.append(f"  layer {layer.digest}  {size(layer.size)}  {origin}, {status}")
    lines.append(f"blobs to send: {len(plan.blobs)} ({format_size(plan.bytes_to_send)})")
    for blob in plan.blobs:
        source = f" from {blob.source}" if blob.source else ""
        lines.append(f"  {blob.action:<6} {blob.digest}  {size(blob.size)}  {blob.kind}{source}")
    lines.append(f"manifests to put: {len(plan.manifests)}")
    for manifest in plan.manifests:
        tag = f"  tag {manifest.tag}" if manifest.tag else ""
        lines.append(f"  {manifest.digest}  {manifest.media_type}{tag}")
    lines.append(f"would save: {reference}")
    return lines


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
  cib build --from python:3.12 --to localhost:5000/py --platform linux/arm64 --add app.py:/app.py
  # what would be sent, without sending it
  cib build --from alpine:3.20 --to localhost:5000/app:v1 --add ./app:/app --port 8080 --dry-run
  # a Python project with its lock, for every platform of the base
  cib build --from python:3.12-slim --to localhost:5000/app --python-app . --find-links ./wheels
  # which wheels each platform would get, without building anything
  cib build --from python:3.12-slim --to localhost:5000/app --python-app . --dry-run""")
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
@click.option("--unset-env", "unset_env", metavar="NAME", multiple=True,
              help="Remove the environment variable NAME the base sets.")
@click.option("--label", "labels", metavar="K=V", multiple=True, help="Set a label.")
@click.option("--annotation", "annotations", metavar="K=V", multiple=True,
              help="Set an annotation on the manifest (and on the index of a multi-platform build).")
@click.option("--port", "ports", metavar="P", multiple=True,
              help="Expose a port: 8080 (tcp), 53/udp or 9/sctp.")
@click.option("--volume", "volumes", metavar="V", multiple=True,
              help="Declare a volume: an absolute path in the image.")
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
@click.option("--python-app", "python_app", metavar="DIR",
              help="Package the Python project in DIR (pyproject.toml and a lock) into layers "
                   "and a virtual environment at /opt/venv, for every platform of the build.")
@click.option("--lock", metavar="FILE",
              help="The Python app's lock: pylock.toml, uv.lock or a requirements.txt with "
                   "--hash (default: the first of those in DIR).")
@click.option("--index-url", "index_url", metavar="URL",
              help="The package index (PEP 503) of the Python app's wheels; default pip's "
                   "configuration.")
@click.option("--find-links", "find_links", metavar="DIR", multiple=True,
              help="A directory (or page) of wheels for the Python app; repeatable.")
@click.option("--python-target", "python_target", metavar="K=V", multiple=True,
              help="Override what is read from the base about its Python: interpreter=PATH, "
                   "version=3.X.Y, abi=cp3X, libc='glibc 2.36'.")
@click.option("--cache-repo", "cache_repo", metavar="REPO", envvar="CIB_CACHE_REPO",
              help="A registry repository that keeps a record per layer of its inputs' key and the "
                   "layer made from them, shared by every machine that builds (default "
                   "$CIB_CACHE_REPO); a hit is neither built nor uploaded.")
@click.option("--verify-cache", "verify_cache", is_flag=True,
              help="Build every layer found in a cache again (hashing it, not uploading it) and "
                   "stop when it differs from the cached one.")
@click.option("--dry-run", "dry_run", is_flag=True,
              help="Build everything and print the plan (layers and sizes, blobs to send); send "
                   "and write nothing. With --python-app: the wheels each platform would get.")
@click.option("--json", "as_json", is_flag=True, help="Print the result (or the plan) as JSON.")
def build(base: str, target: str, adds: tuple[str, ...], cmd: str | None, entrypoint: str | None,
          workdir: str | None, env: tuple[str, ...], unset_env: tuple[str, ...],
          labels: tuple[str, ...], annotations: tuple[str, ...], ports: tuple[str, ...],
          volumes: tuple[str, ...], user: str | None, tags: tuple[str, ...], platform: str | None,
          ignores: tuple[str, ...], ignore_files: tuple[str, ...], no_follow_symlinks: bool,
          python_app: str | None, lock: str | None, index_url: str | None,
          find_links: tuple[str, ...], python_target: tuple[str, ...], cache_repo: str | None,
          verify_cache: bool, dry_run: bool, as_json: bool) -> None:
    """Build an image: BASE plus new files and config, saved to TARGET.

    Prints the saved image as REGISTRY/REPO@sha256:... (or oci:PATH@sha256:...) on stdout,
    and nothing else, so scripts can capture it. With --dry-run it prints the plan instead.
    """
    from cib_core import image_config
    from cib_core.errors import LayerSourceError
    from cib_core.image import Image
    from cib_core.reference import Reference, check_target_tag

    mapping = parse_add(adds)
    cmd_list = parse_command(cmd, "--cmd")
    entrypoint_list = parse_command(entrypoint, "--entrypoint")
    env_pairs = _key_values(env, "--env")
    label_pairs = _key_values(labels, "--label")
    annotation_pairs = _key_values(annotations, "--annotation")
    port_list = _checked(ports, "--port", image_config.port_problem)
    volume_list = _checked(volumes, "--volume", image_config.volume_problem)
    # what follows an '=' in a mistaken NAME=value may be secret: the value is never shown
    unset_list = _checked(unset_env, "--unset-env", image_config.env_name_problem, quote=False)
    both = image_config.set_and_unset([f"{k}={v}" for k, v in env_pairs], unset_list)
    if both:
        raise click.BadParameter(f"{', '.join(both)} is also set with --env; keep one of the two",
                                 param_hint="--unset-env")
    if (ignores or ignore_files) and not mapping:
        log.warning("--ignore and --ignore-file only apply to --add directories; there are none")
    app_options = _python_app_options(python_app, lock, index_url, find_links, python_target)
    state = cli_state()
    target_ref = parse_spec(target)
    for tag in tags:
        # before the base is read or a layer written: a bad tag leaves no half-made target
        check_target_tag(target_ref, tag)
    verb = "pushed" if isinstance(target_ref, Reference) else "wrote"
    if dry_run and python_app is not None:
        image = Image(base, target, platform=platform, insecure=state.insecure, pm=state.pm)
        _show_app_plan(image, python_app, app_options, entrypoint_list, as_json)
        return
    with contextlib.nullcontext(None) if dry_run else progress_renderer(verb) as progress:
        image = Image(base, target, platform=platform, insecure=state.insecure, pm=state.pm,
                      progress=progress, dry_run=dry_run,
                      cache_repo=cache_repo or "", verify_cache=verify_cache)
        if python_app is not None:
            # first: the packager sets the entrypoint, environment and working directory the
            # app needs, and what the options below name is set over them
            _add_python_app(image, python_app, app_options, entrypoint_list)
        image.env = [f"{k}={v}" for k, v in env_pairs]
        image.unset_env = unset_list
        image.labels = dict(label_pairs)
        image.annotations = dict(annotation_pairs)
        image.exposed_ports = port_list
        image.volumes = volume_list
        if cmd_list is not None:
            image.cmd = cmd_list
        if entrypoint_list is not None and python_app is None:
            # with --python-app the packager takes it (a console script's name becomes its path)
            image.entrypoint = entrypoint_list
        if workdir is not None:
            image.working_dir = workdir
        if user is not None:
            image.user = user
        if mapping:
            try:
                image.add_files(mapping, ignores=ignores, ignore_files=ignore_files,
                                follow_symlinks=not no_follow_symlinks)
            except LayerSourceError as exc:
                flag = _BUILD_FLAGS.get(exc.option or "")
                if flag is None:
                    raise
                raise LayerSourceError(exc.path, exc.reason, option=flag) from None
        result = image.save(list(tags) if tags else None)
    if result.plan is not None:
        if as_json:
            echo_json({**result.plan.to_dict(), "reference": result.reference,
                       "tags": list(result.tags)})
        else:
            click.echo("\n".join(plan_lines(result.plan, result.reference)))
        return
    if as_json:
        echo_json({"reference": result.reference, "digest": result.digest,
                    "mediaType": result.media_type, "tags": list(result.tags)})
    else:
        click.echo(result.reference)




def _python_app_options(python_app: str | None, lock: str | None, index_url: str | None,
                        find_links: Sequence[str], python_target: Sequence[str]) -> dict[str, Any]:
    given = [flag for flag, value in (("--lock", lock), ("--index-url", index_url),
                                      ("--find-links", find_links),
                                      ("--python-target", python_target)) if value]
    if python_app is None:
        if given:
            raise click.UsageError(f"{', '.join(given)} only apply to --python-app")
        return {}
    options: dict[str, Any] = {"lock": lock, "index_url": index_url, "find_links": list(find_links)}
    if python_target:
        options["python_target"] = dict(_key_values(python_target, "--python-target"))
    return options


def _add_python_app(image: Any, project: str, options: dict[str, Any],
                    entrypoint: list[str] | None) -> None:
    from cib_core.errors import PackagingError

    try:
        image.add_python_app(project, entrypoint=entrypoint, **options)
    except PackagingError as exc:
        if exc.output:  # a failed project build: all it printed, then the one error line
            click.echo(exc.output.rstrip(), err=True)
        raise


def _show_app_plan(image: Any, project: str, options: dict[str, Any],
                   entrypoint: list[str] | None, as_json: bool) -> None:
    settings = {"python_target": options.pop("python_target")} if "python_target" in options else {}
    plan = image.plan_app(project, kind="python", entrypoint=entrypoint, settings=settings, **options)
    if as_json:
        echo_json([{**dict(app.details), "entrypoint": list(app.entrypoint or []) or None}
                   for _platform, app in plan])
        return
    for _platform, app in plan:
        for line in app.summary:
            click.echo(line)
        if app.entrypoint:
            click.echo(f"  entrypoint: {json.dumps(list(app.entrypoint))}")
