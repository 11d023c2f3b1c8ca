"""The Python app test bed: a Python base image made from this machine's Debian interpreter, a
stand-in arm64 image of it, wheels built here (pure ones, a C extension compiled with gcc and a
stand-in aarch64 build of it, an sdist-only package), a PEP 503 index on loopback serving them,
projects and the three kinds of lock, and running a built image under runc.

Everything stays on this machine: the index listens on 127.0.0.1, and nothing here reaches the
network.
"""

from __future__ import annotations

import base64
import functools
import gzip
import hashlib
import http.server
import io
import json
import os
import re
import shutil
import socketserver
import subprocess
import tarfile
import textwrap
import threading
import zipfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cib_core.testing import (
    BASE_ENV,
    PushedImage,
    RegistryServer,
    push_image,
    push_index,
    require_tool,
    umoci_unpack,
)

PYTHON = Path("/usr/bin/python3.11")
STDLIB = Path("/usr/lib/python3.11")
PY_TAG = "cp311"
# standard-library parts a small image does without (tests, the IDE, Tk and its X libraries)
_STDLIB_SKIP = {"test", "tests", "__pycache__", "idlelib", "turtledemo", "tkinter", "ensurepip",
                "lib2to3", "pydoc_data"}
_DYNLOAD_SKIP = re.compile(r"^_tkinter\.")
ZIP_TIME = (2020, 2, 2, 0, 0, 0)


def have_python_base() -> bool:
    return PYTHON.is_file() and STDLIB.is_dir() and shutil.which("ldd") is not None


# --------------------------------------------------------------------------------------------
# the base images
# --------------------------------------------------------------------------------------------
@dataclass
class _Tree:
    """Files, directories and symlinks of a root filesystem, by path without a leading /."""

    files: dict[str, tuple[Path | bytes, int]] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)
    dirs: set[str] = field(default_factory=set)

    def add_host_path(self, path: str | Path) -> None:
        """``path`` as this machine has it: every symlink on the way kept as a symlink (the
        merged-/usr links, ``libz.so.1 -> libz.so.1.2.13``), the file it ends at copied."""
        path = os.path.abspath(path)
        parent = os.path.dirname(path)
        self._add_dir_chain(parent)
        name = os.path.join(os.path.realpath(parent), os.path.basename(path))
        rel = name.lstrip("/")
        if rel in self.files or rel in self.links:
            return
        if os.path.islink(name):
            target = os.readlink(name)
            self.links[rel] = target
            self.add_host_path(os.path.join(os.path.dirname(name), target))
        elif os.path.isfile(name):
            self.files[rel] = (Path(name), os.stat(name).st_mode & 0o777)

    def _add_dir_chain(self, directory: str) -> None:
        if directory in ("/", ""):
            return
        rel = directory.lstrip("/")
        if rel in self.links or rel in self.dirs:
            return
        if os.path.islink(directory):
            target = os.readlink(directory)
            self.links[rel] = target
            self._add_dir_chain(os.path.realpath(directory))
            return
        self.dirs.add(rel)
        self._add_dir_chain(os.path.dirname(directory))

    def layer(self) -> bytes:
        buffer = io.BytesIO()
        names = sorted({*self.files, *self.links, *self.dirs}
                       | {p for name in (*self.files, *self.links, *self.dirs)
                          for p in _parents(name)})
        with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for name in names:
                info = tarfile.TarInfo(name)
                info.mtime = 0
                if name in self.links:
                    info.type, info.linkname, info.mode = tarfile.SYMTYPE, self.links[name], 0o777
                    tar.addfile(info)
                elif name in self.files:
                    source, mode = self.files[name]
                    data = source.read_bytes() if isinstance(source, Path) else source
                    info.size, info.mode = len(data), mode
                    tar.addfile(info, io.BytesIO(data))
                else:
                    info.type, info.mode = tarfile.DIRTYPE, 0o1777 if name == "tmp" else 0o755
                    tar.addfile(info)
        return gzip.compress(buffer.getvalue(), compresslevel=1, mtime=0)


def _parents(name: str) -> list[str]:
    parts = name.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def _ldd(path: Path) -> list[str]:
    done = subprocess.run(["ldd", str(path)], capture_output=True, text=True, check=False)
    found = []
    for line in done.stdout.splitlines():
        m = re.search(r"(/\S+)\s+\(0x", line)
        if m:
            found.append(m.group(1))
    return found


