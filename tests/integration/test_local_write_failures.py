"""Local targets that cannot be written: a read-only file system, a full one, /proc, a path under
a regular file, a missing parent that cannot be created.

For each, and for each writer (build, copy, export, into an OCI layout, a docker-archive or a
tarball), the library raises ``LocalWriteError`` naming the path and the reason, the command
line prints exactly one ``cib: error:`` line and exits 1, and nothing that looks like a finished
image is left: no tag in ``index.json``, no archive, no exported file.

The read-only and the full file systems are real: small tmpfs mounts this module makes and
removes itself (root only; permission bits do not stop root).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from cib_core import CibError, Image, LocalWriteError
from cib_core.cli.app import cli
from cib_core.copy import copy_image
from cib_core.formats.docker_archive import DockerArchiveWriter
from cib_core.formats.flatten import export_filesystem
from cib_core.formats.oci_layout import OCILayoutStore
from cib_core.testing import PushedImage, in_ci, skopeo_inspect

pytestmark = pytest.mark.integration

# Larger than the full file system, and incompressible, so gzip cannot make it fit.
BIG = 256 * 1024
FULL_SIZE = "64k"
MISSING = Path("/proc/cib-no-such-dir")


# --------------------------------------------------------------------------------------------
# the test bed: real mounts, made and removed here
# --------------------------------------------------------------------------------------------

def _need_root_and_mounts(why: str) -> None:
    if in_ci():
        pytest.fail(f"{why} (CI is set, so this is a failure, not a skip)", pytrace=False)
    pytest.skip(why)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """``tmpfs(name, size="64k", read_only=False)`` mounts a tmpfs at ``tmp_path/name``;
    every mount is removed when the test ends."""
    if os.geteuid() != 0:
        _need_root_and_mounts("mounting a read-only or a full tmpfs needs root")
    mounted: list[Path] = []

    def mount(name: str, *, size: str = FULL_SIZE, read_only: bool = False) -> Path:
        point = tmp_path / name
        point.mkdir()
        options = f"size={size},mode=0755" + (",ro" if read_only else "")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, f"cib-test-{name}", str(point)],
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            _need_root_and_mounts(f"cannot mount a tmpfs: {done.stderr.strip()}")
        mounted.append(point)
        return point

    try:
        yield mount
    finally:
        for point in reversed(mounted):
            if subprocess.run(["umount", str(point)], capture_output=True, check=False).returncode:
                # something still holds a file open there: detach it anyway, never leak a mount
                subprocess.run(["umount", "-l", str(point)], capture_output=True, check=True)


@dataclass(frozen=True)
class Place:
    """Where a target goes, and the reason cib must give for each kind of target."""

    name: str
    where: Callable[[Path], Path]          # the test bed -> the directory that receives targets
    reason: Callable[[str, Path], str]     # (kind, target path) -> LocalWriteError.reason


@dataclass(frozen=True)
class Bed:
    root: Path
    read_only: Path
    full: Path
    a_file: Path


def _under_a_file(kind: str, target: Path) -> str:
    return f"a part of the path is not a directory ({target.parent} is a file)"


def _missing_parent(kind: str, target: Path) -> str:
    # an OCI layout's parents are created (which /proc refuses); an archive's or an export's
    # directory must exist already
    return "/proc does not take new files" if kind == "oci" else f"the directory {MISSING} does not exist"


PLACES = [
    Place("read-only", lambda bed: bed.read_only, lambda kind, t: "it is on a read-only file system"),
    Place("full", lambda bed: bed.full, lambda kind, t: "no space left on the device"),
    Place("proc", lambda bed: Path("/proc"), lambda kind, t: "/proc does not take new files"),
    Place("under-a-file", lambda bed: bed.a_file, _under_a_file),
    Place("missing-parent", lambda bed: MISSING, _missing_parent),
]
PLACE_IDS = [p.name for p in PLACES]


@pytest.fixture
def bed(tmp_path: Path, tmpfs: Callable[..., Path]) -> Bed:
    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory\n")
    return Bed(tmp_path, tmpfs("read-only", read_only=True), tmpfs("full"), a_file)


@pytest.fixture
def big_file(tmp_path: Path) -> Path:
    path = tmp_path / "big.bin"
    path.write_bytes(os.urandom(BIG))
    return path


def _target(bed: Bed, place: Place, kind: str) -> Path:
    name = {"oci": "layout", "docker-archive": "image.tar", "export": "rootfs.tar"}[kind]
    # unique per test under /proc, so a run can never meet a leftover of another
    return place.where(bed) / (f"cib-{os.getpid()}-{name}" if place.name == "proc" else name)


def _spec(kind: str, target: Path) -> str:
    return f"oci:{target}:v1" if kind == "oci" else f"docker-archive:{target}:app:v1"


# --------------------------------------------------------------------------------------------
# what must (not) be left
# --------------------------------------------------------------------------------------------

def _tags(layout: Path) -> list[str]:
    index = layout / "index.json"
    if not index.is_file():
        return []
    return [m.get("annotations", {}).get("org.opencontainers.image.ref.name", "")
            for m in json.loads(index.read_bytes())["manifests"]]


def _leftovers(target: Path) -> list[str]:
    """Temporary files or directories cib made beside ``target`` and did not remove."""
    try:
        names = os.listdir(target.parent)
    except OSError:
        return []
    return sorted(n for n in names if n.startswith(f".{target.name}."))


def assert_nothing_finished(kind: str, place: Place, target: Path) -> None:
    if kind == "oci":
        assert _tags(target) == [], f"{target}: a failed write left a tag"
        if place.name != "full":
            assert not target.exists(), f"{target} was created"
        assert not [p for p in target.rglob("*.tmp")], f"temporary blobs left in {target}"
    else:
        assert not os.path.lexists(target), f"{target}: a failed write left a file"
    assert _leftovers(target) == [], f"temporary files left beside {target}"


def assert_names(error: LocalWriteError, kind: str, place: Place, target: Path) -> None:
    assert error.path == str(target)
    assert error.reason == place.reason(kind, target)
    assert str(target) in str(error)
    assert error.hint and error.hint in str(error)


# --------------------------------------------------------------------------------------------
# the command line
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Ran:
    returncode: int
    stdout: str
    stderr: str


def cib(*args: str, cwd: Path, stdout: int | None = None) -> Ran:
    """The installed ``cib`` script in a real subprocess."""
    env = dict(os.environ, HOME=str(cwd / "home"), NO_PROXY="127.0.0.1,localhost")
    script = str(Path(sys.executable).parent / "cib")
    done = subprocess.run([script, *args], stdout=subprocess.PIPE if stdout is None else stdout,
                          stderr=subprocess.PIPE, text=True, env=env, cwd=cwd, timeout=120,
                          check=False)
    return Ran(done.returncode, done.stdout or "", done.stderr)


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Ran]:
    """``cib ARGS`` in this process (the same command group the script runs), stdout and stderr
    apart: the many cases stay quick; ``cib()`` checks the real script."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")

    def invoke(*args: str) -> Ran:
        result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
        return Ran(result.exit_code, result.stdout, result.stderr)

    return invoke


