"""Keep the documentation honest.

(a) Every relative link in README.md and docs/*.md points at an existing file, and a
    ``#fragment`` into a Markdown file at one of its headings (GitHub's anchor rules).

(b) The recipes of docs/guide.md that are marked with an HTML comment ``<!-- test: NAME -->``
    on the line right before their code fence are run for real, ``python`` blocks as scripts
    of a fresh interpreter (a warm test process would hide what only a first import does) and
    ``sh`` blocks with ``bash -euo pipefail``, both with this venv's ``cib`` first on PATH.
    Before running, names in the recipe text are replaced, as whole names only (not inside a
    longer host or repository path):

        recipe text              replaced with                    what it is
        registry.example.com     registry.host                    open docker-registry
        mirror.example.com       second_registry.host             another open registry
        private.example.com      basic_registry.host              htpasswd registry
        python:3.12-slim         base_image.ref                   Docker schema 2, linux/amd64
        node:22                  multiarch_base_image.ref         OCI index, amd64 + arm64/v8

    Each recipe runs in a fresh working directory holding the files the guide's recipes name
    (``src/`` with a small Python package, a ``.dockerignore``, ``README.md`` and ``NOTES.md``;
    ``settings.toml``; ``app.js``; ``rootfs.tar.gz``), with HOME, DOCKER_CONFIG and the XDG
    directories inside it, a null keyring, no SOURCE_DATE_EPOCH, and ``REGISTRY_USER`` /
    ``REGISTRY_PASSWORD`` set to the htpasswd registry's credentials. After each recipe a check
    of its own (``CHECKS[NAME]``) looks at the result with an independent client (plain
    requests against the registry, skopeo), so a recipe that runs but does the wrong thing
    fails. Every marked recipe needs a check and every check a marked recipe.

(c) Every ``cib`` subcommand of API.md's CLI table (the repository's copy, tests/data/API.md),
    and every command and option of the real click group, is documented in docs/cli.md under a
    heading ``cib COMMAND``.

(d) README.md: the Quick start's commands run (all but the install, which made this venv) and
    do what it says, its image printing its greeting under runc; the test command installs the
    same Debian packages as .ci/run, after ``apt-get update``; README and docs install the
    distribution ``cib-core``, never ``cib``.

(e) Every ``python`` block of README.md and docs/*.md is a declaration (signatures, stubs,
    fields: ``is_declaration``), a marked guide recipe, or an example in ``EXAMPLES``, which
    runs it the same way (in the same bed, in a fresh interpreter), as a module where it is a
    plugin, and checks that it does what its page says.
"""

from __future__ import annotations

import ast
import base64
import datetime
import gzip
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import requests

from cib_core.testing import PushedImage, RegistryServer, require_tool, skopeo_copy, skopeo_inspect

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
GUIDE = DOCS / "guide.md"
CLI_DOC = DOCS / "cli.md"
README = ROOT / "README.md"
CI_RUN = ROOT / ".ci" / "run"
API_MD = ROOT / "tests" / "data" / "API.md"
LINKED_DOCS = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]

# The CLI table of API.md, written out: test_api_table_matches_this_list keeps the two equal.
API_CLI_COMMANDS = ("build", "copy", "tag", "index create", "index append", "rebase", "flatten",
                    "validate", "attach", "referrers", "cache ls", "cache prune", "completion",
                    "manifest", "config", "digest", "inspect", "ls", "catalog", "blob", "delete",
                    "export", "auth login", "auth logout", "plugins")


# ---------------------------------------------------------------------------------------------
# (a) links
# ---------------------------------------------------------------------------------------------

_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_FENCE = re.compile(r"^\s*(```|~~~)")


