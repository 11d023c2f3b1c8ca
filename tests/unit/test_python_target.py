"""The target Python read from a base's files, for the layouts real images use: official
``python:*`` images, Debian's ``python3``, distroless, Alpine (musl), a free-threaded build; the
override; and what a base's files look like through ``BaseFiles`` (whiteouts, links)."""

from __future__ import annotations

import gzip
import io
import tarfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from cib_core.apps import BaseFiles
from cib_core.errors import PackagingError
from cib_plugins.python_app.target import PythonTarget, detect, machine_of

GLIBC = b"\0GNU C Library (Debian GLIBC 2.36-9+deb12u4) stable release version 2.36.\n\0"


def _layer(files: Mapping[str, bytes | str], links: Mapping[str, str] | None = None,
           dirs: tuple[str, ...] = ()) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name in dirs:
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        for name, data in files.items():
            raw = data.encode() if isinstance(data, str) else data
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
    return gzip.compress(buffer.getvalue())


def _base(layers: list[bytes], platform: str = "linux/amd64", env: list[str] | None = None) -> BaseFiles:
    config: dict[str, Any] = {"config": {"Env": env or [
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]}}
    return BaseFiles("example/base:1", platform, config,
                     [(f"sha256:{i:064x}", lambda blob=blob: io.BytesIO(blob))
                      for i, blob in enumerate(layers)])


def _sysconfig(abiflags: str = "") -> str:
    return f"build_time_vars = {{'ABIFLAGS': '{abiflags}', 'SOABI': 'cpython-3x'}}\n"


def official(version: str = "3.12.7", abiflags: str = "") -> BaseFiles:
    """Like python:3.12-slim: /usr/local/bin/python3 -> python3.12, PYTHON_VERSION, glibc."""
    minor = ".".join(version.split(".")[:2])
    layer = _layer({f"usr/local/bin/python{minor}": "ELF",
                    f"usr/local/lib/python{minor}/os.py": "",
                    f"usr/local/lib/python{minor}/_sysconfigdata_{abiflags}_linux_x86_64-linux-gnu.py":
                        _sysconfig(abiflags),
                    "usr/lib/x86_64-linux-gnu/libc.so.6": GLIBC},
                   links={"usr/local/bin/python3": f"python{minor}", "usr/local/bin/python": "python3",
                          "lib": "usr/lib", "lib64": "usr/lib64"})
    return _base([layer], env=["PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin",
                               "LANG=C.UTF-8", f"PYTHON_VERSION={version}"])


def test_an_official_python_image() -> None:
    target = detect(official(), {}, None)
    assert target == PythonTarget(platform="linux/amd64", machine="x86_64",
                                  interpreter="/usr/local/bin/python3", version="3.12.7",
                                  abi="cp312", libc="glibc", libc_version=(2, 36),
                                  stdlib="/usr/local/lib/python3.12")
    assert target.site_packages == "/opt/venv/lib/python3.12/site-packages"
    tags = [str(t) for t in target.tags()]
    assert tags[0] == "cp312-cp312-manylinux_2_36_x86_64"
    assert tags.index("cp312-cp312-manylinux_2_17_x86_64") < tags.index("cp312-cp312-manylinux2014_x86_64") \
        < tags.index("cp312-cp312-manylinux_2_16_x86_64")
    assert "cp312-cp312-manylinux1_x86_64" in tags and "cp312-cp312-linux_x86_64" in tags
    assert "cp312-abi3-manylinux_2_17_x86_64" in tags and tags[-1] == "py30-none-any"
    assert "cp311-abi3-manylinux_2_17_x86_64" in tags  # abi3 wheels of older versions fit
    assert not [t for t in tags if "aarch64" in t or "musllinux" in t or "cp311-cp311" in t]
    env = target.environment()
    assert env["python_full_version"] == "3.12.7" and env["platform_machine"] == "x86_64"
    assert env["sys_platform"] == "linux" and env["python_version"] == "3.12"


def test_debian_python_with_the_version_in_the_binary() -> None:
    layer = _layer({"usr/bin/python3.11": b"\x7fELF...\x003.11.2\x00...",
                    "usr/lib/python3.11/os.py": "",
                    "usr/lib/python3.11/_sysconfigdata__x86_64-linux-gnu.py": _sysconfig(),
                    "usr/lib/x86_64-linux-gnu/libc.so.6": GLIBC},
                   links={"usr/bin/python3": "python3.11", "lib": "usr/lib", "bin": "usr/bin"})
    target = detect(_base([layer]), {}, None)
    assert (target.interpreter, target.version, target.abi) == ("/usr/bin/python3", "3.11.2", "cp311")
    assert target.stdlib == "/usr/lib/python3.11"


def test_distroless_python_found_through_a_link_in_lib() -> None:
    # distroless: no python3 link on PATH, only the versioned file; libc under /lib/<triplet>
    layer = _layer({"usr/bin/python3.11": "ELF", "usr/lib/python3.11/os.py": "",
                    "lib/aarch64-linux-gnu/libc.so.6": GLIBC},
                   dirs=("usr/lib/python3.11/lib-dynload",))
    with_dynload = _layer({"usr/lib/python3.11/lib-dynload/_ssl.cpython-311-aarch64-linux-gnu.so": ""})
    target = detect(_base([layer, with_dynload], platform="linux/arm64/v8"), {}, None)
    assert (target.interpreter, target.version, target.abi, target.machine) == (
        "/usr/bin/python3.11", "3.11", "cp311", "aarch64")
    assert str(target.tags()[0]) == "cp311-cp311-manylinux_2_36_aarch64"
    assert "cp311-cp311-manylinux_2_16_aarch64" not in [str(t) for t in target.tags()]


