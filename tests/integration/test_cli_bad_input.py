"""Every ``cib`` command over a table of bad inputs: one ``cib: error:`` line, exit status 1.

The commands are walked from the click group itself (plugin commands and subgroups included),
so a new command is covered as soon as it exists: each of its parameters is sorted into a kind
(an image to read, a target to write, a tag, a repository, an output path, a local file, ...)
by its name, and a parameter of a name this table does not know fails the test until it is
given a kind. Then every parameter gets each bad input of its kind while the command's other
required parameters get good values (a real image in a real registry, a fresh output path), and
the ``cib`` script runs as a user runs it.

Besides one line and exit 1, a refused input must leave nothing behind: the good output path of
the run (a layout, an archive, an exported tarball) must not exist afterwards, since every input
is checked before anything is written.

Network traffic goes only to loopback: "unreachable" is a closed loopback port, and host names
that must be refused before any lookup end in ``.localhost``.
"""

from __future__ import annotations

import concurrent.futures
import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import click
import pytest

from cib_core.cli.app import cli
from cib_core.testing import RegistryServer, free_port, make_layer, push_image

pytestmark = pytest.mark.integration


# --------------------------------------------------------------------------------------------
# the kinds of parameter, and which parameter is of which kind
# --------------------------------------------------------------------------------------------

KINDS: dict[str, str] = {
    # images read
    "ref": "image", "src": "image", "base": "image", "old_base": "image", "new_base": "image",
    "sources": "image",
    # images written
    "dst": "target", "target": "target", "index_ref": "target",
    # names
    "tags": "tag", "repo": "repo", "cache_repo": "repo", "registry": "registry",
    # local paths
    "out": "out", "files": "infile", "lock": "infile", "python_app": "indir",
    "find_links": "indir", "adds": "add", "ignore_files": "ignore_file",
    # option values
    "platform": "platform", "cmd": "command", "entrypoint": "command", "env": "assignment",
    "labels": "assignment", "annotations": "assignment", "unset_env": "name",
    "ports": "port", "volumes": "volume", "workdir": "workdir", "user": "any_text",
    "ignores": "pattern", "index_url": "url", "python_target": "python_target",
    "older_than": "duration", "max_sparse": "size", "artifact_type": "media_type",
    "media_type": "media_type", "username": "username",
}
"""Parameter name -> kind. A command's own meaning wins over the name where they differ
(``COMMAND_KINDS``)."""

COMMAND_KINDS: dict[tuple[str, str], str] = {
    ("delete", "ref"): "registry_image",
    ("blob", "ref"): "blob",
    ("tag", "ref"): "image",
    ("attach", "ref"): "registry_image",
    ("referrers", "ref"): "registry_image",
    ("auth logout", "registry"): "registry_name",
    ("build", "cache_repo"): "cache_repo",
}

SKIPPED = {"help", "version"}
"""Parameters with no value of their own to get wrong."""

EXTRA_ARGS: dict[str, list[str]] = {"auth login": ["--password-stdin"]}
COMPANIONS: dict[tuple[str, str], tuple[str, str]] = {
    ("build", "ignores"): ("--add", "{dir}:/app"),
    ("build", "ignore_files"): ("--add", "{dir}:/app"),
    ("build", "lock"): ("--python-app", "{project}"),
    ("build", "index_url"): ("--python-app", "{project}"),
    ("build", "find_links"): ("--python-app", "{project}"),
    ("build", "python_target"): ("--python-app", "{project}"),
}
"""Options that only mean something beside another: the other is given a good value."""
STDIN: dict[str, str] = {"auth login": "not-a-real-password\n"}


@dataclass
class Fixtures:
    tmp: Path
    registry: str
    image: str          # a real image in the registry
    repo: str
    blob: str           # REPO@DIGEST of one of its blobs
    closed: str         # HOST:PORT where nothing listens
    a_file: Path
    a_dir: Path
    project: Path       # a small Python project


