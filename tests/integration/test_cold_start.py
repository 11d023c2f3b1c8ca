"""The README's library example, each time in a fresh interpreter, against a real registry.

A warm test process has long imported ``requests`` and everything cib needs before the first
build, so a race between a worker thread and the main thread importing the same module (an
``ImportError`` from a partially initialized module, a ``_DeadlockError``) cannot show there.
Here each build is the first thing a new interpreter does, twenty times, and every one of them
must push an image that a plain HTTP client then reads back from the registry.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest
import requests

from cib_core.testing import PushedImage, RegistryServer, skopeo_inspect

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
RUNS = 20
AT_ONCE = 4

_ACCEPT = ", ".join((
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
))


def readme_library_example() -> str:
    """The first ``python`` block under the README's "Using the library" heading."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Using the library", 1)[1]
    match = re.search(r"^```python\n(.*?)^```", section, re.S | re.M)
    assert match, "README.md has no python block under 'Using the library'"
    return match.group(1)


def _script(base: PushedImage, target: str) -> str:
    code = readme_library_example()
    for old, new in (("python:3.12-slim", base.ref), ("registry.example.com/team/app:1.4", target)):
        assert f'"{old}"' in code, f"the README example no longer names {old}"
        code = code.replace(f'"{old}"', f'"{new}"')
    return code


def _write_sources(work: Path) -> None:
    (work / "src" / "app").mkdir(parents=True)
    (work / "src" / "app" / "__init__.py").write_text("")
    (work / "src" / "app" / "__main__.py").write_text("print('app')\n")
    (work / "src" / "app" / "stale.pyc").write_bytes(b"\0compiled")
    (work / "src" / ".dockerignore").write_text("*.pyc\n")


def _environment(tmp_path: Path) -> dict[str, str]:
    """A user's environment: plugin autoloading on, a home of its own, no cib module loaded."""
    env = dict(os.environ)
    for name in ("CIB_DISABLE_PLUGIN_AUTOLOAD", "SOURCE_DATE_EPOCH", "REGISTRY_AUTH_FILE",
                 "PYTHONSTARTUP"):
        env.pop(name, None)
    home = tmp_path / "home"
    (home / ".docker").mkdir(parents=True)
    env.update({"HOME": str(home), "DOCKER_CONFIG": str(home / ".docker"),
                "XDG_CONFIG_HOME": str(home / ".config"), "XDG_RUNTIME_DIR": str(tmp_path / "run"),
                "PYTHON_KEYRING_BACKEND": "keyring.backends.null.Keyring",
                "NO_PROXY": "127.0.0.1,localhost,::1", "CIB_CACHE_DIR": str(tmp_path / "cache")})
    return env


def _members(blob: bytes) -> dict[str, bytes | None]:
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
        out: dict[str, bytes | None] = {}
        for member in tar.getmembers():
            extracted = tar.extractfile(member) if member.isfile() else None
            out[member.name.rstrip("/")] = extracted.read() if extracted else None
        return out


def _read_back(registry: RegistryServer, repository: str, tag: str,
               ) -> tuple[str, dict[str, Any], dict[str, Any], bytes]:
    """(digest, manifest, config, top layer blob) of ``repository:tag``, by plain HTTP."""
    session = requests.Session()
    session.trust_env = False
    base = f"{registry.url}/v2/{repository}"
    resp = session.get(f"{base}/manifests/{tag}", headers={"Accept": _ACCEPT}, timeout=30)
    assert resp.status_code == 200, f"{repository}:{tag} was not pushed: HTTP {resp.status_code}"
    manifest = resp.json()
    digest = "sha256:" + hashlib.sha256(resp.content).hexdigest()

    def blob(d: str) -> bytes:
        got = session.get(f"{base}/blobs/{d}", timeout=30)
        assert got.status_code == 200, f"{repository}@{d}: HTTP {got.status_code}"
        assert "sha256:" + hashlib.sha256(got.content).hexdigest() == d
        return got.content

    config = json.loads(blob(manifest["config"]["digest"]))
    for layer in manifest["layers"][:-1]:
        assert session.head(f"{base}/blobs/{layer['digest']}", timeout=30).status_code == 200
    return digest, manifest, config, blob(manifest["layers"][-1]["digest"])