@functools.lru_cache(maxsize=1)
def python_rootfs_layer() -> bytes:
    """One gzip layer: ``/usr/bin/python3.11``, its standard library (no tests, no
    ``__pycache__``), the shared libraries ``ldd`` names for it and its extension modules,
    and the loader; merged /usr as on this machine."""
    tree = _Tree()
    tree.add_host_path(PYTHON)
    tree.links["usr/bin/python3"] = "python3.11"
    needed = set(_ldd(PYTHON))
    for root, dirs, files in os.walk(STDLIB):
        dirs[:] = sorted(d for d in dirs if d not in _STDLIB_SKIP and d != "site-packages")
        for name in sorted(files):
            full = Path(root) / name
            if full.is_symlink() or name.endswith((".pyc", ".exe")) or _DYNLOAD_SKIP.match(name):
                continue
            tree.add_host_path(full)
            if name.endswith(".so"):
                needed.update(_ldd(full))
    for library in sorted(needed):
        tree.add_host_path(library)
    tree.dirs.update({"tmp", "etc"})
    tree.files["etc/passwd"] = (b"root:x:0:0:root:/root:/bin/sh\n", 0o644)
    return tree.layer()


ARM64_LIBC = b"GNU C Library (Debian GLIBC 2.36-9+deb12u4) stable release version 2.36.\n"


@functools.lru_cache(maxsize=1)
def arm64_standin_layer() -> bytes:
    """What cib reads of an arm64 Python base (checked by its files, never run): the
    interpreter's place and version string, the standard library's landmark and sysconfig
    data, glibc's version text, merged /usr."""
    tree = _Tree()
    tree.links.update({"bin": "usr/bin", "lib": "usr/lib"})
    tree.files["usr/bin/python3.11"] = (b"\x7fELF stand-in for an aarch64 CPython\x003.11.2\x00", 0o755)
    tree.links["usr/bin/python3"] = "python3.11"
    tree.files["usr/lib/python3.11/os.py"] = ((STDLIB / "os.py").read_bytes(), 0o644)
    sysconfig = (b"build_time_vars = {'ABIFLAGS': '', 'MULTIARCH': 'aarch64-linux-gnu', "
                 b"'SOABI': 'cpython-311-aarch64-linux-gnu', 'VERSION': '3.11'}\n")
    tree.files["usr/lib/python3.11/_sysconfigdata__aarch64-linux-gnu.py"] = (sysconfig, 0o644)
    tree.files["usr/lib/aarch64-linux-gnu/libc.so.6"] = (ARM64_LIBC, 0o755)
    tree.dirs.add("tmp")
    return tree.layer()


def _config(layers: Sequence[bytes], architecture: str, variant: str | None = None) -> dict[str, Any]:
    config: dict[str, Any] = {"architecture": architecture, "os": "linux",
                              "created": "2024-01-01T00:00:00Z",
                              "config": {"Env": list(BASE_ENV), "Cmd": ["python3"]}}
    if variant:
        config["variant"] = variant
    return config


def push_python_base(server: RegistryServer, repo: str = "base/python", tag: str = "3.11") -> PushedImage:
    """The runnable amd64 Python base image (OCI media types)."""
    layer = python_rootfs_layer()
    return push_image(server, repo, tag, [layer], _config([layer], "amd64"), oci=True)


def push_python_index(server: RegistryServer, repo: str = "base/python-multi",
                      tag: str = "3.11") -> PushedImage:
    """An OCI index over the runnable amd64 image and the arm64 stand-in."""
    amd64 = push_image(server, repo, None, [python_rootfs_layer()],
                       _config([python_rootfs_layer()], "amd64"), oci=True)
    arm64 = push_image(server, repo, None, [arm64_standin_layer()],
                       _config([arm64_standin_layer()], "arm64", "v8"), oci=True)
    return push_index(server, repo, tag, [amd64, arm64], oci=True)


