"""The progress renderer: bars on a terminal, one summary line elsewhere, safe across threads."""

from __future__ import annotations

import io
import threading

import pytest

from cib_core.callbacks import LABEL_WIDTH, ProgressReader, label_for, report_step
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


def test_labels_are_short_digests_or_the_label_itself():
    assert label_for("sha256:" + "ab12" * 16) == "ab12ab12ab12"
    assert label_for("new layer /app") == "new layer /app"
    long = label_for("new layer /srv/www, /etc/nginx, /usr/local/bin")
    assert len(long) == LABEL_WIDTH and long.endswith("...")


def test_a_streamed_layer_gets_a_labelled_bar_and_counts_once():
    term = Terminal()
    renderer = ProgressRenderer("wrote", stream=term)
    for done in range(1000, 6000, 1000):
        renderer("new layer /app", done, None)  # its size is not known while it is made
    renderer("new layer /app", 5000, 5000)  # ... until the end
    summary = renderer.close()
    drawn = term.getvalue()
    assert "new layer /app" in drawn
    assert summary == TransferSummary(blobs=1, bytes=5000, seconds=summary.seconds)
    assert drawn.rstrip().endswith("wrote 1 blob, 5.0 kB in " + format_duration(summary.seconds))


def test_steps_draw_a_bar_of_their_own_and_are_not_counted():
    term = Terminal()
    renderer = ProgressRenderer("wrote", stream=term)
    renderer("sha256:" + "1" * 64, 300, 300)
    for done in (100, 600, 1000):
        report_step(renderer, "write 111111111111", done, 1000)
    summary = renderer.close()
    assert "write 111111111111" in term.getvalue()
    assert (summary.blobs, summary.bytes) == (1, 300)

    quiet_file = io.StringIO()  # not a terminal: no bars, steps are silent
    plain = ProgressRenderer("wrote", stream=quiet_file)
    report_step(plain, "write 111111111111", 10, 10)
    assert quiet_file.getvalue() == "" and plain.close().blobs == 0


def test_report_step_passes_over_a_callback_without_steps():
    calls = []
    report_step(lambda *args: calls.append(args), "write x", 1, 2)
    assert calls == []


def test_progress_reader_reports_what_was_read():
    seen = []
    source = io.BytesIO(b"x" * 250_000)
    with io.BufferedReader(ProgressReader(source, seen.append), 65536) as reader:
        assert reader.read() == b"x" * 250_000
    assert seen[-1] == 250_000 and seen == sorted(seen)
