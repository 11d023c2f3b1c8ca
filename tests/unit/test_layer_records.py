"""The layer-cache record format, durations and ages, without a registry."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import pytest

from cib_core import mediatypes as mt
from cib_core.digest import sha256_digest
from cib_core.documents import canonical_json
from cib_core.errors import ConfigurationError, ManifestError
from cib_core.layer_records import (
    ARTIFACT_TYPE,
    format_age,
    normalize_key,
    parse_duration,
    parse_record,
    parse_time,
    record_manifest,
    record_tag,
)

KEY = "0123456789abcdef" * 4


@dataclass(frozen=True)
class Layer:
    digest: str = "sha256:" + "1" * 64
    diff_id: str = "sha256:" + "2" * 64
    size: int = 1234
    media_type: str = mt.OCI_LAYER_GZIP


@pytest.mark.parametrize(("text", "expected"), [
    ("7d", timedelta(days=7)), ("12h", timedelta(hours=12)), ("30m", timedelta(minutes=30)),
    ("45s", timedelta(seconds=45)), ("2w", timedelta(weeks=2)), ("1d12h", timedelta(hours=36)),
    ("0s", timedelta(0)), (" 3H ", timedelta(hours=3)),
])
def test_durations(text, expected):
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "7", "d", "7 d", "-1d", "1.5h", "7days", "1y", "h12"])
def test_bad_durations_say_how_to_write_one(text):
    with pytest.raises(ConfigurationError, match="like 7d, 12h, 30m"):
        parse_duration(text)


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0s"), (12, "12s"), (60, "1m0s"), (423, "7m3s"), (5 * 3600 + 12 * 60 + 9, "5h12m"),
    (3 * 86400 + 4 * 3600 + 59, "3d4h"), (86400, "1d0h"), (-5, "0s"),
])
def test_ages(seconds, text):
    assert format_age(timedelta(seconds=seconds)) == text


def test_keys_and_tags():
    assert normalize_key("sha256:" + KEY) == KEY
    assert record_tag(KEY) == "cib-cache-" + KEY
    for bad in ("", KEY[:-1], KEY.upper(), "sha512:" + KEY, KEY + "0"):
        with pytest.raises(ConfigurationError, match="not a sha256 hex digest"):
            normalize_key(bad)


def test_times():
    assert parse_time("2025-01-31T12:00:00Z") == datetime(2025, 1, 31, 12, tzinfo=timezone.utc)
    assert parse_time("2025-01-31T14:00:00.123456789+02:00") == \
        datetime(2025, 1, 31, 12, 0, 0, 123456, tzinfo=timezone.utc)
    for bad in ("yesterday", "2025-01-31", "2025-01-31T12:00:00"):
        with pytest.raises(ValueError):
            parse_time(bad)


def test_a_record_round_trips_and_has_the_documented_shape():
    created = datetime(2025, 1, 31, 12, 0, 0, tzinfo=timezone.utc)
    doc = record_manifest(KEY, Layer(), created=created, repository="127.0.0.1:5000/team/app")
    assert doc == {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "artifactType": ARTIFACT_TYPE,
        "config": {"mediaType": mt.OCI_EMPTY, "digest": sha256_digest(b"{}"), "size": 2,
                   "data": "e30="},
        "layers": [{"mediaType": mt.OCI_LAYER_GZIP, "digest": Layer.digest, "size": 1234}],
        "annotations": {"dev.cib.cache.key": KEY, "dev.cib.cache.diff-id": Layer.diff_id,
                        "dev.cib.cache.repository": "127.0.0.1:5000/team/app",
                        "org.opencontainers.image.created": "2025-01-31T12:00:00Z"},
    }
    raw = canonical_json(doc)
    record = parse_record(raw, record_tag(KEY), "r")
    assert (record.key, record.layer_digest, record.layer_size, record.diff_id, record.created,
            record.repository, record.digest) == (KEY, Layer.digest, 1234, Layer.diff_id, created,
                                                  "127.0.0.1:5000/team/app", sha256_digest(raw))
    assert record.age(created + timedelta(hours=5)) == timedelta(hours=5)


def test_bad_records_are_refused():
    created = datetime(2025, 1, 31, tzinfo=timezone.utc)
    good = record_manifest(KEY, Layer(), created=created)
    for change in ({"artifactType": "application/other"}, {"layers": []},
                   {"annotations": {"dev.cib.cache.key": KEY}},
                   {"annotations": dict(good["annotations"], **{
                       "org.opencontainers.image.created": "last week"})}):
        with pytest.raises(ManifestError):
            parse_record(json.dumps(dict(good, **change)).encode(), "t", "r")
    with pytest.raises(ConfigurationError, match="sha256 layer digest"):
        record_manifest(KEY, Layer(digest="md5:abc"), created=created)
    with pytest.raises(ConfigurationError, match="no time zone"):
        record_manifest(KEY, Layer(), created=datetime(2025, 1, 1))