# --------------------------------------------------------------------------------------------
# wheels
# --------------------------------------------------------------------------------------------
def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def make_wheel(directory: Path, name: str, version: str, files: Mapping[str, bytes | str], *,
               tag: str = "py3-none-any", entry_points: Mapping[str, str] | None = None,
               requires_python: str | None = None, executable: Iterable[str] = (),
               lie_about: str | None = None) -> Path:
    """A wheel at ``directory`` with a correct ``RECORD`` (unless ``lie_about`` names a file
    whose recorded hash is then wrong)."""
    dist = name.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    contents: dict[str, bytes] = {k: v.encode() if isinstance(v, str) else v for k, v in files.items()}
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    if requires_python:
        metadata += f"Requires-Python: {requires_python}\n"
    contents[f"{info}/METADATA"] = metadata.encode()
    pure = "true" if tag.endswith("none-any") else "false"
    contents[f"{info}/WHEEL"] = (f"Wheel-Version: 1.0\nGenerator: cib-tests\nRoot-Is-Purelib: {pure}\n"
                                 f"Tag: {tag}\n").encode()
    if entry_points:
        contents[f"{info}/entry_points.txt"] = ("[console_scripts]\n" + "".join(
            f"{k} = {v}\n" for k, v in entry_points.items())).encode()
    record = ""
    for path, data in contents.items():
        digest = _record_hash(b"a lie" if path == lie_about else data)
        record += f"{path},{digest},{len(data)}\n"
    record += f"{info}/RECORD,,\n"
    contents[f"{info}/RECORD"] = record.encode()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{dist}-{version}-{tag}.whl"
    executables = set(executable)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for member, data in contents.items():
            zinfo = zipfile.ZipInfo(member, ZIP_TIME)
            zinfo.external_attr = (0o100755 if member in executables else 0o100644) << 16
            zinfo.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(zinfo, data)
    return path


FAST_C = textwrap.dedent("""\
    #define PY_SSIZE_T_CLEAN
    #include <Python.h>
    static PyObject *speed(PyObject *self, PyObject *args) {
        return PyUnicode_FromString("compiled for x86_64");
    }
    static PyMethodDef methods[] = {{"speed", speed, METH_NOARGS, "where it was built"}, {0}};
    static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_speed", NULL, -1, methods};
    PyMODINIT_FUNC PyInit__speed(void) { return PyModule_Create(&module); }
    """)


@functools.lru_cache(maxsize=1)
def compiled_extension() -> bytes:
    """``_speed``, a C extension compiled here with gcc against Debian's Python 3.11."""
    import tempfile

    gcc = require_tool("gcc")
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "speed.c"
        source.write_text(FAST_C)
        out = Path(tmp) / "_speed.so"
        subprocess.run([gcc, "-shared", "-fPIC", "-O2", "-I/usr/include/python3.11", "-o", str(out),
                        str(source)], check=True, capture_output=True)
        return out.read_bytes()


@dataclass(frozen=True)
class Wheelhouse:
    """The distributions of the test index, by file name."""

    root: Path
    files: dict[str, Path]

    def sha256(self, filename: str) -> str:
        return hashlib.sha256(self.files[filename].read_bytes()).hexdigest()

    def of(self, project: str) -> list[str]:
        prefix = project.replace("-", "_") + "-"
        return sorted(f for f in self.files if f.startswith(prefix))