def test_readme_library_example_in_20_fresh_interpreters(cib_registry, cib_base_image, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    _write_sources(work)
    env = _environment(tmp_path)

    def run(i: int) -> subprocess.CompletedProcess[str]:
        script = work / f"build_{i}.py"
        script.write_text(_script(cib_base_image, cib_registry.ref("cold/app", f"run{i}")))
        # a rebuild cache of its own: every run builds and streams its layer, as a first one does
        return subprocess.run([sys.executable, str(script)], cwd=work,
                              env={**env, "CIB_CACHE_DIR": str(tmp_path / f"cache-{i}")},
                              capture_output=True, text=True, timeout=300)

    with concurrent.futures.ThreadPoolExecutor(max_workers=AT_ONCE) as pool:
        done = list(pool.map(run, range(RUNS)))

    failed = [(i, p) for i, p in enumerate(done) if p.returncode != 0]
    assert not failed, f"{len(failed)} of {RUNS} fresh interpreters failed; the first:\n" + (
        f"run {failed[0][0]}, exit {failed[0][1].returncode}\n{failed[0][1].stderr[-3000:]}")
    base_layers = [layer["digest"] for layer in cib_base_image.layers]
    for i, proc in enumerate(done):
        digest, manifest, config, top = _read_back(cib_registry, "cold/app", f"run{i}")
        assert proc.stdout.strip() == f"{cib_registry.host}/cold/app@{digest}", proc.stdout
        assert [layer["digest"] for layer in manifest["layers"][:-1]] == base_layers
        assert config["config"]["Cmd"] == ["python", "-m", "app"]
        assert config["config"]["WorkingDir"] == "/app"
        assert "APP_ENV=production" in config["config"]["Env"]
        files = _members(top)
        assert files["app/VERSION"] == b"1.4\n"
        assert files["app/app/__main__.py"] == b"print('app')\n"
        assert "app/app/stale.pyc" not in files  # the .dockerignore was read


# ---------------------------------------------------------------------------------------------
# the cause, checked directly: no thread cib starts ever imports a module
# ---------------------------------------------------------------------------------------------

# Run in a fresh interpreter. An audit hook sees every import that loads a module (the
# "import" event is raised only when a module is not yet in sys.modules) and records those made
# by any thread other than the one running the flows.
_AUDIT_SCRIPT = r'''
import json
import sys
import threading

caller = None
imported_elsewhere = []


def audit(event, args):
    if event == "import" and caller is not None and threading.current_thread() is not caller:
        imported_elsewhere.append(f"{threading.current_thread().name}: {args[0]}")


sys.addaudithook(audit)
bed = json.loads(sys.argv[1])


def flows():
    from cib_core import CustomFile, Image
    from cib_core.copy import copy_image

    # a registry base read while the sources are listed, a layer streamed up, blobs mounted
    image = Image(bed["base"], bed["open"] + "/audit/flows:readme")
    image.add_files({"/app": "./src", "/app/VERSION": CustomFile("1\n")},
                    ignore_files=[".dockerignore"])
    image.save()
    # explicit credentials (no ping: the first request comes from a thread), another registry
    # (blobs streamed between registries)
    image = Image(bed["base"], bed["basic"] + "/audit/flows:explicit",
                  auth={bed["basic"]: {"Username": bed["user"], "Secret": bed["password"]}})
    image.add_files({"/app": "./src"})
    image.save()
    # credentials from a provider plugin (docker's config.json) for a token registry
    image = Image(bed["base"], bed["token"] + "/audit/flows:provider")
    image.add_files({"/app": "./src"}, ignores=["*.pyc"])
    image.save()
    # an index base: its platforms read several at a time, with the command line's progress
    # bars drawn from the threads that move the blobs
    import io
    from cib_core.cli.bars import ProgressRenderer

    bars = ProgressRenderer(stream=io.StringIO(), bars=True)
    image = Image(bed["multiarch"], bed["open"] + "/audit/flows:multi", progress=bars)
    image.add_files({"/etc/motd": CustomFile("hi\n")})
    image.save()
    bars.close()
    # local formats both ways, and docker-archive layers compressed on their way to a registry
    copy_image(bed["base"], "oci:layout:1")
    copy_image("oci:layout:1", "docker-archive:image.tar:audit/archive:1")
    copy_image("docker-archive:image.tar", bed["open"] + "/audit/flows:from-archive")
    image = Image("docker-archive:image.tar", "oci:built:1")
    image.add_files({"/app": "./src"})
    image.save()
    image = Image("scratch", "docker-archive:scratch.tar:audit/scratch:1", compression="gzip")
    image.add_files({"/app": "./src"})
    image.save()


def run():
    global caller
    caller = threading.current_thread()
    try:
        flows()
    finally:
        caller = None


if bed["in_thread"]:
    failures = []

    def guarded():
        try:
            run()
        except BaseException as exc:
            failures.append(exc)

    worker = threading.Thread(target=guarded, name="embedding-program")
    worker.start()
    worker.join()
    if failures:
        raise failures[0]
else:
    run()
print(json.dumps(imported_elsewhere))
'''


def _docker_config(home: Path, server: RegistryServer) -> None:
    import base64

    token = base64.b64encode(f"{server.username}:{server.password}".encode()).decode()
    (home / ".docker" / "config.json").write_text(json.dumps({"auths": {server.host: {"auth": token}}}))


@pytest.mark.parametrize("in_thread", [False, True], ids=["main-thread", "program-thread"])
def test_threads_cib_starts_import_nothing(in_thread, cib_registry, cib_basic_registry, cib_token_registry,
                                           cib_base_image, cib_multiarch_base_image, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    _write_sources(work)
    env = _environment(tmp_path)
    _docker_config(tmp_path / "home", cib_token_registry)
    bed = {"base": cib_base_image.ref, "multiarch": cib_multiarch_base_image.ref, "open": cib_registry.host,
           "basic": cib_basic_registry.host, "user": cib_basic_registry.username,
           "password": cib_basic_registry.password, "token": cib_token_registry.host, "in_thread": in_thread}
    script = work / "audit.py"
    script.write_text(_AUDIT_SCRIPT)
    done = subprocess.run([sys.executable, str(script), json.dumps(bed)], cwd=work, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
    # the flows did what they say (so an empty list is not an empty run)
    for server, tag in ((cib_registry, "readme"), (cib_registry, "multi"), (cib_registry, "from-archive"),
                        (cib_basic_registry, "explicit"), (cib_token_registry, "provider")):
        assert skopeo_inspect(server.ref("audit/flows", tag), creds=server.creds_arg())["Digest"]
    assert (work / "built" / "index.json").is_file() and (work / "scratch.tar").is_file()