def _bad_values(kind: str, f: Fixtures) -> dict[str, str]:  # noqa: PLR0911
    """The bad inputs of one kind, by what makes them bad."""
    long_label = "a" * 64 + ".localhost"
    long_name = ".".join(["b" * 60] * 5) + ".localhost"
    t = f.tmp
    hosts = {
        "port out of range": "127.0.0.1:99999",
        "port zero": "127.0.0.1:0",
        "port not a number": "localhost:http",
        "DNS label over 63 characters": long_label,
        "host name over 253 characters": long_name,
        "unclosed IPv6 bracket": "[::1",
    }
    if kind in ("registry", "registry_name"):
        names = {**hosts, "empty": "", "space": "a b", "ftp scheme": "ftp://127.0.0.1",
                 "file scheme": "file:///etc", "a path": "127.0.0.1/x"}
        # logging out touches no registry: an unreachable one is no error there
        return names | ({"unreachable": f.closed} if kind == "registry" else {})
    refs = {
        **{name: f"{host}/x:1" for name, host in hosts.items()},
        "upper case": "x/UPPER:1", "space": "a b", "short digest": "x@sha256:12",
        "empty": "", "double colon": "x::1",
        "ftp scheme": "ftp://127.0.0.1/x:1", "file scheme": "file:///etc/passwd",
        "http scheme": f"http://{f.closed}/x:1", "unreachable": f"{f.closed}/x:1",
    }
    if kind in ("repo", "cache_repo"):
        # the cache is an optimisation: an unreachable one is said at -v, never an error,
        # and an empty --cache-repo turns CIB_CACHE_REPO off
        unusable = ("short digest", "double colon") + (
            ("unreachable", "http scheme", "empty") if kind == "cache_repo" else ())
        return {name: ref.removesuffix(":1") for name, ref in refs.items() if name not in unusable}
    if kind == "blob":
        return {name: f"{ref.removesuffix(':1')}@sha256:{'0' * 64}" for name, ref in refs.items()
                if name not in ("short digest", "double colon")} | {
            "short digest": f"{f.repo}@sha256:12", "no digest": f.repo}
    local_reads = {
        "layout whose index.json is garbage": f"oci:{t / 'garbage-index'}:1",
        "layout whose index.json is a directory": f"oci:{t / 'index-dir'}:1",
        "layout whose index.json has wrong types": f"oci:{t / 'typed-index'}:1",
        "missing layout": f"oci:{t / 'missing' / 'layout'}:1",
        "layout in /proc": "oci:/proc/nonexistent-cib:1",
        "archive whose manifest.json is not JSON": f"docker-archive:{t / 'bad-manifest.tar'}",
        "archive whose manifest.json has wrong types": f"docker-archive:{t / 'typed-manifest.tar'}",
        "archive that is not a tar": f"docker-archive:{t / 'not-a-tar.tar'}",
        "archive that is a directory": f"docker-archive:{f.a_dir}",
        "layer that is not gzip": f"oci:{t / 'layer-not-gzip'}:1",
        "layer that is not tar": f"oci:{t / 'layer-not-tar'}:1",
        "config with wrong field types": f"oci:{t / 'config-types'}:1",
        "config that is not JSON": f"oci:{t / 'config-not-json'}:1",
    }
    if kind == "image":
        return refs | local_reads
    if kind == "registry_image":
        return refs
    if kind == "target":
        return refs | {
            "layout under /proc": "oci:/proc/cib-x:1",
            "layout under /sys": "oci:/sys/cib-x:1",
            "layout that is a file": f"oci:{f.a_file}:1",
            "layout under a file": f"oci:{f.a_file}/x:1",
            "archive that is a directory": f"docker-archive:{f.a_dir}",
            "archive under /proc": "docker-archive:/proc/cib-x.tar",
            "archive under a file": f"docker-archive:{f.a_file}/x.tar",
            "archive in a missing directory": f"docker-archive:{t / 'missing' / 'x.tar'}",
            "layout whose index.json is garbage": f"oci:{t / 'garbage-index'}:1",
            "layout whose index.json is a directory": f"oci:{t / 'index-dir'}:1",
            "scratch": "scratch",
        }
    if kind == "tag":
        # (the good target is an OCI layout, whose tags may be longer than a registry's)
        return {"space": "bad tag", "empty": "", "leading dash": "-x", "leading dot": ".x",
                "double slash": "a//b", "exclamation mark": "bad!"}
    if kind == "out":
        return {"a directory": str(f.a_dir), "under /proc": "/proc/cib-x.tar",
                "under /sys": "/sys/cib-x.tar", "missing directory": str(t / "missing" / "x.tar"),
                "under a file": f"{f.a_file}/x.tar"}
    if kind == "infile":
        return {"missing": str(t / "missing" / "f"), "a directory": str(f.a_dir),
                "under a file": f"{f.a_file}/x", "in /proc": "/proc/nonexistent-cib"}
    if kind == "indir":
        return {"missing": str(t / "missing" / "d"), "a file": str(f.a_file)}
    if kind == "add":
        return {"missing source": f"{t / 'missing' / 'f'}:/f", "no colon": "nocolon",
                "target with ..": f"{f.a_file}:/../x", "empty": "", "empty target": f"{f.a_file}:"}
    if kind == "ignore_file":
        return {"a parent path": "../x", "absolute": "/etc/passwd", "empty": ""}
    if kind == "platform":
        return {"one part": "linux", "five parts": "linux/amd64/v8/x/y", "empty": "",
                "space": "linux/amd 64", "only slashes": "//"}
    if kind == "command":
        # (anything else is a shell-style command line, split as sh would)
        return {"unclosed JSON": '["a"', "JSON number list": "[1, 2]", "unclosed quote": "'a"}
    if kind == "assignment":
        return {"no equals": "NOEQUALS", "empty name": "=v", "empty": ""}
    if kind == "name":
        return {"empty": "", "with equals": "A=B"}
    if kind == "port":
        return {"not a number": "http", "out of range": "99999", "bad protocol": "80/icmp",
                "empty": ""}
    if kind == "volume":
        return {"empty": "", "relative": "data"}
    if kind == "workdir":
        return {"relative": "app", "empty": ""}
    if kind == "any_text":
        return {}  # any user name is taken: the runtime resolves it in the container
    if kind == "pattern":
        return {"reversed range": "[z-a]", "trailing backslash": "\\"}
    if kind == "url":
        return {"ftp scheme": "ftp://127.0.0.1/simple", "port out of range": "http://127.0.0.1:99999/",
                "no scheme": "127.0.0.1/simple", "unreachable": f"http://{f.closed}/simple"}
    if kind == "python_target":
        return {"garbage": "nonsense", "empty": "", "bad version": "python=x.y"}
    if kind == "duration":
        return {"garbage": "soon", "negative": "-1d", "empty": "", "huge": "99999999999999999999d"}
    if kind == "size":
        return {"garbage": "lots", "negative": "-1", "empty": "", "bad unit": "10Q"}
    if kind == "media_type":
        return {"empty": "", "no slash": "text", "space": "text/ plain"}
    if kind == "username":
        return {"empty": "", "newline": "a\nb", "colon": "a:b"}
    raise AssertionError(f"no bad values for the kind {kind!r}")