def build_wheelhouse(directory: Path) -> Wheelhouse:
    """Every distribution the tests' index serves."""
    files: dict[str, Path] = {}

    def add(path: Path) -> None:
        files[path.name] = path

    add(make_wheel(directory, "cibtest-pure", "1.0",
                   {"cibtest_pure/__init__.py": 'VALUE = "pure 1.0"\n'}))
    init = "from cibtest_fast._speed import speed\n"
    add(make_wheel(directory, "cibtest-fast", "1.0",
                   {"cibtest_fast/__init__.py": init,
                    "cibtest_fast/_speed.cpython-311-x86_64-linux-gnu.so": compiled_extension()},
                   tag="cp311-cp311-manylinux_2_17_x86_64", executable=[
                       "cibtest_fast/_speed.cpython-311-x86_64-linux-gnu.so"]))
    add(make_wheel(directory, "cibtest-fast", "1.0",
                   {"cibtest_fast/__init__.py": init,
                    "cibtest_fast/_speed.cpython-311-aarch64-linux-gnu.so":
                        b"\x7fELF stand-in aarch64 build of _speed\n"},
                   tag="cp311-cp311-manylinux_2_17_aarch64"))
    add(make_wheel(directory, "cibtest-amd64only", "1.0",
                   {"cibtest_amd64only.py": 'WHERE = "amd64"\n'}))
    add(make_wheel(directory, "cibtest-arm64only", "1.0",
                   {"cibtest_arm64only.py": 'WHERE = "arm64"\n'}))
    add(make_wheel(directory, "cibtest-tool", "2.0", {"cibtest_tool.py": "def main():\n    print('tool')\n"},
                   entry_points={"cibtest-tool": "cibtest_tool:main"}))
    add(make_wheel(directory, "cibtest-new", "1.0", {"cibtest_new.py": "X = 1\n"},
                   tag="cp312-cp312-manylinux_2_17_x86_64"))
    sdist = directory / "cibtest_sdistonly-1.0.tar.gz"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        data = b"[project]\nname = 'cibtest-sdistonly'\nversion = '1.0'\n"
        info = tarfile.TarInfo("cibtest_sdistonly-1.0/pyproject.toml")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    sdist.write_bytes(gzip.compress(buffer.getvalue(), mtime=0))
    add(sdist)
    return Wheelhouse(directory, files)


# --------------------------------------------------------------------------------------------
# the index
# --------------------------------------------------------------------------------------------
def _project_name(filename: str) -> str:
    return re.sub(r"[-_.]+", "-", filename.split("-", 1)[0]).lower()


def write_simple_index(house: Wheelhouse, root: Path) -> None:
    """A PEP 503 tree: ``simple/<project>/index.html`` linking ``../../files/<name>#sha256=``."""
    (root / "files").mkdir(parents=True, exist_ok=True)
    projects: dict[str, list[str]] = {}
    for filename, path in house.files.items():
        shutil.copyfile(path, root / "files" / filename)
        projects.setdefault(_project_name(filename), []).append(filename)
    for project, names in projects.items():
        page = root / "simple" / project / "index.html"
        page.parent.mkdir(parents=True, exist_ok=True)
        links = "".join(f'<a href="../../files/{n}#sha256={house.sha256(n)}">{n}</a><br>\n'
                        for n in sorted(names))
        page.write_text(f"<!DOCTYPE html><html><body>\n{links}</body></html>\n")
    (root / "simple" / "index.html").write_text("".join(
        f'<a href="{p}/">{p}</a>\n' for p in sorted(projects)))


class _Quiet(http.server.SimpleHTTPRequestHandler):
    """Serves files with single byte ranges (``bytes=A-B``, ``bytes=A-``, ``bytes=-N``) as
    PyPI's file host, nginx and devpi do; logs each request's path, a ranged one as
    ``RANGE <path>`` (it is not a download)."""

    _RANGE = re.compile(r"bytes=(\d*)-(\d*)")

    def do_GET(self) -> None:
        wanted = self._RANGE.fullmatch(self.headers.get("Range", "").strip())
        path = Path(self.translate_path(self.path))
        if wanted is None or not path.is_file() or wanted.groups() == ("", ""):
            super().do_GET()
            return
        size = path.stat().st_size
        first, last = wanted.groups()
        if first == "":
            start, end = max(0, size - int(last)), size - 1
        else:
            start, end = int(first), min(size - 1, int(last)) if last else size - 1
        if start > end or start >= size:
            self.send_error(416)
            return
        with open(path, "rb") as f:
            f.seek(start)
            body = f.read(end - start + 1)
        self._ranged = True  # logged below, not as a download
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        self.wfile.write(body)
        self.server.requests.append(f"RANGE {self.path}")  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: Any) -> None:
        if getattr(self, "_ranged", False):
            self._ranged = False
            return
        self.server.requests.append(self.path)  # type: ignore[attr-defined]


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)  # no FQDN lookup
        self.server_name = "127.0.0.1"
        self.server_port = int(self.server_address[1])


@dataclass
class IndexServer:
    """A static HTTP server on 127.0.0.1 over ``root`` (``/simple/`` is the index)."""

    root: Path
    server: _Server
    thread: threading.Thread

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"

    @property
    def simple(self) -> str:
        return f"{self.url}/simple"

    @property
    def requests(self) -> list[str]:
        return self.server.requests  # type: ignore[attr-defined, no-any-return]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def serve(root: Path) -> IndexServer:
    handler = functools.partial(_Quiet, directory=str(root))
    server = _Server(("127.0.0.1", 0), handler)
    server.requests = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    return IndexServer(root, server, thread)


