"""A wheel's unpacked size from its zip directory, read with HTTP range requests (issue 14:
a machine whose layers a cache holds downloads no wheel), against a static server that serves
ranges as PyPI's file host does, and one that ignores them as Python's own http.server does."""

from __future__ import annotations

import functools
import http.server
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyapp_support import IndexServer, serve

from cib_core.plugin_api import PackagingError
from cib_plugins.python_app import index, wheel_sizes
from cib_plugins.python_app.locks import DistFile

pytestmark = pytest.mark.integration


def _wheel(path: Path, members: int, size: int) -> int:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for i in range(members):
            archive.writestr(f"pkg/module_{i:05d}.py", b"x" * size)
    return members * size


@pytest.fixture
def ranged(tmp_path: Path) -> Iterator[IndexServer]:
    (tmp_path / "files").mkdir()
    server = serve(tmp_path)
    yield server
    server.stop()


@pytest.fixture
def plain(tmp_path: Path) -> Iterator[str]:
    """Python's own static server: no ranges."""
    (tmp_path / "files").mkdir(exist_ok=True)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a: None  # type: ignore[method-assign]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def _finder(tmp_path: Path) -> index.Finder:
    return index.Finder(index.Sources((), ()), str(tmp_path / "cache"), tmp_path / "scratch", None, 2)


@pytest.mark.parametrize("members", [3, 6000])  # a directory within the first range, and past it
def test_the_size_comes_from_a_few_ranged_requests(tmp_path: Path, ranged: IndexServer,
                                                    members: int) -> None:
    want = _wheel(ranged.root / "files" / "pkg-1.0-py3-none-any.whl", members, 300)
    finder = _finder(tmp_path)
    url = f"{ranged.url}/files/pkg-1.0-py3-none-any.whl"
    file = DistFile("pkg-1.0-py3-none-any.whl", url, None, "a" * 64)
    assert finder.unpacked_size("pkg", file, frozenset()) == want
    assert ranged.requests and all(r.startswith("RANGE ") for r in ranged.requests), ranged.requests
    assert len(ranged.requests) <= 3
    # noted by the lock's hash: the next build asks nobody
    ranged.requests.clear()
    assert _finder(tmp_path).unpacked_size("pkg", file, frozenset()) == want
    assert ranged.requests == []


def test_a_server_without_ranges_means_a_download(tmp_path: Path, plain: str) -> None:
    _wheel(tmp_path / "files" / "pkg-1.0-py3-none-any.whl", 3, 10)
    file = DistFile("pkg-1.0-py3-none-any.whl", f"{plain}/files/pkg-1.0-py3-none-any.whl", None,
                    "b" * 64)
    assert _finder(tmp_path).unpacked_size("pkg", file, frozenset()) is None


def test_a_file_that_is_not_a_zip_is_named(tmp_path: Path, ranged: IndexServer) -> None:
    (ranged.root / "files" / "bad-1.0-py3-none-any.whl").write_bytes(b"<html>not a wheel</html>" * 50)
    file = DistFile("bad-1.0-py3-none-any.whl", f"{ranged.url}/files/bad-1.0-py3-none-any.whl",
                    None, "c" * 64)
    with pytest.raises(PackagingError, match=r"bad-1\.0-py3-none-any\.whl.*is not a wheel"):
        _finder(tmp_path).unpacked_size("bad", file, frozenset())


def test_a_local_wheel_is_read_in_place(tmp_path: Path) -> None:
    path = tmp_path / "pkg-1.0-py3-none-any.whl"
    want = _wheel(path, 5, 7)
    assert wheel_sizes.local_unpacked(path) == want
    file = DistFile(path.name, None, str(path), "d" * 64)
    assert _finder(tmp_path).unpacked_size("pkg", file, frozenset()) == want
