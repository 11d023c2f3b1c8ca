"""Image's config attributes check their types; the npm library's spellings and call forms get
errors that show the Python form. No network: scratch or hand-made OCI layout bases, OCI layout
targets in tmp_path, read back as plain JSON files."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest

from cib_core import Image
from cib_core import mediatypes as mt
from cib_core.errors import ConfigurationError

# --------------------------------------------------------------------------------------------
# helpers: an OCI layout read and written as plain files, without cib
# --------------------------------------------------------------------------------------------

def _blob(layout: Path, digest: str) -> dict[str, Any]:
    algorithm, hexdigest = digest.split(":")
    data = (layout / "blobs" / algorithm / hexdigest).read_bytes()
    assert "sha256:" + hashlib.sha256(data).hexdigest() == digest
    document: dict[str, Any] = json.loads(data)
    return document


def _tagged(layout: Path, tag: str) -> dict[str, Any]:
    index = json.loads((layout / "index.json").read_text())
    entries = [m for m in index["manifests"]
               if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag]
    assert len(entries) == 1, index
    return _blob(layout, entries[0]["digest"])


def _tags(layout: Path) -> list[str]:
    if not (layout / "index.json").exists():
        return []
    index = json.loads((layout / "index.json").read_text())
    return [m.get("annotations", {}).get("org.opencontainers.image.ref.name") for m in index["manifests"]]


def _saved_config(layout: Path, tag: str = "1") -> dict[str, Any]:
    return _blob(layout, _tagged(layout, tag)["config"]["digest"])


def _write_blob(layout: Path, document: dict[str, Any]) -> tuple[str, int]:
    data = json.dumps(document).encode()
    hexdigest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (layout / "blobs" / "sha256" / hexdigest).write_bytes(data)
    return "sha256:" + hexdigest, len(data)


def _two_platform_layout(layout: Path) -> None:
    """An OCI layout whose tag 1 is an index of two empty images, linux/amd64 and linux/arm64."""
    layout.mkdir()
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    entries = []
    for arch in ("amd64", "arm64"):
        config = {"architecture": arch, "os": "linux", "config": {"Env": ["PATH=/bin"]},
                  "rootfs": {"type": "layers", "diff_ids": []}}
        config_digest, config_size = _write_blob(layout, config)
        manifest = {"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST, "layers": [],
                    "config": {"mediaType": mt.OCI_CONFIG, "digest": config_digest,
                               "size": config_size}}
        digest, size = _write_blob(layout, manifest)
        entries.append({"mediaType": mt.OCI_MANIFEST, "digest": digest, "size": size,
                        "platform": {"os": "linux", "architecture": arch}})
    index = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": entries,
             "annotations": {"org.example.base": "kept"}}
    digest, size = _write_blob(layout, index)
    (layout / "index.json").write_text(json.dumps({
        "schemaVersion": 2, "mediaType": mt.OCI_INDEX,
        "manifests": [{"mediaType": mt.OCI_INDEX, "digest": digest, "size": size,
                       "annotations": {"org.opencontainers.image.ref.name": "1"}}]}))


@pytest.fixture
def image(tmp_path: Path) -> Image:
    return Image("scratch", f"oci:{tmp_path / 'out'}:1")


@pytest.fixture
def src(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory holding ./src/app.js, as the npm README's examples assume."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "app.js").write_text("console.log('hi')\n")
    return tmp_path / "src"


# --------------------------------------------------------------------------------------------
# values of the wrong type: a ConfigurationError naming the attribute and the working form
# --------------------------------------------------------------------------------------------

WRONG = [
    # attribute, value, what the message must contain
    ("cmd", "echo hi", ['image.cmd', 'cmd=["sh", "-c", "echo hi"]', 'cmd=["echo", "hi"]']),
    ("cmd", ["sleep", 5], ["image.cmd[1]", "an int", 'cmd=["sleep", "5"]']),
    ("cmd", {"a": "b"}, ["image.cmd", "list of strings", "a dict"]),
    ("entrypoint", "/app/run.sh --fast", ["image.entrypoint",
                                          'entrypoint=["sh", "-c", "/app/run.sh --fast"]',
                                          'entrypoint=["/app/run.sh", "--fast"]']),
    ("entrypoint", "it's", ["image.entrypoint", 'entrypoint=["sh", "-c", "it\'s"]']),
    ("exposed_ports", "8080", ["image.exposed_ports", 'exposed_ports=["8080"]']),
    ("exposed_ports", "80, 443/tcp", ['exposed_ports=["80", "443/tcp"]']),
    ("exposed_ports", 8080, ["image.exposed_ports", "an int", 'exposed_ports=["8080"]']),
    ("exposed_ports", [8080], ["image.exposed_ports[0]", 'exposed_ports=["8080"]']),
    ("exposed_ports", ["http"], ["image.exposed_ports[0]", "'http'", "not a port"]),
    ("exposed_ports", ["70000"], ["image.exposed_ports[0]", "not a port"]),
    ("exposed_ports", ["53/icmp"], ["image.exposed_ports[0]", "/udp"]),
    ("volumes", "/data", ["image.volumes", 'volumes=["/data"]']),
    ("volumes", Path("/data"), ["image.volumes", 'volumes=["/data"]']),
    ("volumes", ["data"], ["image.volumes[0]", "absolute", '"/data"']),
    ("env", "HOME=/workspace", ["image.env", 'env=["HOME=..."]']),
    ("env", {"HOME": "/workspace", "MODE": "prod"}, ["image.env", 'env=["HOME=...", "MODE=..."]']),
    ("env", ["HOME"], ["image.env[0]", "NAME=value"]),
    ("env", ["=value"], ["image.env[0]", "no name"]),
    ("env", [("HOME", "/w")], ["image.env[0]", "a tuple"]),
    ("labels", {"version": 2}, ["image.labels['version']", 'labels={"version": "2"}']),
    ("labels", ["team=web"], ["image.labels", 'labels={"team": "web"}']),
    ("labels", {1: "x"}, ["image.labels", "key 1"]),
    ("labels", "team=web", ["image.labels", "dict of str to str"]),
    ("annotations", {"org.example.n": 1.5}, ["image.annotations['org.example.n']",
                                             'annotations={"org.example.n": "1.5"}']),
    ("annotations", "x", ["image.annotations", "dict of str to str"]),
    ("working_dir", "app", ["image.working_dir", "absolute", 'working_dir="/app"']),
    ("working_dir", 3, ["image.working_dir", "an int"]),
    ("user", 1000, ["image.user", 'user="1000"']),
]


@pytest.mark.parametrize(("name", "value", "expected"), WRONG,
                         ids=[f"{n}={v!r}" for n, v, _ in WRONG])
def test_a_wrong_value_is_refused_when_assigned(image: Image, name: str, value: object,
                                                expected: list[str]) -> None:
    before = getattr(image, name)
    with pytest.raises(ConfigurationError) as err:
        setattr(image, name, value)
    for text in expected:
        assert text in str(err.value), (text, str(err.value))
    assert getattr(image, name) == before  # the refused value was not kept


def test_env_values_are_not_shown_in_messages(image: Image) -> None:
    with pytest.raises(ConfigurationError) as err:
        image.env = {"API_TOKEN": "s3cr3t-value"}
    assert "API_TOKEN" in str(err.value) and "s3cr3t-value" not in str(err.value)
    with pytest.raises(ConfigurationError) as err:
        image.env = "API_TOKEN=s3cr3t-value"
    assert "s3cr3t-value" not in str(err.value)


def test_a_str_is_never_split_into_characters(image: Image, tmp_path: Path) -> None:
    for name, value in (("cmd", "echo hi"), ("entrypoint", "echo"), ("exposed_ports", "8080"),
                        ("volumes", "/data"), ("env", "A=1")):
        with pytest.raises(ConfigurationError):
            setattr(image, name, value)
    image.save()
    inner = _saved_config(tmp_path / "out")["config"]
    assert not {"Cmd", "Entrypoint", "ExposedPorts", "Volumes", "Env"} & set(inner)


def test_values_changed_in_place_are_checked_at_save(image: Image, tmp_path: Path) -> None:
    image.cmd = ["sleep"]
    image.cmd.append(5)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"image\.cmd\[1\] is an int"):
        image.save()
    image.cmd = ["sleep", "5"]
    image.exposed_ports.append("eighty")
    with pytest.raises(ConfigurationError, match=r"image\.exposed_ports\[0\]"):
        image.save()
    image.exposed_ports.clear()
    image.labels["n"] = 1  # type: ignore[assignment]
    with pytest.raises(ConfigurationError, match=r"image\.labels\['n'\]"):
        image.save()
    assert _tags(tmp_path / "out") == []  # nothing was tagged by the refused saves
    del image.labels["n"]
    image.save()
    assert _saved_config(tmp_path / "out")["config"]["Cmd"] == ["sleep", "5"]


@pytest.mark.parametrize(("kwargs", "expected"), [
    ({"cmd": "node index.js"}, ['save(cmd=...)', 'cmd=["node", "index.js"]']),
    ({"env": "A=1"}, ['save(env=...)', 'env=["A=..."]']),
    ({"env": ["A"]}, ['save(env=...)[0]', "NAME=value"]),
    ({"working_dir": "app"}, ['save(working_dir=...)', 'working_dir="/app"']),
])
def test_save_arguments_are_checked(image: Image, tmp_path: Path, kwargs: dict[str, Any],
                                    expected: list[str]) -> None:
    with pytest.raises(ConfigurationError) as err:
        image.save(**kwargs)
    for text in expected:
        assert text in str(err.value), (text, str(err.value))
    assert _tags(tmp_path / "out") == []


def test_save_tags_must_be_strings(image: Image) -> None:
    with pytest.raises(ConfigurationError, match="every tag must be a str"):
        image.save([1])  # type: ignore[list-item]


# --------------------------------------------------------------------------------------------
# right values land in the config, the manifest and the index
# --------------------------------------------------------------------------------------------

def test_config_attributes_are_saved(image: Image, tmp_path: Path) -> None:
    image.working_dir = "/app"
    image.cmd = ("node", "index.js")  # type: ignore[assignment]  # a tuple is taken as a list
    image.entrypoint = ["/usr/bin/tini", "--"]
    image.user = "1000:1000"
    image.env = ["HOME=/workspace", "MODE=prod"]
    image.labels = {"team": "web"}
    image.exposed_ports = ["8080", "53/udp", "9/sctp"]
    image.volumes = ["/data", "/cache"]
    image.annotations = {"org.opencontainers.image.version": "1.0"}
    assert image.cmd == ["node", "index.js"]
    image.save()
    layout = tmp_path / "out"
    inner = _saved_config(layout)["config"]
    assert inner["WorkingDir"] == "/app"
    assert inner["Cmd"] == ["node", "index.js"]
    assert inner["Entrypoint"] == ["/usr/bin/tini", "--"]
    assert inner["User"] == "1000:1000"
    assert inner["Env"] == ["HOME=/workspace", "MODE=prod"]
    assert inner["Labels"] == {"team": "web"}
    assert inner["ExposedPorts"] == {"8080/tcp": {}, "53/udp": {}, "9/sctp": {}}
    assert inner["Volumes"] == {"/data": {}, "/cache": {}}
    manifest = _tagged(layout, "1")
    assert manifest["annotations"] == {"org.opencontainers.image.version": "1.0"}


def test_path_objects_are_taken_as_working_dir(image: Image, tmp_path: Path) -> None:
    image.working_dir = Path("/srv/app")  # type: ignore[assignment]
    assert image.working_dir == "/srv/app"


def test_save_arguments_set_the_attributes(image: Image, tmp_path: Path) -> None:
    image.env = ["A=1"]
    image.save(cmd=["true"], env=["B=2"], working_dir="/w")
    assert image.cmd == ["true"] and image.env == ["A=1", "B=2"] and image.working_dir == "/w"
    inner = _saved_config(tmp_path / "out")["config"]
    assert (inner["Cmd"], inner["Env"], inner["WorkingDir"]) == (["true"], ["A=1", "B=2"], "/w")


def test_merged_over_the_base_config(tmp_path: Path) -> None:
    base = Image("scratch", f"oci:{tmp_path / 'base'}:1")
    base.env = ["PATH=/bin", "KEEP=1"]
    base.labels = {"a": "base", "b": "base"}
    base.exposed_ports = ["80"]
    base.volumes = ["/data"]
    base.save()
    image = Image(f"oci:{tmp_path / 'base'}:1", f"oci:{tmp_path / 'out'}:1")
    image.env = ["PATH=/app/bin:/bin", "NEW=2"]
    image.labels = {"b": "mine"}
    image.exposed_ports = ["443"]
    image.volumes = ["/cache"]
    image.save()
    inner = _saved_config(tmp_path / "out")["config"]
    assert inner["Env"] == ["PATH=/app/bin:/bin", "KEEP=1", "NEW=2"]
    assert inner["Labels"] == {"a": "base", "b": "mine"}
    assert inner["ExposedPorts"] == {"80/tcp": {}, "443/tcp": {}}
    assert inner["Volumes"] == {"/data": {}, "/cache": {}}


def test_annotations_go_on_every_manifest_and_the_index(tmp_path: Path) -> None:
    _two_platform_layout(tmp_path / "base")
    image = Image(f"oci:{tmp_path / 'base'}:1", f"oci:{tmp_path / 'out'}:1")
    image.annotations = {"org.opencontainers.image.version": "2.0"}
    image.cmd = ["true"]
    image.save()
    index = _tagged(tmp_path / "out", "1")
    assert index["mediaType"] == mt.OCI_INDEX
    assert index["annotations"] == {"org.example.base": "kept",
                                    "org.opencontainers.image.version": "2.0"}
    assert len(index["manifests"]) == 2
    for entry in index["manifests"]:
        manifest = _blob(tmp_path / "out", entry["digest"])
        assert manifest["annotations"] == {"org.opencontainers.image.version": "2.0"}
        assert _blob(tmp_path / "out", manifest["config"]["digest"])["config"]["Cmd"] == ["true"]


# --------------------------------------------------------------------------------------------
# attributes Image does not have
# --------------------------------------------------------------------------------------------

SEED_SPELLINGS = [("Cmd", "cmd"), ("WorkingDir", "working_dir"), ("Env", "env"),
                  ("Entrypoint", "entrypoint"), ("User", "user"), ("Labels", "labels"),
                  ("ExposedPorts", "exposed_ports"), ("Volumes", "volumes")]


@pytest.mark.parametrize(("seed", "python"), SEED_SPELLINGS)
def test_the_npm_spelling_names_the_python_one(image: Image, seed: str, python: str) -> None:
    with pytest.raises(AttributeError, match=rf"has no attribute '{seed}': the Python spelling "
                                             rf"is image\.{python}\b") as err:
        setattr(image, seed, ["x"])
    assert err.value.name == seed
    assert seed not in vars(image)
    with pytest.raises(AttributeError, match=rf"image\.{python}"):
        getattr(image, seed)


@pytest.mark.parametrize(("seed", "python"), [("addFiles", "add_files"),
                                              ("getImageConfig", "get_image_config"),
                                              ("getImageData", "get_image_data"),
                                              ("addLayer", "add_layer"),
                                              ("removeLayer", "remove_layer")])
def test_npm_method_names_name_the_python_method(image: Image, seed: str, python: str) -> None:
    with pytest.raises(AttributeError, match=rf"image\.{python}\(\.\.\.\)"):
        getattr(image, seed)


def test_a_config_field_without_an_attribute_points_at_get_image_config(image: Image) -> None:
    with pytest.raises(AttributeError, match=r"image\.get_image_config\(\)\['StopSignal'\]"):
        image.StopSignal = "SIGTERM"


def test_a_misspelt_name_is_refused(image: Image) -> None:
    with pytest.raises(AttributeError, match=r"no attribute 'cmdd'; did you mean image\.cmd\?"):
        image.cmdd = ["true"]
    with pytest.raises(AttributeError, match=r"no attribute 'workdir'; did you mean "
                                             r"image\.working_dir\?"):
        image.workdir = "/app"
    with pytest.raises(AttributeError, match=r"no attribute 'colour', so assigning it would change "
                                             r"nothing; the config attributes are working_dir, cmd"):
        image.colour = "blue"
    assert not {"cmdd", "workdir", "colour"} & set(vars(image))


def test_private_declared_and_subclass_attributes_still_work(image: Image, tmp_path: Path) -> None:
    image._scratchpad = 1
    assert image._scratchpad == 1
    image.sync_counts = {"copied": 1}
    image.target_ref = image.target_ref

    class Tracked(Image):
        note: str

    tracked = Tracked("scratch", f"oci:{tmp_path / 'sub'}:1")
    tracked.note = "mine"
    assert tracked.note == "mine"
    with pytest.raises(AttributeError, match="image.cmd"):
        tracked.Cmd = ["x"]


def test_a_read_only_property_stays_read_only(image: Image) -> None:
    with pytest.raises(AttributeError):
        image.docker_flavour = True


# --------------------------------------------------------------------------------------------
# insecure
# --------------------------------------------------------------------------------------------

def test_insecure_true_means_the_base_and_target_hosts() -> None:
    image = Image("registry.internal:5000/base:1", "other.internal/app:1", insecure=True)
    assert image.client(write=False).transport.insecure
    assert image.client("other.internal/app:1", write=True).transport.insecure
    assert not image.client("third.internal/x:1").transport.insecure


def test_insecure_takes_a_list_or_one_host() -> None:
    listed = Image("registry.internal:5000/base:1", "other.internal/app:1",
                   insecure=["other.internal"])
    assert listed.client("other.internal/app:1").transport.insecure
    assert not listed.client().transport.insecure
    single = Image("registry.internal:5000/base:1", "oci:/nonexistent/x:1",
                   insecure="registry.internal:5000")
    assert single.client().transport.insecure
    assert not Image("registry.internal:5000/base:1", "oci:/nonexistent/x:1",
                     insecure=False).client().transport.insecure


@pytest.mark.parametrize("value", [5, [5], b"host"])
def test_insecure_of_another_type_is_refused(value: object) -> None:
    with pytest.raises(ConfigurationError, match="insecure"):
        Image("scratch", "oci:/nonexistent/x:1", insecure=value)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# the npm library's call forms
# --------------------------------------------------------------------------------------------

def test_options_object_as_second_argument_of_add_files(image: Image, src: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as err:
        image.add_files("./src", {"ignores": ["*.md"], "ignoreFiles": [".dockerignore"]})
    assert ("image.add_files('./src', ignores=['*.md'], ignore_files=['.dockerignore'])"
            in str(err.value))
    with pytest.raises(ConfigurationError) as err:
        image.add_files({"/app": "./src"}, {"ignores": ["*.md"], "tar": {"portable": True}})
    assert "image.add_files({'/app': './src'}, ignores=['*.md'])" in str(err.value)
    assert "no option 'tar'" in str(err.value)
    assert not (tmp_path / "out").exists()


def test_options_object_as_third_argument_of_add_files(image: Image, src: Path) -> None:
    with pytest.raises(ConfigurationError,
                       match=r"image\.add_files\('\./src', '/app', ignores=\['\*\.md'\]\)"):
        image.add_files("./src", "/app", {"ignores": ["*.md"]})  # type: ignore[call-arg]


def test_the_npm_readme_mapping_order_shows_the_swapped_mapping(image: Image, src: Path) -> None:
    with pytest.raises(ConfigurationError) as err:
        image.add_files({"./": "/directory-root-for-files-in-container"})
    message = str(err.value)
    assert "{image_path: source}" in message
    assert "add_files({'/directory-root-for-files-in-container': './'})" in message
    with pytest.raises(ConfigurationError, match=r"add_files\(\{'/app': 'src', '/etc/x': "):
        image.add_files({Path("src"): "/app", "/etc/x": "./src/app.js"})


def test_positional_form_the_wrong_way_round(image: Image, src: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"write add_files\('\./src', '/app'\)"):
        image.add_files("/app", "./src")


def test_the_right_forms_still_work(image: Image, src: Path, tmp_path: Path) -> None:
    image.add_files({"/app": "./src"})
    image.add_files("./src", "/again")
    image.add_files({"./relative": str(src / "app.js")})  # a relative image path, an existing source
    image.add_files(src)
    image.save()
    manifest = _tagged(tmp_path / "out", "1")
    assert len(manifest["layers"]) == 4


def test_a_list_of_sources_or_a_str_of_patterns_is_refused(image: Image, src: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"mapping \{image_path: source\}"):
        image.add_files(["./src"])  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"write ignores=\['\*\.md'\]"):
        image.add_files({"/app": "./src"}, ignores="*.md")
    with pytest.raises(ConfigurationError, match="either a mapping"):
        image.add_files({"/app": "./src"}, "/other")


def test_options_object_of_save_and_sync(image: Image, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as err:
        image.save(["v1"], {"Cmd": ["node", "index.js"], "WorkingDir": "/app",  # type: ignore[call-arg]
                            "copyRemoteLayers": False})
    assert ("image.save(['v1'], cmd=['node', 'index.js'], working_dir='/app', "
            "copy_remote_layers=False)") in str(err.value)
    with pytest.raises(ConfigurationError, match=r"image\.save\(env=\['A=1'\]\)"):
        image.save({"Env": ["A=1"]})  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError,
                       match=r"image\.sync\(copy_remote_layers=False, ignore_exists=True\)"):
        image.sync({"copyRemoteLayers": False, "ignoreExists": True})  # type: ignore[call-arg]
    assert _tags(tmp_path / "out") == []


def test_options_object_of_image_hides_credentials() -> None:
    options = {"auth": {"myregistry.io": {"token": "s3cr3t-token"}}}
    with pytest.raises(ConfigurationError) as err:
        Image("node:lts-slim", "myregistry.io/app", options)  # type: ignore[call-arg]
    assert "Image('node:lts-slim', 'myregistry.io/app', auth={...})" in str(err.value)
    assert "s3cr3t" not in str(err.value)
    with pytest.raises(ConfigurationError) as err:
        Image("node:lts-slim", options)  # type: ignore[arg-type]
    assert "Image('node:lts-slim', TARGET, auth={...})" in str(err.value)
    assert "s3cr3t" not in str(err.value)


def test_a_target_that_is_not_a_str_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="target must be a str"):
        Image("scratch", os.path)  # type: ignore[arg-type]