def _good_value(kind: str, f: Fixtures, case_dir: Path) -> str:
    if kind in ("image", "registry_image"):
        return f.image
    if kind == "target":
        return f"oci:{case_dir / 'out'}:1"
    if kind == "repo":
        return f.repo
    if kind == "registry":
        return f.registry
    if kind == "blob":
        return f.blob
    if kind == "tag":
        return "v2"
    if kind == "out":
        return str(case_dir / "out")
    if kind == "infile":
        return str(f.a_file)
    if kind == "add":
        return f"{f.a_file}:/f.txt"
    if kind == "duration":
        return "1d"
    if kind == "media_type":
        return "application/vnd.example.test"
    if kind == "username":
        return "someone"
    raise AssertionError(f"no good value for the kind {kind!r}")


# --------------------------------------------------------------------------------------------
# walking the commands
# --------------------------------------------------------------------------------------------

def _leaf_commands() -> Iterator[tuple[str, click.Command]]:
    def walk(command: click.Command, path: list[str]) -> Iterator[tuple[str, click.Command]]:
        if isinstance(command, click.Group):
            ctx = click.Context(command, info_name=" ".join(path) or "cib")
            for name in command.list_commands(ctx):
                sub = command.get_command(ctx, name)
                assert sub is not None
                yield from walk(sub, [*path, name])
        else:
            yield " ".join(path), command

    yield from walk(cli, [])


def _value_params(command: click.Command) -> list[click.Parameter]:
    """The parameters that take a value cib itself interprets (click checks choices)."""
    found = []
    for param in command.params:
        if param.name in SKIPPED or isinstance(param.type, click.Choice):
            continue
        if isinstance(param, click.Option) and (param.is_flag or param.count):
            continue
        found.append(param)
    return found


def _kind(command: str, param: click.Parameter) -> str:
    assert param.name is not None
    kind = COMMAND_KINDS.get((command, param.name), KINDS.get(param.name))
    assert kind is not None, (
        f"`cib {command}` has a parameter {param.name!r} this test does not know: give it a kind "
        f"in KINDS (or COMMAND_KINDS) so its bad inputs are tried")
    return kind