def one_error_line(done: Ran) -> str:
    assert done.returncode == 1, (done.returncode, done.stderr)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{done.stderr}"
    assert lines[0].startswith("cib: error: cannot write "), lines[0]
    return lines[0]


# --------------------------------------------------------------------------------------------
# build
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["oci", "docker-archive"])
@pytest.mark.parametrize("place", PLACES, ids=PLACE_IDS)
def test_build_library(bed: Bed, big_file: Path, place: Place, kind: str) -> None:
    target = _target(bed, place, kind)
    with pytest.raises(LocalWriteError) as failed:
        # a path that can never be written is refused by Image() itself, the rest on writing
        image = Image("scratch", _spec(kind, target))
        image.add_files({"/data/big.bin": str(big_file)})
        image.save()
    assert isinstance(failed.value, CibError)
    assert_names(failed.value, kind, place, target)
    assert_nothing_finished(kind, place, target)


@pytest.mark.parametrize("kind", ["oci", "docker-archive"])
@pytest.mark.parametrize("place", PLACES, ids=PLACE_IDS)
def test_build_cli(bed: Bed, big_file: Path, run: Callable[..., Ran], place: Place, kind: str) -> None:
    target = _target(bed, place, kind)
    done = run("build", "--from", "scratch", "--to", _spec(kind, target),
               "--add", f"{big_file}:/data/big.bin")
    line = one_error_line(done)
    assert str(target) in line and place.reason(kind, target) in line
    assert done.stdout == ""
    assert_nothing_finished(kind, place, target)


