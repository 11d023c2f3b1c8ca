"""OCILayoutStore: blobs, tags in index.json, verification while streaming."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import io
import json
import os
import socket
from pathlib import Path

import pytest

from cib_core import mediatypes as mt
from cib_core.digest import verified_reader
from cib_core.errors import DigestMismatch, InvalidReference, ManifestError, NotFound
from cib_core.formats.oci_layout import OCILayoutStore


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def manifest_for(store: OCILayoutStore, marker: str = "a") -> bytes:
    config = json.dumps({"architecture": "arm64", "os": "linux", "variant": "v8", "marker": marker,
                         "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    digest, size = store.put_blob(config)
    return json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST,
                       "config": {"mediaType": mt.OCI_CONFIG, "digest": digest, "size": size},
                       "layers": []}).encode()


def test_create_writes_layout_files(tmp_path: Path) -> None:
    store = OCILayoutStore(tmp_path / "l", create=True)
    assert json.loads((tmp_path / "l" / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    assert json.loads((tmp_path / "l" / "index.json").read_text())["manifests"] == []
    assert store.name == f"oci:{tmp_path / 'l'}"
    assert store.tags() == []


def test_missing_layout_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="no OCI image layout"):
        OCILayoutStore(tmp_path / "nothing")


def test_put_blob_from_stream_iterable_and_bytes(tmp_path: Path) -> None:
    store = OCILayoutStore(tmp_path, create=True)
    data = b"x" * 200_000
    assert store.put_blob(io.BytesIO(data)) == (sha(data), len(data))
    assert store.put_blob([b"ab", b"", b"c"], digest=sha(b"abc"), size=3) == (sha(b"abc"), 3)
    assert (tmp_path / "blobs" / "sha256" / sha(data)[7:]).read_bytes() == data
    assert store.has_blob(sha(data)) and not store.has_blob(sha(b"other"))
    with store.open_blob(sha(data)) as stream:
        assert stream.read() == data
    # no temporary files left behind
    assert [p.name for p in (tmp_path / "blobs").iterdir()] == ["sha256"]


def test_put_blob_refuses_wrong_digest_or_size_and_leaves_nothing(tmp_path: Path) -> None:
    store = OCILayoutStore(tmp_path, create=True)
    with pytest.raises(DigestMismatch):
        store.put_blob(b"hello", digest=sha(b"other"))
    with pytest.raises(DigestMismatch):
        store.put_blob(b"hello", digest=sha(b"hello"), size=4)
    assert not store.has_blob(sha(b"hello"))
    assert [p.name for p in (tmp_path / "blobs").iterdir()] == []


def test_bad_digest_strings_never_become_paths(tmp_path: Path) -> None:
    store = OCILayoutStore(tmp_path, create=True)
    for bad in ("sha256:../../etc/passwd", "md5:abc", "sha256:" + "A" * 64):
        with pytest.raises(ManifestError):
            store.has_blob(bad)


def test_open_blob_detects_corruption_before_the_last_bytes(tmp_path: Path) -> None:
    store = OCILayoutStore(tmp_path, create=True)
    data = bytes(range(256)) * 1000
    digest, _ = store.put_blob(data)
    path = tmp_path / "blobs" / "sha256" / digest[7:]
    path.write_bytes(data[:-1] + b"\x00")
    received = bytearray()
    with pytest.raises(DigestMismatch), store.open_blob(digest) as stream:
        while block := stream.read(4096):
            received += block
    assert len(received) < len(data)
    with pytest.raises(NotFound):
        store.open_blob(sha(b"absent"))


def test_verified_reader_small_reads_and_size() -> None:
    data = b"0123456789" * 10
    reader = verified_reader(io.BytesIO(data), sha(data), "t", len(data))
    got = b"".join(iter(lambda: reader.read(7), b""))
    assert got == data
    with pytest.raises(DigestMismatch):
        verified_reader(io.BytesIO(data), sha(data), "t", len(data) + 1).read()


def test_tags_several_in_one_layout_and_retag(tmp_path: Path) -> None:
    store = OCILayoutStore(tmp_path, create=True)
    one, two = manifest_for(store, "1"), manifest_for(store, "2")
    d1 = store.put_manifest(one, mt.OCI_MANIFEST, "v1")
    d2 = store.put_manifest(two, mt.OCI_MANIFEST, "v2")
    assert store.tags() == ["v1", "v2"]
    assert store.get_manifest("v1") == (one, mt.OCI_MANIFEST, d1)
    assert store.get_manifest("v2") == (two, mt.OCI_MANIFEST, d2)
    assert store.get_manifest(d1) == (one, mt.OCI_MANIFEST, d1)
    entry = json.loads((tmp_path / "index.json").read_text())["manifests"][0]
    assert entry["platform"] == {"architecture": "arm64", "os": "linux", "variant": "v8"}
    store.put_manifest(two, mt.OCI_MANIFEST, "v1")   # moves v1
    assert store.get_manifest("v1")[2] == d2
    assert len(json.loads((tmp_path / "index.json").read_text())["manifests"]) == 2
    # untagged: only the blob
    three = manifest_for(store, "3")
    d3 = store.put_manifest(three, mt.OCI_MANIFEST, None)
    assert store.has_blob(d3) and store.tags() == ["v2", "v1"]
    # a second store object sees the same layout
    assert OCILayoutStore(tmp_path).get_manifest("v2")[2] == d2


def test_unknown_tag_names_layout_and_lists_tags(tmp_path: Path) -> None:
    store = OCILayoutStore(tmp_path, create=True)
    store.put_manifest(manifest_for(store), mt.OCI_MANIFEST, "v1")
    store.put_manifest(manifest_for(store, "b"), mt.OCI_MANIFEST, "v2")
    with pytest.raises(NotFound) as info:
        store.get_manifest("nope")
    assert "nope" in str(info.value) and str(tmp_path) in str(info.value) and "v1, v2" in str(info.value)
    with pytest.raises(NotFound, match="holds 2 images"):
        store.get_manifest("")
    with pytest.raises(InvalidReference):
        store.put_manifest(manifest_for(store), mt.OCI_MANIFEST, "bad tag")


def test_untagged_single_entry_and_index_entry(tmp_path: Path) -> None:
    store = OCILayoutStore(tmp_path, create=True)
    child = manifest_for(store)
    child_digest, child_size = store.put_blob(child)
    index = json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": [
        {"mediaType": mt.OCI_MANIFEST, "digest": child_digest, "size": child_size,
         "platform": {"os": "linux", "architecture": "arm64"}}]}).encode()
    index_digest, index_size = store.put_blob(index)
    # as other tools write it: an entry with no ref.name and no mediaType
    (tmp_path / "index.json").write_text(json.dumps(
        {"schemaVersion": 2, "manifests": [{"digest": index_digest, "size": index_size}]}))
    assert store.get_manifest("") == (index, mt.OCI_INDEX, index_digest)
    assert store.get_manifest(child_digest) == (child, mt.OCI_MANIFEST, child_digest)
    with pytest.raises(NotFound, match="available tags: none"):
        store.get_manifest("latest")


def test_index_entry_size_is_checked(tmp_path: Path) -> None:
    store = OCILayoutStore(tmp_path, create=True)
    raw = manifest_for(store)
    digest = store.put_manifest(raw, mt.OCI_MANIFEST, "t")
    index = json.loads((tmp_path / "index.json").read_text())
    index["manifests"][0]["size"] = len(raw) + 1
    (tmp_path / "index.json").write_text(json.dumps(index))
    with pytest.raises(DigestMismatch):
        store.get_manifest("t")
    assert store.get_manifest(digest)[0] == raw


def _not_a_file(path: Path, kind: str) -> None:
    """Put a FIFO, a socket or a directory where a file of the layout belongs."""
    path.unlink(missing_ok=True)
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    else:
        # a socket path is limited to 108 bytes: bind through a descriptor of the directory
        directory = os.open(path.parent, os.O_RDONLY)
        server = socket.socket(socket.AF_UNIX)
        try:
            server.bind(f"/proc/self/fd/{directory}/{path.name}")
        finally:
            server.close()
            os.close(directory)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", ["fifo", "socket", "directory"])
def test_layout_files_that_are_not_regular_files_are_refused_at_once(tmp_path: Path, kind: str) -> None:
    store = OCILayoutStore(tmp_path, create=True)
    raw = manifest_for(store)
    digest = store.put_manifest(raw, mt.OCI_MANIFEST, "v1")
    config_digest = json.loads(raw)["config"]["digest"]
    expected = "FIFO" if kind == "fifo" else kind

    _not_a_file(store.blob_path(config_digest), kind)
    with pytest.raises(ManifestError, match=f"blob {config_digest} is a.*{expected}.*damaged"):
        store.open_blob(config_digest)
    _not_a_file(store.blob_path(digest), kind)
    for ref in ("v1", digest):
        with pytest.raises(ManifestError, match=f"blob {digest} is a.*{expected}"):
            store.get_manifest(ref)
    _not_a_file(tmp_path / "index.json", kind)
    with pytest.raises(ManifestError, match=f"index.json is a.*{expected}"):
        OCILayoutStore(tmp_path).tags()
    _not_a_file(tmp_path / "oci-layout", kind)
    with pytest.raises(ManifestError, match=f"oci-layout is a.*{expected}"):
        OCILayoutStore(tmp_path)


def test_layout_documents_that_are_not_json_name_the_file(tmp_path: Path) -> None:
    OCILayoutStore(tmp_path, create=True)
    (tmp_path / "index.json").write_bytes(b"\xff not json")
    with pytest.raises(ManifestError, match="index.json is not valid JSON"):
        OCILayoutStore(tmp_path).tags()
    (tmp_path / "oci-layout").write_text("[]")
    with pytest.raises(ManifestError, match="unsupported imageLayoutVersion"):
        OCILayoutStore(tmp_path)


def test_a_file_system_without_locks_still_takes_tags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    def no_locks(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    store = OCILayoutStore(tmp_path, create=True)
    store.put_manifest(manifest_for(store), mt.OCI_MANIFEST, "v1")
    assert store.tags() == ["v1"]
    assert "cannot lock the layout" in caplog.text