def _argv(command: str, params: list[click.Parameter], values: dict[str, str],
          extra: list[str]) -> list[str]:
    """``command``'s argv with ``values`` (param name -> value) in their places."""
    argv = [*command.split(), *extra]
    positional: list[str] = []
    for param in params:
        assert param.name is not None
        if param.name not in values:
            continue
        if isinstance(param, click.Argument):
            positional.append(values[param.name])
        else:
            option = max(param.opts, key=len)
            argv += [option, values[param.name]]
    argv += EXTRA_ARGS.get(command, [])
    # `--` keeps a bad value that starts with a dash a value, not an option
    return [*argv, "--", *positional] if positional else argv


@dataclass
class Run:
    command: str
    param: str
    case: str
    argv: list[str]
    out: Path


def _runs(f: Fixtures, command: str, cmd: click.Command, name: str) -> list[Run]:
    """A run per bad input of ``command``'s parameter ``name``."""
    params = _value_params(cmd)
    param = next(p for p in params if p.name == name)
    runs: list[Run] = []
    for case, bad in _bad_values(_kind(command, param), f).items():
        case_dir = f.tmp / "runs" / f"{command}-{name}-{len(runs)}".replace(" ", "-")
        case_dir.mkdir(parents=True)
        values = {p.name: _good_value(_kind(command, p), f, case_dir)
                  for p in params if p.required and p.name is not None and p is not param}
        values[name] = bad
        option, value = COMPANIONS.get((command, name), ("", ""))
        extra = [option, value.format(dir=f.a_dir, project=f.project)] if option else []
        runs.append(Run(command, name, case, _argv(command, params, values, extra),
                        case_dir / "out"))
    return runs


def _cib(argv: list[str], home: Path, stdin: str | None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, HOME=str(home), DOCKER_CONFIG=str(home / ".docker"),
               XDG_CONFIG_HOME=str(home / ".config"), XDG_RUNTIME_DIR=str(home / "run"),
               PYTHON_KEYRING_BACKEND="keyring.backends.null.Keyring",
               NO_PROXY="127.0.0.1,localhost,::1", CIB_DISABLE_PLUGIN_AUTOLOAD="1")
    script = str(Path(sys.executable).parent / "cib")
    return subprocess.run([script, *argv], capture_output=True, text=True, errors="replace",
                          env=env, input=stdin or "", timeout=120, check=False)


DAMAGED = {"layer that is not gzip", "layer that is not tar", "config with wrong field types",
           "config that is not JSON"}
"""Images whose manifest is sound but whose layer or config is not: a command that does not
read that part (``cib manifest``, ``cib config`` printing the bytes as stored, ``cib copy``
moving blobs as they are) may succeed; one that reads it must fail in one line."""
READS_LAYERS = {"export", "flatten", "validate"}


def _problem(run: Run, result: subprocess.CompletedProcess[str]) -> str | None:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    if "Traceback" in result.stderr:
        return "traceback: " + (lines[-1] if lines else "")
    if result.returncode == 0 and run.case in DAMAGED and not (
            run.command in READS_LAYERS and run.case.startswith("layer")):
        return None
    if result.returncode == 2 and lines and lines[0].startswith("Usage: cib ") and \
            lines[-1].startswith("Error: "):
        pass  # a malformed option value is a usage error, which exits 2 with click's usage
    elif result.returncode != 1:
        return f"exit {result.returncode}: {' | '.join(lines[-3:])}"
    elif len(lines) != 1 or not lines[0].startswith("cib: error: "):
        return "stderr is not one `cib: error:` line: " + " | ".join(lines[:4])
    if run.out.exists() or run.out.is_symlink():
        return f"refused, but wrote {run.out.name} ({lines[0]})"
    return None


# --------------------------------------------------------------------------------------------
# the test
# --------------------------------------------------------------------------------------------

def _docker_archive(path: Path, manifest: bytes) -> None:
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("manifest.json")
        info.size = len(manifest)
        tar.addfile(info, io.BytesIO(manifest))


def _image_layout(path: Path, config: bytes, layer: bytes) -> None:
    """An OCI layout holding one image of ``config`` and ``layer`` (digests right, content not)."""
    blobs = path / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    (path / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')

    def put(data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return f"sha256:{digest}"

    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": put(config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": put(layer), "size": len(layer)}]}).encode()
    (path / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": put(manifest),
         "size": len(manifest), "annotations": {"org.opencontainers.image.ref.name": "1"}}]}))


