"""check_error: a registry's answer into the typed error, without a network."""

from __future__ import annotations

import io
import json

import pytest
import requests
import urllib3

from cib_core.errors import (
    AuthenticationError,
    AuthorizationError,
    NotFound,
    RegistryError,
)
from cib_core.remote.body import BodyBrokenOff, read_body
from cib_core.remote.errors import MAX_ERROR_BODY, check_error, registry_error


def _answer(status: int, body: bytes = b"", headers: dict[str, str] | None = None,
            method: str = "GET", url: str = "http://127.0.0.1:5000/v2/app/manifests/1",
            length: int | None = None, enforce: bool = True) -> requests.Response:
    all_headers = {"Content-Type": "application/json",
                   "Content-Length": str(len(body) if length is None else length), **(headers or {})}
    resp = requests.Response()
    resp.status_code = status
    resp.headers = requests.structures.CaseInsensitiveDict(all_headers)
    resp.raw = urllib3.HTTPResponse(body=io.BytesIO(body), headers=all_headers, status=status,
                                    preload_content=False, enforce_content_length=enforce)
    resp.url = url
    resp.request = requests.Request(method, url).prepare()
    return resp


def _errors(*entries: tuple[str, str]) -> bytes:
    return json.dumps({"errors": [{"code": c, "message": m} for c, m in entries]}).encode()


@pytest.mark.parametrize(("status", "body", "headers", "kind", "temporary"), [
    (401, _errors(("UNAUTHORIZED", "auth")), {}, AuthenticationError, False),
    (401, b"", {"WWW-Authenticate": 'Bearer realm="r",error="insufficient_scope"'},
     AuthorizationError, False),
    (403, b"", {}, AuthorizationError, False),
    (400, _errors(("DENIED", "no")), {}, AuthorizationError, False),
    (404, b"", {}, NotFound, False),
    (400, _errors(("MANIFEST_UNKNOWN", "gone"), ("TAG_UNKNOWN", "")), {}, NotFound, False),
    (400, _errors(("MANIFEST_INVALID", "bad")), {}, RegistryError, False),
    (429, _errors(("TOOMANYREQUESTS", "slow down")), {}, RegistryError, True),
    (503, b"", {}, RegistryError, True),
    (400, _errors(("UNAVAILABLE", "later")), {}, RegistryError, True),  # the code says it
    (500, b"<html>oops</html>", {"Content-Type": "text/html"}, RegistryError, True),
])
def test_statuses_and_codes_make_the_type_and_temporary(
        status: int, body: bytes, headers: dict[str, str], kind: type[RegistryError],
        temporary: bool) -> None:
    err = registry_error(_answer(status, body, headers), "manifest 1", registry="127.0.0.1:5000",
                         repository="app", anonymous=False)
    assert type(err) is kind and err.status == status and err.temporary is temporary
    assert str(err).startswith("manifest 1 in 127.0.0.1:5000/app: HTTP ")
    assert "\n" not in str(err)


def test_check_error_passes_what_is_expected_and_gathers_secrets_only_for_errors() -> None:
    asked: list[int] = []

    def secrets() -> list[str]:
        asked.append(1)
        return ["pa55word"]

    ok = _answer(200, b"{}")
    assert check_error(ok, (200,), "x", registry="r", secrets=secrets) is ok and asked == []
    with pytest.raises(NotFound):
        check_error(_answer(404), (200,), "x", registry="r", secrets=secrets)
    assert asked == [1]


def test_secrets_the_registry_quotes_are_removed() -> None:
    body = _errors(("DENIED", "alice:pa55word may not; Basic YWxpY2U6cGE1NXdvcmQ= refused"))
    err = registry_error(_answer(403, body), "manifest 1", registry="r", repository="app",
                         secrets=["alice:pa55word", "YWxpY2U6cGE1NXdvcmQ=", "pa55word"])
    for text in (str(err), repr(err), err.errors[0].message):
        assert "pa55word" not in text and "YWxpY2U6cGE1NXdvcmQ=" not in text
    assert err.codes == ("DENIED",)


def test_error_bodies_are_read_capped_and_details_bounded() -> None:
    flood = _errors(*[("MANIFEST_INVALID", "m" * 1000)] * 50)
    err = registry_error(_answer(400, flood), "x", registry="r")
    assert len(err.errors) <= 20 and all(len(d.message) <= 303 for d in err.errors)
    huge = b'{"errors":[' + b" " * (4 * MAX_ERROR_BODY) + b"]}"
    capped = registry_error(_answer(400, huge), "x", registry="r")
    assert "not valid JSON" in str(capped)  # only the first 64 KiB were read
    cut = registry_error(_answer(400, b'{"errors":[{"co', length=500), "x", registry="r")
    assert "cut off" in str(cut)
    storage = registry_error(_answer(403, b"", url="https://bucket.example/blob?sig=s3cr3t"),
                             "blob d", registry="r", repository="app")
    assert "from bucket.example" in str(storage) and "s3cr3t" not in str(storage)
    head = registry_error(_answer(404, b"ignored", method="HEAD"), "x", registry="r")
    assert isinstance(head, NotFound)


def test_a_body_shorter_than_its_length_is_an_error() -> None:
    with pytest.raises(BodyBrokenOff, match="manifest 1: the answer broke off"):
        read_body(_answer(200, b"abc", length=10), 1 << 20, "manifest 1")  # urllib3 notices
    # an adapter that does not hold the body to its length: cib counts
    with pytest.raises(BodyBrokenOff, match="ended after 3 of the 10 bytes"):
        read_body(_answer(200, b"abc", length=10, enforce=False), 1 << 20, "manifest 1")
    assert read_body(_answer(200, b"abc"), 1 << 20, "manifest 1") == b"abc"
