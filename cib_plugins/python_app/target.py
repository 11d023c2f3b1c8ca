"""The Python a base image runs, read from its config and files: nothing runs in the image.

Where an image keeps its interpreter differs: official ``python:*`` images have it in
``/usr/local/bin`` and say ``PYTHON_VERSION`` in the config; Debian's ``python3`` and
distroless Python keep it in ``/usr/bin``. So the interpreter is looked up along the config's
``PATH`` (``python3``, ``python``, then ``python3.N``), its links followed inside the image; its
standard library is ``PREFIX/lib/python3.N`` (with ``os.py``, the landmark Python itself looks
for); the ABI comes from the standard library's ``_sysconfigdata_*.py`` (``ABIFLAGS``, as text:
it is never imported) or the names of its extension modules; the C library is glibc (its
version in the text of ``libc.so.6``) or musl (``ld-musl-ARCH.so.1``). What was found is
cached per base (``BaseImage.key``), so a rebuild reads no layer, and remembered through the
base (``BaseImage.remember``, kept in the cache repository when the build has one), so that a
fresh CI runner sharing that repository reads none either.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from packaging.tags import Tag, compatible_tags, cpython_tags

from cib_core.plugin_api import BaseImage, PackagingError

log = logging.getLogger(__name__)

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
"""What runtimes use when the config sets no ``PATH``."""

CACHE_FORMAT = 1
VENV = "/opt/venv"

# OCI architecture (and variant) names -> what Python's platform.machine() says there
_MACHINES = {"amd64": "x86_64", "arm64": "aarch64", "386": "i686", "ppc64le": "ppc64le",
             "s390x": "s390x", "riscv64": "riscv64", "mips64le": "mips64", "loong64": "loongarch64"}
# the oldest manylinux_2_X tag that exists for each machine
_OLDEST_GLIBC = {"x86_64": 5, "i686": 5}
_LEGACY_MANYLINUX = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
_LEGACY_MACHINES = {17: {"x86_64", "i686", "aarch64", "armv7l", "ppc64", "ppc64le", "s390x"},
                    12: {"x86_64", "i686"}, 5: {"x86_64", "i686"}}

_PYTHON_NAME = re.compile(r"python(3)\.(\d+)([a-z]*)$")
_GLIBC_TEXT = re.compile(rb"GNU C Library[^\n\0]*? version (\d+)\.(\d+)")
_GLIBC_FILE = re.compile(r"libc-(\d+)\.(\d+)\.so$")
_MUSL_LOADER = re.compile(r"ld-musl-([a-z0-9_]+)\.so\.1$")
_SOABI = re.compile(r"\.cpython-(\d)(\d+)([a-z]*)-")
_ABIFLAGS = re.compile(r"""['"]ABIFLAGS['"]\s*:\s*['"]([a-z]*)['"]""")
_OVERRIDE_KEYS = ("interpreter", "version", "abi", "libc")
_VERSION = re.compile(r"\d+\.\d+(?:\.|$)")


@dataclass(frozen=True)
class PythonTarget:
    """One platform's Python, as far as installing wheels for it needs to know."""

    platform: str
    machine: str
    interpreter: str  # the path found along PATH, as scripts and the venv name it
    version: str  # "3.11.2", or "3.11" when the image does not say
    abi: str  # "cp311", "cp313t"
    libc: str  # "glibc" or "musl"
    libc_version: tuple[int, int]
    stdlib: str  # "/usr/lib/python3.11"

    @property
    def minor(self) -> tuple[int, int]:
        major, minor = self.version.split(".")[:2]
        return int(major), int(minor)

    @property
    def short_version(self) -> str:
        return "{}.{}".format(*self.minor)

    @property
    def site_packages(self) -> str:
        return f"{VENV}/lib/python{self.short_version}/site-packages"

    def platform_tags(self) -> list[str]:
        """Platform tags this target accepts, best first (manylinux/musllinux, then linux)."""
        machine = self.machine
        major, newest = self.libc_version
        tags = []
        if self.libc == "glibc":
            for minor in range(newest, _OLDEST_GLIBC.get(machine, 17) - 1, -1):
                tags.append(f"manylinux_{major}_{minor}_{machine}")
                legacy = _LEGACY_MANYLINUX.get(minor)
                if legacy and machine in _LEGACY_MACHINES[minor]:
                    tags.append(f"{legacy}_{machine}")
        else:
            tags += [f"musllinux_{major}_{minor}_{machine}" for minor in range(newest, -1, -1)]
        tags.append(f"linux_{machine}")
        return tags

    def tags(self) -> list[Tag]:
        """Every wheel tag this target accepts, best first (as pip orders them)."""
        platforms = self.platform_tags()
        return [*cpython_tags(self.minor, abis=[self.abi], platforms=platforms),
                *compatible_tags(self.minor, f"cp{self.minor[0]}{self.minor[1]}", platforms)]

    def environment(self) -> dict[str, str]:
        """PEP 508 marker values of this target (those an image cannot tell are empty)."""
        return {
            "implementation_name": "cpython",
            "implementation_version": self.version,
            "os_name": "posix",
            "platform_machine": self.machine,
            "platform_python_implementation": "CPython",
            "platform_release": "",
            "platform_system": "Linux",
            "platform_version": "",
            "python_full_version": self.version,
            "python_version": self.short_version,
            "sys_platform": "linux",
        }

    def describe(self) -> str:
        return (f"CPython {self.version} ({self.abi}) at {self.interpreter}, "
                f"{self.libc} {self.libc_version[0]}.{self.libc_version[1]}, {self.machine}")


def machine_of(platform: str) -> str:
    """``linux/arm64/v8`` -> ``aarch64``; ``linux/arm/v7`` -> ``armv7l``."""
    parts = platform.split("/")
    arch = parts[1] if len(parts) > 1 else parts[0]
    if arch == "arm":
        variant = parts[2] if len(parts) > 2 else "v7"
        return f"arm{variant}l"
    return _MACHINES.get(arch, arch)


def _env(config: Mapping[str, Any]) -> dict[str, str]:
    env = {}
    for entry in config.get("Env") or []:
        if isinstance(entry, str) and "=" in entry:
            name, value = entry.split("=", 1)
            env[name] = value
    return env


def detect(base: BaseImage, override: Mapping[str, str], cache_dir: str | None) -> PythonTarget:
    """The target of ``base``, from the cache when this base was read before."""
    unknown = sorted(set(override) - set(_OVERRIDE_KEYS))
    if unknown:
        raise PackagingError("python_target", f"has unknown key(s) {', '.join(unknown)}; "
                             f"use {', '.join(_OVERRIDE_KEYS)}")
    name = _facts_name(base, override)
    cache = _cache_file(cache_dir, base, name)
    if cache is not None:
        try:
            data = json.loads(cache.read_text())
            data["libc_version"] = tuple(data["libc_version"])
            return PythonTarget(**data)
        except (OSError, ValueError, TypeError, KeyError):
            pass
    target = _from_facts(base.recall(name), base)
    if target is None:
        target = _detect(base, override)
        base.remember(name, asdict(target))
    if cache is not None:
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps(asdict(target)))
            os.replace(tmp, cache)
        except OSError as exc:
            log.debug("cannot cache the Python target of %s: %s", base.name, exc)
    return target