def _layout(path: Path, index: bytes | None) -> Path:
    path.mkdir()
    (path / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (path / "blobs" / "sha256").mkdir(parents=True)
    if index is None:
        (path / "index.json").mkdir()
    else:
        (path / "index.json").write_bytes(index)
    return path


@pytest.fixture(scope="module")
def fixtures(cib_registry: RegistryServer, tmp_path_factory: pytest.TempPathFactory) -> Fixtures:
    tmp = tmp_path_factory.mktemp("cli-bad-input")
    pushed = push_image(cib_registry, "walk/base", "1", [make_layer({"etc/hello": "hi\n"})],
                        {"architecture": "amd64", "os": "linux", "config": {"Cmd": ["sh"]}},
                        oci=True)
    (tmp / "file.txt").write_text("a file\n")
    (tmp / "a-dir").mkdir()
    _layout(tmp / "garbage-index", b"{garbage")
    _layout(tmp / "index-dir", None)
    _layout(tmp / "typed-index", json.dumps({"schemaVersion": 2, "manifests": "nope"}).encode())
    _docker_archive(tmp / "bad-manifest.tar", b"[not json")
    _docker_archive(tmp / "typed-manifest.tar", json.dumps([{"Config": 5, "Layers": "x"}]).encode())
    (tmp / "not-a-tar.tar").write_bytes(os.urandom(3000))
    good_config = json.dumps({"architecture": "amd64", "os": "linux",
                              "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "0" * 64]},
                              "config": {}}).encode()
    _image_layout(tmp / "layer-not-gzip", good_config, b"\x1f\x8b" + os.urandom(2000))
    _image_layout(tmp / "layer-not-tar", good_config, gzip.compress(os.urandom(2000), mtime=0))
    _image_layout(tmp / "config-types", json.dumps({
        "architecture": 5, "os": ["linux"], "config": {"Env": "A=B", "Cmd": "sh", "Labels": []},
        "rootfs": {"type": "layers", "diff_ids": "nope"}, "history": {}}).encode(),
        make_layer({"etc/x": "x"}))
    _image_layout(tmp / "config-not-json", b"\x00{not json", make_layer({"etc/x": "x"}))
    project = tmp / "project"
    project.mkdir()
    (project / "pyproject.toml").write_text('[project]\nname = "walk"\nversion = "1"\n')
    (tmp / "home" / ".docker").mkdir(parents=True)
    layer_digest = json.loads(pushed.raw)["layers"][0]["digest"]
    return Fixtures(tmp=tmp, registry=cib_registry.host, image=f"{cib_registry.host}/walk/base:1",
                    repo=f"{cib_registry.host}/walk/base",
                    blob=f"{cib_registry.host}/walk/base@{layer_digest}",
                    closed=f"127.0.0.1:{free_port()}", a_file=tmp / "file.txt", a_dir=tmp / "a-dir",
                    project=project)


def test_every_parameter_is_known() -> None:
    """Every command's every value parameter has a kind, so none escapes the walk below."""
    for command, cmd in _leaf_commands():
        for param in _value_params(cmd):
            _kind(command, param)


PARAMETERS = [(command, param.name) for command, cmd in _leaf_commands()
              for param in _value_params(cmd)]
KNOWN_DEFECTS: dict[tuple[str, str], str] = {}


@pytest.mark.slow
@pytest.mark.parametrize(("command", "param"), [
    pytest.param(c, p, id=f"{c}:{p}".replace(" ", "-"),
                 marks=[pytest.mark.xfail(reason=KNOWN_DEFECTS[(c, p)], strict=True)]
                 if (c, p) in KNOWN_DEFECTS else [])
    for c, p in PARAMETERS])
def test_bad_input_gives_one_line(command: str, param: str, fixtures: Fixtures) -> None:
    runs = _runs(fixtures, command, dict(_leaf_commands())[command], param)
    # several at once: most of a run's time is start-up, and an unreachable registry's
    # retries are spent waiting
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(
            lambda run: _cib(run.argv, fixtures.tmp / "home", STDIN.get(command)), runs))
    problems = []
    for run, result in zip(runs, results, strict=True):
        problem = _problem(run, result)
        if problem:
            problems.append(f"{run.case!r}: {problem}\n    cib {' '.join(run.argv)}")
    assert not problems, (f"`cib {command}` {param}: {len(problems)} of {len(runs)} bad inputs:\n"
                          + "\n".join(problems))