# --------------------------------------------------------------------------------------------
# projects and locks
# --------------------------------------------------------------------------------------------
APP_MAIN = textwrap.dedent("""\
    import sys

    import cibtest_fast
    import cibtest_pure


    def run():
        print("cibtest-app:", cibtest_pure.VALUE, "/", cibtest_fast.speed())
        print("prefix:", sys.prefix)
        print("fast from:", cibtest_fast.__file__)
    """)


def write_project(directory: Path, *, name: str = "cibtest-app", main: str = APP_MAIN,
                  dependencies: Sequence[str] = ("cibtest-pure", "cibtest-fast"),
                  scripts: Mapping[str, str] | None = None) -> Path:
    """A setuptools project with one console script (``cibtest-app``)."""
    package = name.replace("-", "_")
    scripts = {name: f"{package}.main:run"} if scripts is None else scripts
    (directory / "src" / package).mkdir(parents=True, exist_ok=True)
    (directory / "src" / package / "__init__.py").write_text("")
    (directory / "src" / package / "main.py").write_text(main)
    deps = ", ".join(json.dumps(d) for d in dependencies)
    script_lines = "".join(f'{k} = "{v}"\n' for k, v in scripts.items())
    (directory / "pyproject.toml").write_text(textwrap.dedent(f"""\
        [build-system]
        requires = ["setuptools>=61"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "{name}"
        version = "1.0"
        dependencies = [{deps}]
        requires-python = ">=3.10"

        [project.scripts]
        """) + script_lines)
    return directory


@dataclass(frozen=True)
class Pin:
    """A locked package: its files (names in the wheelhouse) and an optional marker."""

    name: str
    version: str
    files: tuple[str, ...]
    marker: str | None = None


def default_pins(house: Wheelhouse) -> list[Pin]:
    return [Pin("cibtest-pure", "1.0", tuple(house.of("cibtest-pure"))),
            Pin("cibtest-fast", "1.0", tuple(house.of("cibtest-fast")))]


def write_pylock(path: Path, house: Wheelhouse, index: IndexServer, pins: Sequence[Pin]) -> Path:
    lines = ['lock-version = "1.0"', 'created-by = "cib-tests"', 'requires-python = ">=3.10"', ""]
    for pin in pins:
        lines += ["[[packages]]", f'name = "{pin.name}"', f'version = "{pin.version}"']
        if pin.marker:
            lines.append(f"marker = {json.dumps(pin.marker)}")
        wheels = [f for f in pin.files if f.endswith(".whl")]
        sdists = [f for f in pin.files if not f.endswith(".whl")]

        def entry(f: str) -> str:
            return f'{{ url = "{index.url}/files/{f}", hashes = {{ sha256 = "{house.sha256(f)}" }} }}'

        if wheels:
            lines.append("wheels = [")
            lines += [f"  {entry(f)}," for f in wheels]
            lines.append("]")
        lines += [f"sdist = {entry(f)}" for f in sdists]
        lines.append("")
    path.write_text("\n".join(lines))
    return path


def write_uv_lock(path: Path, house: Wheelhouse, index: IndexServer, pins: Sequence[Pin],
                  project: str = "cibtest-app") -> Path:
    deps = ", ".join(
        "{ name = " + json.dumps(p.name) + (", marker = " + json.dumps(p.marker) if p.marker else "") + " }"
        for p in pins)
    lines = ["version = 1", "revision = 2", 'requires-python = ">=3.10"', "",
             "[[package]]", f'name = "{project}"', 'version = "1.0"', 'source = { editable = "." }',
             f"dependencies = [{deps}]", ""]
    for pin in pins:
        lines += ["[[package]]", f'name = "{pin.name}"', f'version = "{pin.version}"',
                  f'source = {{ registry = "{index.simple}" }}']
        wheels = [f for f in pin.files if f.endswith(".whl")]

        def entry(f: str) -> str:
            return f'{{ url = "{index.url}/files/{f}", hash = "sha256:{house.sha256(f)}" }}'

        lines += [f"sdist = {entry(f)}" for f in pin.files if not f.endswith(".whl")]
        lines.append("wheels = [")
        lines += [f"    {entry(f)}," for f in wheels]
        lines += ["]", ""]
    path.write_text("\n".join(lines))
    return path


