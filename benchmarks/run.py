"""cib's performance benchmark: cib side by side with the original Node.js library, umoci and
skopeo, on this machine, in one run.

    .venv/bin/python -m benchmarks.run            # everything, median of 3 runs
    .venv/bin/python -m benchmarks.run --runs 5 --only a,c
    .venv/bin/python -m benchmarks.run --only k,u,s   # many small files and start-up

Scenarios: (a) a 200 MB tree built and pushed, against the Node library, tar + umoci + skopeo
and the registry's own floor; (b) a 4-layer copy between registries and (d) into an OCI
layout, against skopeo; (c) an unchanged rebuild of (a)'s tree; (e) a 1 GiB layer's peak RSS;
(f) a fresh CI runner against a warm cache repository; (k) 100,000 small files built and
pushed against tar + umoci + skopeo; (m) 1,000,000 small files, peak RSS; (u) an unchanged
rebuild of (k)'s tree; (s) start-up: ``cib --version``, ``cib --help`` and ``import cib_core``,
ten runs each; (p) and (pf) a Python app (benchmarks/python_app.py); (z) floors: the imports a
command cannot avoid, hashing the tree, a C walk of the 100k tree, set beside the targets above.
Each timed sample records the machine's one-minute load average when it started (other work
shares the machine).

Not part of the test suite (no pytest). Needs docker-registry, skopeo, umoci, and for (a) node and
npm; the Node library is installed with npm into ``WORKDIR/node`` (outside the repository) on first use.
Every timed command runs in its own process under ``/usr/bin/time``; wall time is measured
around it and peak RSS is time's ``%M`` (the command and its children; a shell pipeline reports
its largest process). Registries run on loopback and are started outside the timing; a
fresh destination registry per timed run keeps blob-info caches (skopeo's) and earlier runs'
blobs from helping anyone. Results: a table on stdout and ``benchmarks/results/*.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
NODE_PACKAGE = "container-image-builder@3.2.0"
# 3.2.0 requires cross-spawn at run time but lists it only among its devDependencies
NODE_EXTRA = "cross-spawn@6"
MiB = 1 << 20


# --------------------------------------------------------------------------------------------
# processes and registries
# --------------------------------------------------------------------------------------------
@dataclass
class Sample:
    wall: float
    rss_mb: float
    load: float = 0.0  # one-minute load average when the command started


def measure(cmd: Sequence[str] | str, *, env: dict[str, str] | None = None, cwd: Path | None = None,
            label: str = "") -> Sample:
    """Run ``cmd``; wall seconds and peak RSS (MB) of it and its children. Fails loudly.

    The command runs under ``/usr/bin/time``, a small process, so the peak RSS is the
    command's own: a child forked straight from this (large) Python process would start its
    ``ru_maxrss`` from ours.
    """
    argv = ["/bin/bash", "-c", cmd] if isinstance(cmd, str) else list(cmd)
    stats = Path(os.environ.get("TMPDIR", "/tmp")) / f"cib-bench-time-{os.getpid()}"
    load = os.getloadavg()[0]
    started = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", str(stats), *argv], env=env, cwd=cwd,
                          capture_output=True, check=False)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{label or cmd} failed ({proc.returncode}):\n"
                         f"{proc.stdout.decode(errors='replace')}\n{proc.stderr.decode(errors='replace')}")
    max_kb = int(stats.read_text().split()[-1])
    stats.unlink()
    return Sample(wall=wall, rss_mb=max_kb / 1024, load=load)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Registry:
    """``docker-registry serve`` on a loopback port, storage and access log under ``root``."""

    def __init__(self, root: Path) -> None:
        if root.exists():
            shutil.rmtree(root)
        root.mkdir(parents=True)
        self.root = root
        self.storage = root / "storage"
        self.log_path = root / "registry.log"
        port = free_port()
        self.host = f"127.0.0.1:{port}"
        config = {
            "version": 0.1,
            "log": {"level": "info", "formatter": "text", "accesslog": {"disabled": False}},
            "storage": {"filesystem": {"rootdirectory": str(self.storage)},
                        "delete": {"enabled": True},
                        "maintenance": {"uploadpurging": {"enabled": False}}},
            "http": {"addr": self.host, "secret": "benchmark"},
        }
        (root / "config.yml").write_text(json.dumps(config))
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(["docker-registry", "serve", str(root / "config.yml")],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.05)
        self.stop()
        raise SystemExit(f"docker-registry did not start on {self.host}; see {self.log_path}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # by PID: only the registry this script started
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def upload_requests(self) -> int:
        """Blob-upload requests (POST/PATCH/PUT on ``/blobs/uploads``) in the access log so far."""
        text = self.log_path.read_text(errors="replace")
        return len(re.findall(r'"(?:POST|PATCH|PUT) /v2/\S+/blobs/uploads', text))

    def blob_count(self) -> int:
        return sum(1 for _ in (self.storage / "docker/registry/v2/blobs").rglob("data"))


@contextmanager
def registry(root: Path) -> Iterator[Registry]:
    reg = Registry(root)
    try:
        yield reg
    finally:
        reg.stop()


# --------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------
WORDS = ("the of and to in is that for it as was with be by on not he this are or his from at "
         "which but have an they you were her she there one all we their can has been if more "
         "when will would who so no layer image registry container build push digest manifest "
         "config python node function return import class def self value error const let var "
         "async await promise string number object array true false null none yield lambda").split()


def make_tree(root: Path) -> int:
    """~200 MB: text files, random files and 2,000 small files. Deterministic; returns bytes."""
    marker = root / ".complete"
    if marker.exists():
        return int(marker.read_text())
    if root.exists():
        shutil.rmtree(root)
    rng = random.Random(7)
    total = 0
    text_dir = root / "text"
    text_dir.mkdir(parents=True)
    for i in range(45):  # 45 x 2 MiB of source-like text
        lines = []
        size = 0
        while size < 2 * MiB:
            line = " ".join(rng.choices(WORDS, k=rng.randint(3, 14))) + "\n"
            lines.append(line)
            size += len(line)
        data = "".join(lines).encode()
        (text_dir / f"file{i:03d}.txt").write_bytes(data)
        total += len(data)
    rand_dir = root / "random"
    rand_dir.mkdir()
    for i in range(10):  # 10 x 10 MiB incompressible
        data = rng.randbytes(10 * MiB)
        (rand_dir / f"blob{i:02d}.bin").write_bytes(data)
        total += len(data)
    for i in range(2000):  # 2,000 small files in 40 directories
        d = root / "small" / f"d{i % 40:02d}"
        d.mkdir(parents=True, exist_ok=True)
        n = rng.randint(512, 8192)
        if i % 2:
            data = rng.randbytes(n)
        else:
            data = " ".join(rng.choices(WORDS, k=n // 5)).encode()
        (d / f"f{i:04d}.dat").write_bytes(data)
        total += len(data)
    marker.write_text(str(total))
    return total


def make_many(root: Path, count: int) -> int:
    """``count`` small files (32 B to 1 KiB of source-like text) in a node_modules-like tree:
    groups of 100 packages, each a directory with lib/, lib/util/ and test/, 25 files in
    each. Deterministic; kept between runs; returns the files' bytes."""
    marker = root / ".complete"
    if marker.exists():
        return int(marker.read_text())
    if root.exists():
        shutil.rmtree(root)
    rng = random.Random(5)
    words = [w.encode() for w in WORDS]
    total = made = package = 0
    while made < count:
        base = root / f"g{package // 100:04d}" / f"pkg{package:06d}"
        for sub in ("", "lib", "lib/util", "test"):
            d = base / sub if sub else base
            d.mkdir(parents=True, exist_ok=True)
            for i in range(25):
                if made == count:
                    break
                data = b" ".join(rng.choices(words, k=rng.randint(32, 1024) // 5))
                fd = os.open(d / f"f{i:02d}.js", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                try:
                    os.write(fd, data)
                finally:
                    os.close(fd)
                total += len(data)
                made += 1
        package += 1
    marker.write_text(str(total))
    time.sleep(2.5)  # let the new files age past the rebuild cache's safety margin
    return total


def make_big(root: Path, size: int) -> None:
    target = root / "big.bin"
    if target.exists() and target.stat().st_size == size:
        return
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(11)
    with target.open("wb") as f:
        for _ in range(size // (16 * MiB)):
            f.write(rng.randbytes(16 * MiB))


# --------------------------------------------------------------------------------------------
# tools
# --------------------------------------------------------------------------------------------
@dataclass
class Tools:
    python: str
    cib: list[str]
    node_modules: Path
    env: dict[str, str] = field(default_factory=dict)

    def cib_env(self, cache: Path) -> dict[str, str]:
        env = dict(self.env)
        env["CIB_CACHE_DIR"] = str(cache)
        return env


SKOPEO = ["skopeo", "--insecure-policy", "copy", "-q", "--src-tls-verify=false", "--dest-tls-verify=false"]


def install_cib(workdir: Path) -> Path:
    """cib as users get it: a regular install of this working tree (not the editable one of
    the development venv, whose import hook costs every command ~8 ms) into WORKDIR/venv,
    byte-compiled by pip. Dependencies are installed on first use; cib itself every time."""
    venv = workdir / "venv"
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    if not (venv / "bin" / "python").exists():
        print(f"installing cib with its dependencies into {venv}", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        # a Python developer's environment: the Python app scenario builds its project with
        # the setuptools found there, as pip --no-build-isolation does for the peer pipeline
        subprocess.run([*pip, str(REPO), "setuptools>=68", "wheel"], check=True)
    else:
        subprocess.run([*pip, "--force-reinstall", "--no-deps", str(REPO)], check=True,
                       stdout=subprocess.DEVNULL)
    return venv / "bin" / "cib"


def ensure_node_library(workdir: Path) -> Path:
    node_dir = workdir / "node"
    module = node_dir / "node_modules" / "container-image-builder"
    if not (module / "package.json").exists() or not (node_dir / "node_modules/cross-spawn").exists():
        node_dir.mkdir(parents=True, exist_ok=True)
        print(f"installing {NODE_PACKAGE} with npm into {node_dir}", flush=True)
        if not (node_dir / "package.json").exists():
            (node_dir / "package.json").write_text('{"name": "cib-bench-node", "private": true}\n')
        subprocess.run(["npm", "install", NODE_PACKAGE, NODE_EXTRA, "--no-audit", "--no-fund", "--silent"],
                       cwd=node_dir, check=True)
    return node_dir / "node_modules"


def cib_build(tools: Tools, base: str, target: str, src: Path, dest: str, cache: Path) -> Sample:
    return measure([*tools.cib, "build", "--from", base, "--to", target, "--add", f"{src}:{dest}"],
                   env=tools.cib_env(cache), label="cib build")


# --------------------------------------------------------------------------------------------
# scenarios
# --------------------------------------------------------------------------------------------
@dataclass
class Row:
    scenario: str
    tool: str
    samples: list[Sample]

    @property
    def wall(self) -> float:
        return statistics.median(s.wall for s in self.samples)

    @property
    def rss(self) -> float:
        return statistics.median(s.rss_mb for s in self.samples)


@dataclass
class Check:
    name: str
    value: float
    target: str
    met: bool | None  # None: a figure for context, not a target


def push_base(tools: Tools, reg: Registry, base_dir: Path, cache: Path) -> str:
    """A small Docker-flavoured base (the Node library reads only Docker schema 2) in ``reg``."""
    layout = base_dir.parent / "base-layout"
    if not (layout / "index.json").exists():
        measure([*tools.cib, "build", "--from", "scratch", "--to", f"oci:{layout}:latest",
                 "--add", f"{base_dir}:/etc"], env=tools.cib_env(cache), label="make base")
    ref = f"{reg.host}/app:base"  # the target repository: the Node library never copies base blobs
    measure([*SKOPEO, "--format", "v2s2", f"oci:{layout}:latest", f"docker://{ref}"], label="push base")
    return ref


def finished_layer(tools: Tools, work: Path, tree: Path) -> tuple[Path, str]:
    """The layer scenario (a) pushes, as a finished blob file, and its digest."""
    layout = work / "a-floor-layout"
    shutil.rmtree(layout, ignore_errors=True)
    measure([*tools.cib, "build", "--from", "scratch", "--to", f"oci:{layout}:latest",
             "--add", f"{tree}:/data"], env=tools.cib_env(work / "a-floor-cache"), label="floor layer")
    blob = max((layout / "blobs" / "sha256").iterdir(), key=lambda p: p.stat().st_size)
    return blob, f"sha256:{blob.name}"


def curl_push(blob: Path, digest: str, host: str) -> str:
    """A shell script in which curl pushes ``blob`` as one streamed PATCH and the closing PUT:
    what the registry alone needs to take the layer, with no build and next to no client."""
    location = "tr -d '\\r' | sed -n 's/^[Ll]ocation: //p'"
    return (f"set -e; loc=$(curl -sSf -D - -o /dev/null -X POST http://{host}/v2/floor/blobs/uploads/ "
            f"| {location}); "
            f"loc=$(curl -sSf -D - -o /dev/null -X PATCH -H 'Content-Type: application/octet-stream' "
            f"-T {blob} \"$loc\" | {location}); "
            f"curl -sSf -o /dev/null -X PUT \"$loc&digest={digest}\"")


def scenario_a(tools: Tools, work: Path, tree: Path, base_dir: Path, runs: int,
               rows: list[Row], checks: list[Check]) -> None:
    cib_s, node_s, umoci_s, floor_s = [], [], [], []
    base_layout = work / "a-base-layout"
    blob, digest = finished_layer(tools, work, tree)
    for i in range(runs):
        # cib
        with registry(work / "a-reg") as reg:
            cache = work / "a-cache"
            shutil.rmtree(cache, ignore_errors=True)
            base = push_base(tools, reg, base_dir, work / "a-cache-base")
            cib_s.append(cib_build(tools, base, f"{reg.host}/app:latest", tree, "/data", cache))
        # the original library
        with registry(work / "a-reg") as reg:
            base = push_base(tools, reg, base_dir, work / "a-cache-base")
            env = dict(tools.env, NODE_PATH=str(tools.node_modules))
            node_s.append(measure(["node", str(HERE / "node_driver.js"), base, f"{reg.host}/app:latest",
                                   str(tree)], env=env, label="container-image-builder"))
        # umoci raw add-layer + skopeo copy (the base layout is prepared outside the timing)
        with registry(work / "a-reg") as reg:
            base = push_base(tools, reg, base_dir, work / "a-cache-base")
            shutil.rmtree(base_layout, ignore_errors=True)
            measure([*SKOPEO, f"docker://{base}", f"oci:{base_layout}:latest"], label="prepare layout")
            tar = work / "a-layer.tar"
            script = (f"tar -C {tree} --transform 's,^\\.,data,' -cf {tar} . && "
                      f"umoci raw add-layer --image {base_layout}:latest --tag new {tar} && "
                      f"{' '.join(SKOPEO)} oci:{base_layout}:new docker://{reg.host}/app:latest")
            umoci_s.append(measure(script, env=tools.env, label="umoci+skopeo"))
            tar.unlink()
        # the floor: the registry taking the finished blob from curl
        with registry(work / "a-reg") as reg:
            floor_s.append(measure(curl_push(blob, digest, reg.host), label="curl push"))
            if reg.blob_count() != 1:
                raise SystemExit(f"curl's push of {digest} did not arrive; see {reg.log_path}")
        print(f"  (a) run {i + 1}: cib {cib_s[-1].wall:.2f}s, node {node_s[-1].wall:.2f}s, "
              f"umoci+skopeo {umoci_s[-1].wall:.2f}s, curl push {floor_s[-1].wall:.2f}s", flush=True)
    rows += [Row("a build+push 200 MB", "cib", cib_s),
             Row("a build+push 200 MB", "container-image-builder 3.2.0", node_s),
             Row("a build+push 200 MB", "umoci add-layer + skopeo", umoci_s),
             Row("a push of the finished layer", "curl (registry floor)", floor_s)]
    cib, node, umoci, floor = (statistics.median(s.wall for s in x)
                               for x in (cib_s, node_s, umoci_s, floor_s))
    checks.append(Check("(a) node / cib", node / cib, ">= 10", node / cib >= 10))
    checks.append(Check("(a) (umoci+skopeo) / cib", umoci / cib, ">= 1", umoci / cib >= 1))
    checks.append(Check("(a) node / curl floor (the most possible)", node / floor, "(info)", None))


def make_four_layer_image(tools: Tools, reg: Registry, work: Path) -> str:
    """A 4-layer image of 64 MiB random files (256 MiB of layers) in ``reg``."""
    ref = None
    rng = random.Random(3)
    for n in range(4):
        d = work / f"b-layer{n}"
        if not (d / "blob.bin").exists():
            d.mkdir(parents=True, exist_ok=True)
            (d / "blob.bin").write_bytes(rng.randbytes(64 * MiB))
        to = f"{reg.host}/four:latest"
        measure([*tools.cib, "build", "--from", ref or "scratch", "--to", to, "--add", f"{d}:/l{n}"],
                env=tools.cib_env(work / "b-cache"), label="make 4-layer image")
        ref = to
    assert ref is not None
    return ref


def peer_build(tools: Tools, work: Path, reg: Registry, base_dir: Path, tree: Path,
               prefix: str) -> Sample:
    """``tar`` + ``umoci raw add-layer`` + ``skopeo copy`` of ``tree`` onto the base in ``reg``
    (the base's OCI layout prepared outside the timing)."""
    base = push_base(tools, reg, base_dir, work / "a-cache-base")
    base_layout = work / f"{prefix}-base-layout"
    shutil.rmtree(base_layout, ignore_errors=True)
    measure([*SKOPEO, f"docker://{base}", f"oci:{base_layout}:latest"], label="prepare layout")
    tar = work / f"{prefix}-layer.tar"
    script = (f"tar -C {tree} --transform 's,^\\.,data,' -cf {tar} . && "
              f"umoci raw add-layer --image {base_layout}:latest --tag new {tar} && "
              f"{' '.join(SKOPEO)} oci:{base_layout}:new docker://{reg.host}/app:latest")
    try:
        return measure(script, env=tools.env, label="umoci+skopeo")
    finally:
        tar.unlink(missing_ok=True)


def scenario_k(tools: Tools, work: Path, tree: Path, base_dir: Path, runs: int,
               rows: list[Row], checks: list[Check]) -> None:
    """100,000 small files built and pushed, cib against tar + umoci + skopeo."""
    cib_s, peer_s = [], []
    for i in range(runs):
        with registry(work / "k-reg") as reg:
            cache = work / "k-cache"
            shutil.rmtree(cache, ignore_errors=True)
            base = push_base(tools, reg, base_dir, work / "a-cache-base")
            cib_s.append(cib_build(tools, base, f"{reg.host}/app:latest", tree, "/data", cache))
        with registry(work / "k-reg") as reg:
            peer_s.append(peer_build(tools, work, reg, base_dir, tree, "k"))
        print(f"  (k) run {i + 1}: cib {cib_s[-1].wall:.2f}s {cib_s[-1].rss_mb:.0f} MB, "
              f"umoci+skopeo {peer_s[-1].wall:.2f}s", flush=True)
    rows += [Row("k build+push 100k files", "cib", cib_s),
             Row("k build+push 100k files", "umoci add-layer + skopeo", peer_s)]
    ratio = statistics.median(s.wall for s in cib_s) / statistics.median(s.wall for s in peer_s)
    checks.append(Check("(k) cib / (umoci+skopeo)", ratio, "<= 0.9", ratio <= 0.9))
    peak = max(s.rss_mb for s in cib_s)
    checks.append(Check("(k) cib peak RSS MB (max of runs)", peak, "< 64", peak < 64))


def scenario_m(tools: Tools, work: Path, tree: Path, base_dir: Path, runs: int,
               rows: list[Row], checks: list[Check]) -> None:
    """1,000,000 small files built and pushed: memory must not grow with the file count."""
    samples = []
    for i in range(runs):
        with registry(work / "m-reg") as reg:
            cache = work / "m-cache"
            shutil.rmtree(cache, ignore_errors=True)
            base = push_base(tools, reg, base_dir, work / "a-cache-base")
            samples.append(cib_build(tools, base, f"{reg.host}/app:latest", tree, "/data", cache))
        print(f"  (m) run {i + 1}: {samples[-1].wall:.2f}s, {samples[-1].rss_mb:.0f} MB", flush=True)
    rows.append(Row("m build+push 1M files", "cib", samples))
    peak = max(s.rss_mb for s in samples)
    checks.append(Check("(m) peak RSS MB (max of runs)", peak, "< 128", peak < 128))


def scenario_u(tools: Tools, work: Path, tree: Path, base_dir: Path, runs: int,
               rows: list[Row], checks: list[Check]) -> dict[str, object]:
    """(c) for (k)'s 100,000 small files: an unchanged rebuild against a first build."""
    first_s, again_s, uploads, ratios = [], [], [], []
    for i in range(runs):
        with registry(work / "u-reg") as reg:
            cache = work / "u-cache"
            shutil.rmtree(cache, ignore_errors=True)
            base = push_base(tools, reg, base_dir, work / "a-cache-base")
            target = f"{reg.host}/app:latest"
            first_s.append(cib_build(tools, base, target, tree, "/data", cache))
            before = reg.upload_requests()
            again_s.append(cib_build(tools, base, target, tree, "/data", cache))
            uploads.append(reg.upload_requests() - before)
            ratios.append(again_s[-1].wall / first_s[-1].wall)
        print(f"  (u) run {i + 1}: first {first_s[-1].wall:.2f}s, rebuild {again_s[-1].wall:.2f}s "
              f"{again_s[-1].rss_mb:.0f} MB, {uploads[-1]} upload requests", flush=True)
    rows += [Row("u first build 100k files", "cib", first_s),
             Row("u rebuild 100k, unchanged", "cib", again_s)]
    ratio = statistics.median(ratios)
    checks.append(Check("(u) rebuild / first build", ratio, "<= 0.2", ratio <= 0.2))
    checks.append(Check("(u) upload requests in rebuild (max)", max(uploads), "== 0", max(uploads) == 0))
    return {"upload_requests": uploads, "ratios": ratios}


def import_seconds(python: str, module: str) -> float:
    """Seconds ``import module`` takes inside a fresh interpreter (its start-up not counted)."""
    code = (f"import time; t = time.perf_counter(); import {module}; "
            "print(time.perf_counter() - t)")
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def scenario_s(tools: Tools, runs: int, rows: list[Row], checks: list[Check]) -> None:
    """Start-up: the commands that do nothing but start, ten runs each."""
    python = str(Path(tools.cib[0]).with_name("python"))
    for what, argv in (("cib --version", [*tools.cib, "--version"]),
                       ("cib --help", [*tools.cib, "--help"]),
                       ("python -c 'import cib_core'", [python, "-c", "import cib_core"]),
                       ("python -c pass", [python, "-c", "pass"])):
        samples = [measure(argv, env=tools.env, label=what) for _ in range(runs)]
        rows.append(Row(f"s start-up, {runs} runs", what, samples))
        median_ms = statistics.median(s.wall for s in samples) * 1000
        if what.startswith("cib"):
            checks.append(Check(f"(s) {what} median ms", median_ms, "< 60", median_ms < 60))
    inner = statistics.median(import_seconds(python, "cib_core") for _ in range(runs)) * 1000
    checks.append(Check("(s) import cib_core in-process ms", inner, "< 30", inner < 30))


# What a command must import whatever cib does: the command line (click), the hooks (pluggy)
# and the HTTP stack the transport hook's contract names (requests); for Python apps also
# the packaging libraries the packager is built on.
FLOOR_IMPORTS = {
    "registry command": "import click, pluggy, requests",
    "python app": "import click, pluggy, requests, packaging.markers, packaging.tags, "
                  "packaging.utils, tomllib, installer",
}
HASH_TREE = """
import hashlib, os, sys
h = hashlib.sha256()
for top, dirs, files in os.walk(sys.argv[1]):
    dirs.sort()
    for name in sorted(files):
        with open(os.path.join(top, name), "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
"""


def scenario_z(tools: Tools, tree: Path, many: Path, runs: int, rows: list[Row]) -> None:
    """Floors: what no implementation in Python with these libraries can go below here, to
    set beside the targets of (p), (f) and (u): an interpreter importing only the libraries a
    command needs; cib's own build imports; reading and sha256-hashing every byte of the 208
    MB tree (what a content key made from file contents must do on a machine that has never
    seen the files); GNU find's lstat walk of the 100,000-file tree (C, the same system calls
    as a no-change check)."""
    python = str(Path(tools.cib[0]).with_name("python"))
    commands = [("python -c pass", [python, "-c", "pass"])]
    commands += [(f"imports, {what}", [python, "-c", code]) for what, code in FLOOR_IMPORTS.items()]
    commands += [("imports, cib build", [python, "-c", "import cib_core.cli.app, cib_core.cli.build, "
                                         "cib_core.image"]),
                 ("imports, cib build --python-app",
                  [python, "-c", "import cib_core.cli.app, cib_core.cli.build, cib_core.image, "
                   "cib_plugins.python_app.packager"]),
                 ("sha256 of the 208 MB tree", [python, "-c", HASH_TREE, str(tree)]),
                 ("find -printf, 100k files", ["find", str(many), "-printf",
                                               "%P %y%m %s %D %i %T@ %C@\\n"])]
    for what, argv in commands:
        samples = [measure(argv, env=tools.env, label=what) for _ in range(runs)]
        rows.append(Row("z floor", what, samples))
        print(f"  (z) {what}: {statistics.median(s.wall for s in samples):.3f}s", flush=True)


def floor_checks(rows: list[Row], checks: list[Check]) -> None:
    """Each time target beside the floor under it (figures for context, not targets)."""
    walls = {(r.scenario, r.tool): r.wall for r in rows}

    def ratio(name: str, floor: list[tuple[str, str]], of: tuple[str, str], target: str) -> None:
        if of in walls and all(part in walls for part in floor):
            value = sum(walls[part] for part in floor) / walls[of]
            checks.append(Check(name, value, target, None))

    z = "z floor"
    ratio("(p) floor: app imports / first build", [(z, "imports, python app")],
          ("p python app, first build", "cib --python-app"), "<= 0.10")
    ratio("(f) floor: imports + sha256 / first", [(z, "imports, registry command"),
                                                 (z, "sha256 of the 208 MB tree")],
          ("f first build, --cache-repo", "cib"), "<= 0.15")
    ratio("(pf) floor: app imports / first build", [(z, "imports, python app")],
          ("pf python app, --cache-repo", "cib --python-app"), "<= 0.15")
    ratio("(u) floor: imports + find / first", [(z, "imports, registry command"),
                                               (z, "find -printf, 100k files")],
          ("u first build 100k files", "cib"), "<= 0.2")


def scenario_b(tools: Tools, work: Path, src: str, runs: int, rows: list[Row],
               checks: list[Check]) -> None:
    cib_s, sk_s = [], []
    for i in range(runs):
        with registry(work / "b-dst") as dst:
            cib_s.append(measure([*tools.cib, "copy", f"{src}", f"{dst.host}/copy:latest"],
                                 env=tools.cib_env(work / "b-cache"), label="cib copy"))
        with registry(work / "b-dst") as dst:
            sk_s.append(measure([*SKOPEO, f"docker://{src}", f"docker://{dst.host}/copy:latest"],
                                label="skopeo copy"))
        print(f"  (b) run {i + 1}: cib {cib_s[-1].wall:.2f}s, skopeo {sk_s[-1].wall:.2f}s", flush=True)
    rows += [Row("b copy 4x64 MiB reg->reg", "cib copy", cib_s),
             Row("b copy 4x64 MiB reg->reg", "skopeo copy", sk_s)]
    ratio = statistics.median(s.wall for s in cib_s) / statistics.median(s.wall for s in sk_s)
    checks.append(Check("(b) cib / skopeo", ratio, "<= 1.2", ratio <= 1.2))


def scenario_c(tools: Tools, work: Path, tree: Path, base_dir: Path, runs: int,
               rows: list[Row], checks: list[Check]) -> dict[str, object]:
    first_s, again_s, uploads, new_blobs, ratios = [], [], [], [], []
    for i in range(runs):
        with registry(work / "c-reg") as reg:
            cache = work / "c-cache"
            shutil.rmtree(cache, ignore_errors=True)
            base = push_base(tools, reg, base_dir, work / "a-cache-base")
            target = f"{reg.host}/app:latest"
            first_s.append(cib_build(tools, base, target, tree, "/data", cache))
            before_uploads, before_blobs = reg.upload_requests(), reg.blob_count()
            again_s.append(cib_build(tools, base, target, tree, "/data", cache))
            uploads.append(reg.upload_requests() - before_uploads)
            new_blobs.append(reg.blob_count() - before_blobs)
            ratios.append(again_s[-1].wall / first_s[-1].wall)
        print(f"  (c) run {i + 1}: first {first_s[-1].wall:.2f}s, rebuild {again_s[-1].wall:.2f}s, "
              f"{uploads[-1]} upload requests", flush=True)
    rows += [Row("c first build", "cib", first_s), Row("c rebuild, inputs unchanged", "cib", again_s)]
    ratio = statistics.median(ratios)
    checks.append(Check("(c) rebuild / first build", ratio, "<= 0.25", ratio <= 0.25))
    checks.append(Check("(c) upload requests in rebuild (max)", max(uploads), "== 0", max(uploads) == 0))
    return {"upload_requests": uploads, "new_blobs": new_blobs, "ratios": ratios}


def scenario_d(tools: Tools, work: Path, src: str, runs: int, rows: list[Row],
               checks: list[Check]) -> None:
    cib_s, sk_s = [], []
    layout = work / "d-layout"
    for i in range(runs):
        shutil.rmtree(layout, ignore_errors=True)
        cib_s.append(measure([*tools.cib, "copy", src, f"oci:{layout}:latest"],
                             env=tools.cib_env(work / "b-cache"), label="cib pull"))
        shutil.rmtree(layout, ignore_errors=True)
        sk_s.append(measure([*SKOPEO, f"docker://{src}", f"oci:{layout}:latest"], label="skopeo pull"))
        print(f"  (d) run {i + 1}: cib {cib_s[-1].wall:.2f}s, skopeo {sk_s[-1].wall:.2f}s", flush=True)
    shutil.rmtree(layout, ignore_errors=True)
    rows += [Row("d pull 4x64 MiB -> oci:", "cib copy", cib_s),
             Row("d pull 4x64 MiB -> oci:", "skopeo copy", sk_s)]
    ratio = statistics.median(s.wall for s in cib_s) / statistics.median(s.wall for s in sk_s)
    checks.append(Check("(d) cib / skopeo", ratio, "<= 1.2", ratio <= 1.2))


def scenario_e(tools: Tools, work: Path, runs: int, size: int, rows: list[Row],
               checks: list[Check]) -> None:
    big = work / "e-big"
    make_big(big, size)
    samples = []
    for i in range(runs):
        with registry(work / "e-reg") as reg:
            cache = work / "e-cache"
            shutil.rmtree(cache, ignore_errors=True)
            samples.append(cib_build(tools, "scratch", f"{reg.host}/big:latest", big, "/big", cache))
        print(f"  (e) run {i + 1}: {samples[-1].wall:.2f}s, {samples[-1].rss_mb:.0f} MB", flush=True)
    rows.append(Row(f"e build+push {size // MiB} MiB layer", "cib", samples))
    peak = max(s.rss_mb for s in samples)
    checks.append(Check("(e) peak RSS MB (max of runs)", peak, "< 100", peak < 100))


# --------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------
def machine() -> dict[str, object]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) // 1024} MiB"
    except OSError:
        pass

    def version(cmd: list[str]) -> str:
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, check=False).stdout
            return out.strip().splitlines()[0]
        except (OSError, IndexError):
            return "?"

    return {"nproc": os.cpu_count(), "cpu": cpu, "memory": mem, "python": platform.python_version(),
            "kernel": platform.release(), "skopeo": version(["skopeo", "--version"]),
            "umoci": version(["umoci", "--version"]), "node": version(["node", "--version"]),
            "registry": version(["docker-registry", "--version"])}


def table(rows: list[Row], checks: list[Check]) -> str:
    out = [f"{'scenario':<30} {'tool':<32} {'median s':>9} {'runs (s)':<22} {'peak RSS MB':>11} "
           f"{'load':>5}"]
    out.append("-" * len(out[0]))
    for r in rows:
        runs = " ".join(f"{s.wall:.2f}" for s in r.samples[:5]) + (" …" if len(r.samples) > 5 else "")
        load = statistics.median(s.load for s in r.samples)
        out.append(f"{r.scenario:<30} {r.tool:<32} {r.wall:>9.2f} {runs:<22} {r.rss:>11.0f} {load:>5.1f}")
    out.append("")
    out.append(f"{'check':<40} {'value':>8}  {'target':<8} met")
    out.append("-" * 64)
    for c in checks:
        met = "-" if c.met is None else "yes" if c.met else "NO"
        out.append(f"{c.name:<40} {c.value:>8.2f}  {c.target:<8} {met}")
    return "\n".join(out)


def fresh_checkout(tree: Path, dest: Path) -> Path:
    """A clone as a CI runner makes it: the same bytes, new inodes, new mtimes."""
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(tree, dest, copy_function=shutil.copyfile)
    return dest


def scenario_f(tools: Tools, work: Path, tree: Path, base_dir: Path, runs: int,
               rows: list[Row], checks: list[Check]) -> dict[str, object]:
    """Fresh CI runner: runner 1 builds with --cache-repo from its own checkout and empty local
    cache; runner 2 does the same from another checkout against the warm cache repository.
    Then, with no cache repository, runner 1 touches every input and builds again."""
    first_s, fresh_s, touch_s = [], [], []
    fresh_uploads, touch_uploads, ratios = [], [], []
    for i in range(runs):
        with registry(work / "f-reg") as reg:
            base = push_base(tools, reg, base_dir, work / "a-cache-base")
            target = f"{reg.host}/app:latest"
            cache_repo = f"{reg.host}/ci/cib-cache"

            def build(src: Path, cache: Path, *extra: str) -> Sample:
                return measure([*tools.cib, "build", "--from", base, "--to", target, "--add",
                                f"{src}:/data", *extra], env=tools.cib_env(cache),
                               label="cib build")

            one, two = work / "f-runner-1", work / "f-runner-2"
            for runner in (one, two):
                shutil.rmtree(runner, ignore_errors=True)
            src1 = fresh_checkout(tree, one / "checkout")
            src2 = fresh_checkout(tree, two / "checkout")
            first_s.append(build(src1, one / "cache", "--cache-repo", cache_repo))
            before = reg.upload_requests()
            fresh_s.append(build(src2, two / "cache", "--cache-repo", cache_repo))
            fresh_uploads.append(reg.upload_requests() - before)
            ratios.append(fresh_s[-1].wall / first_s[-1].wall)
            for path in src1.rglob("*"):
                os.utime(path, None)
            before = reg.upload_requests()
            touch_s.append(build(src1, one / "cache"))
            touch_uploads.append(reg.upload_requests() - before)
        print(f"  (f) run {i + 1}: first {first_s[-1].wall:.2f}s, fresh runner "
              f"{fresh_s[-1].wall:.2f}s ({fresh_uploads[-1]} upload requests), touched "
              f"{touch_s[-1].wall:.2f}s ({touch_uploads[-1]} upload requests)", flush=True)
    rows += [Row("f first build, --cache-repo", "cib", first_s),
             Row("f fresh runner, warm cache", "cib", fresh_s),
             Row("f touch every input", "cib", touch_s)]
    ratio = statistics.median(ratios)
    checks.append(Check("(f) fresh runner / first build", ratio, "<= 0.15", ratio <= 0.15))
    checks.append(Check("(f) upload requests, fresh runner (max)", max(fresh_uploads), "== 0",
                        max(fresh_uploads) == 0))
    checks.append(Check("(f) upload requests, touch (max)", max(touch_uploads), "== 0",
                        max(touch_uploads) == 0))
    return {"fresh_upload_requests": fresh_uploads, "touch_upload_requests": touch_uploads,
            "ratios": ratios}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="timed runs per tool (median; default 3)")
    parser.add_argument("--only", default="a,b,c,d,e,f,k,m,u,s,p,pf,z",
                        help="scenarios, comma separated (default all)")
    parser.add_argument("--million", type=int, default=1_000_000,
                        help="files of scenario m (default 1,000,000)")
    parser.add_argument("--workdir", default="/tmp/cib-bench", help="inputs, registries, npm cache")
    parser.add_argument("--big-mib", type=int, default=1024, help="layer size of scenario e (MiB)")
    args = parser.parse_args(argv)
    only = set(args.only.split(","))
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    for tool in ("docker-registry", "skopeo", "umoci", "tar", "curl"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed; the benchmark needs it")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CIB_", "SOURCE_DATE_EPOCH"))}
    tools = Tools(python=sys.executable, cib=[str(install_cib(work))], node_modules=Path(), env=env)
    if "a" in only:
        for tool in ("node", "npm"):
            if shutil.which(tool) is None:
                raise SystemExit(f"{tool} is not installed; scenario a needs it")
        tools.node_modules = ensure_node_library(work)

    print("preparing inputs", flush=True)
    tree = work / "tree"
    tree_bytes = make_tree(tree)
    base_dir = work / "base-files"
    base_dir.mkdir(exist_ok=True)
    (base_dir / "os-release").write_text("NAME=bench-base\n")
    time.sleep(1.5)  # let the inputs' timestamps age past the rebuild cache's safety margin

    rows: list[Row] = []
    checks: list[Check] = []
    extra: dict[str, object] = {"tree_bytes": tree_bytes}
    t0 = time.monotonic()
    if "a" in only:
        scenario_a(tools, work, tree, base_dir, args.runs, rows, checks)
    if only & {"b", "d"}:
        with registry(work / "b-src") as src_reg:
            src = make_four_layer_image(tools, src_reg, work)
            if "b" in only:
                scenario_b(tools, work, src, args.runs, rows, checks)
            if "d" in only:
                scenario_d(tools, work, src, args.runs, rows, checks)
    if "c" in only:
        extra["c"] = scenario_c(tools, work, tree, base_dir, args.runs, rows, checks)
    if "f" in only:
        extra["f"] = scenario_f(tools, work, tree, base_dir, args.runs, rows, checks)
    if "e" in only:
        scenario_e(tools, work, args.runs, args.big_mib * MiB, rows, checks)
    many = work / "many-100k"
    if only & {"k", "u", "z"}:
        extra["many_100k_bytes"] = make_many(many, 100_000)
        if "k" in only:
            scenario_k(tools, work, many, base_dir, args.runs, rows, checks)
        if "u" in only:
            extra["u"] = scenario_u(tools, work, many, base_dir, args.runs, rows, checks)
    if "m" in only:
        million = work / f"many-{args.million}"
        extra["many_1m_bytes"] = make_many(million, args.million)
        scenario_m(tools, work, million, base_dir, args.runs, rows, checks)
    if "s" in only:
        scenario_s(tools, 10, rows, checks)
    if "p" in only:
        from benchmarks.python_app import scenario_p

        extra["p"] = scenario_p(tools, work, args.runs, rows, checks)
    if "pf" in only:
        from benchmarks.python_app import scenario_pf

        extra["pf"] = scenario_pf(tools, work, args.runs, rows, checks)

    if "z" in only:
        scenario_z(tools, tree, many, 10, rows)
        floor_checks(rows, checks)

    text = table(rows, checks)
    info = machine()
    print()
    print(f"machine: {info['nproc']} CPUs, {info['cpu']}, {info['memory']}; python {info['python']}; "
          f"tree {tree_bytes / 1e6:.0f} MB; {args.runs} runs each; {time.monotonic() - t0:.0f}s")
    print(text)
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = results / f"{stamp}.json"
    path.write_text(json.dumps({
        "machine": info, "runs": args.runs, "extra": extra,
        "rows": [{"scenario": r.scenario, "tool": r.tool, "median_wall_s": r.wall,
                  "median_rss_mb": r.rss, "samples": [asdict(s) for s in r.samples]} for r in rows],
        "checks": [asdict(c) for c in checks],
    }, indent=2))
    print(f"\nresults: {path}")
    return 0 if all(c.met for c in checks if c.met is not None) else 1


if __name__ == "__main__":
    sys.exit(main())
