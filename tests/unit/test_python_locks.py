"""Locks read for one target: markers with the target's values, wheels by its tags, what a
lock may not say; and pip's configuration as the default source of wheels."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from cib_core.errors import PackagingError
from cib_plugins.python_app.index import DEFAULT_INDEX, pip_configuration
from cib_plugins.python_app.locks import DistFile, best_wheel, find_lock, read_lock
from cib_plugins.python_app.target import PythonTarget

AMD64 = PythonTarget("linux/amd64", "x86_64", "/usr/bin/python3", "3.11.2", "cp311", "glibc",
                     (2, 36), "/usr/lib/python3.11")
ARM64 = PythonTarget("linux/arm64/v8", "aarch64", "/usr/bin/python3", "3.11.2", "cp311", "glibc",
                     (2, 36), "/usr/lib/python3.11")
SHA = {c: c * 64 for c in "abcdef"}


def _write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def test_best_wheel_follows_the_target_tags() -> None:
    files = [DistFile("x-1-py3-none-any.whl"), DistFile("x-1-cp311-cp311-manylinux_2_17_x86_64.whl"),
             DistFile("x-1-cp311-cp311-manylinux_2_28_x86_64.whl"),
             DistFile("x-1-cp311-cp311-manylinux_2_39_x86_64.whl"),  # newer glibc than the base
             DistFile("x-1-cp311-cp311-musllinux_1_2_x86_64.whl"), DistFile("x-1.tar.gz")]
    best = best_wheel(files, AMD64.tags())
    assert best is not None and best.filename == "x-1-cp311-cp311-manylinux_2_28_x86_64.whl"
    best = best_wheel(files, ARM64.tags())
    assert best is not None and best.filename == "x-1-py3-none-any.whl"
    assert best_wheel(files[-2:], ARM64.tags()) is None


def test_requirements_with_markers_for_the_target(tmp_path: Path) -> None:
    lock = read_lock(_write(tmp_path / "requirements.txt", f"""\
        # generated
        --index-url https://mirror.example/simple
        --find-links ./wheels
        numpy==2.1.3 ; platform_machine == "x86_64" \\
            --hash=sha256:{SHA['a']} \\
            --hash=sha256:{SHA['b']}
        uvloop==0.21.0 ; platform_machine == "aarch64" --hash=sha256:{SHA['c']}
        tomli==2.0.1 ; python_version < "3.11" --hash=sha256:{SHA['d']}
        flask==3.0.3 --hash=sha256:{SHA['e']}  # via app
        """))
    assert lock.index_urls == ["https://mirror.example/simple"]
    assert lock.find_links == [str(tmp_path / "wheels")]
    amd64 = lock.packages(AMD64, None)
    assert [(p.name, p.version) for p in amd64] == [("flask", "3.0.3"), ("numpy", "2.1.3")]
    assert amd64[1].hashes == {SHA["a"], SHA["b"]}
    assert [p.name for p in lock.packages(ARM64, None)] == ["flask", "uvloop"]


@pytest.mark.parametrize(("line", "expected"), [
    ("flask>=3", "is not pinned"),
    (f"flask==3.* --hash=sha256:{SHA['a']}", "is not pinned"),
    ("flask==3.0.3", "has no --hash=sha256"),
    ("-e ./lib", "has the option -e"),
    (f"git+https://example.invalid/x.git --hash=sha256:{SHA['a']}", "is not a requirement"),
])
def test_requirements_that_are_not_a_lock(tmp_path: Path, line: str, expected: str) -> None:
    path = _write(tmp_path / "requirements.txt", f"ok==1.0 --hash=sha256:{SHA['f']}\n{line}\n")
    with pytest.raises(PackagingError) as caught:
        read_lock(path)
    assert f"{path}:2" in str(caught.value) and expected in str(caught.value)


REGISTRY = 'source = { registry = "https://pypi.org/simple" }'


def _wheel(name: str, sha: str) -> str:
    return f'{{ url = "https://files.example/{name}", hash = "sha256:{sha}" }}'


NUMPY_X86 = "numpy-2.1.3-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"
NUMPY_ARM = "numpy-2.1.3-cp311-cp311-manylinux_2_17_aarch64.manylinux2014_aarch64.whl"
UV_LOCK = f"""\
    version = 1
    requires-python = ">=3.10"

    [[package]]
    name = "app"
    version = "0.1.0"
    source = {{ editable = "." }}
    dependencies = [
        {{ name = "httpx", extra = ["http2"] }},
        {{ name = "colorama", marker = "sys_platform == 'win32'" }},
        {{ name = "numpy", version = "2.1.3", {REGISTRY}, marker = "python_full_version >= '3.11'" }},
        {{ name = "numpy", version = "1.26.4", {REGISTRY}, marker = "python_full_version < '3.11'" }},
    ]

    [package.dev-dependencies]
    dev = [{{ name = "pytest" }}]

    [[package]]
    name = "httpx"
    version = "0.28.1"
    source = {{ registry = "https://pypi.org/simple" }}
    dependencies = [{{ name = "idna" }}]
    wheels = [{{ url = "https://files.example/httpx-0.28.1-py3-none-any.whl", hash = "sha256:{SHA['a']}" }}]

    [package.optional-dependencies]
    http2 = [{{ name = "h2" }}]
    brotli = [{{ name = "brotli" }}]

    [[package]]
    name = "h2"
    version = "4.1.0"
    source = {{ registry = "https://pypi.org/simple" }}
    wheels = [{{ url = "https://files.example/h2-4.1.0-py3-none-any.whl", hash = "sha256:{SHA['b']}" }}]

    [[package]]
    name = "idna"
    version = "3.10"
    source = {{ registry = "https://pypi.org/simple" }}
    wheels = [{{ url = "https://files.example/idna-3.10-py3-none-any.whl", hash = "sha256:{SHA['c']}" }}]

    [[package]]
    name = "numpy"
    version = "2.1.3"
    source = {{ registry = "https://pypi.org/simple" }}
    sdist = {{ url = "https://files.example/numpy-2.1.3.tar.gz", hash = "sha256:{SHA['d']}" }}
    wheels = [
        {_wheel(NUMPY_X86, SHA['e'])},
        {_wheel(NUMPY_ARM, SHA['f'])},
    ]

    [[package]]
    name = "numpy"
    version = "1.26.4"
    source = {{ registry = "https://pypi.org/simple" }}
    wheels = []
    """


def test_uv_lock_walked_from_the_project_for_the_target(tmp_path: Path) -> None:
    lock = read_lock(_write(tmp_path / "uv.lock", UV_LOCK))
    packages = lock.packages(ARM64, str(tmp_path))
    assert [(p.name, p.version) for p in packages] == [
        ("h2", "4.1.0"), ("httpx", "0.28.1"), ("idna", "3.10"), ("numpy", "2.1.3")]
    numpy = packages[-1]
    assert numpy.chosen is not None and "aarch64" in numpy.chosen.filename
    assert numpy.hashes == {SHA["f"]} and numpy.chosen.url is not None
    assert [p.chosen.filename for p in lock.packages(AMD64, None) if p.chosen][-1].endswith(
        "manylinux2014_x86_64.whl")


def test_uv_lock_problems_name_the_package_and_platform(tmp_path: Path) -> None:
    s390x = PythonTarget("linux/s390x", "s390x", "/usr/bin/python3", "3.11.2", "cp311", "glibc",
                         (2, 36), "/usr/lib/python3.11")
    lock = read_lock(_write(tmp_path / "uv.lock", UV_LOCK))
    with pytest.raises(PackagingError) as caught:
        lock.packages(s390x, None)
    message = str(caught.value)
    assert message.startswith("numpy 2.1.3: has no wheel for linux/s390x (CPython 3.11.2, cp311")
    assert "never builds an sdist" in message and "manylinux_2_17_aarch64" in message
    old = PythonTarget("linux/amd64", "x86_64", "/usr/bin/python3", "3.9.2", "cp39", "glibc",
                       (2, 31), "/usr/lib/python3.9")
    with pytest.raises(PackagingError, match=r"requires Python >=3.10, but the base linux/amd64 "
                                             r"has CPython 3.9.2"):
        lock.packages(old, None)
    no_root = _write(tmp_path / "other.lock", UV_LOCK.replace('source = { editable = "." }',
                                                              'source = { registry = "x" }'))
    with pytest.raises(PackagingError, match="names no project"):
        read_lock(no_root).packages(AMD64, None)


MODERN = ('{ url = "https://files.example/modern-1.0-py3-none-any.whl", '
          f'hashes = {{ sha256 = "{SHA["a"]}" }} }}')


def test_pylock_for_a_python_the_base_does_not_have(tmp_path: Path) -> None:
    path = _write(tmp_path / "pylock.toml", f"""\
        lock-version = "1.0"
        created-by = "test"

        [[packages]]
        name = "modern"
        version = "1.0"
        requires-python = ">=3.12"
        wheels = [{MODERN}]
        """)
    with pytest.raises(PackagingError) as caught:
        read_lock(path).packages(AMD64, None)
    assert "modern in" in str(caught.value) and "3.11.2" in str(caught.value)
    assert ">=3.12" in str(caught.value)
    broken = _write(tmp_path / "pylock.other.toml", "lock-version = '1.0'\n")
    with pytest.raises(PackagingError, match="is not a valid pylock.toml"):
        read_lock(broken)


def test_which_lock(tmp_path: Path) -> None:
    assert find_lock(tmp_path, None) is None
    (tmp_path / "requirements.txt").write_text("")
    (tmp_path / "uv.lock").write_text("")
    assert find_lock(tmp_path, None) == tmp_path / "uv.lock"
    with pytest.raises(PackagingError, match="does not exist"):
        find_lock(tmp_path, str(tmp_path / "nope.lock"))
    with pytest.raises(PackagingError, match="is not a file"):
        find_lock(tmp_path, str(tmp_path))


def test_pip_configuration(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / ".config" / "pip").mkdir(parents=True)
    (home / ".config" / "pip" / "pip.conf").write_text(textwrap.dedent("""\
        [global]
        index-url = https://mirror.example/simple
        extra-index-url = https://extra.example/simple
            https://more.example/simple
        [install]
        find-links = /srv/wheels
        """))
    env = {"HOME": str(home), "XDG_CONFIG_DIRS": str(tmp_path / "none")}
    sources = pip_configuration(env)
    assert sources.index_urls == ("https://mirror.example/simple", "https://extra.example/simple",
                                  "https://more.example/simple")
    assert sources.find_links == ("/srv/wheels",)
    sources = pip_configuration({**env, "PIP_INDEX_URL": "https://env.example/simple",
                                 "PIP_FIND_LINKS": "/a /b"})
    assert sources.index_urls[0] == "https://env.example/simple" and sources.find_links == ("/a", "/b")
    assert pip_configuration({**env, "PIP_NO_INDEX": "1"}).index_urls == ()
    assert pip_configuration({"HOME": str(home), "PIP_CONFIG_FILE": os.devnull}).index_urls == (
        DEFAULT_INDEX,)
