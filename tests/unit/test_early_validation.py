"""Inputs are checked before anything is sent or written, and a bad one is a ``CibError``
subclass naming it and the expected form, never a ``TypeError``, ``ValueError`` or
``OverflowError`` from deep inside.

"Nothing sent" is checked by making every HTTP send of ``requests`` fail the test; "nothing
written" by looking at the target's directory afterwards.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import requests

from cib_core import CustomFile, Image, RegistryClient
from cib_core.errors import CibError, ConfigurationError, InvalidReference
from cib_core.reference import (
    LocalReference,
    Reference,
    check_registry_host,
    check_target_tag,
    parse_image_spec,
    parse_reference,
)

DIGEST = "sha256:" + "a" * 64


@pytest.fixture
def no_requests(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every request ``requests`` would send is recorded and refused."""
    sent: list[str] = []

    def refuse(self: requests.Session, request: requests.PreparedRequest, **kwargs: Any) -> Any:
        sent.append(f"{request.method} {request.url}")
        raise AssertionError(f"a request was sent: {request.method} {request.url}")

    monkeypatch.setattr(requests.Session, "send", refuse)
    return sent


def _client() -> RegistryClient:
    return RegistryClient("127.0.0.1:5999", "team/app")


# -- RegistryClient ------------------------------------------------------------------------------

@pytest.mark.parametrize("repository", ["../../x", "UPPER", "a//b", "/abs", "a b", "x:tag",
                                        "x@" + DIGEST, "a/" * 200 + "b", "tail/"])
def test_client_refuses_a_repository_name_that_is_not_one(repository: str,
                                                           no_requests: list[str]) -> None:
    with pytest.raises(InvalidReference) as info:
        RegistryClient("127.0.0.1:5999", repository)
    assert repr(repository[:200])[:60].strip("'") in str(info.value)
    assert "library/alpine" in str(info.value) or "255" in str(info.value)
    assert no_requests == []


@pytest.mark.parametrize("registry, words", [
    ("127.0.0.1:99999", "port 99999"), ("127.0.0.1:0", "port 0"),
    ("a" * 64 + ".example", "label of 64"), ("x." * 130 + "io", "253"),
    ("http://127.0.0.1:5000", "HOST[:PORT]"), ("127.0.0.1:5000/v2", "HOST[:PORT]"),
    ("[::1", "HOST[:PORT]"), ("a b", "HOST[:PORT]"),
])
def test_client_refuses_a_registry_host_that_is_not_one(registry: str, words: str,
                                                        no_requests: list[str]) -> None:
    with pytest.raises(InvalidReference) as info:
        RegistryClient(registry, "team/app")
    assert registry[:40] in str(info.value) and words in str(info.value)


def test_valid_hosts_and_repositories_are_taken() -> None:
    for registry in ("127.0.0.1:5000", "[::1]:5000", "localhost", "docker.io", "a" * 63 + ".io",
                     "host:65535"):
        RegistryClient(registry, "library/alpine")
    for repository in ("a", "a/b/c", "a.b_c__d-e--f/g", "x" * 255):
        RegistryClient("127.0.0.1:5000", repository)


@pytest.mark.parametrize("call", [
    lambda c: c.manifest_upload("bad tag!", b"{}", "application/vnd.oci.image.manifest.v1+json"),
    lambda c: c.manifest_upload("-lead", {"schemaVersion": 2, "mediaType":
                                          "application/vnd.oci.image.manifest.v1+json"}),
    lambda c: c.manifest("bad tag!"),
    lambda c: c.manifest_raw("t" * 129),
    lambda c: c.manifest_exists("a/b"),
    lambda c: c.manifest_digest(".hidden"),
    lambda c: c.delete_manifest("bad tag!"),
    lambda c: c.manifest("sha256:abc"),
    lambda c: c.manifest("md5:" + "a" * 32),
    lambda c: c.mount(DIGEST, "../../other"),
    lambda c: c.blob("sha256:xyz"),
    lambda c: c.blob_exists("latest"),
    lambda c: c.delete_blob("sha256:" + "A" * 64),
    lambda c: c.upload(b"x", digest="nope"),
    lambda c: c.referrers("v1"),
], ids=["upload-space", "upload-dash", "manifest-space", "raw-129", "exists-slash",
        "digest-dot", "delete-space", "short-digest", "unknown-algorithm", "mount-from",
        "blob", "blob-exists", "delete-blob-upper", "upload-digest", "referrers-tag"])