def _cache_file(cache_dir: str | None, base: BaseImage, name: str) -> Path | None:
    if cache_dir is None:
        return None
    h = hashlib.sha256(f"{base.key}\0{base.platform}\0{name}".encode())
    return Path(cache_dir) / "targets" / f"{h.hexdigest()}.json"


def _facts_name(base: BaseImage, override: Mapping[str, str]) -> str:
    """The name the target is remembered under: the base's files are in its key already; the
    config's environment (PATH, PYTHON_VERSION) and the override decide the rest."""
    h = hashlib.sha256(json.dumps([_env(base.config), dict(override)], sort_keys=True).encode())
    return f"python-target/{CACHE_FORMAT}/{h.hexdigest()}"


_FACT_TYPES = {"platform": str, "machine": str, "interpreter": str, "version": str, "abi": str,
               "libc": str, "stdlib": str}


def _from_facts(facts: Mapping[str, Any] | None, base: BaseImage) -> PythonTarget | None:
    """A target remembered on another machine, if it has the shape ``_detect`` gives and is
    for this platform; anything else is ignored (and the base's files read again)."""
    if facts is None:
        return None
    libc_version = facts.get("libc_version")
    if (set(facts) != {*_FACT_TYPES, "libc_version"}
            or not all(isinstance(facts[k], t) for k, t in _FACT_TYPES.items())
            or facts["platform"] != base.platform
            or facts["machine"] != machine_of(base.platform)
            or not (isinstance(libc_version, list) and len(libc_version) == 2
                    and all(type(v) is int for v in libc_version))
            or not posixpath.isabs(facts["interpreter"])
            or _VERSION.match(facts["version"]) is None
            or facts["libc"] not in ("glibc", "musl")):
        log.warning("ignoring the Python target remembered for %s: it is not one this version "
                    "of cib makes; reading the base's files", base.name)
        return None
    return PythonTarget(**{**facts, "libc_version": (libc_version[0], libc_version[1])})


