"""Ctrl-C during a registry-to-registry copy: ``cib copy`` stops within a second, as ``cib
build`` does, even with a blob in flight through a slow proxy, and tags nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from cib_core.testing import FaultProxy, RegistryServer, make_layer, push_image

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

INTERRUPT_BOUND = 1.0
LAYER_BYTES = 24 << 20
THROTTLE = 2 << 20  # bytes a second: a layer takes ~12 s to come through
# A Ctrl-C at a terminal reaches a process whose SIGINT is at its default. A suite started in
# the background by a shell (`pytest ... &`) has SIGINT ignored, every child inherits that,
# and Python keeps an inherited ignore (as `nohup` relies on): cib would rightly not stop. So
# the child restores the default and then becomes cib (exec keeps the default and the PID).
WITH_DEFAULT_SIGINT = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
                       "os.execv(sys.argv[1], sys.argv[1:])")


def _env(home: Path) -> dict[str, str]:
    env = dict(os.environ, HOME=str(home), DOCKER_CONFIG=str(home / ".docker"),
               XDG_CONFIG_HOME=str(home / ".config"), CIB_DISABLE_PLUGIN_AUTOLOAD="1",
               PYTHON_KEYRING_BACKEND="keyring.backends.null.Keyring", NO_PROXY="127.0.0.1")
    env.pop("REGISTRY_AUTH_FILE", None)
    return env


def _blob_requests_in_flight(proxy: FaultProxy, digests: set[str]) -> int:
    return sum(1 for method, path, _ in list(proxy.seen)
               if method == "GET" and any(d in path for d in digests))


@pytest.mark.parametrize("layers", [1, 3])
def test_sigint_stops_a_copy_within_a_second(layers: int, cib_registry: RegistryServer,
                                             cib_second_registry: RegistryServer,
                                             cib_fault_proxy: Callable[..., FaultProxy],
                                             tmp_path: Path) -> None:
    """One layer in flight is read in the main thread; several go through the worker pool.
    Either way SIGINT ends the process within a second, exit 130, one line on stderr."""
    repo = f"interrupt/copy-{layers}-{os.getpid()}-{time.monotonic_ns()}"
    blobs = [make_layer({"data.bin": os.urandom(LAYER_BYTES // layers)}) for _ in range(layers)]
    image = push_image(cib_registry, repo, "1", blobs, {"architecture": "amd64", "os": "linux",
                                                    "config": {}}, oci=True)
    digests = {layer["digest"] for layer in image.layers}
    proxy = cib_fault_proxy(cib_registry, throttle=THROTTLE)
    home = tmp_path / "home"
    (home / ".docker").mkdir(parents=True)
    script = str(Path(sys.executable).parent / "cib")
    proc = subprocess.Popen([sys.executable, "-c", WITH_DEFAULT_SIGINT, script, "copy",
                             proxy.ref(repo, "1"), cib_second_registry.ref(repo, "1")],
                            env=_env(home), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while _blob_requests_in_flight(proxy, digests) < layers and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        assert _blob_requests_in_flight(proxy, digests) >= layers, "no blob download started"
        time.sleep(1.0)  # well into the bodies: ~2 MiB of each has come through
        assert proc.poll() is None, "the copy finished before it could be interrupted"
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        elapsed = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    print(f"INTERRUPT copy of {layers} layer(s): exit {proc.returncode} after {elapsed:.3f}s")
    assert proc.returncode == 130, err
    assert elapsed < INTERRUPT_BOUND, f"took {elapsed:.2f}s to stop after SIGINT"
    lines = err.decode().strip().splitlines()
    assert lines == ["cib: interrupted"], lines
    assert requests.get(f"{cib_second_registry.url}/v2/{repo}/manifests/1", timeout=30).status_code == 404
