"""Bad input, one table: each case must give a specific ``CibError`` subclass whose message
names the input, in-process, and from the ``cib`` script one ``cib: error:`` line on stderr,
no traceback, exit status 1.

Local files are real (FIFOs, sockets, device nodes, symlink loops, a /proc file whose size
changes while it is read); malformed registry answers come from a tiny fake registry on
127.0.0.1, because no real registry produces them. Inputs that are odd but valid (non-UTF-8
names, paths longer than 255 bytes, a missing ``Docker-Content-Digest``) are at the end: they
must work.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import socket
import subprocess
import sys
import tarfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cib_core import Image
from cib_core import mediatypes as mt
from cib_core.errors import (
    AuthenticationError,
    CibError,
    ConfigurationError,
    InvalidReference,
    LayerSourceError,
    ManifestError,
    RegistryError,
)
from cib_core.remote.client import RegistryClient
from cib_core.testing import skopeo_inspect

pytestmark = pytest.mark.integration


# --------------------------------------------------------------------------------------------
# a fake registry for answers no real one gives
# --------------------------------------------------------------------------------------------

Route = Callable[["_FakeHandler"], None]


class _FakeRegistry(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _FakeHandler)
        self.routes: dict[tuple[str, str], Route] = {}

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"


class _FakeHandler(http.server.BaseHTTPRequestHandler):
    server: _FakeRegistry
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _route(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        path = self.path.split("?", 1)[0]
        route = self.server.routes.get((self.command, path))
        if route is None and path == "/v2/":
            self.reply(200, b"{}")
        elif route is None:
            self.reply(404, b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"unknown"}]}')
        else:
            route(self)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _route

    def reply(self, status: int, body: bytes, headers: dict[str, str] | None = None,
              ctype: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


@pytest.fixture
def fake() -> Iterator[_FakeRegistry]:
    server = _FakeRegistry()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------------------------
# the table
# --------------------------------------------------------------------------------------------

@dataclass
class Case:
    api: Callable[[], object]   # the in-process call that must fail
    argv: list[str]             # the same through `cib`
    error: type[CibError]
    names: str                  # what the message must name (the input)


def _add(src: str | os.PathLike[str], out: Path, dest: str = "/dst") -> Case:
    """Put ``src`` into a layer of a scratch image written to an OCI layout."""
    return Case(api=lambda: Image("scratch", f"oci:{out}/api:1").add_files({dest: src}),
                argv=["build", "--from", "scratch", "--to", f"oci:{out}/cli:1", "--add",
                      f"{os.fsdecode(src)}:{dest}"],
                error=LayerSourceError, names=os.fsdecode(src))


def _add_dir(root: Path, out: Path, bad: Path, *, ignore_files: tuple[str, ...] = (),
             ignores: tuple[str, ...] = (), error: type[CibError] = LayerSourceError) -> Case:
    argv = ["build", "--from", "scratch", "--to", f"oci:{out}/cli:1", "--add", f"{root}:/app"]
    for name in ignore_files:
        argv += ["--ignore-file", name]
    for pattern in ignores:
        argv += ["--ignore", pattern]
    return Case(api=lambda: Image("scratch", f"oci:{out}/api:1").add_files(
                    {"/app": str(root)}, ignore_files=ignore_files, ignores=ignores),
                argv=argv, error=error, names=str(bad))


def _tree(tmp: Path) -> Path:
    root = tmp / "tree"
    (root / "sub").mkdir(parents=True)
    (root / "ok.txt").write_text("fine\n")
    (root / "sub" / "also.txt").write_text("fine\n")
    return root


def _reference(text: str, error: type[CibError] = InvalidReference, names: str | None = None,
               argv: list[str] | None = None) -> Case:
    return Case(api=lambda: Image(text, "oci:/nonexistent/never-written:1"),
                argv=argv or ["manifest", text], error=error, names=text if names is None else names)


def _registry(fake: _FakeRegistry, out: Path, argv_kind: str, api: Callable[[RegistryClient], object],
              error: type[CibError], names: str | None = None) -> Case:
    ref = f"{fake.host}/app:1"
    argv = {"manifest": ["manifest", ref], "ls": ["ls", f"{fake.host}/app"],
            "inspect": ["inspect", ref],
            "push": ["build", "--from", "scratch", "--to", ref, "--add", f"{out / 'f.txt'}:/f.txt"],
            "pull": ["copy", ref, f"oci:{out}/pulled:1"]}[argv_kind]
    (out / "f.txt").write_text("f\n")
    return Case(api=lambda: api(RegistryClient(fake.host, "app")), argv=argv, error=error,
                names=names or fake.host)


def _manifest_route(body: bytes, ctype: str, extra: dict[str, str] | None = None) -> Route:
    return lambda h: h.reply(200, body, extra, ctype=ctype)


def _config_manifest(config: bytes) -> bytes:
    return json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST,
                       "config": {"mediaType": mt.OCI_CONFIG, "digest": _sha(config),
                                  "size": len(config)}, "layers": []}).encode()


def _build_case(name: str, tmp: Path, fake: _FakeRegistry) -> Case:  # noqa: C901, PLR0911, PLR0912
    out = tmp / "out"
    out.mkdir(exist_ok=True)
    # -- local files ---------------------------------------------------------------------------
    if name == "missing file":
        return _add(tmp / "no-such-file", out)
    if name == "missing file with a non-UTF-8 name":
        case = _add(os.fsdecode(bytes(tmp / "missing-") + b"\xff\xfe"), out)
        case.names = str(tmp / "missing-")  # the undecodable bytes are shown escaped
        return case
    if name == "dangling symlink as the source":
        os.symlink(tmp / "nowhere", tmp / "dangling")
        return _add(tmp / "dangling", out)
    if name == "dangling symlink inside a directory":
        root = _tree(tmp)
        os.symlink("nowhere", root / "sub" / "dangling")
        return _add_dir(root, out, root / "sub" / "dangling")
    if name == "looping symlinks as the source":
        os.symlink(tmp / "loop-b", tmp / "loop-a")
        os.symlink(tmp / "loop-a", tmp / "loop-b")
        return _add(tmp / "loop-a", out)
    if name == "symlink to an ancestor directory":
        root = _tree(tmp)
        os.symlink("..", root / "sub" / "up")
        return _add_dir(root, out, root / "sub" / "up")
    if name == "FIFO as the source":
        os.mkfifo(tmp / "fifo")
        return _add(tmp / "fifo", out)
    if name == "FIFO inside a directory":
        root = _tree(tmp)
        os.mkfifo(root / "sub" / "fifo")
        return _add_dir(root, out, root / "sub" / "fifo")
    if name == "socket inside a directory":
        root = _tree(tmp)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(root / "sock"))
        sock.close()
        return _add_dir(root, out, root / "sock")
    if name == "character device as the source":
        return _add("/dev/null", out)
    if name == "symlink to a device inside a directory":
        root = _tree(tmp)
        os.symlink("/dev/zero", root / "zero")
        return _add_dir(root, out, root / "zero")
    if name == "file that changes size while being read":
        # sysfs files stat as 4096 bytes and give fewer: a file that shrank between the
        # listing and the read, without a race
        return _add("/sys/kernel/mm/transparent_hugepage/enabled", out, "/enabled")
    if name == "name component longer than 255 bytes":
        return _add(tmp / ("n" * 300), out)
    if name == "target path with ..":
        (tmp / "f").write_text("f")
        case = _add(tmp / "f", out, "/../escape")
        case.error, case.names = ConfigurationError, "/../escape"
        return case
    if name == "a file placed at the image root":
        (tmp / "f").write_text("f")
        case = _add(tmp / "f", out, "/")
        return case
    if name == "an unreadable directory":
        root = _tree(tmp)
        os.symlink("sub", root / "ok-link")
        (root / "sub").chmod(0)
        if os.geteuid() == 0:  # root reads anything: make listing fail another way
            (root / "sub").chmod(0o755)
            os.symlink("/proc/self/fd/999999", root / "badfd")
            return _add_dir(root, out, root / "badfd")
        return _add_dir(root, out, root / "sub")
    # -- ignore files and patterns -------------------------------------------------------------
    if name == "ignore file that is a directory":
        root = _tree(tmp)
        (root / ".dockerignore").mkdir()
        return _add_dir(root, out, root / ".dockerignore", ignore_files=(".dockerignore",))
    if name == "ignore file that is a symlink loop":
        root = _tree(tmp)
        os.symlink(".dockerignore", root / ".dockerignore")
        return _add_dir(root, out, root / ".dockerignore", ignore_files=(".dockerignore",))
    if name == "invalid pattern in an ignore file":
        root = _tree(tmp)
        (root / ".dockerignore").write_text("*.log\n!\n")
        case = _add_dir(root, out, root, ignore_files=(".dockerignore",))
        return case
    if name == "invalid pattern given directly":
        root = _tree(tmp)
        return _add_dir(root, out, root, ignores=("\\",))
    if name == "invalid character range in a pattern":
        root = _tree(tmp)
        return _add_dir(root, out, root, ignores=("[z-a]",))
    # -- references -----------------------------------------------------------------------------
    if name == "reference with upper case":
        return _reference("UPPER/Case:tag")
    if name == "empty reference":
        return _reference("", names="''")
    if name == "reference with a short digest":
        return _reference("127.0.0.1:5000/app@sha256:abc")
    if name == "reference with a space":
        return _reference("a b")
    if name == "reference with a double slash":
        return _reference("bad//repo")
    if name == "tag longer than 128 characters":
        return _reference("app:" + "t" * 129)
    if name == "reference with a URL scheme":
        return _reference("https://127.0.0.1:5000/app")
    if name == "oci: with no path":
        return _reference("oci:")
    if name == "docker-archive: with no path":
        return _reference("docker-archive:")
    if name == "scratch as a target":
        return Case(api=lambda: Image("scratch", "scratch"),
                    argv=["build", "--from", "scratch", "--to", "scratch"],
                    error=ConfigurationError, names="scratch")
    if name == "target naming a digest":
        target = f"127.0.0.1:5000/app@sha256:{'a' * 64}"
        return Case(api=lambda: Image("scratch", target),
                    argv=["build", "--from", "scratch", "--to", target],
                    error=ConfigurationError, names=target)
    # -- malformed registry answers --------------------------------------------------------------
    if name == "HTML error page":
        fake.routes[("GET", "/v2/app/manifests/1")] = lambda h: h.reply(
            400, b"<html><body><h1>400 Bad Request</h1>nginx</body></html>", ctype="text/html")
        return _registry(fake, out, "manifest", lambda c: c.manifest("1"), RegistryError)
    if name == "HTML page with status 200 instead of a manifest":
        fake.routes[("GET", "/v2/app/manifests/1")] = _manifest_route(
            b"<html><body>Please log in to the captive portal</body></html>", "text/html")
        return _registry(fake, out, "pull", lambda c: Image(f"{fake.host}/app:1", "oci:/nonexistent/x:1")
                         .get_image_config(), ManifestError, names="1")
    if name == "manifest that is not valid JSON":
        fake.routes[("GET", "/v2/app/manifests/1")] = _manifest_route(b"{not json", mt.OCI_MANIFEST)
        # (`cib manifest` prints the bytes as they are, by design; `inspect` reads them)
        return _registry(fake, out, "inspect", lambda c: c.manifest("1"), ManifestError, names="1")
    if name == "manifest of an unknown media type":
        body = json.dumps({"schemaVersion": 2, "mediaType": "application/x-unknown+json"}).encode()
        fake.routes[("GET", "/v2/app/manifests/1")] = _manifest_route(body, "application/x-unknown+json")
        return _registry(fake, out, "pull", lambda c: Image(f"{fake.host}/app:1", "oci:/nonexistent/x:1")
                         .get_image_config(), ManifestError, names="application/x-unknown+json")
    if name == "config that is not valid JSON":
        config = b"\x00\x01 not json"
        fake.routes[("GET", "/v2/app/manifests/1")] = _manifest_route(_config_manifest(config),
                                                                      mt.OCI_MANIFEST)
        fake.routes[("GET", f"/v2/app/blobs/{_sha(config)}")] = lambda h: h.reply(
            200, config, ctype="application/octet-stream")
        return _registry(fake, out, "inspect", lambda c: Image(f"{fake.host}/app:1", "oci:/nonexistent/x:1")
                         .get_image_config(), ManifestError, names=_sha(config))
    if name == "upload started without a Location header":
        fake.routes[("HEAD", "/v2/app/blobs/" + _sha(b"f\n"))] = lambda h: h.reply(404, b"")
        fake.routes[("POST", "/v2/app/blobs/uploads/")] = lambda h: h.reply(202, b"")
        return _registry(fake, out, "push", lambda c: c.upload(b"f\n"), RegistryError,
                         names="Location")
    if name == "tag list that is not valid JSON":
        fake.routes[("GET", "/v2/app/tags/list")] = lambda h: h.reply(200, b"tags: [1, 2")
        return _registry(fake, out, "ls", lambda c: c.tags(), RegistryError)
    if name == "401 without a challenge":
        fake.routes[("GET", "/v2/app/manifests/1")] = lambda h: h.reply(
            401, b'{"errors":[{"code":"UNAUTHORIZED","message":"no"}]}')
        return _registry(fake, out, "manifest", lambda c: c.manifest("1"), AuthenticationError)
    if name == "ping that is not a registry":
        fake.routes[("GET", "/v2/")] = lambda h: h.reply(404, b"<html>Not Found</html>", ctype="text/html")
        return _registry(fake, out, "manifest", lambda c: c.manifest("1"), RegistryError)
    if name == "token realm answering garbage":
        fake.routes[("GET", "/v2/")] = lambda h: h.reply(401, b"{}", {
            "WWW-Authenticate": f'Bearer realm="http://{fake.host}/token",service="fake"'})
        fake.routes[("GET", "/token")] = lambda h: h.reply(200, b"<html>oops</html>", ctype="text/html")
        return _registry(fake, out, "manifest", lambda c: c.manifest("1"), RegistryError)
    raise AssertionError(f"no case {name!r}")


CASES = [
    "missing file", "missing file with a non-UTF-8 name", "dangling symlink as the source",
    "dangling symlink inside a directory", "looping symlinks as the source",
    "symlink to an ancestor directory", "FIFO as the source", "FIFO inside a directory",
    "socket inside a directory", "character device as the source",
    "symlink to a device inside a directory", "file that changes size while being read",
    "name component longer than 255 bytes", "target path with ..", "a file placed at the image root",
    "an unreadable directory",
    "ignore file that is a directory", "ignore file that is a symlink loop",
    "invalid pattern in an ignore file", "invalid pattern given directly",
    "invalid character range in a pattern",
    "reference with upper case", "empty reference", "reference with a short digest",
    "reference with a space", "reference with a double slash", "tag longer than 128 characters",
    "reference with a URL scheme", "oci: with no path", "docker-archive: with no path",
    "scratch as a target", "target naming a digest",
    "HTML error page", "HTML page with status 200 instead of a manifest",
    "manifest that is not valid JSON", "manifest of an unknown media type",
    "config that is not valid JSON", "upload started without a Location header",
    "tag list that is not valid JSON", "401 without a challenge", "ping that is not a registry",
    "token realm answering garbage",
]


def _cib(argv: list[str], tmp: Path) -> subprocess.CompletedProcess[bytes]:
    home = tmp / "home"
    env = dict(os.environ, HOME=str(home), DOCKER_CONFIG=str(home / ".docker"),
               XDG_CONFIG_HOME=str(home / ".config"), XDG_RUNTIME_DIR=str(home / "run"),
               PYTHON_KEYRING_BACKEND="keyring.backends.null.Keyring", NO_PROXY="127.0.0.1")
    script = str(Path(sys.executable).parent / "cib")
    return subprocess.run([os.fsencode(script), *(os.fsencode(a) for a in argv)],
                          capture_output=True, env=env, timeout=120, check=False)


@pytest.mark.parametrize("name", CASES)
def test_bad_input(name: str, tmp_path: Path, fake: _FakeRegistry) -> None:
    case = _build_case(name, tmp_path, fake)
    with pytest.raises(CibError) as err:
        case.api()
    assert type(err.value) is case.error or isinstance(err.value, case.error), \
        f"{name}: {type(err.value).__name__}: {err.value}"
    assert type(err.value) is not CibError
    message = str(err.value)
    assert case.names in message, f"{name}: {message!r} does not name {case.names!r}"

    result = _cib(case.argv, tmp_path)
    stderr = result.stderr.decode(errors="replace")
    assert result.returncode == 1, f"{name}: exit {result.returncode}\n{stderr}"
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("cib: error: "), f"{name}:\n{stderr}"
    assert case.names.encode(errors="surrogateescape").decode(errors="replace") in lines[0] \
        or case.names in lines[0], f"{name}: {lines[0]!r} does not name {case.names!r}"


def test_the_table_is_large_enough() -> None:
    print(f"BAD INPUTS tried: {len(CASES)} failing cases + {len(VALID_ODDITIES)} odd-but-valid inputs")
    assert len(CASES) >= 30


# --------------------------------------------------------------------------------------------
# odd but valid: these must work
# --------------------------------------------------------------------------------------------

VALID_ODDITIES = ["non-UTF-8 file names", "paths longer than 255 bytes",
                  "no Docker-Content-Digest header"]


def _layer_names(layout: Path) -> dict[str, bytes]:
    index = json.loads((layout / "index.json").read_text())
    manifest = json.loads((layout / "blobs" / "sha256" /
                           index["manifests"][0]["digest"].split(":", 1)[1]).read_bytes())
    out: dict[str, bytes] = {}
    for layer in manifest["layers"]:
        blob = (layout / "blobs" / "sha256" / layer["digest"].split(":", 1)[1]).read_bytes()
        with tarfile.open(fileobj=io.BytesIO(blob), mode="r:*", encoding="utf-8",
                          errors="surrogateescape") as tar:
            for member in tar:
                f = tar.extractfile(member) if member.isreg() else None
                out[member.name] = f.read() if f else b""
    return out


def test_non_utf8_names_and_long_paths_round_trip(tmp_path: Path) -> None:
    root = tmp_path / "odd"
    root.mkdir()
    raw_name = b"caf\xe9-latin1.txt"
    with open(os.path.join(os.fsencode(root), raw_name), "wb") as f:
        f.write(b"latin-1 name\n")
    deep = root
    for i in range(6):
        deep = deep / (f"level{i}-" + "d" * 50)
    deep.mkdir(parents=True)
    (deep / "leaf.txt").write_text("deep\n")
    rel_deep = str((deep / "leaf.txt").relative_to(root))
    assert len(os.fsencode(rel_deep)) > 255
    for how in ("api", "cli"):
        layout = tmp_path / f"layout-{how}"
        if how == "api":
            image = Image("scratch", f"oci:{layout}:1")
            image.add_files({"/odd": str(root)})
            image.save()
        else:
            result = _cib(["build", "--from", "scratch", "--to", f"oci:{layout}:1",
                           "--add", f"{root}:/odd"], tmp_path)
            assert result.returncode == 0, result.stderr.decode(errors="replace")
        names = _layer_names(layout)
        assert names["odd/" + os.fsdecode(raw_name)] == b"latin-1 name\n"
        assert names["odd/" + rel_deep] == b"deep\n"
        skopeo_inspect(f"oci:{layout}:1")  # an independent reader accepts the layout


def test_missing_docker_content_digest_is_computed(fake: _FakeRegistry, tmp_path: Path) -> None:
    body = json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST,
                       "config": {"mediaType": mt.OCI_CONFIG, "digest": _sha(b"{}"), "size": 2},
                       "layers": []}).encode()
    fake.routes[("GET", "/v2/app/manifests/1")] = _manifest_route(body, mt.OCI_MANIFEST)
    fake.routes[("HEAD", "/v2/app/manifests/1")] = _manifest_route(body, mt.OCI_MANIFEST)
    client = RegistryClient(fake.host, "app")
    assert client.manifest_digest("1") == _sha(body)
    assert client.manifest_raw("1") == (body, mt.OCI_MANIFEST, _sha(body))
    result = _cib(["digest", f"{fake.host}/app:1"], tmp_path)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().strip() == _sha(body)


def test_a_file_that_shrinks_while_being_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A regular file truncated between the directory walk and the read."""
    from cib_core import plugin_api

    big = tmp_path / "shrinks.bin"
    big.write_bytes(os.urandom(3 << 20))
    opened = plugin_api.LazyFile._open

    def open_then_truncate(self: Any) -> Any:
        f = opened(self)
        os.truncate(big, 1000)
        return f

    monkeypatch.setattr(plugin_api.LazyFile, "_open", open_then_truncate)
    with pytest.raises(LayerSourceError, match="changed size") as err:
        Image("scratch", f"oci:{tmp_path}/out:1").add_files({"/big": str(big)})
    assert str(big) in str(err.value)
