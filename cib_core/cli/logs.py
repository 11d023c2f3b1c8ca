"""The command line's diagnostics: log records to stderr, one line each, redacted; the
verbosity options set the levels. Loaded when a command runs, not for ``--help``."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import click

from cib_core.cli.common import PROG, Secrets
from cib_core.redact import redact_text


class CliLogHandler(logging.Handler):
    """Writes records to the current ``sys.stderr`` (click's runner swaps it), redacted."""

    def __init__(self, verbosity: int, secrets: Secrets) -> None:
        super().__init__(logging.DEBUG)
        self.verbosity = verbosity
        self.secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        if self.verbosity == 1 and record.levelno < logging.INFO:
            # -v: one line per HTTP exchange (method, URL, status, time), not the headers.
            return record.name == "cib_core.remote.transport" and str(record.msg).startswith("<--")
        return True

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.exc_info and self.verbosity >= 2:
                message += "\n" + logging.Formatter().formatException(record.exc_info)
            if record.levelno >= logging.WARNING:
                line = f"{PROG}: {record.levelname.lower()}: {message}"
            else:
                line = f"{PROG}: [{record.name}] {message}"
            click.echo(redact_text(line, self.secrets.values), err=True)
        except Exception:  # noqa: BLE001 - logging must never break the command
            self.handleError(record)


@contextmanager
def cli_logging(verbosity: int, quiet: bool, secrets: Secrets) -> Iterator[None]:
    """Records of the run to stderr at the level ``-v``/``-q`` ask for; put back after."""
    root = logging.getLogger()
    transport_logger = logging.getLogger("cib_core.remote.transport")
    quiet_loggers = [logging.getLogger(n) for n in ("urllib3", "keyring")]
    saved = (root.level, transport_logger.level, [lg.level for lg in quiet_loggers])
    handler = CliLogHandler(verbosity, secrets)
    if quiet:
        root.setLevel(logging.ERROR)
    elif verbosity <= 0:
        root.setLevel(logging.WARNING)
    elif verbosity == 1:
        root.setLevel(logging.INFO)
        transport_logger.setLevel(logging.DEBUG)
    else:
        root.setLevel(logging.DEBUG)
    if verbosity < 3:
        for lg in quiet_loggers:
            lg.setLevel(logging.WARNING)
    root.addHandler(handler)
    try:
        with warnings.catch_warnings():
            # a host named with --insecure-registry is said once, at -v, by the transport;
            # urllib3's warning per host would break the one-line output
            import urllib3

            warnings.filterwarnings("ignore", category=urllib3.exceptions.InsecureRequestWarning)
            yield
    finally:
        root.removeHandler(handler)
        root.setLevel(saved[0])
        transport_logger.setLevel(saved[1])
        for lg, level in zip(quiet_loggers, saved[2], strict=True):
            lg.setLevel(level)
