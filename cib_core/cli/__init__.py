"""The `cib` command line: the console script `main` (the click group is `cib_core.cli.app.cli`)."""

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
    if args in (["--help"], ["-h"]):
        # The help of the group, as click rendered it last time for this terminal width, when
        # no plugin adds commands and the command line's module has not changed since.
        text = _kept_help()
        if text is not None:
            sys.stdout.write(text + "\n")
            return 0
    from cib_core.cli.app import main as run

    return run(args)


def help_key() -> str | None:
    """What ``cib --help`` depends on besides the plugins: cib's version, the module that
    defines the group, its options and the table of commands (its time and size), and the
    terminal width click formats for; ``None`` when that module cannot be found."""
    import os

    from cib_core import __version__

    try:
        st = os.stat(os.path.join(os.path.dirname(__file__), "app.py"))
    except OSError:
        return None
    return repr((__version__, st.st_mtime_ns, st.st_size, _columns()))


def _columns() -> int:
    """``shutil.get_terminal_size().columns``, which click formats its help for, without
    importing shutil (and the compression modules it brings) at start-up."""
    import os

    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns > 0:
        return columns
    try:
        columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
    except (AttributeError, ValueError, OSError):
        columns = 0
    return columns or 80


def _kept_help() -> str | None:
    from cib_core.entrypoints import autoload_enabled, command_providers, kept_help

    key = help_key()
    if key is None or command_providers((), autoload_enabled()) != []:
        return None
    return kept_help(key)


__all__ = ["help_key", "main"]
