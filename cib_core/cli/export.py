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
@click.option("--max-sparse-expansion", "max_sparse", metavar="SIZE", default="1G", show_default=True,
              help="How many bytes of holes the image's sparse files may add to the tarball "
                   "(K, M, G, T suffixes; 'unlimited' for no bound).")
def export(ref: str, out: str, platform: str | None, max_sparse: str) -> None:
    """Write REF's flattened filesystem (whiteouts applied) as a tarball to OUT, or - for stdout."""
    from cib_core.formats.flatten import export_filesystem

    limit = _size(max_sparse)

    if out == "-" and sys.stdout.isatty():
        raise click.UsageError("refusing to write a tarball to a terminal; redirect stdout or "
                               "name a file")
    if out != "-":
        from cib_core.fileio import check_output_path
        from cib_core.formats.flatten import EXPORT_WHAT

        check_output_path(out, what=EXPORT_WHAT)  # before the image is asked for
    _parsed, store, doc = load_image(ref)
    image, _digest = select_image(store, doc, platform, ref)
    layers = [_opener(store, layer.digest) for layer in image.layers]
    names = [layer.digest for layer in image.layers]
    if out == "-":
        stdout = stdout_binary()
        export_filesystem(layers, stdout, names=names, max_sparse_expansion=limit)
        stdout.flush()
        return
    export_filesystem(layers, out, mode=0o666 & ~_umask(), names=names, max_sparse_expansion=limit)


_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def _size(text: str) -> int | None:
    """``1G`` -> 1073741824; ``unlimited`` -> None."""
    value = text.strip().upper().removesuffix("B").removesuffix("I")
    if value == "UNLIMITED":
        return None
    unit = value[-1:] if value[-1:] in _UNITS else ""
    number = value[:len(value) - len(unit)]
    if not number.isdigit():
        raise click.BadParameter(f"{text!r} is not a size like 512M, 2G or unlimited",
                                 param_hint="--max-sparse-expansion")
    return int(number) * _UNITS[unit]


def _opener(store: BlobStore, digest: str) -> Callable[[], BinaryIO]:
    return lambda: store.open_blob(digest)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