def _prose_lines(text: str) -> Iterator[str]:
    """Lines outside fenced code blocks, inline code removed."""
    fenced = False
    for line in text.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield re.sub(r"`[^`]*`", "", line)


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"`|\*\*|__", "", heading.strip().lower())
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors_of(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    fenced = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if _FENCE.match(line):
            fenced = not fenced
            continue
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m and not fenced:
            base = github_anchor(m.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return out


def relative_links(path: Path) -> list[str]:
    links = []
    for line in _prose_lines(path.read_text(encoding="utf-8")):
        for target in _LINK.findall(line):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):
                continue  # http:, https:, mailto:
            links.append(target)
    return links


def test_the_documents_exist():
    for name in ("guide.md", "reference.md", "cli.md", "plugins.md"):
        assert (DOCS / name).is_file(), f"docs/{name} is missing"


@pytest.mark.parametrize("doc", LINKED_DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_at_existing_files(doc: Path):
    broken = []
    for target in relative_links(doc):
        file_part, _, fragment = target.partition("#")
        dest = (doc.parent / file_part).resolve() if file_part else doc
        if not dest.exists():
            broken.append(f"{target}: {dest} does not exist")
            continue
        if fragment and dest.suffix == ".md" and fragment not in anchors_of(dest):
            broken.append(f"{target}: no heading with the anchor #{fragment} in {dest.name}")
    assert not broken, f"broken links in {doc.relative_to(ROOT)}:\n" + "\n".join(broken)


def test_link_checker_sees_links_and_anchors():
    """The checker itself: finds links outside code, skips URLs, computes GitHub anchors."""
    assert github_anchor("Insecure registries and TLS") == "insecure-registries-and-tls"
    assert github_anchor("`Image.add_layer`") == "imageadd_layer"
    assert github_anchor("cib auth login") == "cib-auth-login"
    links = relative_links(ROOT / "README.md")
    assert "docs/guide.md" in links
    assert not any(link.startswith("http") for link in links)


# ---------------------------------------------------------------------------------------------
# (b) recipes
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Recipe:
    name: str
    language: str  # "python" or "sh"
    code: str
    line: int


_MARKER = re.compile(r"^<!--\s*test:\s*([a-z0-9][a-z0-9-]*)\s*-->\s*$")


def marked_recipes(path: Path = GUIDE) -> list[Recipe]:
    lines = path.read_text(encoding="utf-8").splitlines()
    recipes = []
    for i, line in enumerate(lines):
        m = _MARKER.match(line.strip())
        if not m:
            continue
        fence = lines[i + 1].strip() if i + 1 < len(lines) else ""
        if fence not in ("```python", "```sh"):
            raise AssertionError(f"{path.name}:{i + 1}: <!-- test: {m.group(1)} --> must be followed "
                                 f"directly by a ```python or ```sh fence, not {fence!r}")
        body = []
        for j in range(i + 2, len(lines)):
            if lines[j].strip() == "```":
                break
            body.append(lines[j])
        else:
            raise AssertionError(f"{path.name}:{i + 2}: unterminated code fence")
        recipes.append(Recipe(m.group(1), fence[3:], "\n".join(body) + "\n", i + 2))
    names = [r.name for r in recipes]
    duplicates = {n for n in names if names.count(n) > 1}
    assert not duplicates, f"recipe names used twice: {sorted(duplicates)}"
    return recipes


@dataclass
class Bed:
    """The test bed a recipe runs against."""

    registry: RegistryServer
    mirror: RegistryServer
    private: RegistryServer
    base: PushedImage
    multiarch: PushedImage
    workdir: Path

    def substitutions(self) -> list[tuple[str, str]]:
        return [
            ("registry.example.com", self.registry.host),
            ("mirror.example.com", self.mirror.host),
            ("private.example.com", self.private.host),
            ("python:3.12-slim", self.base.ref),
            ("node:22", self.multiarch.ref),
        ]

    def substitute(self, code: str) -> str:
        for placeholder, value in self.substitutions():
            pattern = r"(?<![\w./:@-])" + re.escape(placeholder) + r"(?![\w.@-])"
            code = re.sub(pattern, lambda _m, v=value: v, code)
        return code


def test_substitution_replaces_whole_names_only():
    server = RegistryServer(host="127.0.0.1:5", mode="open", storage=Path("/nonexistent"))
    image = PushedImage(server=server, repository="base/docker", tag="1", digest="sha256:" + "0" * 64,
                        media_type="", raw=b"{}", config_raw=b"{}", blobs={})
    bed = Bed(server, server, server, image, image, Path("."))
    assert bed.substitute('Image("python:3.12-slim", "registry.example.com/a:1")') == \
        'Image("127.0.0.1:5/base/docker:1", "127.0.0.1:5/a:1")'
    # inside a longer repository path or host the names stay
    kept = "mirror.example.com/library/python:3.12-slim x.registry.example.com"
    assert bed.substitute(kept) == "127.0.0.1:5/library/python:3.12-slim x.registry.example.com"


def _write_workdir(root: Path) -> None:
    src = root / "src"
    (src / "app").mkdir(parents=True)
    (src / "app" / "__init__.py").write_text("")
    (src / "app" / "__main__.py").write_text("print('app')\n")
    (src / "app" / "cache.pyc").write_bytes(b"\0compiled")
    (src / "README.md").write_text("# app\n")
    (src / "NOTES.md").write_text("not shipped\n")
    (src / ".dockerignore").write_text("*.pyc\n__pycache__/\n")
    (root / "settings.toml").write_text("mode = 'production'\n")
    (root / "app.js").write_text("console.log('hi')\n")
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in ("opt", "opt/tool", "opt/tool/bin"):
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        data = b"#!/bin/sh\necho tool\n"
        info = tarfile.TarInfo("opt/tool/bin/tool")
        info.size, info.mode, info.mtime = len(data), 0o755, 1_600_000_000
        tar.addfile(info, io.BytesIO(data))
    (root / "rootfs.tar.gz").write_bytes(gzip.compress(raw.getvalue(), mtime=0))


@pytest.fixture
def bed(cib_registry, cib_second_registry, cib_basic_registry, cib_base_image, cib_multiarch_base_image, tmp_path,
        monkeypatch) -> Bed:
    work = tmp_path / "work"
    work.mkdir()
    _write_workdir(work)
    home = tmp_path / "home"
    (home / ".docker").mkdir(parents=True)
    monkeypatch.chdir(work)
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    for name, value in {
        "HOME": str(home), "DOCKER_CONFIG": str(home / ".docker"),
        "XDG_CONFIG_HOME": str(home / ".config"), "XDG_RUNTIME_DIR": str(tmp_path / "run"),
        "PYTHON_KEYRING_BACKEND": "keyring.backends.null.Keyring",
        "NO_PROXY": "127.0.0.1,localhost,::1",
        "REGISTRY_USER": cib_basic_registry.username, "REGISTRY_PASSWORD": cib_basic_registry.password,
        "CIB_CACHE_DIR": str(tmp_path / "cache"),
    }.items():
        monkeypatch.setenv(name, value)
    return Bed(cib_registry, cib_second_registry, cib_basic_registry, cib_base_image, cib_multiarch_base_image, work)


# -- an independent look at the registries: plain requests, no cib code -----------------------

_ACCEPT = ", ".join((
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
))


class Oracle:
    def __init__(self, server: RegistryServer, *, anonymous: bool = False) -> None:
        self.server = server
        self.session = requests.Session()
        self.session.trust_env = False
        if server.username and server.password and not anonymous:
            self.session.auth = (server.username, server.password)

    def manifest_response(self, repo: str, ref: str) -> requests.Response:
        return self.session.get(f"{self.server.url}/v2/{repo}/manifests/{ref}",
                                headers={"Accept": _ACCEPT}, timeout=30)

    def manifest(self, repo: str, ref: str) -> tuple[dict[str, Any], str]:
        resp = self.manifest_response(repo, ref)
        assert resp.status_code == 200, f"{repo}:{ref}: HTTP {resp.status_code}"
        return resp.json(), "sha256:" + hashlib.sha256(resp.content).hexdigest()

    def blob(self, repo: str, digest: str) -> bytes:
        resp = self.session.get(f"{self.server.url}/v2/{repo}/blobs/{digest}", timeout=30)
        assert resp.status_code == 200, f"{repo}@{digest}: HTTP {resp.status_code}"
        assert "sha256:" + hashlib.sha256(resp.content).hexdigest() == digest
        return resp.content

    def config(self, repo: str, manifest: dict[str, Any]) -> dict[str, Any]:
        return json.loads(self.blob(repo, manifest["config"]["digest"]))  # type: ignore[no-any-return]

    def members(self, repo: str, layer_digest: str) -> dict[str, tarfile.TarInfo]:
        data = self.blob(repo, layer_digest)
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
            return {m.name.rstrip("/"): m for m in tar.getmembers()}

    def file(self, repo: str, layer_digest: str, name: str) -> bytes:
        data = self.blob(repo, layer_digest)
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
            extracted = tar.extractfile(name)
            assert extracted is not None, name
            return extracted.read()


def _repo_of(reference: str, server: RegistryServer) -> str:
    prefix = server.host + "/"
    assert reference.startswith(prefix), reference
    return reference[len(prefix):].split("@", 1)[0]


# -- one check per recipe ----------------------------------------------------------------------

def check_change_config(bed: Bed, ns: dict[str, Any], out: str) -> None:
    oracle = Oracle(bed.registry)
    manifest, digest = oracle.manifest("team/app", "1.4")
    assert digest == ns["result"].digest
    assert ns["result"].reference == f"{bed.registry.host}/team/app@{digest}"
    cfg = oracle.config("team/app", manifest)["config"]
    base_env = bed.base.config["config"]["Env"]
    assert cfg["Env"][0] == "PATH=/app/bin:/usr/local/bin:/usr/bin:/bin"  # replaced in place
    assert cfg["Env"][1:] == [e for e in base_env if not e.startswith("PATH=")] + ["APP_ENV=production"]
    assert cfg["Cmd"] == ["python", "-m", "app"]
    assert cfg["Entrypoint"] == ["/usr/bin/env"]
    assert cfg["WorkingDir"] == "/app" and cfg["User"] == "65534:65534"
    assert cfg["Labels"] == {"org.opencontainers.image.source": "https://example.com/team/app"}
    assert cfg["ExposedPorts"] == {"8080/tcp": {}}
    # nothing rebuilt: the base's layers, as they were
    assert [x["digest"] for x in manifest["layers"]] == [x["digest"] for x in bed.base.layers]


def check_add_files(bed: Bed, ns: dict[str, Any], out: str) -> None:
    oracle = Oracle(bed.registry)
    manifest, digest = oracle.manifest("team/app", "1.4")
    assert digest == ns["result"].digest
    top = manifest["layers"][-1]
    assert top["digest"] == ns["layer"].digest and top["size"] == ns["layer"].size
    assert len(manifest["layers"]) == len(bed.base.layers) + 1
    members = oracle.members("team/app", top["digest"])
    for present in ("app/app/__init__.py", "app/app/__main__.py", "app/README.md", "app/VERSION",
                    "usr/local/bin/entry.sh", "etc/app/settings.toml", "app/.dockerignore"):
        assert present in members, present
    for absent in ("app/app/cache.pyc", "app/NOTES.md"):
        assert absent not in members, absent
    assert members["usr/local/bin/entry.sh"].mode == 0o755
    assert members["app"].mode == 0o755 and members["etc/app"].isdir()
    assert all(m.uid == 0 and m.gid == 0 and m.uname == "" for m in members.values())
    assert oracle.file("team/app", top["digest"], "app/VERSION") == b"1.4\n"
    cfg = oracle.config("team/app", manifest)
    assert cfg["rootfs"]["diff_ids"][-1] == ns["layer"].diff_id


def check_add_tarball(bed: Bed, ns: dict[str, Any], out: str) -> None:
    oracle = Oracle(bed.registry)
    manifest, _ = oracle.manifest("team/tools", "1")
    file_digest = "sha256:" + hashlib.sha256((bed.workdir / "rootfs.tar.gz").read_bytes()).hexdigest()
    assert ns["info"].digest == file_digest == manifest["layers"][-1]["digest"]
    members = oracle.members("team/tools", file_digest)
    assert members["opt/tool/bin/tool"].mtime == 1_600_000_000  # not normalized
    env = oracle.config("team/tools", manifest)["config"]["Env"]
    assert "PATH=/opt/tool/bin:/usr/local/bin:/usr/bin:/bin" in env


def _seed_team_app(bed: Bed) -> None:
    skopeo_copy(bed.base.ref, bed.registry.ref("team/app", "1.4"))


def check_copy_registry(bed: Bed, ns: dict[str, Any], out: str) -> None:
    _, source_digest = Oracle(bed.registry).manifest("team/app", "1.4")
    mirrored, mirror_digest = Oracle(bed.mirror).manifest("team/app", "1.4")
    assert mirror_digest == source_digest == ns["result"].digest
    assert ns["result"].reference == f"{bed.mirror.host}/team/app@{source_digest}"
    assert sum(ns["result"].blobs.values()) == len(mirrored["layers"]) + 1


def check_copy_local(bed: Bed, ns: dict[str, Any], out: str) -> None:
    source, _ = Oracle(bed.registry).manifest("team/app", "1.4")
    layout = skopeo_inspect(f"oci:{bed.workdir / 'layout'}:1.4", raw=True)
    assert json.loads(layout)["config"]["digest"] == source["config"]["digest"]
    with tarfile.open(bed.workdir / "app.tar") as archive:
        extracted = archive.extractfile("manifest.json")
        assert extracted is not None
        entries = json.loads(extracted.read())
    assert len(entries) == 1 and any(t.endswith("team/app:1.4") for t in entries[0]["RepoTags"])
    for repo in ("team/app-from-archive", "team/app-from-layout"):
        copied, _ = Oracle(bed.registry).manifest(repo, "1.4")
        assert copied["config"]["digest"] == source["config"]["digest"], repo
        assert len(copied["layers"]) == len(source["layers"]), repo


def check_multi_platform(bed: Bed, ns: dict[str, Any], out: str) -> None:
    oracle = Oracle(bed.registry)
    index, digest = oracle.manifest("team/web", "2")
    assert digest == ns["result"].digest
    assert index["mediaType"] == ns["result"].media_type == "application/vnd.oci.image.index.v1+json"
    children = {f"{m['platform']['os']}/{m['platform']['architecture']}": m for m in index["manifests"]}
    assert sorted(children) == ["linux/amd64", "linux/arm64"]
    layers = {}
    for name, entry in children.items():
        manifest, child_digest = oracle.manifest("team/web", entry["digest"])
        assert child_digest == entry["digest"]
        layers[name] = [layer["digest"] for layer in manifest["layers"]]
        cfg = oracle.config("team/web", manifest)["config"]
        assert cfg["Cmd"] == ["node", "/srv/app.js"]
        assert ("ARM_TUNING=1" in cfg["Env"]) == (name == "linux/arm64"), name
    amd, arm = layers["linux/amd64"], layers["linux/arm64"]
    assert amd[-1] == arm[-2]  # the app layer, shared by both platforms
    assert len(arm) == len(amd) + 1 and arm[-1] not in amd  # the arm64-only layer


def check_one_platform(bed: Bed, ns: dict[str, Any], out: str) -> None:
    oracle = Oracle(bed.registry)
    manifest, digest = oracle.manifest("team/web", "2-arm64")
    assert digest == ns["result"].digest
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    cfg = oracle.config("team/web", manifest)
    assert (cfg["architecture"], cfg.get("variant")) == ("arm64", "v8")


def check_reproducible(bed: Bed, ns: dict[str, Any], out: str) -> None:
    oracle = Oracle(bed.registry)
    manifest, digest = oracle.manifest("team/repro", "1")
    assert digest == ns["first"].digest == ns["second"].digest
    cfg = oracle.config("team/repro", manifest)
    epoch = 1700000000  # what the recipe sets SOURCE_DATE_EPOCH to, in its own process
    when = datetime.datetime.fromtimestamp(epoch, tz=datetime.timezone.utc)
    assert cfg["created"] == when.strftime("%Y-%m-%dT%H:%M:%SZ")
    members = oracle.members("team/repro", manifest["layers"][-1]["digest"])
    assert {m.mtime for m in members.values()} == {epoch}


def check_credentials_explicit(bed: Bed, ns: dict[str, Any], out: str) -> None:
    assert Oracle(bed.private, anonymous=True).manifest_response("team/app", "1.4").status_code == 401
    oracle = Oracle(bed.private)
    manifest, digest = oracle.manifest("team/app", "1.4")
    assert digest == ns["result"].digest
    assert oracle.config("team/app", manifest)["config"]["Cmd"] == ["python", "-m", "app"]


def check_ci_shell(bed: Bed, ns: dict[str, Any], out: str) -> None:
    oracle = Oracle(bed.private)
    manifest, digest = oracle.manifest("team/app", "ci")
    assert f"{bed.private.host}/team/app" in out and digest in out  # cib inspect's output
    assert oracle.config("team/app", manifest)["config"]["Cmd"] == ["python", "-m", "app"]
    members = oracle.members("team/app", manifest["layers"][-1]["digest"])
    assert "app/app/__main__.py" in members
    config_json = Path(os.environ["DOCKER_CONFIG"]) / "config.json"
    assert bed.private.host not in json.loads(config_json.read_text()).get("auths", {})  # logged out


Check = Callable[[Bed, dict[str, Any], str], None]
CHECKS: dict[str, Check] = {
    "change-config": check_change_config,
    "add-files": check_add_files,
    "add-tarball": check_add_tarball,
    "copy-registry": check_copy_registry,
    "copy-local": check_copy_local,
    "multi-platform": check_multi_platform,
    "one-platform": check_one_platform,
    "reproducible": check_reproducible,
    "credentials-explicit": check_credentials_explicit,
    "ci-shell": check_ci_shell,
}
SETUP: dict[str, Callable[[Bed], None]] = {
    "copy-registry": _seed_team_app,
    "copy-local": _seed_team_app,
}


def test_every_marked_recipe_has_a_check_and_back():
    recipes = marked_recipes()
    assert sorted(r.name for r in recipes) == sorted(CHECKS)
    assert sum(r.language == "python" for r in recipes) >= 5


# Appended to a Python example run by run_python: hands the example's results to the test as
# JSON (dataclass instances such as SaveResult as their fields, other values when they are JSON).
_RESULTS_FOOTER = """

import dataclasses as _dataclasses, json as _json, os as _os
_values = {}
for _name, _value in list(globals().items()):
    if _name.startswith("_"):
        continue
    if _dataclasses.is_dataclass(_value) and not isinstance(_value, type):
        _value = {"__dataclass__": type(_value).__name__,
                  **{_f.name: getattr(_value, _f.name) for _f in _dataclasses.fields(_value)}}
    try:
        _values[_name] = _json.loads(_json.dumps(_value))
    except (TypeError, ValueError):
        pass
with open(_os.environ["CIB_DOC_EXAMPLE_RESULTS"], "w", encoding="utf-8") as _out:
    _json.dump(_values, _out)
"""


def _from_json(value: Any) -> Any:
    if isinstance(value, dict) and "__dataclass__" in value:
        return SimpleNamespace(**{k: v for k, v in value.items() if k != "__dataclass__"})
    return value


def _example_env(bed: Bed, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The bed's environment as a user has it: plugin autoloading on, this venv's scripts first
    on PATH, the working directory importable (for the examples' own modules)."""
    env = dict(os.environ)
    env.pop("CIB_DISABLE_PLUGIN_AUTOLOAD", None)
    env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", "")))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(bed.workdir), env.get("PYTHONPATH")) if p)
    env.update(extra or {})
    return env


def run_python(bed: Bed, code: str, *, where: str, first_line: int = 1,
               env: dict[str, str] | None = None) -> tuple[dict[str, Any], str]:
    """Run ``code`` as a script in a fresh interpreter in the bed's working directory; returns
    the values it left behind (see ``_RESULTS_FOOTER``) and what it printed. ``where``
    (``guide.md:71``) names the example in a failure; tracebacks show its lines there."""
    name = re.sub(r"\W", "_", where)
    script = bed.workdir.parent / f"doc_example_{name}.py"
    script.write_text("\n" * (first_line - 1) + code + _RESULTS_FOOTER, encoding="utf-8")
    results = bed.workdir.parent / f"doc_example_{name}.json"
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                          cwd=bed.workdir,
                          env=_example_env(bed, {**(env or {}), "CIB_DOC_EXAMPLE_RESULTS": str(results)}))
    assert done.returncode == 0, (f"{where} exited {done.returncode}\n"
                                  f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}")
    values = json.loads(results.read_text(encoding="utf-8"))
    return {k: _from_json(v) for k, v in values.items()}, done.stdout


def run_shell(bed: Bed, code: str, *, where: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", code], capture_output=True, text=True,
                          env=_example_env(bed, env), timeout=300, cwd=bed.workdir)
    assert done.returncode == 0, (f"{where} exited {done.returncode}\n"
                                  f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}")
    return done.stdout


def _run_recipe(recipe: Recipe, bed: Bed) -> tuple[dict[str, Any], str]:
    code = bed.substitute(recipe.code)
    where = f"guide.md:{recipe.line} ({recipe.name})"
    if recipe.language == "python":
        return run_python(bed, code, where=where, first_line=recipe.line + 1)
    return {}, run_shell(bed, code, where=where)


@pytest.mark.parametrize("recipe", marked_recipes(), ids=lambda r: r.name)
def test_guide_recipe_runs_and_does_what_it_says(recipe: Recipe, bed: Bed):
    setup = SETUP.get(recipe.name)
    if setup is not None:
        setup(bed)
    namespace, out = _run_recipe(recipe, bed)
    CHECKS[recipe.name](bed, namespace, out)


# ---------------------------------------------------------------------------------------------
# (c) the command line reference covers every command
# ---------------------------------------------------------------------------------------------

def api_cli_commands(text: str) -> list[str]:
    """The subcommands named in the first cell of each row of API.md's CLI table."""
    found: list[str] = []
    for line in text.splitlines():
        if not line.startswith("| `cib "):
            continue
        first_cell = line.split(" | ", 1)[0]
        # a second word is a subcommand (`cib auth login`), unless it is one of a choice of
        # arguments (`cib completion bash|zsh|fish`)
        for m in re.finditer(r"cib ([a-z][a-z-]*(?: [a-z][a-z-]*(?![a-z-]|\\?\|))?)", first_cell):
            if m.group(1) not in found:
                found.append(m.group(1))
    return found


def cli_sections(text: str) -> dict[str, str]:
    """``{"build": section text, "auth login": ...}`` from headings ``## `cib build` ``."""
    sections: dict[str, str] = {}
    current: str | None = None
    for line in text.splitlines():
        m = re.match(r"^#{2,4}\s+`?cib ([a-z][a-z -]*?)`?\s*$", line)
        if m:
            current = m.group(1).strip()
            sections[current] = ""
        elif current is not None:
            sections[current] += line + "\n"
    return sections


def test_api_table_matches_this_list():
    assert api_cli_commands(API_MD.read_text(encoding="utf-8")) == list(API_CLI_COMMANDS)


def test_cli_doc_covers_every_api_command():
    sections = cli_sections(CLI_DOC.read_text(encoding="utf-8"))
    missing = [c for c in API_CLI_COMMANDS if c not in sections]
    assert not missing, f"docs/cli.md has no section for: {missing}"


def _real_commands() -> Iterator[tuple[str, Any]]:
    import click

    from cib_core.cli.app import cli

    for name, command in cli.builtin_commands().items():
        if isinstance(command, click.Group):
            for sub_name, sub in command.commands.items():
                yield f"{name} {sub_name}", sub
        else:
            yield name, command


def test_cli_doc_covers_every_real_command_and_option():
    sections = cli_sections(CLI_DOC.read_text(encoding="utf-8"))
    problems = []
    for name, command in _real_commands():
        if name not in sections:
            problems.append(f"no section for `cib {name}`")
            continue
        for param in command.params:
            for opt in getattr(param, "opts", []):
                if opt.startswith("-") and opt not in ("-h", "--help") and opt not in sections[name]:
                    problems.append(f"`cib {name}`: option {opt} is not documented")
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------------------------------------
# (d) README: the Quick start runs, the test command matches CI, the distribution's name
# ---------------------------------------------------------------------------------------------

def readme_section(heading: str) -> str:
    text = README.read_text(encoding="utf-8")
    m = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert m, f"README.md has no section '## {heading}'"
    return m.group(1)


def sh_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```sh\n(.*?)^```", markdown, re.M | re.S)


def quick_start_blocks() -> tuple[list[str], list[str], list[str]]:
    """The Quick start's sh blocks: (installing cib, trying it, running the test suite)."""
    install, tryout, tests = [], [], []
    for block in sh_blocks(readme_section("Quick start")):
        if "apt-get" in block:
            tests.append(block)
        elif "pip install" in block:
            install.append(block)
        else:
            tryout.append(block)
    return install, tryout, tests


def test_readme_quick_start_runs_and_its_image_says_hello(tmp_path):
    for tool in ("umoci", "runc", "busybox"):
        require_tool(tool)
    install, tryout, _ = quick_start_blocks()
    # the install step made the venv this test runs in; what it installs is this checkout
    assert [b.strip() for b in install] == ["python3 -m venv .venv && .venv/bin/pip install -q -e ."]
    assert len(tryout) == 2
    container = f"cib-docs-{os.getpid()}-{tmp_path.name}"[:60]
    script = "\n".join(tryout)
    for placeholder, value in (("/tmp/cib-hello-bundle", str(tmp_path / "bundle")),
                               ("/tmp/cib-hello", str(tmp_path / "layout")),
                               (".venv/bin/", f"{Path(sys.executable).parent}/")):
        assert placeholder in script, placeholder
        script = script.replace(placeholder, value)
    script, n = re.subn(r"(runc run -b \S+) cib-hello\b", rf"\1 {container}", script)
    assert n == 1, "the Quick start no longer runs its image with `runc run -b BUNDLE cib-hello`"
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True,
                          cwd=ROOT, stdin=subprocess.DEVNULL, timeout=300)
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    out = done.stdout.splitlines()
    layout = tmp_path / "layout"
    built = [line for line in out if line.startswith(f"oci:{layout}@sha256:")]
    assert len(built) == 2, done.stdout  # v1, then v2 with the shell
    assert re.search(r"^\s*layers\s+1 layer, ", done.stdout, re.M), done.stdout  # cib inspect of v1
    assert any(line.startswith("-rwxr-xr-x") and line.endswith(" hello/hello.sh") for line in out), \
        done.stdout
    assert out[-1] == "Hello from an image built by cib.", done.stdout


def _ci_packages() -> list[str]:
    m = re.search(r"^packages=\((.*?)\)", CI_RUN.read_text(encoding="utf-8"), re.M | re.S)
    assert m, ".ci/run has no packages=(...) list"
    return m.group(1).split()


def test_readme_test_command_installs_what_ci_installs():
    _, _, tests = quick_start_blocks()
    assert len(tests) == 1, "the Quick start should have one test command"
    lines = [" ".join(line.split()) for line in tests[0].replace("\\\n", " ").splitlines()]
    assert lines[0].startswith("apt-get update && apt-get install -y "), \
        "the package index must be updated before installing"
    packages = [word for word in lines[0].split()[5:] if not word.startswith("-")]
    assert sorted(packages) == sorted(_ci_packages())
    assert lines[1:] == [
        "python3 -m venv .venv && .venv/bin/pip install -q -e '.[test]' && .venv/bin/python -m pytest -q"]
    ci = CI_RUN.read_text(encoding="utf-8")
    assert ci.index("apt-get update") < ci.index("apt-get install")


def test_install_commands_name_the_distribution_cib_core():
    """Commands that users copy (code blocks of the docs, messages in the code) install
    cib-core; prose may still warn that ``pip install cib`` is another project."""
    bare = re.compile(r"pip install\s+(['\"]?)cib(\[[^\]]*\])?\1(?![\w.-])", re.M)
    fence = re.compile(r"^```[a-z]*\n(.*?)^```", re.M | re.S)
    places = {str(doc.relative_to(ROOT)): "".join(fence.findall(doc.read_text(encoding="utf-8")))
              for doc in LINKED_DOCS}
    for package in ("cib_core", "cib_plugins"):
        for source in sorted((ROOT / package).rglob("*.py")):
            places[str(source.relative_to(ROOT))] = source.read_text(encoding="utf-8")
    wrong = {name: bare.findall(text) for name, text in places.items() if bare.search(text)}
    assert not wrong, f"these install the unrelated `cib` distribution: {sorted(wrong)}"
    assert "pip install cib-core" in README.read_text(encoding="utf-8")
    assert "pip install cib-core" in places["docs/guide.md"]


# ---------------------------------------------------------------------------------------------
# (e) every Python block of README.md and docs/*.md is a declaration or an example that runs
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Block:
    doc: str  # "README.md", "docs/plugins.md"
    line: int  # of its first line of code
    code: str

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}"


def python_blocks(docs: list[Path] = LINKED_DOCS) -> list[Block]:
    blocks = []
    for path in docs:
        lines = path.read_text(encoding="utf-8").splitlines()
        i = 0
        while i < len(lines):
            if lines[i].strip() == "```python":
                j = i + 1
                while j < len(lines) and lines[j].strip() != "```":
                    j += 1
                assert j < len(lines), f"{path.name}:{i + 1}: unterminated code fence"
                code = textwrap.dedent("\n".join(lines[i + 1:j])) + "\n"
                blocks.append(Block(str(path.relative_to(ROOT)), i + 2, code))
                i = j
            i += 1
    return blocks


# a signature written out, not code: "name(param: type, ..." or "...) -> type"
_SIGNATURE = re.compile(r"\)\s*->|[(,]\s*\*{0,2}\w+\s*:\s*[\w\[]")


def is_declaration(code: str) -> bool:
    """A listing of signatures or types to read, not code to run: it does not parse as Python
    but reads as signatures, or every statement in it is a stub (a function whose body is
    ``...``, a class of annotated fields and stubs, a type alias)."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return _SIGNATURE.search(code) is not None
    return bool(tree.body) and all(_is_stub(node) for node in tree.body)


def _is_docstring(node: ast.stmt) -> bool:
    return isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) \
        and isinstance(node.value.value, str)


def _is_field(node: ast.stmt) -> bool:
    return isinstance(node, ast.AnnAssign) and (node.value is None
                                                or isinstance(node.value, ast.Constant))


def _is_stub(node: ast.stmt) -> bool:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        body = node.body[1:] if _is_docstring(node.body[0]) else node.body
        return (len(body) == 1 and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant) and body[0].value.value is Ellipsis)
    if isinstance(node, ast.ClassDef):
        return all(_is_docstring(s) or _is_stub(s) or _is_field(s) for s in node.body)
    if isinstance(node, (ast.Assign, ast.AnnAssign)):  # a type alias
        return isinstance(node.value, (ast.Subscript, ast.Name, ast.Attribute, ast.BinOp))
    return False


def test_declarations_are_told_from_examples():
    assert is_declaration("image.sync(*, copy_remote_layers: bool = True) -> None\n")
    assert is_declaration("Image(base: str, target: str, *,\n      auth: Mapping | None = None)\n")
    assert is_declaration("@hookimpl\ndef cib_transport(registry: str) -> Adapter | None: ...\n")
    assert is_declaration("@dataclass\nclass X:\n    a: str\n    b: int = 0\n")
    assert is_declaration("Progress = Callable[[str, int], None]\ndef f(a: int) -> None: ...\n")
    assert not is_declaration("from cib_core import Image\n")
    assert not is_declaration("image = Image(base, target)\nimage.save()\n")
    assert not is_declaration("image = Image(base, target\nimage.save()\n")  # broken, no signature
    assert not is_declaration("@hookimpl\ndef cib_transport(registry):\n    return None\n")


def _run_block(bed: Bed, block: Block, *, then: str = "", env: dict[str, str] | None = None,
               ) -> tuple[dict[str, Any], str]:
    """Run a block (names substituted) as a script; ``then`` is code the test runs after it in
    the same interpreter, to use what the example made."""
    code = bed.substitute(block.code) + (f"\n# -- the test's own, after the example --\n{then}"
                                         if then else "")
    return run_python(bed, code, where=block.where, first_line=block.line, env=env)


def _block(doc: str, marker: str) -> Block:
    found = [b for b in python_blocks() if b.doc == doc and marker in b.code]
    assert len(found) == 1, f"{len(found)} python blocks of {doc} contain {marker!r}"
    return found[0]


def _layout_files(layout: Path) -> dict[str, bytes]:
    """The files of the top layer of the (only) image in an OCI layout."""
    index = json.loads((layout / "index.json").read_text())
    blobs = layout / "blobs" / "sha256"
    manifest = json.loads((blobs / index["manifests"][0]["digest"].split(":")[1]).read_bytes())
    top = (blobs / manifest["layers"][-1]["digest"].split(":")[1]).read_bytes()
    with tarfile.open(fileobj=io.BytesIO(top), mode="r:*") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()  # type: ignore[union-attr]
                if m.isfile()}


def run_readme_library(bed: Bed, block: Block) -> None:
    ns, out = _run_block(bed, block)
    oracle = Oracle(bed.registry)
    manifest, digest = oracle.manifest("team/app", "1.4")
    assert out.strip() == ns["result"].reference == f"{bed.registry.host}/team/app@{digest}"
    assert len(manifest["layers"]) == len(bed.base.layers) + 1
    top = manifest["layers"][-1]["digest"]
    members = oracle.members("team/app", top)
    assert oracle.file("team/app", top, "app/VERSION") == b"1.4\n"
    assert "app/app/__main__.py" in members and "app/app/cache.pyc" not in members  # .dockerignore
    cfg = oracle.config("team/app", manifest)["config"]
    assert (cfg["WorkingDir"], cfg["Cmd"], cfg["Env"][-1]) == ("/app", ["python", "-m", "app"],
                                                              "APP_ENV=production")


def run_migrating_seed(bed: Bed, block: Block) -> None:
    ns, out = _run_block(bed, block)
    oracle = Oracle(bed.registry)
    index, digest = oracle.manifest("my-project/my-image", "latest")
    assert out.strip() == ns["result"].reference == f"{bed.registry.host}/my-project/my-image@{digest}"
    assert len(index["manifests"]) == len(bed.multiarch.platforms)  # node:22 is an index
    for entry in index["manifests"]:
        manifest, _ = oracle.manifest("my-project/my-image", entry["digest"])
        top = manifest["layers"][-1]["digest"]
        members = oracle.members("my-project/my-image", top)
        assert "directory-root-for-files-in-container/app/__main__.py" in members
        cfg = oracle.config("my-project/my-image", manifest)["config"]
        assert (cfg["WorkingDir"], cfg["Cmd"]) == ("/directory-root-for-files-in-container",
                                                   ["node", "index.js"])


def run_reference_validate(bed: Bed, block: Block) -> None:
    from cib_core.copy import copy_image

    copy_image(bed.base.ref, f"{bed.registry.host}/team/app:1.4")
    _ns, out = _run_block(bed, block)
    assert out == "", f"a valid image has no faults, the example printed: {out!r}"


def run_plugins_toy_packager(bed: Bed, block: Block) -> None:
    (bed.workdir / "toy_doc.py").write_text(block.code)
    project = bed.workdir / "toyproject"
    project.mkdir()
    (project / "toy.json").write_text('{"main": "hello.toy"}')
    (project / "hello.toy").write_text("hello from toy\n")
    layout = bed.workdir / "toy-layout"
    _, out = run_python(bed, textwrap.dedent(f"""\
        from cib_core import Image
        from cib_core.plugins import create_plugin_manager
        import toy_doc
        pm = create_plugin_manager(autoload=False)
        pm.register_plugin(toy_doc, name="toy-doc")
        image = Image("scratch", "oci:{layout}:v1", pm=pm, platform="linux/amd64")
        image.add_app("{project}")
        print(image.save().reference)
        """), where=f"{block.where} (as a plugin)")
    assert out.startswith(f"oci:{layout}@sha256:"), out
    index = json.loads((layout / "index.json").read_text())
    blobs = layout / "blobs" / "sha256"
    manifest = json.loads((blobs / index["manifests"][0]["digest"].split(":")[1]).read_bytes())
    names: set[str] = set()
    for layer in manifest["layers"]:
        with tarfile.open(fileobj=io.BytesIO((blobs / layer["digest"].split(":")[1]).read_bytes()),
                          mode="r:*") as tar:
            names |= {m.name for m in tar.getmembers()}
    assert {"usr/local/bin/toy-run", "app/hello.toy", "app/toy.json"} <= names, sorted(names)
    config = json.loads((blobs / manifest["config"]["digest"].split(":")[1]).read_bytes())["config"]
    assert config["Entrypoint"] == ["/usr/local/bin/toy-run", "/app/hello.toy"]


def run_guide_python_app(bed: Bed, block: Block) -> None:
    import pyapp_support as pyapp

    python_base = pyapp.push_python_base(bed.registry, "docs/pybase")
    house = pyapp.build_wheelhouse(bed.workdir.parent / "wheels")
    project = pyapp.write_project(bed.workdir / "myapp")
    pyapp.write_requirements(project / "requirements.txt", house, pyapp.default_pins(house))
    code = Block(block.doc, block.line, block.code.replace("python:3.12-slim", python_base.ref))
    # "wheels from pip's configuration": its environment variables name the tests' wheelhouse
    ns, out = _run_block(bed, code, env={"PIP_FIND_LINKS": str(house.root), "PIP_NO_INDEX": "1"})
    oracle = Oracle(bed.registry)
    manifest, digest = oracle.manifest("team/myapp", "1.0")
    assert out.strip() == f"{bed.registry.host}/team/myapp@{digest}"
    assert len(manifest["layers"]) >= len(python_base.layers) + 2  # dependencies, then the app
    cfg = oracle.config("team/myapp", manifest)["config"]
    assert cfg["Entrypoint"] == ["/opt/venv/bin/cibtest-app"], cfg
    assert "VIRTUAL_ENV=/opt/venv" in cfg["Env"]


def run_reference_imports(bed: Bed, block: Block) -> None:
    _run_block(bed, block, then="assert Image.__module__ == 'cib_core.image'")


def run_reference_auth(bed: Bed, block: Block) -> None:
    secret = f"secret-{os.getpid()}"
    token = base64.b64encode(f"ci-bot:{secret}".encode()).decode()
    config = Path(os.environ["DOCKER_CONFIG"]) / "config.json"
    config.write_text(json.dumps({"auths": {bed.registry.host: {"auth": token}}}))
    ns, out = _run_block(bed, block, then=f"print(creds.secret == {secret!r})")
    assert out.splitlines() == ["Credentials(username='ci-bot', secret='***', token=None)", "True"]


def run_reference_progress(bed: Bed, block: Block) -> None:
    ns, _ = _run_block(bed, block, then=(
        "from cib_core import CustomFile\n"
        "layer = image.add_files({'/hello': CustomFile('hi\\n')})\n"
        "result = image.save()\n"))
    layer = ns["layer"]
    config = ns["result"].manifest["config"]
    assert ns["done"][config["digest"]] == [config["size"], config["size"]]
    # the layer is streamed up while it is built, so its digest is not known as its bytes move
    assert layer.size in [moved for moved, _total in ns["done"].values()]


def _acme_module(bed: Bed) -> str:
    return _block("docs/plugins.md", "# cib_acme.py").code


def run_plugins_minimal(bed: Bed, block: Block) -> None:
    (bed.workdir / "cib_acme.py").write_text(block.code)
    _, out = run_python(bed, textwrap.dedent("""\
        import json
        from cib_core import auth
        from cib_core.plugins import create_plugin_manager
        import cib_acme
        pm = create_plugin_manager(autoload=False)
        pm.register_plugin(cib_acme, name="acme")
        served = auth("registry.acme.example/team/app:1", "pull", pm=pm)
        other = auth("registry.example.org/team/app:1", "pull", pm=pm)
        print(json.dumps([served.username, served.secret, other.anonymous]))
        """), where=f"{block.where} (as a plugin)", env={"ACME_REGISTRY_TOKEN": "acme-token"})
    assert json.loads(out) == ["robot", "acme-token", True]


def run_plugins_transport(bed: Bed, block: Block) -> None:
    (bed.workdir / "acme_transport.py").write_text(block.code)
    _, out = run_python(bed, textwrap.dedent("""\
        import json
        import requests
        import requests.adapters
        from cib_core.plugins import create_plugin_manager
        from cib_core.remote.transport import Transport
        import acme_transport
        pm = create_plugin_manager(autoload=False)
        pm.register_plugin(acme_transport, name="acme-transport")
        acme = Transport("registry.acme.example", pm=pm).session.get_adapter("https://registry.acme.example/")
        other = Transport("registry.example.org", pm=pm).session.get_adapter("https://registry.example.org/")
        sent = {}
        def send(self, request, **kwargs):  # what HTTPAdapter would be asked to send
            sent.update(kwargs)
            return requests.Response()
        requests.adapters.HTTPAdapter.send = send
        acme.send(requests.Request("GET", "https://registry.acme.example/v2/").prepare())
        print(json.dumps([type(acme).__name__, type(other).__name__, sent["cert"]]))
        """), where=f"{block.where} (as a plugin)")
    assert json.loads(out) == ["ClientCertificate", "HTTPAdapter",
                               ["/etc/acme/client.crt", "/etc/acme/client.key"]]


def run_plugins_templates(bed: Bed, block: Block) -> None:
    (bed.workdir / "acme_templates.py").write_text(block.code)
    (bed.workdir / "etc-templates").mkdir()
    (bed.workdir / "etc-templates" / "motd").write_text("hello $WHO\n")
    # the command the guide gives right after the block, with the module as a plugin of one run
    text = (ROOT / block.doc).read_text(encoding="utf-8")
    after = text[text.index(block.code.strip()):]
    command = re.search(r"`(cib build [^`]*template:[^`]*)`", after)
    assert command, f"{block.where}: no `cib build ... template:...` command after the block"
    run_shell(bed, command.group(1).replace("cib ", "cib -p acme_templates ", 1),
              where=f"{block.where} (the command after it)", env={"WHO": "world"})
    assert _layout_files(bed.workdir / "out")["etc/acme/motd"] == b"hello world\n"


def run_plugins_commands(bed: Bed, block: Block) -> None:
    (bed.workdir / "acme_commands.py").write_text(block.code)
    out = run_shell(bed, "cib -p acme_commands acme-whoami", where=f"{block.where} (as a plugin)")
    assert out == "robot\n"


def run_plugins_manager(bed: Bed, block: Block) -> None:
    (bed.workdir / "cib_acme.py").write_text(_acme_module(bed))
    _, out = _run_block(bed, block, env={"ACME_REGISTRY_TOKEN": "acme-token"}, then=(
        "import json\n"
        "print(json.dumps([pm.has_plugin('acme'), pm.is_blocked('keyring'),\n"
        "                  image.client().credentials.username]))\n"))
    assert json.loads(out) == [True, True, "robot"]


def run_plugins_test_file(bed: Bed, block: Block) -> None:
    # the test is of the plugin the page builds: the minimal module with the template source
    templates = _block("docs/plugins.md", 'PREFIX = "template:"').code
    (bed.workdir / "cib_acme.py").write_text(_acme_module(bed) + "\n\n" + templates)
    (bed.workdir / "tests").mkdir()
    (bed.workdir / "tests" / "test_acme.py").write_text(block.code)
    out = run_shell(bed, f"python -m pytest -q -p no:cacheprovider --basetemp "
                         f"{bed.workdir.parent / 'nested-pytest'} tests/test_acme.py",
                    where=f"{block.where} (run by pytest)")
    assert "1 passed" in out


def run_cache_image(bed: Bed, block: Block) -> None:
    # the example is the one line a reader adds to a build; the test supplies the rest
    block = replace(block, code="from cib_core import Image\n" + block.code)
    _, out = _run_block(bed, block, then=(
        "import pathlib\n"
        "pathlib.Path('cached-src').mkdir(exist_ok=True)\n"
        "pathlib.Path('cached-src/a.txt').write_text('cached\\n')\n"
        "image.add_files({'/app': 'cached-src'})\n"
        "print(image.save().reference)\n"))
    _manifest, digest = Oracle(bed.registry).manifest("team/app", "1.4")
    assert out.strip() == f"{bed.registry.host}/team/app@{digest}"
    # the layer's record went to the cache repository the example names
    tags = requests.get(f"http://{bed.registry.host}/v2/ci/cib-cache/tags/list", timeout=30).json()
    assert [t for t in tags["tags"] if t.startswith("cib-cache-")], tags


EXAMPLES: dict[str, tuple[str, str, Callable[[Bed, Block], None]]] = {
    # name: (document, text only that block of it contains, how to run and check it)
    "readme-library": ("README.md", 'image.env = ["APP_ENV=production"]', run_readme_library),
    "migrating-seed": ("docs/migrating.md", "image.working_dir = \"/directory-root", run_migrating_seed),
    "reference-validate": ("docs/reference.md", "for fault in validate_image(", run_reference_validate),
    "plugins-toy-packager": ("docs/plugins.md", "def cib_app_packager(project, bases, options)",
                             run_plugins_toy_packager),
    "guide-python-app": ("docs/guide-python.md", 'image.add_python_app("./myapp")',
                         run_guide_python_app),
    "reference-imports": ("docs/reference.md", "from cib_core import (Image, ImageData",
                          run_reference_imports),
    "reference-auth": ("docs/reference.md", 'creds = auth(', run_reference_auth),
    "reference-progress": ("docs/reference.md", "def progress(digest, moved, total)",
                           run_reference_progress),
    "plugins-minimal": ("docs/plugins.md", "# cib_acme.py", run_plugins_minimal),
    "plugins-transport": ("docs/plugins.md", "class ClientCertificate", run_plugins_transport),
    "plugins-templates": ("docs/plugins.md", 'PREFIX = "template:"', run_plugins_templates),
    "plugins-commands": ("docs/plugins.md", '@cli.command("acme-whoami")', run_plugins_commands),
    "plugins-manager": ("docs/plugins.md", "create_plugin_manager(blocked=", run_plugins_manager),
    "plugins-test-file": ("docs/plugins.md", "# tests/test_acme.py", run_plugins_test_file),
    "cache-image": ("docs/cache.md", 'cache_repo="registry.example.com/ci/cib-cache"',
                    run_cache_image),
}


def unclaimed_examples(blocks: list[Block]) -> list[str]:
    """The blocks that are no declaration and that no test runs (a marked guide recipe or an
    entry of EXAMPLES)."""
    recipe_lines = {r.line + 1 for r in marked_recipes() if r.language == "python"}
    return [block.where for block in blocks
            if not (block.doc == "docs/guide.md" and block.line in recipe_lines)
            and not any(doc == block.doc and marker in block.code
                        for doc, marker, _ in EXAMPLES.values())
            and not is_declaration(block.code)]


def test_every_python_block_is_a_declaration_or_an_example_that_runs():
    blocks = python_blocks()
    unclaimed = unclaimed_examples(blocks)
    assert not unclaimed, ("python blocks that are neither declarations nor run by a test (mark a "
                           "guide recipe with <!-- test: NAME -->, or add an entry to EXAMPLES): "
                           + ", ".join(unclaimed))
    claimed = {name: sum(doc == b.doc and marker in b.code for b in blocks)
               for name, (doc, marker, _) in EXAMPLES.items()}
    assert set(claimed.values()) == {1}, f"EXAMPLES markers that do not name one block: {claimed}"
    # the check above sees an example no test runs
    assert unclaimed_examples([Block("docs/new.md", 3, "image.save()\n")]) == ["docs/new.md:3"]


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_python_example_runs_and_does_what_it_says(name: str, bed: Bed):
    doc, marker, run = EXAMPLES[name]
    run(bed, _block(doc, marker))
