"""The referrers list kept under a tag: merging, and winning against writers that overwrite it.

A store in memory stands in for a registry without conditional writes; the races are
scripted, so each interleaving is exercised every run (the real registry runs the same code
in tests/integration/test_cli_attach.py).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from typing import Any, BinaryIO

import pytest

from cib_core import mediatypes as mt
from cib_core.documents import canonical_json
from cib_core.errors import ConfigurationError, ManifestError, NotFound, RegistryError
from cib_core.referrers import (
    EMPTY_DESCRIPTOR,
    Referrer,
    add_referrers,
    artifact_manifest,
    check_media_type,
    read_referrers_tag,
    referrer_of,
)
from cib_core.remote.client import referrers_tag

SUBJECT = "sha256:" + "ab" * 32


def ref(n: int, artifact_type: str = "application/vnd.example.sig.v1") -> Referrer:
    digest = "sha256:" + hashlib.sha256(str(n).encode()).hexdigest()
    return Referrer(digest=digest, media_type=mt.OCI_MANIFEST, size=100 + n,
                    artifact_type=artifact_type, annotations={"n": str(n)})


class MemoryStore:
    """Manifests by tag; ``on_put`` runs after each write (a scripted competing writer)."""

    name = "memory"

    def __init__(self) -> None:
        self.tags: dict[str, tuple[bytes, str]] = {}
        self.puts = 0
        self.on_put: Callable[[MemoryStore], None] | None = None
        self.on_get: Callable[[MemoryStore], None] | None = None

    def has_blob(self, digest: str) -> bool:
        return False

    def open_blob(self, digest: str) -> BinaryIO:
        raise NotFound(digest)

    def put_blob(self, data: BinaryIO | Iterable[bytes], digest: str | None = None,
                 size: int | None = None) -> tuple[str, int]:
        raise AssertionError("no blobs here")

    def get_manifest(self, ref: str) -> tuple[bytes, str, str]:
        if self.on_get is not None:
            self.on_get(self)
        if ref not in self.tags:
            raise NotFound(f"no tag {ref}")
        raw, media_type = self.tags[ref]
        return raw, media_type, "sha256:" + hashlib.sha256(raw).hexdigest()

    def put_manifest(self, raw: bytes, media_type: str, tag: str | None) -> str:
        assert tag is not None
        self.tags[tag] = (raw, media_type)
        self.puts += 1
        if self.on_put is not None:
            hook, self.on_put = self.on_put, None
            hook(self)
        return "sha256:" + hashlib.sha256(raw).hexdigest()

    def close(self) -> None:
        pass

    def entries(self) -> list[str]:
        raw, _ = self.tags[referrers_tag(SUBJECT)]
        return [m["digest"] for m in json.loads(raw)["manifests"]]


def no_sleep(seconds: float) -> None:
    pass


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_first_referrer_starts_an_oci_index_under_the_spec_tag():
    store = MemoryStore()
    clock = FakeClock()
    tag = add_referrers(store, SUBJECT, [ref(1)], settle=0.5, sleep=clock.sleep, clock=clock)
    assert tag == "sha256-" + "ab" * 32
    raw, media_type = store.tags[tag]
    assert media_type == mt.OCI_INDEX
    assert json.loads(raw) == {"schemaVersion": 2, "mediaType": mt.OCI_INDEX,
                               "manifests": [ref(1).to_descriptor()]}
    assert clock.now >= 0.5  # it watched the tag for the settle window


def test_entries_already_listed_are_not_written_again():
    store = MemoryStore()
    add_referrers(store, SUBJECT, [ref(1), ref(2)], settle=0, sleep=no_sleep)
    puts = store.puts
    add_referrers(store, SUBJECT, [ref(2)], settle=0, sleep=no_sleep)
    assert store.puts == puts
    add_referrers(store, SUBJECT, [ref(3)], settle=0, sleep=no_sleep)
    assert store.entries() == [ref(1).digest, ref(2).digest, ref(3).digest]


def test_a_stale_writer_that_overwrites_us_is_merged_again():
    """The lost update: another writer read the list before our write and writes after it."""
    store = MemoryStore()
    add_referrers(store, SUBJECT, [ref(1)], settle=0, sleep=no_sleep)
    stale = canonical_json({"schemaVersion": 2, "mediaType": mt.OCI_INDEX,
                            "manifests": [ref(1).to_descriptor(), ref(9).to_descriptor()]})

    def other_writer(s: MemoryStore) -> None:
        s.tags[referrers_tag(SUBJECT)] = (stale, mt.OCI_INDEX)

    store.on_put = other_writer
    clock = FakeClock()
    add_referrers(store, SUBJECT, [ref(2)], settle=0.5, sleep=clock.sleep, clock=clock)
    assert sorted(store.entries()) == sorted([ref(1).digest, ref(9).digest, ref(2).digest])
    assert store.puts == 3  # 1, ours, then ours again after the overwrite


def test_an_overwrite_late_in_the_window_is_seen():
    store = MemoryStore()
    clock = FakeClock()
    stale = canonical_json({"schemaVersion": 2, "mediaType": mt.OCI_INDEX,
                            "manifests": [ref(9).to_descriptor()]})
    reads = {"n": 0}

    def late_overwrite(s: MemoryStore) -> None:
        reads["n"] += 1
        if reads["n"] == 4 and s.puts == 1:  # well after our write, inside the window
            s.tags[referrers_tag(SUBJECT)] = (stale, mt.OCI_INDEX)

    store.on_get = late_overwrite
    add_referrers(store, SUBJECT, [ref(1)], settle=2.0, sleep=clock.sleep, clock=clock)
    assert sorted(store.entries()) == sorted([ref(1).digest, ref(9).digest])


def test_the_window_grows_with_a_slow_write():
    store = MemoryStore()
    clock = FakeClock()

    def slow(s: MemoryStore) -> None:
        clock.now += 3.0  # the write took 3 s

    store.on_put = slow
    add_referrers(store, SUBJECT, [ref(1)], settle=0.5, sleep=clock.sleep, clock=clock)
    assert clock.now >= 3.0 + 4 * 3.0


def test_writers_that_never_stop_overwriting_make_it_give_up_saying_what_to_do():
    store = MemoryStore()
    empty = canonical_json({"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": []})

    def always(s: MemoryStore) -> None:
        s.tags[referrers_tag(SUBJECT)] = (empty, mt.OCI_INDEX)
        s.on_put = always

    store.on_put = always
    with pytest.raises(RegistryError, match="run the same command again") as info:
        add_referrers(store, SUBJECT, [ref(1)], settle=0, attempts=3, sleep=no_sleep)
    assert info.value.temporary
    assert store.puts == 3


def test_a_tag_holding_something_else_is_left_alone():
    store = MemoryStore()
    store.tags[referrers_tag(SUBJECT)] = (b'{"schemaVersion":2,"config":{}}', mt.OCI_MANIFEST)
    with pytest.raises(ManifestError, match="not an OCI index of referrers"):
        add_referrers(store, SUBJECT, [ref(1)], settle=0, sleep=no_sleep)
    assert store.puts == 0
    assert read_referrers_tag(MemoryStore(), SUBJECT) is None


def test_referrers_tag_follows_the_spec_truncation():
    assert referrers_tag("sha256:" + "a" * 64) == "sha256-" + "a" * 64
    assert referrers_tag("sha512:" + "b" * 128) == "sha512-" + "b" * 64
    long = ("test+algorithm+using+algorithm+separators+and+lots+of+characters+to+excercise+"
            "overall+truncation:alsoSome=InTheEncodedSectionToShowHyphenReplacementAndLotsAndLots"
            "OfCharactersToExcerciseEncodedTruncation")
    assert referrers_tag(long) == ("test-algorithm-using-algorithm-s-alsoSome-InTheEncodedSection"
                                   "ToShowHyphenReplacementAndLotsAndLot")


def test_artifact_manifest_and_its_referrers_entry():
    layer = {"mediaType": "text/plain", "digest": "sha256:" + "1" * 64, "size": 3,
             "annotations": {"org.opencontainers.image.title": "a.txt"}}
    subject = {"mediaType": mt.OCI_MANIFEST, "digest": SUBJECT, "size": 10}
    doc = artifact_manifest("application/vnd.example.x", [layer], subject, {"k": "v"})
    assert doc["config"] == dict(EMPTY_DESCRIPTOR)
    assert EMPTY_DESCRIPTOR["digest"] == "sha256:" + hashlib.sha256(b"{}").hexdigest()
    assert doc["subject"] == subject and doc["layers"] == [layer]
    raw = canonical_json(doc)
    entry = referrer_of(raw, mt.OCI_MANIFEST, "x")
    assert entry.to_descriptor() == {"mediaType": mt.OCI_MANIFEST, "size": len(raw),
                                     "digest": "sha256:" + hashlib.sha256(raw).hexdigest(),
                                     "artifactType": "application/vnd.example.x",
                                     "annotations": {"k": "v"}}
    # without artifactType the spec says: the config's media type
    plain: dict[str, Any] = {"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST,
                             "config": {"mediaType": "application/vnd.example.cfg", "digest": SUBJECT,
                                        "size": 1}, "layers": []}
    assert referrer_of(canonical_json(plain), mt.OCI_MANIFEST, "y").artifact_type == \
        "application/vnd.example.cfg"


@pytest.mark.parametrize("value", ["sbom", "", "application/", "/json", "a b/c", "x/y/z"])
def test_media_types_are_checked(value):
    with pytest.raises(ConfigurationError, match="not a media type"):
        check_media_type(value, "the artifact type")