# --------------------------------------------------------------------------------------------
# copy
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["oci", "docker-archive"])
@pytest.mark.parametrize("place", PLACES, ids=PLACE_IDS)
def test_copy_library(bed: Bed, cib_base_image: PushedImage, place: Place, kind: str) -> None:
    assert sum(layer["size"] for layer in cib_base_image.layers) > 2 * 64 * 1024  # fills the tmpfs
    target = _target(bed, place, kind)
    with pytest.raises(LocalWriteError) as failed:
        copy_image(cib_base_image.ref, _spec(kind, target))
    assert_names(failed.value, kind, place, target)
    assert_nothing_finished(kind, place, target)


@pytest.mark.parametrize("kind", ["oci", "docker-archive"])
@pytest.mark.parametrize("place", PLACES, ids=PLACE_IDS)
def test_copy_cli(bed: Bed, cib_base_image: PushedImage, run: Callable[..., Ran], place: Place,
                  kind: str) -> None:
    target = _target(bed, place, kind)
    done = run("copy", cib_base_image.ref, _spec(kind, target))
    line = one_error_line(done)
    assert str(target) in line and place.reason(kind, target) in line
    assert_nothing_finished(kind, place, target)


# --------------------------------------------------------------------------------------------
# export
# --------------------------------------------------------------------------------------------

@pytest.fixture
def source_layout(tmp_path: Path, big_file: Path) -> str:
    """A complete image in an OCI layout on an ordinary file system, to export from."""
    spec = f"oci:{tmp_path / 'source'}:v1"
    image = Image("scratch", spec)
    image.add_files({"/data/big.bin": str(big_file)})
    image.save()
    return spec


@pytest.mark.parametrize("place", PLACES, ids=PLACE_IDS)
def test_export_library(bed: Bed, source_layout: str, place: Place) -> None:
    target = _target(bed, place, "export")
    store = OCILayoutStore(source_layout[4:].rsplit(":", 1)[0])
    raw, _, _ = store.get_manifest("v1")
    digests = [layer["digest"] for layer in json.loads(raw)["layers"]]
    with pytest.raises(LocalWriteError) as failed:
        export_filesystem([lambda d=d: store.open_blob(d) for d in digests], target)
    assert_names(failed.value, "export", place, target)
    assert_nothing_finished("export", place, target)


@pytest.mark.parametrize("place", PLACES, ids=PLACE_IDS)
def test_export_cli(bed: Bed, source_layout: str, run: Callable[..., Ran], place: Place) -> None:
    target = _target(bed, place, "export")
    done = run("export", source_layout, str(target))
    line = one_error_line(done)
    assert str(target) in line and place.reason("export", target) in line
    assert_nothing_finished("export", place, target)


def test_the_installed_script_says_one_line(bed: Bed, big_file: Path, cib_base_image: PushedImage,
                                           source_layout: str) -> None:
    """The same, through the console script in a process of its own, once per command."""
    layout, archive, export = (bed.read_only / "layout", bed.read_only / "image.tar",
                               bed.read_only / "rootfs.tar")
    for args, what, target in [
        (("build", "--from", "scratch", "--to", f"oci:{layout}:v1", "--add", f"{big_file}:/big"),
         "the OCI image layout", layout),
        (("copy", cib_base_image.ref, f"docker-archive:{archive}:app:v1"), "the docker-archive", archive),
        (("export", source_layout, str(export)), "the exported filesystem", export),
    ]:
        done = cib(*args, cwd=bed.root)
        assert one_error_line(done) == (
            f"cib: error: cannot write {what} {target}: it is on a read-only file system; "
            "write it to a writable place, or remount that file system read-write")
        assert done.stdout == ""
    assert os.listdir(bed.read_only) == []


def test_export_to_a_full_stdout_is_one_line(bed: Bed, source_layout: str) -> None:
    """Standard output is the caller's file, so what was written stays; the failure is still
    one line, naming standard output."""
    with (bed.full / "out.tar").open("wb") as out:
        done = cib("export", source_layout, "-", cwd=bed.root, stdout=out.fileno())
    line = one_error_line(done)
    assert line == ("cib: error: cannot write standard output: no space left on the device; "
                    "free some space there, or write elsewhere")