def test_methods_refuse_bad_tags_and_digests_before_sending(call: Any,
                                                            no_requests: list[str]) -> None:
    with pytest.raises(InvalidReference) as info:
        call(_client())
    message = str(info.value)
    assert "tag" in message or "digest" in message or "sha256" in message or \
        "repository" in message, message
    assert no_requests == []


# -- references ------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, words", [
    ("127.0.0.1:99999/x", "port 99999"), ("localhost:65536/x", "port 65536"),
    ("[::1]:70000/x", "port 70000"), ("example.com:0/x", "port 0"),
    ("a" * 64 + ".localhost/x", "label of 64 characters"),
    (".".join(["b" * 60] * 5) + ".localhost/x", "characters long"),
])
def test_references_with_hosts_no_connection_can_use(text: str, words: str) -> None:
    with pytest.raises(InvalidReference) as info:
        parse_reference(text)
    assert text in str(info.value) and words in str(info.value)
    with pytest.raises(InvalidReference):
        Image("scratch", text)


def test_hosts_at_the_limits_are_valid() -> None:
    assert parse_reference("127.0.0.1:65535/x").registry == "127.0.0.1:65535"
    assert parse_reference("127.0.0.1:1/x").registry == "127.0.0.1:1"
    label = "a" * 63
    assert parse_reference(f"{label}.localhost/x").registry == f"{label}.localhost"
    check_registry_host(".".join(["c" * 62] * 4))  # 251 characters


@pytest.mark.parametrize("target, tag", [
    (Reference("127.0.0.1:5000", "app"), "bad tag"),
    (Reference("127.0.0.1:5000", "app"), "a/b"),
    (Reference("127.0.0.1:5000", "app"), "t" * 129),
    (LocalReference("oci", "/tmp/layout"), "bad tag"),
    (LocalReference("oci", "/tmp/layout"), "-x"),
    (LocalReference("docker-archive", "/tmp/a.tar"), "bad tag"),
    (LocalReference("docker-archive", "/tmp/a.tar"), "app::1"),
    (LocalReference("docker-archive", "/tmp/a.tar"), f"app@{DIGEST}"),
])
def test_bad_tags_for_each_kind_of_target(target: Reference | LocalReference, tag: str) -> None:
    with pytest.raises(InvalidReference) as info:
        check_target_tag(target, tag)
    assert tag in str(info.value)


def test_good_tags_for_each_kind_of_target() -> None:
    assert check_target_tag(Reference("127.0.0.1:5000", "app"), "v1.2_3-x") == "v1.2_3-x"
    assert check_target_tag(LocalReference("oci", "/l"), "a/b:c@d+e") == "a/b:c@d+e"
    assert check_target_tag(LocalReference("docker-archive", "/a.tar"), "app:v1") == "app:v1"
    with pytest.raises(ConfigurationError, match="must be a str"):
        check_target_tag(LocalReference("oci", "/l"), 5)  # type: ignore[arg-type]


