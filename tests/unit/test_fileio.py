"""fileio: atomic writes, regular files only, file regions and chunks."""

from __future__ import annotations

import io
import os
import socket
import stat
import threading
from pathlib import Path

import pytest

from cib_core.errors import ConfigurationError, LocalWriteError
from cib_core.fileio import FileSlice, NotRegularFile, chunks, open_regular, write_atomically


def test_write_atomically_sets_the_mode_first_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "secret.json"
    target.write_bytes(b"old")
    write_atomically(target, b"new", mode=0o600)
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["secret.json"]
    with pytest.raises(LocalWriteError, match="does not exist"):
        write_atomically(tmp_path / "missing" / "x", b"")


def test_open_regular_reads_files_and_symlinks_to_them(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"data")
    (tmp_path / "link").symlink_to("f")
    for name in ("f", "link"):
        with open_regular(tmp_path / name) as handle:
            assert handle.read() == b"data"
    with pytest.raises(FileNotFoundError):
        open_regular(tmp_path / "absent")


def test_open_regular_never_opens_a_fifo_socket_device_or_directory(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "fifo-link").symlink_to("fifo")
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(tmp_path / "sock"))
    (tmp_path / "dir").mkdir()
    done: list[str] = []

    def attempt() -> None:
        for name, kind in (("fifo", "FIFO"), ("fifo-link", "FIFO"), ("sock", "socket"),
                           ("dir", "directory")):
            with pytest.raises(NotRegularFile, match=kind):
                open_regular(tmp_path / name)
            done.append(name)
        with pytest.raises(NotRegularFile, match="character device"):
            open_regular("/dev/zero")
        done.append("/dev/zero")

    # a FIFO opened for reading blocks until a writer comes: the attempt must return at once
    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(10)
    server.close()
    assert done == ["fifo", "fifo-link", "sock", "dir", "/dev/zero"]


def test_file_slices_share_a_file_and_read_from_threads(tmp_path: Path) -> None:
    data = bytes(range(256)) * 4096
    (tmp_path / "f").write_bytes(data)
    with open_regular(tmp_path / "f") as handle:
        slices = [FileSlice(handle, i * 4096, 4096, name=f"part {i}") for i in range(256)]
        got: dict[int, bytes] = {}

        def read(i: int) -> None:
            with slices[i] as part:
                got[i] = b"".join(iter(lambda: part.read(1000), b""))

        threads = [threading.Thread(target=read, args=(i,)) for i in range(256)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert b"".join(got[i] for i in range(256)) == data
        assert handle.tell() == 0, "slices read by position, never moving the shared offset"


def test_file_slice_of_an_in_memory_stream() -> None:
    stream = io.BytesIO(b"0123456789")
    one, two = FileSlice(stream, 2, 3), FileSlice(stream, 5, 5)
    assert one.read(1) == b"2"
    assert two.read() == b"56789"
    assert one.read() == b"34"
    assert one.read() == b""


def test_chunks_are_exact_whatever_the_source() -> None:
    data = os.urandom(10_000)
    pieces = [data[i:i + 333] for i in range(0, len(data), 333)]
    for source in (data, io.BytesIO(data), iter([b"", *pieces]), pieces):
        got = [bytes(c) for c in chunks(source, 1024)]
        assert b"".join(got) == data
        assert [len(c) for c in got] == [1024] * 9 + [784]
    assert list(chunks(b"", 10)) == []
    with pytest.raises(ConfigurationError, match="must yield bytes"):
        list(chunks(["text"], 10))  # type: ignore[list-item]
