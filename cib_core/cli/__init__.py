"""The `cib` command line: the click group `cli` and the console script `main`."""

from __future__ import annotations

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """The ``cib`` console script."""
    args = sys.argv[1:] if argv is None else list(argv)
    if args == ["--version"]:
        # The one command that needs nothing is answered before click is imported, which is
        # most of a command's start-up; the answer is the one click's version option gives.
        from cib_core import __version__

        sys.stdout.write(f"cib {__version__}\n")
        return 0
    from cib_core.cli.app import main as run

    return run(args)


__all__ = ["main"]
