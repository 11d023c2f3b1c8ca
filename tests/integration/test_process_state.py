"""Using cib changes nothing that belongs to the program embedding it.

A fresh interpreter imports cib_core and builds (scratch into an OCI layout and into a
registry; a registry base named insecure, with ignore patterns, into a registry), then
compares the process-wide state it took before: the garbage collector, the warning filters,
the root and ``cib_core`` loggers, the signal handlers and a few more hooks. Calls that change
such state are also recorded while cib runs, with the module that made them, so a change made
and undone during the build (a collector paused while a tree is listed) shows too.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cib_core.testing import skopeo_inspect

pytestmark = pytest.mark.integration

_SCRIPT = r'''
import gc
import json
import logging
import signal
import socket
import sys
import threading
import warnings

# requests and urllib3 set warning filters of their own when imported (urllib3 adds
# "default" for its SecurityWarning); any program using requests has them, so they are part
# of the state before cib
import requests  # noqa: F401

bed = json.loads(sys.argv[1])
changes = []


def record(owner, name):
    original = getattr(owner, name)

    def wrapper(*args, **kwargs):
        caller = sys._getframe(1).f_globals.get("__name__", "")
        if caller.split(".")[0] in ("cib_core", "cib_plugins"):
            changes.append(f"{caller} called {getattr(owner, '__name__', owner)}.{name}")
        return original(*args, **kwargs)

    setattr(owner, name, wrapper)


for owner, names in ((gc, ("disable", "freeze", "set_threshold", "set_debug")),
                     (warnings, ("filterwarnings", "simplefilter", "resetwarnings")),
                     (warnings.catch_warnings, ("__enter__",)),
                     (signal, ("signal", "siginterrupt", "set_wakeup_fd", "setitimer")),
                     (logging, ("basicConfig", "captureWarnings", "disable")),
                     (logging.Logger, ("addHandler", "removeHandler", "setLevel", "addFilter")),
                     (socket, ("setdefaulttimeout",)),
                     (sys, ("setrecursionlimit", "setswitchinterval"))):
    for name in names:
        record(owner, name)


def logger_state(name):
    logger = logging.getLogger(name)
    return [logger.level, [repr(h) for h in logger.handlers], logger.propagate, logger.disabled,
            [repr(f) for f in logger.filters]]


def state():
    return {
        "gc": [gc.isenabled(), gc.get_threshold(), gc.get_debug(), gc.get_freeze_count()],
        "warnings": [repr(f) for f in warnings.filters],
        "loggers": {name: logger_state(name) for name in ("", "cib_core", "cib_plugins")},
        "logging_disabled": logging.root.manager.disable,
        "signals": {int(s): repr(signal.getsignal(s)) for s in signal.valid_signals()
                    if signal.getsignal(s) is not None},
        "hooks": [repr(sys.excepthook), repr(threading.excepthook), repr(sys.unraisablehook),
                  socket.getdefaulttimeout(), sys.getrecursionlimit(), sys.getswitchinterval()],
    }


before = state()

import cib_core
from cib_core import CustomFile, Image

image = Image("scratch", "oci:layout:1")
image.add_files({"/app": "./src", "/etc/motd": CustomFile("hi\n")})
image.cmd = ["/app/run"]
image.save()

image = Image("scratch", bed["registry"] + "/state/app:scratch")
image.add_files({"/app": "./src"})
image.save()

image = Image(bed["base"], bed["registry"] + "/state/app:insecure", insecure=[bed["registry"]])
image.add_files({"/app": "./src"}, ignores=["*.pyc"], ignore_files=[".dockerignore"])
image.env = ["MODE=test"]
image.save()

after = state()
print(json.dumps({"before": before, "after": after, "changes": changes}))
'''


def test_a_build_changes_no_process_wide_state(cib_registry, cib_base_image, tmp_path: Path):
    work = tmp_path / "work"
    (work / "src").mkdir(parents=True)
    (work / "src" / "run").write_text("#!/bin/sh\necho hi\n")
    (work / "src" / "stale.pyc").write_bytes(b"\0")
    (work / "src" / ".dockerignore").write_text("*.log\n")
    (work / "script.py").write_text(_SCRIPT)
    bed = {"registry": cib_registry.host, "base": cib_base_image.ref}
    done = subprocess.run([sys.executable, "script.py", json.dumps(bed)], cwd=work,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["changes"] == []
    assert report["after"] == report["before"]
    # the state was taken around real builds
    assert report["before"]["gc"][0] is True
    assert skopeo_inspect(cib_registry.ref("state/app", "insecure"))["Env"][-1] == "MODE=test"
    assert skopeo_inspect(cib_registry.ref("state/app", "scratch"))["Layers"]
    assert skopeo_inspect(f"oci:{work / 'layout'}:1")["Layers"]


def test_the_recorder_sees_a_change(cib_registry, cib_base_image, tmp_path: Path):
    """The check above can fail: a cib module that pauses the collector is caught."""
    work = tmp_path / "work"
    (work / "src").mkdir(parents=True)
    (work / "src" / "run").write_text("x\n")
    script = _SCRIPT.replace("before = state()\n",
                             "before = state()\nimport cib_core.layers.build\n"
                             "exec('import gc; gc.disable(); gc.enable()', vars(cib_core.layers.build))\n")
    (work / "script.py").write_text(script)
    bed = {"registry": cib_registry.host, "base": cib_base_image.ref}
    done = subprocess.run([sys.executable, "script.py", json.dumps(bed)], cwd=work,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["changes"] == ["cib_core.layers.build called gc.disable"]
