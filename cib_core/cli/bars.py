"""The command line's progress bars: a ``cib_core.callbacks.Progress`` callback that draws.

:class:`ProgressRenderer` is the command line's callback: on a terminal it draws one labelled
tqdm bar per blob or step and a total bar with transfer rates; it prints one summary line at
the end (``pushed 3 blobs, 205.1 MB in 1.8 s``), and elsewhere only that line.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

from cib_core.callbacks import LABEL_WIDTH, label_for

_UNITS = ("B", "kB", "MB", "GB", "TB")


def format_size(size: float) -> str:
    """A byte count the way transfer tools print it: ``512 B``, ``1.5 kB``, ``205.1 MB``."""
    if size < 1000:
        return f"{int(size)} B"
    value = float(size)
    for unit in _UNITS[1:]:
        value /= 1000
        if value < 1000 or unit == _UNITS[-1]:
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")  # pragma: no cover


def format_duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(int(round(seconds)), 60)
    return f"{minutes} min {rest} s"


@dataclass(frozen=True)
class TransferSummary:
    """What a renderer saw: how many blobs moved, how many bytes, in how long."""

    blobs: int
    bytes: int
    seconds: float

    def line(self, verb: str) -> str:
        noun = "blob" if self.blobs == 1 else "blobs"
        return (f"{verb} {self.blobs} {noun}, {format_size(self.bytes)} "
                f"in {format_duration(self.seconds)}")


class ProgressRenderer:
    """A thread-safe ``Progress`` callback for the command line.

    ``verb`` names what happened to the blobs in the summary (``pushed``, ``copied``,
    ``wrote``). ``stream`` is where to draw (default ``sys.stderr`` at construction time).
    ``bars`` forces bars on or off; by default they are drawn when ``stream`` is a terminal.
    ``quiet`` suppresses everything. Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, verb: str = "pushed", *, stream: TextIO | None = None,
                 bars: bool | None = None, quiet: bool = False,
                 clock: Callable[[], float] = time.monotonic) -> None:
        import sys

        self.verb = verb
        self.stream: TextIO = stream if stream is not None else sys.stderr
        self.quiet = quiet
        if bars is None:
            isatty = getattr(self.stream, "isatty", None)
            bars = bool(isatty and isatty())
        self.bars = bars and not quiet
        if self.bars:
            # the callback draws from the threads that move blobs, and no import may happen
            # there: tqdm, and what its first bar imports to make its write lock, load here
            from tqdm import tqdm

            tqdm.get_lock()
        self._clock = clock
        self._started = clock()
        self._lock = threading.Lock()
        self._done: dict[str, int] = {}
        self._totals: dict[str, int | None] = {}
        self._blob_bars: dict[str, Any] = {}
        self._step_bars: dict[str, Any] = {}
        self._total_bar: Any = None
        self._closed = False
        self._summary: TransferSummary | None = None

    # -- the callback ------------------------------------------------------------------------
    def __call__(self, digest: str, done: int, total: int | None) -> None:
        with self._lock:
            if self._closed:
                return
            previous = self._done.get(digest, 0)
            self._done[digest] = done
            if total is not None or digest not in self._totals:
                self._totals[digest] = total
            if self.bars:
                self._draw(digest, done - previous, done, total)

    def _draw(self, digest: str, delta: int, done: int, total: int | None) -> None:
        from tqdm import tqdm

        if self._total_bar is None:
            self._total_bar = tqdm(total=None, desc=f"{'total':<{LABEL_WIDTH}}", unit="B",
                                   unit_scale=True, file=self.stream, position=0, leave=True,
                                   dynamic_ncols=True, mininterval=0.2)
        bar = self._blob_bars.get(digest)
        if bar is None:
            bar = self._bar(digest, total)
            self._blob_bars[digest] = bar
        elif total is not None and bar.total != total:
            bar.total = total
        if delta < 0:  # an upload restarted from an earlier offset
            bar.reset(total=total)
            bar.update(done)
        else:
            bar.update(delta)
        known = [t for t in self._totals.values() if t is not None]
        grand_total = sum(known) if len(known) == len(self._totals) else None
        if self._total_bar.total != grand_total:
            self._total_bar.total = grand_total
        self._total_bar.update(delta)
        if total is not None and done >= total:
            bar.close()
            del self._blob_bars[digest]

    def _bar(self, name: str, total: int | None) -> Any:
        from tqdm import tqdm

        return tqdm(total=total, desc=f"{label_for(name):<{LABEL_WIDTH}}", unit="B",
                    unit_scale=True, file=self.stream, leave=False, dynamic_ncols=True,
                    mininterval=0.2)

    def step(self, label: str, done: int, total: int | None) -> None:
        """Work that moves no blob (writing a docker-archive): a bar of its own on a terminal,
        not counted in the summary."""
        with self._lock:
            if self._closed or not self.bars:
                return
            bar = self._step_bars.get(label)
            if bar is None:
                bar = self._step_bars[label] = self._bar(label, total)
            elif total is not None and bar.total != total:
                bar.total = total
            bar.update(done - bar.n)
            if total is not None and done >= total:
                bar.close()
                del self._step_bars[label]

    # -- the end -----------------------------------------------------------------------------
    def summary(self) -> TransferSummary:
        with self._lock:
            if self._summary is not None:
                return self._summary
            return TransferSummary(blobs=len(self._done), bytes=sum(self._done.values()),
                                   seconds=self._clock() - self._started)

    def close(self, *, success: bool = True) -> TransferSummary:
        """Remove the bars and, unless quiet or failed, print the summary line once."""
        with self._lock:
            if self._closed:
                assert self._summary is not None
                return self._summary
            self._closed = True
            for bar in [*self._blob_bars.values(), *self._step_bars.values()]:
                bar.close()
            self._blob_bars.clear()
            self._step_bars.clear()
            if self._total_bar is not None:
                self._total_bar.close()
                self._total_bar = None
            self._summary = TransferSummary(blobs=len(self._done), bytes=sum(self._done.values()),
                                            seconds=self._clock() - self._started)
        if success and not self.quiet and self._summary.blobs:
            self.stream.write(self._summary.line(self.verb) + "\n")
            self.stream.flush()
        return self._summary

    def __enter__(self) -> ProgressRenderer:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.close(success=exc_type is None)