def test_export_to_a_full_stream_in_the_library(bed: Bed, source_layout: str) -> None:
    store = OCILayoutStore(source_layout[4:].rsplit(":", 1)[0])
    raw, _, _ = store.get_manifest("v1")
    digest = json.loads(raw)["layers"][0]["digest"]
    path = bed.full / "stream.tar"
    with path.open("wb") as out, pytest.raises(LocalWriteError) as failed:
        export_filesystem([lambda: store.open_blob(digest)], out)
    assert failed.value.path == str(path)
    assert failed.value.reason == "no space left on the device"


# --------------------------------------------------------------------------------------------
# what a failure must not destroy or leave behind
# --------------------------------------------------------------------------------------------

def test_a_full_layout_keeps_its_tags_and_gains_none(bed: Bed, big_file: Path, tmp_path: Path) -> None:
    """A layout that already holds v1 and fills up while v2 (and a new v1) is written keeps v1
    exactly as it was, checked by skopeo, and gains no tag."""
    layout = bed.full / "layout"
    small = tmp_path / "small.txt"
    small.write_text("small\n")
    first = Image("scratch", f"oci:{layout}:v1")
    first.add_files({"/small.txt": str(small)})
    kept = first.save()
    for tag in ("v2", "v1"):
        image = Image("scratch", f"oci:{layout}:{tag}")
        with pytest.raises(LocalWriteError, match="no space left on the device"):
            image.add_files({"/data/big.bin": str(big_file)})
            image.save()
        assert _tags(layout) == ["v1"]
        assert skopeo_inspect(f"oci:{layout}:v1")["Digest"] == kept.digest
    assert not [p for p in (layout / "blobs").rglob("*") if p.name.endswith(".tmp")]


def test_a_docker_archive_that_fills_the_disk_while_closing_leaves_nothing(
        bed: Bed, tmp_path: Path, tmpfs: Callable[..., Path]) -> None:
    """The layer fits into the archive's temporary blobs, the tarball after them does not:
    save() fails, and neither the archive nor the temporary blobs remain."""
    disk = tmpfs("roomy", size="192k")
    data = tmp_path / "medium.bin"
    data.write_bytes(os.urandom(100 * 1024))
    target = disk / "image.tar"
    image = Image("scratch", f"docker-archive:{target}:app:v1")
    image.add_files({"/medium.bin": str(data)})  # the blob fits
    with pytest.raises(LocalWriteError) as failed:
        image.save()
    assert failed.value.path == str(target)
    assert failed.value.reason == "no space left on the device"
    assert os.listdir(disk) == []

    done = cib("build", "--from", "scratch", "--to", f"docker-archive:{target}:app:v1",
               "--add", f"{data}:/medium.bin", cwd=tmp_path)
    assert "no space left on the device" in one_error_line(done)
    assert os.listdir(disk) == []


def test_a_docker_archive_given_up_takes_no_more_writes(bed: Bed) -> None:
    """After a failed write the archive's blobs are gone at once (they only held the disk
    space) and every later write says why the archive was given up."""
    target = bed.full / "image.tar"
    store = DockerArchiveWriter(target, "app:v1")
    with pytest.raises(LocalWriteError, match="no space left on the device"):
        store.put_blob(os.urandom(BIG))
    assert os.listdir(bed.full) == []
    with pytest.raises(LocalWriteError) as again:
        store.put_blob(b"small")
    assert (again.value.path, again.value.reason) == (str(target), "no space left on the device")
    store.close()
    assert os.listdir(bed.full) == []


def test_an_archive_path_that_is_a_directory(tmp_path: Path, big_file: Path) -> None:
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(LocalWriteError) as failed:
        Image("scratch", f"docker-archive:{tmp_path}:app:v1")
    assert failed.value.path == str(tmp_path)
    assert failed.value.reason == "it is a directory"
    done = cib("build", "--from", "scratch", "--to", f"docker-archive:{tmp_path}:app:v1",
               "--add", f"{big_file}:/data/big.bin", cwd=tmp_path)
    assert "it is a directory; name the archive file" in one_error_line(done)
    assert sorted(os.listdir(tmp_path)) == before


