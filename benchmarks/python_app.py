"""Scenario (p): a realistic Python app (flask, requests, pydantic and numpy) packaged by
``cib build --python-app``, beside the peer pipeline ``pip install --target`` + ``tar`` +
``umoci raw add-layer`` + ``skopeo copy``.

Prepared outside the timing, once: the wheels, fetched with ``pip download`` for CPython 3.11
on manylinux x86_64 into ``WORKDIR/p-wheels`` (the only network use of the benchmark), a
``requirements.txt`` pinning each with its sha256, the app project, and a Python base image
made from this machine's ``/usr/bin/python3.11`` (the test bed's) as an OCI layout, pushed to
each fresh registry with skopeo. Timed, each run into a fresh registry:

- the first build, with an empty cib cache;
- the rebuild after a one-line change to the app's code (same registry, same cache): the
  layers of the two manifests say which changed, the registry's storage how many blobs are
  new (the registry keeps manifests among its blobs);
- the peer: ``pip install --target --no-compile`` of the same locked wheels and the project
  (cib compiles no ``.pyc`` either), ``tar`` of the result, ``umoci raw add-layer`` onto the same
  base (its OCI layout copied outside the timing), ``skopeo copy`` to the registry.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path

from benchmarks.run import REPO, SKOPEO, Check, Registry, Row, Tools, measure, registry

PACKAGES = ("flask", "requests", "pydantic", "numpy")
PLATFORM = ("--platform", "manylinux2014_x86_64", "--python-version", "3.11",
            "--implementation", "cp", "--abi", "cp311", "--only-binary", ":all:")
APP = textwrap.dedent("""\
    import numpy
    import pydantic
    import requests
    from flask import Flask

    app = Flask(__name__)


    class Reading(pydantic.BaseModel):
        values: list[float]


    @app.get("/mean")
    def mean():
        reading = Reading(values=[1.0, 2.0, 3.0])
        return {"mean": float(numpy.mean(reading.values)), "requests": requests.__version__}


    def main():
        app.run(host="0.0.0.0", port=8080)
    """)


def wheelhouse(work: Path) -> tuple[Path, Path]:
    """The wheels (downloaded once) and a requirements.txt pinning every one by hash."""
    wheels = work / "p-wheels"
    marker = wheels / ".complete"
    if not marker.exists():
        shutil.rmtree(wheels, ignore_errors=True)
        print(f"fetching {', '.join(PACKAGES)} and their dependencies into {wheels}", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
                        "--dest", str(wheels), *PLATFORM, *PACKAGES], check=True)
        marker.write_text("")
    lines = []
    for wheel in sorted(wheels.glob("*.whl")):
        name, version = wheel.name.split("-")[:2]
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        lines.append(f"{re.sub(r'[-_.]+', '-', name).lower()}=={version} --hash=sha256:{digest}")
    requirements = work / "p-requirements.txt"
    requirements.write_text("\n".join(lines) + "\n")
    return wheels, requirements


def project(work: Path, requirements: Path) -> Path:
    root = work / "p-app"
    shutil.rmtree(root, ignore_errors=True)
    (root / "src" / "benchapp").mkdir(parents=True)
    (root / "src" / "benchapp" / "__init__.py").write_text("")
    (root / "src" / "benchapp" / "app.py").write_text(APP)
    (root / "pyproject.toml").write_text(textwrap.dedent(f"""\
        [build-system]
        requires = ["setuptools>=61"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "benchapp"
        version = "1.0"
        dependencies = [{", ".join(f'"{p}"' for p in PACKAGES)}]

        [project.scripts]
        benchapp = "benchapp.app:main"
        """))
    shutil.copyfile(requirements, root / "requirements.txt")
    return root


def python_base(work: Path) -> Path:
    """The test bed's Python base (Debian's interpreter, its standard library and libraries) as
    an OCI layout."""
    layout = work / "p-base-layout"
    if (layout / "index.json").exists():
        return layout
    sys.path.insert(0, str(REPO / "tests" / "integration"))
    from pyapp_support import python_rootfs_layer  # the test bed's builder, not a copy of it

    from cib_core import Image

    layer = work / "p-base-layer.tar.gz"
    layer.write_bytes(python_rootfs_layer())
    image = Image("scratch", f"oci:{layout}:latest")
    image.add_tarball(layer)
    image.env = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
    image.cmd = ["python3"]
    image.save()
    layer.unlink()
    return layout


def _push_base(layout: Path, reg: Registry) -> str:
    ref = f"{reg.host}/python:3.11"
    measure([*SKOPEO, f"oci:{layout}:latest", f"docker://{ref}"], label="push python base")
    return ref


def scenario_p(tools: Tools, work: Path, runs: int, rows: list[Row],
               checks: list[Check]) -> dict[str, object]:
    wheels, requirements = wheelhouse(work)
    base_layout = python_base(work)
    first_s, rebuild_s, peer_s = [], [], []
    ratios: list[float] = []
    rebuild_blobs: list[int] = []
    changed_layers: list[int] = []
    for i in range(runs):
        app = project(work, requirements)
        cache = work / "p-cache"
        shutil.rmtree(cache, ignore_errors=True)
        with registry(work / "p-reg") as reg:
            base = _push_base(base_layout, reg)
            target = f"{reg.host}/app:latest"
            build = [*tools.cib, "build", "--from", base, "--to", target, "--python-app", str(app),
                     "--find-links", str(wheels)]
            env = dict(tools.cib_env(cache), PIP_CONFIG_FILE="/dev/null")
            first_s.append(measure(build, env=env, label="cib build --python-app"))
            before = reg.blob_count()
            first_layers = _layers(reg, "app", "latest")
            main = app / "src" / "benchapp" / "app.py"
            main.write_text(main.read_text().replace('port=8080', 'port=8081'))
            rebuild_s.append(measure(build, env=env, label="cib rebuild --python-app"))
            rebuild_blobs.append(reg.blob_count() - before)
            changed_layers.append(sum(a != b for a, b in zip(first_layers, _layers(reg, "app", "latest"),
                                                             strict=True)))
            ratios.append(rebuild_s[-1].wall / first_s[-1].wall)
        with registry(work / "p-reg") as reg:
            _push_base(base_layout, reg)
            layout = work / "p-peer-layout"
            shutil.rmtree(layout, ignore_errors=True)
            shutil.copytree(base_layout, layout)
            site, tar = work / "p-peer-site", work / "p-peer-layer.tar"
            shutil.rmtree(site, ignore_errors=True)
            pip = f"{Path(tools.cib[0]).parent / 'python'} -m pip"
            script = (f"{pip} install --quiet --disable-pip-version-check --no-compile --no-index "
                      f"--find-links {wheels} --target {site} -r {requirements} && "
                      f"{pip} install --quiet --disable-pip-version-check --no-compile --no-index "
                      f"--no-deps --no-build-isolation --target {site} {app} && "
                      f"tar -C {site} --transform 's,^\\.,opt/app/site,' -cf {tar} . && "
                      f"umoci raw add-layer --image {layout}:latest --tag new {tar} && "
                      f"{' '.join(SKOPEO)} oci:{layout}:new docker://{reg.host}/app:latest")
            peer_s.append(measure(script, env=dict(tools.env, PIP_CONFIG_FILE="/dev/null"),
                                  label="pip --target + tar + umoci + skopeo"))
            tar.unlink()
        print(f"  (p) run {i + 1}: first {first_s[-1].wall:.2f}s, rebuild {rebuild_s[-1].wall:.2f}s "
              f"({rebuild_blobs[-1]} new blobs, {changed_layers[-1]} layer changed), "
              f"peer {peer_s[-1].wall:.2f}s", flush=True)
    rows += [Row("p python app, first build", "cib --python-app", first_s),
             Row("p rebuild after 1-line change", "cib --python-app", rebuild_s),
             Row("p python app, first build", "pip --target+tar+umoci+skopeo", peer_s)]
    first = statistics.median(s.wall for s in first_s)
    peer = statistics.median(s.wall for s in peer_s)
    ratio = statistics.median(ratios)
    checks.append(Check("(p) rebuild / first build", ratio, "<= 0.10", ratio <= 0.10))
    checks.append(Check("(p) layers changed by the rebuild (max)", max(changed_layers), "== 1",
                        max(changed_layers) == 1))
    # the registry keeps manifests among its blobs: the project layer, the config, the manifest
    checks.append(Check("(p) new blobs of the rebuild (max)", max(rebuild_blobs), "== 3",
                        max(rebuild_blobs) == 3))
    checks.append(Check("(p) first build / peer pipeline", first / peer, "<= 1", first / peer <= 1))
    return {"ratios": ratios, "rebuild_new_blobs": rebuild_blobs, "changed_layers": changed_layers,
            "wheels": sorted(p.name for p in wheels.glob("*.whl"))}


def _layers(reg: Registry, repository: str, tag: str) -> list[str]:
    out = subprocess.run(["skopeo", "inspect", "--tls-verify=false", "--raw",
                          f"docker://{reg.host}/{repository}:{tag}"],
                         capture_output=True, text=True, check=True).stdout
    return [layer["digest"] for layer in json.loads(out)["layers"]]


def scenario_pf(tools: Tools, work: Path, runs: int, rows: list[Row],
                checks: list[Check]) -> dict[str, object]:
    """Scenario (pf), issue 14's fresh CI runner on the Python app: runner 1 builds with
    ``--cache-repo`` from its own copy of the project and an empty cib cache; runner 2 builds
    the same commit from another copy (new inodes and mtimes) with another empty cib cache,
    against the warm cache repository. Upload requests are counted from the registry's log."""
    wheels, requirements = wheelhouse(work)
    base_layout = python_base(work)
    first_s, fresh_s = [], []
    ratios: list[float] = []
    uploads: list[int] = []
    for i in range(runs):
        app = project(work, requirements)
        with registry(work / "pf-reg") as reg:
            base = _push_base(base_layout, reg)
            cache_repo = f"{reg.host}/ci/cib-cache"
            samples = []
            for runner in ("pf-runner-1", "pf-runner-2"):
                checkout = work / runner / "checkout"
                shutil.rmtree(work / runner, ignore_errors=True)
                shutil.copytree(app, checkout, copy_function=shutil.copyfile)
                build = [*tools.cib, "build", "--from", base, "--to", f"{reg.host}/app:latest",
                         "--python-app", str(checkout), "--find-links", str(wheels),
                         "--cache-repo", cache_repo]
                env = dict(tools.cib_env(work / runner / "cache"), PIP_CONFIG_FILE="/dev/null")
                before = reg.upload_requests()
                samples.append(measure(build, env=env, label=f"cib build --python-app ({runner})"))
            uploads.append(reg.upload_requests() - before)
        first_s.append(samples[0])
        fresh_s.append(samples[1])
        ratios.append(samples[1].wall / samples[0].wall)
        print(f"  (pf) run {i + 1}: first {samples[0].wall:.2f}s, fresh runner "
              f"{samples[1].wall:.2f}s ({uploads[-1]} upload requests)", flush=True)
    rows += [Row("pf python app, --cache-repo", "cib --python-app", first_s),
             Row("pf fresh runner, warm cache", "cib --python-app", fresh_s)]
    ratio = statistics.median(ratios)
    checks.append(Check("(pf) fresh runner / first build", ratio, "<= 0.15", ratio <= 0.15))
    checks.append(Check("(pf) upload requests, fresh runner (max)", max(uploads), "== 0",
                        max(uploads) == 0))
    return {"ratios": ratios, "fresh_upload_requests": uploads}