def _how_to_name(base: BaseImage) -> str:
    return ("name it with python_target={\"interpreter\": \"/usr/bin/python3.X\"} "
            "(cib build --python-target interpreter=/usr/bin/python3.X), or pick a base with "
            "Python, such as python:3.12-slim")


def _detect(base: BaseImage, override: Mapping[str, str]) -> PythonTarget:
    env = _env(base.config)
    interpreter = override.get("interpreter") or _find_interpreter(base, env)
    if interpreter is None:
        raise PackagingError(f"the base {base.name}", "has no Python interpreter on its PATH "
                             f"({env.get('PATH', DEFAULT_PATH)}); {_how_to_name(base)}")
    real = base.realpath(interpreter)
    info = base.stat(real) if real is not None else None
    if real is None or info is None or info.kind not in ("file", "hardlink"):
        raise PackagingError(f"the base {base.name}", f"has no interpreter at {interpreter}; "
                             f"{_how_to_name(base)}")
    version = override.get("version")
    minor = _minor_from_names(interpreter, real)
    if minor is None and version:
        minor = tuple(int(p) for p in version.split(".")[:2])  # type: ignore[assignment]
    if minor is None:
        raise PackagingError(f"the base {base.name}", f"has an interpreter at {interpreter} "
                             "whose name does not say its version; name it with python_target="
                             '{"version": "3.X"}')
    prefix = posixpath.dirname(posixpath.dirname(real))
    stdlib = posixpath.join(prefix, "lib", f"python{minor[0]}.{minor[1]}")
    if base.stat(posixpath.join(stdlib, "os.py")) is None and "version" not in override:
        raise PackagingError(f"the base {base.name}", f"has {interpreter} but no standard "
                             f"library at {stdlib}; {_how_to_name(base)}")
    if not version:
        version = _full_version(base, env, minor, real)
    elif tuple(int(p) for p in version.split(".")[:2]) != minor:
        raise PackagingError("python_target", f"version {version} contradicts the interpreter "
                             f"{interpreter} (Python {minor[0]}.{minor[1]})")
    machine = machine_of(base.platform)
    abi = override.get("abi") or _abi(base, stdlib, minor)
    libc, libc_version = (_parse_libc(override["libc"]) if override.get("libc")
                          else _libc(base, machine))
    return PythonTarget(platform=base.platform, machine=machine, interpreter=interpreter,
                        version=version, abi=abi, libc=libc, libc_version=libc_version,
                        stdlib=stdlib)


def _find_interpreter(base: BaseImage, env: Mapping[str, str]) -> str | None:
    for directory in (env.get("PATH") or DEFAULT_PATH).split(":"):
        if not directory.startswith("/"):
            continue
        names = base.listdir(directory)
        versioned = sorted((n for n in names if _PYTHON_NAME.match(n) and not n.endswith("m")),
                           key=lambda n: int(_PYTHON_NAME.match(n).group(2)),  # type: ignore[union-attr]
                           reverse=True)
        for name in ("python3", "python", *versioned):
            if name not in names:
                continue
            path = posixpath.join(directory, name)
            real = base.realpath(path)
            found = base.stat(real) if real else None
            if (found is not None and found.kind in ("file", "hardlink") and real is not None
                    and _minor_from_names(path, real) is not None):
                return path
    return None