# --------------------------------------------------------------------------------------------
# no permission: root may write anywhere, so these run as the user nobody
# --------------------------------------------------------------------------------------------

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]

_LIBRARY_AS_NOBODY = """
import json, sys
from cib_core import Image, LocalWriteError
from cib_core.formats.flatten import export_filesystem
from cib_core.formats.oci_layout import OCILayoutStore
kind, target, source, data = sys.argv[1:]
try:
    if kind == "export":
        store = OCILayoutStore(source)
        raw, _, _ = store.get_manifest("v1")
        digest = json.loads(raw)["layers"][0]["digest"]
        export_filesystem([lambda: store.open_blob(digest)], target)
    else:
        spec = f"oci:{target}:v1" if kind == "oci" else f"docker-archive:{target}:app:v1"
        image = Image("scratch", spec)
        image.add_files({"/data/big.bin": data})
        image.save()
except LocalWriteError as exc:
    print(json.dumps({"path": exc.path, "reason": exc.reason, "message": str(exc)}))
else:
    print("written")
"""


@pytest.fixture
def shared(tmp_path: Path, big_file: Path, source_layout: str) -> Iterator[Path]:
    """A directory the user nobody can read (pytest's own are root's only), holding the data,
    a layout to export and a directory nobody may not write to."""
    if os.geteuid() != 0:
        _need_root_and_mounts("running as another user needs root")
    root = Path(tempfile.mkdtemp(prefix="cib-test-permission-"))
    try:
        root.chmod(0o755)
        shutil.copy(big_file, root / "big.bin")
        shutil.copytree(source_layout[4:].rsplit(":", 1)[0], root / "source")
        for path in [root / "source", *(root / "source").rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        (root / "locked").mkdir(mode=0o555)
        (root / "locked").chmod(0o555)
        yield root
    finally:
        shutil.rmtree(root)


def _as_nobody(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, HOME=str(cwd), CIB_CACHE_DIR="", NO_PROXY="127.0.0.1,localhost")
    return subprocess.run([*NOBODY, *argv], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=120, check=False)


@pytest.mark.parametrize("kind", ["oci", "docker-archive", "export"])
def test_no_permission_library(shared: Path, kind: str) -> None:
    target = shared / "locked" / {"oci": "layout", "docker-archive": "image.tar"}.get(kind, "fs.tar")
    done = _as_nobody(sys.executable, "-c", _LIBRARY_AS_NOBODY, kind, str(target),
                      str(shared / "source"), str(shared / "big.bin"), cwd=shared)
    assert done.returncode == 0, done.stderr
    failure = json.loads(done.stdout)
    assert failure["path"] == str(target)
    assert failure["reason"] == "permission denied"
    assert str(target) in failure["message"]
    assert os.listdir(shared / "locked") == []


@pytest.mark.parametrize("kind", ["oci", "docker-archive", "export"])
def test_no_permission_cli(shared: Path, kind: str) -> None:
    script = str(Path(sys.executable).parent / "cib")
    if kind == "export":
        target = shared / "locked" / "fs.tar"
        argv = ["export", f"oci:{shared / 'source'}:v1", str(target)]
    else:
        target = shared / "locked" / ("layout" if kind == "oci" else "image.tar")
        argv = ["build", "--from", "scratch", "--to", _spec(kind, target),
                "--add", f"{shared / 'big.bin'}:/data/big.bin"]
    line = one_error_line(_as_nobody(script, *argv, cwd=shared))
    assert str(target) in line and ": permission denied; " in line
    assert os.listdir(shared / "locked") == []


def test_an_unwritable_layer_cache_does_not_fail_the_build(
        bed: Bed, big_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rebuild cache is an optimisation: a read-only cache directory costs the cache, not
    the build."""
    monkeypatch.setenv("CIB_CACHE_DIR", str(bed.read_only / "cache"))
    layout = tmp_path / "out"
    image = Image("scratch", f"oci:{layout}:v1")
    image.add_files({"/data/big.bin": str(big_file)})
    saved = image.save()
    assert skopeo_inspect(f"oci:{layout}:v1")["Digest"] == saved.digest
    with tarfile.open(layout / "blobs" / "sha256" / saved.manifest["layers"][0]["digest"][7:]) as tar:
        assert tar.getmember("data/big.bin").size == BIG