def write_requirements(path: Path, house: Wheelhouse, pins: Sequence[Pin]) -> Path:
    lines = []
    for pin in pins:
        marker = f" ; {pin.marker}" if pin.marker else ""
        hashes = " ".join(f"--hash=sha256:{house.sha256(f)}" for f in pin.files)
        lines.append(f"{pin.name}=={pin.version}{marker} \\\n    {hashes}")
    path.write_text("\n".join(lines) + "\n")
    return path


# --------------------------------------------------------------------------------------------
# running and reading images
# --------------------------------------------------------------------------------------------
def run_in_runc(layout: Path, tag: str, workdir: Path, name: str, args: Sequence[str] | None = None) -> str:
    """Unpack ``layout:tag`` with umoci and run it with runc; returns what it printed."""
    runc = require_tool("runc")
    bundle = workdir / f"bundle-{name}"
    umoci_unpack(layout, tag, bundle)
    config_path = bundle / "config.json"
    config = json.loads(config_path.read_text())
    config["process"]["terminal"] = False
    if args is not None:
        config["process"]["args"] = list(args)
    config_path.write_text(json.dumps(config))
    container = f"cib-pyapp-{os.getpid()}-{name}"[:60]
    done = subprocess.run([runc, "run", "-b", str(bundle), container], capture_output=True,
                          text=True, stdin=subprocess.DEVNULL, timeout=120, check=False)
    subprocess.run([runc, "delete", "-f", container], capture_output=True, check=False)
    assert done.returncode == 0, f"runc failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done.stdout


def layer_members(blob: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob))) as tar:
        return {m.name: m for m in tar.getmembers()}


def layer_file(blob: bytes, name: str) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob))) as tar:
        member = tar.extractfile(name)
        assert member is not None, name
        return member.read()


def iter_layers(layout: Path, manifest: Mapping[str, Any]) -> Iterator[bytes]:
    for layer in manifest["layers"]:
        yield (layout / "blobs" / "sha256" / layer["digest"].split(":")[1]).read_bytes()


BACKEND = textwrap.dedent('''\
    """A PEP 517 build backend for the tests: a wheel of the project's one module."""
    import base64
    import hashlib
    import zipfile


    def _hash(data):
        return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


    INFO = "cibtest_tiny-1.0.dist-info"


    def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
        files = {
            "cibtest_tiny.py": open("cibtest_tiny.py", "rb").read(),
            f"{INFO}/METADATA": b"Metadata-Version: 2.1\\nName: cibtest-tiny\\nVersion: 1.0\\n",
            f"{INFO}/WHEEL": b"Wheel-Version: 1.0\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n",
            f"{INFO}/entry_points.txt": b"[console_scripts]\\ntiny = cibtest_tiny:main\\n",
        }
        record = "".join(f"{n},{_hash(d)},{len(d)}\\n" for n, d in files.items())
        files[f"{INFO}/RECORD"] = (record + f"{INFO}/RECORD,,\\n").encode()
        name = "cibtest_tiny-1.0-py3-none-any.whl"
        with zipfile.ZipFile(f"{wheel_directory}/{name}", "w") as archive:
            for member, data in files.items():
                archive.writestr(member, data)
        return name
    ''')


def add_backend_wheel(house: Wheelhouse) -> None:
    """``cibtest-backend``, a build backend only the index has (not the running Python)."""
    path = make_wheel(house.root, "cibtest-backend", "1.0", {"cibtest_backend.py": BACKEND})
    house.files[path.name] = path


def write_tiny_project(directory: Path) -> Path:
    """A project built by ``cibtest-backend``, which cib must install to build it."""
    directory.mkdir(parents=True)
    (directory / "cibtest_tiny.py").write_text("def main():\n    print('tiny')\n")
    (directory / "pyproject.toml").write_text(textwrap.dedent("""\
        [build-system]
        requires = ["cibtest-backend"]
        build-backend = "cibtest_backend"

        [project]
        name = "cibtest-tiny"
        version = "1.0"
        """))
    return directory