# -- Image ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("base, target, names", [
    (None, "oci:/tmp/x:1", "base"), ("scratch", None, "target"), (5, "oci:/tmp/x:1", "base"),
    ("scratch", b"oci:/tmp/x", "target"),
])
def test_image_arguments_of_the_wrong_type(base: Any, target: Any, names: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        Image(base, target)
    assert names in str(info.value)


@pytest.mark.parametrize("spec", ["oci:/tmp/a\0b:1", "docker-archive:/tmp/a\0b.tar",
                                  "oci:/tmp/x:ta\0g"])
def test_a_nul_byte_in_a_local_image_path(spec: str) -> None:
    with pytest.raises(InvalidReference) as info:
        parse_image_spec(spec)
    assert "NUL" in str(info.value) and repr(spec)[1:-1].split("\\x00")[0] in str(info.value)
    with pytest.raises(InvalidReference):
        Image("scratch", spec)
    with pytest.raises(InvalidReference):
        Image(spec, "oci:/tmp/never-written:1")


@pytest.mark.parametrize("source", ["/tmp/a\0b", "tar:/tmp/a\0b.tar", b"/tmp/a\0b",
                                    Path("/tmp/a\0b")], ids=["str", "tarball", "bytes", "path"])
def test_a_nul_byte_in_an_add_files_source(source: Any, tmp_path: Path) -> None:
    image = Image("scratch", f"oci:{tmp_path / 'out'}:1")
    with pytest.raises(ConfigurationError) as info:
        image.add_files({"/dst": source})
    assert "NUL" in str(info.value) and "/dst" in str(info.value)
    # the positional form takes str and path-like sources (bytes are refused as a type)
    with pytest.raises(ConfigurationError, match="bytes" if isinstance(source, bytes) else "NUL"):
        image.add_files(source, "/dst")
    assert not (tmp_path / "out").exists()


def test_a_nul_byte_in_an_add_files_target(tmp_path: Path) -> None:
    image = Image("scratch", f"oci:{tmp_path / 'out'}:1")
    with pytest.raises(ConfigurationError, match="NUL"):
        image.add_files({"/a\0b": CustomFile(b"x")})
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("target", ["oci:{out}:1", "docker-archive:{out}.tar:app:1"])
@pytest.mark.parametrize("tag", ["bad tag", "", "-x", "a b/c"])
def test_save_refuses_a_bad_tag_before_writing_anything(target: str, tag: str,
                                                         tmp_path: Path) -> None:
    image = Image("scratch", target.format(out=tmp_path / "out"))
    with pytest.raises(CibError) as info:
        image.save(tags=[tag])
    assert isinstance(info.value, (InvalidReference, ConfigurationError))
    assert list(tmp_path.iterdir()) == []


# -- CustomFile ----------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, names", [
    ({"mode": 0o7777777}, "mode=0o7777777"), ({"mode": -1}, "mode=-0o1"),
    ({"mode": 0o10000}, "mode=0o10000"), ({"mode": "644"}, "mode must be an int"),
    ({"mode": 6.44}, "mode must be an int"), ({"mode": True}, "mode must be an int"),
    ({"uid": -1}, "uid=-1"), ({"gid": 2**40}, f"gid={2**40}"), ({"uid": 2**32 - 1}, "uid="),
    ({"uid": "0"}, "uid must be an int"), ({"gid": None}, "gid must be an int"),
    ({"mtime": "yesterday"}, "mtime must be"), ({"mtime": -5}, "mtime=-5"),
    ({"mtime": math.nan}, "mtime must be"), ({"mtime": math.inf}, "mtime=inf"),
    ({"mtime": 8**11}, "mtime="), ({"mtime": True}, "mtime must be"),
    ({"mtime": datetime(1960, 1, 1, tzinfo=timezone.utc)}, "mtime="),
])
def test_custom_file_refuses_values_out_of_range(kwargs: dict[str, Any], names: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        CustomFile(b"x", **kwargs)
    assert names in str(info.value), str(info.value)
    assert "CustomFile" in str(info.value)


def test_custom_file_limits_are_taken() -> None:
    edge = CustomFile(b"x", mode=0o7777, uid=2**32 - 2, gid=0, mtime=8**11 - 1)
    assert (edge.mode, edge.uid, edge.gid, edge.mtime) == (0o7777, 2**32 - 2, 0, 8**11 - 1)
    assert CustomFile(b"x", mode=0, mtime=0.9).mtime == 0
    when = datetime(2020, 1, 1, tzinfo=timezone.utc)
    assert CustomFile("x", mtime=when).mtime == int(when.timestamp())


# -- local targets -------------------------------------------------------------------------------

def _targets(tmp_path: Path) -> dict[str, tuple[str, str]]:
    """A target that cannot be written -> (what the message says, the path it names)."""
    a_file = tmp_path / "file"
    a_file.write_text("x")
    (tmp_path / "dir").mkdir()
    return {
        f"docker-archive:{tmp_path / 'dir'}": ("it is a directory", str(tmp_path / "dir")),
        f"docker-archive:{tmp_path / 'missing' / 'x.tar'}": ("does not exist", str(tmp_path / "missing")),
        f"docker-archive:{a_file}/x.tar": (f"{a_file} is a file", f"{a_file}/x.tar"),
        f"oci:{a_file}:1": (f"{a_file} is a file", str(a_file)),
        f"oci:{a_file}/deeper/layout:1": (f"{a_file} is a file", f"{a_file}/deeper/layout"),
    }


def test_image_refuses_a_local_target_that_cannot_be_written(tmp_path: Path,
                                                             no_requests: list[str]) -> None:
    from cib_core.errors import LocalWriteError

    for target, (reason, path) in _targets(tmp_path).items():
        before = sorted(tmp_path.rglob("*"))
        with pytest.raises(LocalWriteError) as info:
            Image("127.0.0.1:5999/base:1", target)
        assert reason in str(info.value) and path in str(info.value), (target, str(info.value))
        assert sorted(tmp_path.rglob("*")) == before


def test_copy_flatten_rebase_and_index_check_the_target_before_reading(
        tmp_path: Path, no_requests: list[str]) -> None:
    """The source is a registry whose every request would fail the test: the target's path is
    refused first."""
    from cib_core.copy import copy_image
    from cib_core.errors import LocalWriteError
    from cib_core.index import create_index
    from cib_core.rebase import rebase_image
    from cib_core.squash import flatten_image

    source = "127.0.0.1:5999/app:1"
    for target, (reason, _path) in _targets(tmp_path).items():
        calls = [lambda: copy_image(source, target),
                 lambda: flatten_image(source, to=target),
                 lambda: rebase_image(source, old_base="scratch", new_base="scratch", to=target)]
        if target.startswith("oci:"):
            calls.append(lambda: create_index(target, [source]))
        for call in calls:
            with pytest.raises(LocalWriteError, match=reason):
                call()


@pytest.mark.parametrize("name", ["dir", "missing/x.tar", "file/x.tar"])
def test_export_checks_its_output_path_before_reading_a_layer(name: str, tmp_path: Path) -> None:
    from cib_core.errors import LocalWriteError
    from cib_core.formats.flatten import export_filesystem

    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_text("x")

    def never() -> Any:
        raise AssertionError("a layer was opened")

    with pytest.raises(LocalWriteError) as info:
        export_filesystem([never], tmp_path / name)
    assert str(tmp_path / name) in str(info.value)
    with pytest.raises(ConfigurationError, match="NUL"):
        export_filesystem([never], str(tmp_path / "a\0b.tar"))


def test_a_duration_too_long_for_any_record_is_refused() -> None:
    from cib_core.layer_records import parse_duration

    with pytest.raises(ConfigurationError, match="99999999999999999999d"):
        parse_duration("99999999999999999999d")
    assert parse_duration("36600d").days == 36600


@pytest.mark.parametrize("name", ["", "../x", "/etc/passwd", "a/../../b", "a\0b"])
def test_ignore_files_name_files_inside_the_added_directory(name: str, tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    image = Image("scratch", f"oci:{tmp_path / 'out'}:1")
    with pytest.raises(ConfigurationError) as info:
        image.add_files({"/app": str(tmp_path / "src")}, ignore_files=[name])
    assert repr(name) in str(info.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("platform", ["", "  ", 5])
def test_an_empty_platform_is_not_every_platform(platform: Any, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="names no platform"):
        Image("scratch", f"oci:{tmp_path / 'out'}:1", platform=platform)
