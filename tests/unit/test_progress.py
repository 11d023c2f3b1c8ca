"""The progress renderer: bars on a terminal, one summary line elsewhere, safe across threads."""

from __future__ import annotations

import io
import threading

import pytest

from cib_core.cli.bars import ProgressRenderer, TransferSummary, format_duration, format_size


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def feed(renderer: ProgressRenderer, blobs: dict[str, int], step: int = 1000) -> None:
    """Report every blob in steps, each blob from its own thread."""

    def one(digest: str, size: int) -> None:
        done = 0
        while done < size:
            done = min(size, done + step)
            renderer(digest, done, size)

    threads = [threading.Thread(target=one, args=item) for item in blobs.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


@pytest.mark.parametrize(("size", "text"), [
    (0, "0 B"), (999, "999 B"), (1000, "1.0 kB"), (1536, "1.5 kB"), (205_100_000, "205.1 MB"),
    (3_200_000_000, "3.2 GB"),
])
def test_format_size(size, text):
    assert format_size(size) == text


def test_format_duration():
    assert format_duration(1.84) == "1.8 s"
    assert format_duration(125) == "2 min 5 s"


def test_summary_line_when_not_a_terminal():
    out = io.StringIO()
    clock = FakeClock()
    blobs = {f"sha256:{i:064x}": size for i, size in enumerate((100_000_000, 100_000_000, 5_100_000))}
    with ProgressRenderer("pushed", stream=out, clock=clock) as renderer:
        feed(renderer, blobs, step=1_000_000)
        assert out.getvalue() == ""  # silent during the transfer
        clock.now += 1.8
    assert out.getvalue() == "pushed 3 blobs, 205.1 MB in 1.8 s\n"
    assert renderer.summary() == TransferSummary(blobs=3, bytes=205_100_000, seconds=pytest.approx(1.8))


def test_quiet_failed_or_idle_prints_nothing():
    out = io.StringIO()
    with ProgressRenderer(stream=out, quiet=True) as quiet:
        quiet("sha256:" + "a" * 64, 10, 10)
    with pytest.raises(RuntimeError), ProgressRenderer(stream=out) as failing:
        failing("sha256:" + "b" * 64, 10, 10)
        raise RuntimeError("push failed")
    with ProgressRenderer(stream=out):
        pass
    assert out.getvalue() == ""
    assert quiet.summary().blobs == 1


def test_bars_on_a_terminal_from_many_threads():
    term = Terminal()
    blobs = {f"sha256:{i:064x}": 50_000 + i * 1000 for i in range(6)}
    renderer = ProgressRenderer("copied", stream=term)
    assert renderer.bars
    feed(renderer, blobs, step=700)
    renderer("sha256:" + "f" * 64, 4096, None)  # a blob whose size is unknown
    summary = renderer.close()
    drawn = term.getvalue()
    assert "total" in drawn and "B/s" in drawn
    assert "0" * 12 in drawn  # a blob's bar is labelled with its short digest
    assert summary.blobs == 7
    assert summary.bytes == sum(blobs.values()) + 4096
    assert drawn.rstrip().endswith(summary.line("copied"))
    renderer("sha256:" + "e" * 64, 1, 1)  # after close: ignored, no error
    assert renderer.close() == summary


def test_a_restarted_upload_counts_once():
    out = io.StringIO()
    renderer = ProgressRenderer(stream=out, bars=False)
    digest = "sha256:" + "c" * 64
    renderer(digest, 600, 1000)
    renderer(digest, 200, 1000)  # resumed from the registry's Range
    renderer(digest, 1000, 1000)
    assert renderer.close().bytes == 1000


def test_restart_on_a_terminal_resets_the_bar():
    term = Terminal()
    renderer = ProgressRenderer(stream=term)
    digest = "sha256:" + "d" * 64
    renderer(digest, 600, 1000)
    renderer(digest, 200, 1000)
    renderer(digest, 1000, 1000)
    assert renderer.close().bytes == 1000