def _minor_from_names(*paths: str) -> tuple[int, int] | None:
    for path in reversed(paths):
        m = _PYTHON_NAME.search(posixpath.basename(path))
        if m:
            return int(m.group(1)), int(m.group(2))
    return None


def _full_version(base: BaseImage, env: Mapping[str, str], minor: tuple[int, int], real: str) -> str:
    short = f"{minor[0]}.{minor[1]}"
    declared = env.get("PYTHON_VERSION", "")
    if re.fullmatch(rf"{re.escape(short)}\.\d+([abrc]+\d+)?", declared):
        return declared
    # the interpreter (or its shared library) holds its version as a string: "3.11.2"
    pattern = re.compile(rb"(?<![\d.])" + re.escape(short).encode() + rb"\.(\d+)(?:[abrc]+\d+)?\0")
    candidates = [real]
    libdir = posixpath.join(posixpath.dirname(posixpath.dirname(real)), "lib")
    candidates += [posixpath.join(libdir, n) for n in base.listdir(libdir)
                   if n.startswith(f"libpython{short}") and ".so" in n]
    for path in candidates:
        try:
            found = pattern.search(base.read(path))
        except PackagingError:
            continue
        if found:
            return found.group(0)[:-1].decode()
    return short


def _abi(base: BaseImage, stdlib: str, minor: tuple[int, int]) -> str:
    tag = f"cp{minor[0]}{minor[1]}"
    for name in base.listdir(stdlib):
        if name.startswith("_sysconfigdata_") and name.endswith(".py"):
            found = _ABIFLAGS.search(base.read(posixpath.join(stdlib, name)).decode("utf-8", "replace"))
            if found:
                return tag + found.group(1)
    for name in base.listdir(posixpath.join(stdlib, "lib-dynload")):
        found = _SOABI.search(name)
        if found and (int(found.group(1)), int(found.group(2))) == minor:
            return tag + found.group(3)
    return tag


def _parse_libc(text: str) -> tuple[str, tuple[int, int]]:
    m = re.fullmatch(r"\s*(glibc|musl)[\s-]+(\d+)\.(\d+)\s*", text)
    if not m:
        raise PackagingError("python_target", f"libc {text!r} is not like \"glibc 2.36\" or "
                             "\"musl 1.2\"")
    return m.group(1), (int(m.group(2)), int(m.group(3)))


def _libc(base: BaseImage, machine: str) -> tuple[str, tuple[int, int]]:
    for directory in ("/lib", "/usr/lib"):
        for name in base.listdir(directory):
            if _MUSL_LOADER.match(name):
                return "musl", _musl_version(base, posixpath.join(directory, name))
    directories = [f"{root}/{sub}" for root in ("/lib", "/usr/lib")
                   for sub in base.listdir(root) if sub.endswith("-linux-gnu")
                   or sub.endswith("-linux-gnueabihf")]
    directories += ["/lib64", "/usr/lib64", "/lib", "/usr/lib"]
    for directory in directories:
        names = base.listdir(directory)
        for name in names:
            m = _GLIBC_FILE.match(name)
            if m:
                return "glibc", (int(m.group(1)), int(m.group(2)))
        if "libc.so.6" in names:
            found = _GLIBC_TEXT.search(base.read(posixpath.join(directory, "libc.so.6")))
            if found:
                return "glibc", (int(found.group(1)), int(found.group(2)))
    raise PackagingError(f"the base {base.name}", "has no C library cib recognizes (no libc.so.6 "
                         "naming its glibc version, no ld-musl-*.so.1); name it with "
                         'python_target={"libc": "glibc 2.36"} (or "musl 1.2")')


def _musl_version(base: BaseImage, loader: str) -> tuple[int, int]:
    try:
        db = base.read("/lib/apk/db/installed").decode("utf-8", "replace")
    except PackagingError:
        db = ""
    m = re.search(r"^P:musl\nV:(\d+)\.(\d+)", db, re.M)
    if m:
        return int(m.group(1)), int(m.group(2))
    found = re.search(rb"(?<![\d.])(1)\.(\d+)\.\d+\0", base.read(loader))
    if found:
        return int(found.group(1)), int(found.group(2))
    raise PackagingError(f"the base {base.name}", f"has musl ({loader}) but does not say which "
                         'version; name it with python_target={"libc": "musl 1.2"}')