def test_alpine_is_musl() -> None:
    layer = _layer({"usr/local/bin/python3.13": "ELF", "usr/local/lib/python3.13/os.py": "",
                    "lib/ld-musl-x86_64.so.1": b"musl\x001.2.5\x00",
                    "lib/apk/db/installed": "P:busybox\nV:1.36.1-r29\n\nP:musl\nV:1.2.5-r0\n"},
                   links={"usr/local/bin/python3": "python3.13"})
    target = detect(_base([layer], env=["PATH=/usr/local/bin:/usr/bin:/bin",
                                        "PYTHON_VERSION=3.13.1"]), {}, None)
    assert (target.libc, target.libc_version) == ("musl", (1, 2))
    tags = [str(t) for t in target.tags()]
    assert tags[0] == "cp313-cp313-musllinux_1_2_x86_64" and "cp313-cp313-musllinux_1_0_x86_64" in tags
    assert not [t for t in tags if "manylinux" in t]


def test_a_free_threaded_build_has_its_own_abi() -> None:
    target = detect(official("3.13.1", abiflags="t"), {}, None)
    assert target.abi == "cp313t"
    assert str(target.tags()[0]) == "cp313-cp313t-manylinux_2_36_x86_64"


def test_a_whiteout_hides_what_a_lower_layer_had() -> None:
    removed = _layer({"usr/local/bin/.wh.python3.12": "", "usr/local/bin/.wh.python3": ""})
    base = _base([*[_layer_of(official())], removed])
    with pytest.raises(PackagingError) as caught:
        detect(base, {}, None)
    message = str(caught.value)
    assert "example/base:1 (linux/amd64)" in message and "has no Python interpreter" in message
    assert "python_target=" in message


def _layer_of(base: BaseFiles) -> bytes:
    [(_, opener)] = base._layers
    return opener().read()


def test_the_override_names_what_a_base_hides(tmp_path: Path) -> None:
    layer = _layer({"opt/py/bin/python3.12": "ELF", "opt/py/lib/python3.12/os.py": ""})
    base = _base([layer], env=["PATH=/usr/bin"])
    with pytest.raises(PackagingError, match="has no Python interpreter on its PATH"):
        detect(base, {}, None)
    with pytest.raises(PackagingError, match="has no C library cib recognizes"):
        detect(base, {"interpreter": "/opt/py/bin/python3.12"}, None)
    target = detect(base, {"interpreter": "/opt/py/bin/python3.12", "version": "3.12.4",
                           "libc": "glibc 2.28"}, str(tmp_path))
    assert (target.version, target.abi, target.libc_version) == ("3.12.4", "cp312", (2, 28))
    with pytest.raises(PackagingError, match="unknown key"):
        detect(base, {"interpeter": "/x"}, None)
    with pytest.raises(PackagingError, match="not like"):
        detect(base, {"interpreter": "/opt/py/bin/python3.12", "libc": "bionic"}, None)
    with pytest.raises(PackagingError, match="contradicts"):
        detect(base, {"interpreter": "/opt/py/bin/python3.12", "version": "3.11.1"}, None)


def test_what_was_found_is_cached_per_base(tmp_path: Path) -> None:
    base = official()
    first = detect(base, {}, str(tmp_path))
    assert list((tmp_path / "targets").glob("*.json"))
    base.close()
    reads: list[str] = []
    lazy = _base([], env=list(base.config["Env"]))
    lazy._key = base.key  # the same files: the cache answers without reading a layer
    lazy._layers = [("sha256:x", lambda: reads.append("read") or io.BytesIO(b""))]
    assert detect(lazy, {}, str(tmp_path)) == first
    assert reads == []


def test_machine_names() -> None:
    assert [machine_of(p) for p in ("linux/amd64", "linux/arm64/v8", "linux/arm/v7", "linux/arm/v6",
                                    "linux/386", "linux/ppc64le", "linux/s390x")] == [
        "x86_64", "aarch64", "armv7l", "armv6l", "i686", "ppc64le", "s390x"]


def test_base_files_follow_links_and_list_directories() -> None:
    lower = _layer({"etc/a": "lower a", "etc/b": "lower b", "opt/d/x": "x"}, links={"lib": "usr/lib"},
                   dirs=("usr/lib",))
    upper = _layer({"etc/a": "upper a", "opt/d/.wh..wh..opq": "", "opt/d/y": "y",
                    "usr/lib/libz.so.1.2": "zlib"}, links={"usr/lib/libz.so.1": "libz.so.1.2",
                                                           "etc/loop": "/etc/loop"})
    base = _base([lower, upper])
    try:
        assert base.read("/etc/a") == b"upper a" and base.read("etc/b") == b"lower b"
        assert base.listdir("/opt/d") == ["y"]
        assert base.read("/lib/libz.so.1") == b"zlib"
        assert base.realpath("/lib/libz.so.1") == "/usr/lib/libz.so.1.2"
        assert base.realpath("/etc/loop") is None and base.realpath("/nowhere") is None
        info = base.stat("/lib")
        assert info is not None and info.kind == "symlink" and info.linkname == "usr/lib"
        assert base.listdir("/lib") == ["libz.so.1", "libz.so.1.2"]
        with pytest.raises(PackagingError, match="/opt/d/x in the base .* does not exist"):
            base.read("/opt/d/x")
        with pytest.raises(PackagingError, match="is not a file"):
            base.read("/usr/lib")
    finally:
        base.close()
