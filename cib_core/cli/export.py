"""`cib export`: an image's flattened filesystem as a tarball."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, BinaryIO

import click

if TYPE_CHECKING:
    from cib_core.stores import BlobStore

from cib_core.cli.common import (
    load_image,
    select_image,
    stdout_binary,
)

log = logging.getLogger(__name__)

@click.command(epilog="""\b
Examples:
  cib export localhost:5000/app:v1 rootfs.tar
  cib export oci:./out:v1 - | tar -t
  cib export python:3.12 - --platform linux/arm64 | tar -x -C rootfs""")
@click.argument("ref", metavar="REF")
@click.argument("out", metavar="OUT.tar|-")
@click.option("--platform", metavar="P",
              help="For a multi-platform image: which one (default: the only one, else this machine's).")
def export(ref: str, out: str, platform: str | None) -> None:
    """Write REF's flattened filesystem (whiteouts applied) as a tarball to OUT, or - for stdout."""
    from cib_core.formats.flatten import export_filesystem

    if out == "-" and sys.stdout.isatty():
        raise click.UsageError("refusing to write a tarball to a terminal; redirect stdout or "
                               "name a file")
    _parsed, store, doc = load_image(ref)
    image, _digest = select_image(store, doc, platform, ref)
    layers = [_opener(store, layer.digest) for layer in image.layers]
    if out == "-":
        stdout = stdout_binary()
        export_filesystem(layers, stdout)
        stdout.flush()
        return
    export_filesystem(layers, out, mode=0o666 & ~_umask())


def _opener(store: BlobStore, digest: str) -> Callable[[], BinaryIO]:
    return lambda: store.open_blob(digest)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


