"""The `cib` command line: the click group `cli` and the console script `main`."""

from cib_core.cli.app import cli, main

__all__ = ["cli", "main"]
