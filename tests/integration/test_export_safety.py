"""`cib export` end to end on crafted images in the real registry: whiteouts applied, and
entries that would escape the root refused with one error line and no output file."""

from __future__ import annotations

import gzip
import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from cib_core.testing import push_image

pytestmark = pytest.mark.integration


def _layer(*members: tuple[str, str, bytes | str]) -> bytes:
    """A gzip layer of (name, kind, data) members; kind is file, dir, symlink or hardlink."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, data in members:
            info = tarfile.TarInfo(name)
            if kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            elif kind in ("symlink", "hardlink"):
                info.type = tarfile.SYMTYPE if kind == "symlink" else tarfile.LNKTYPE
                info.linkname = str(data)
                tar.addfile(info)
            else:
                body = data.encode() if isinstance(data, str) else data
                info.size = len(body)
                tar.addfile(info, io.BytesIO(body))
    return gzip.compress(buf.getvalue(), mtime=0)


def _cib(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, HOME=str(cwd / "home"), NO_PROXY="127.0.0.1")
    script = str(Path(sys.executable).parent / "cib")
    return subprocess.run([script, *args], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=120, check=False)


CONFIG = {"architecture": "amd64", "os": "linux", "config": {}}


def test_export_applies_whiteouts_across_layers(cib_registry, tmp_path):
    lower = _layer(("etc", "dir", ""), ("etc/keep", "file", "keep"), ("etc/gone", "file", "x"),
                   ("var", "dir", ""), ("var/cache", "dir", ""), ("var/cache/old", "file", "old"))
    upper = _layer(("etc/.wh.gone", "file", ""), ("var/cache/.wh..wh..opq", "file", ""),
                   ("var/cache/new", "file", "new"), ("etc/keep", "file", "kept, newer"))
    image = push_image(cib_registry, "export/whiteouts", "1", [lower, upper], dict(CONFIG), oci=True)
    done = _cib("export", image.ref, "fs.tar", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    with tarfile.open(tmp_path / "fs.tar") as tar:
        names = {m.name.rstrip("/") for m in tar.getmembers()}
        assert tar.extractfile("etc/keep").read() == b"kept, newer"
    assert "etc/gone" not in names and "var/cache/old" not in names
    assert "var/cache/new" in names
    assert not any(".wh." in n for n in names)


@pytest.mark.parametrize("members, named", [
    ((("../escape", "file", "x"),), "../escape"),
    ((("/etc/passwd", "file", "root::0:0::/:/bin/sh"),), "/etc/passwd"),
    ((("a/../../escape", "file", "x"),), "a/../../escape"),
    ((("link", "hardlink", "../../etc/shadow"),), "link"),
    ((("out", "symlink", "/"), ("out/etc/cron.d/job", "file", "* * * * * root sh")), "out/etc/cron.d/job"),
])
def test_export_refuses_entries_that_escape_the_root(cib_registry, tmp_path, members, named):
    repo = f"export/escape{abs(hash(named)) % 10_000}"
    image = push_image(cib_registry, repo, "1", [_layer(*members)], dict(CONFIG), oci=True)
    done = _cib("export", image.ref, "fs.tar", cwd=tmp_path)
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("cib: error: "), done.stderr
    assert named in lines[0] and "escapes the root" in lines[0]
    assert "Traceback" not in done.stderr
    leftovers = [p.name for p in tmp_path.iterdir() if p.name not in ("home",)]
    assert leftovers == [], f"export left {leftovers} behind"
