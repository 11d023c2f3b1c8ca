"""The `cib` command line."""

from cib_core.cli.app import main

__all__ = ["main"]
