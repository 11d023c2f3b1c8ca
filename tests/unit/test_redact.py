"""The one redaction: URLs, headers, log lines (cib's and urllib3's) and registry answers."""

from __future__ import annotations

import base64

from cib_core.redact import redact_headers, redact_text, redact_url, secret_forms


def test_redact_url() -> None:
    url = "https://user:pw@blob.example/x/y?X-Amz-Signature=abc&token=zzz&n=10&_state=st"
    out = redact_url(url)
    for secret in ("pw", "abc", "zzz", "st"):
        assert f"={secret}" not in out and f":{secret}@" not in out
    assert "n=10" in out and "blob.example/x/y" in out
    headers = redact_headers({"Authorization": "Bearer tok", "Accept": "a", "Cookie": "c=1"})
    assert headers == {"Authorization": "***", "Accept": "a", "Cookie": "***"}


def test_redaction_of_urls_in_headers() -> None:
    headers = redact_headers({
        "Location": "https://bucket.s3.example/blob?X-Amz-Signature=abc123&X-Amz-Expires=60",
        "Content-Location": "https://user:pw@cdn.example/x?sig=zzz",
        "Link": '</v2/_catalog?n=2&last=b&token=t0k>; rel="next"',
        "Docker-Upload-UUID": "u-1",
    })
    text = repr(headers)
    for secret in ("abc123", "pw@", "zzz", "t0k"):
        assert secret not in text
    assert headers["Location"].startswith("https://bucket.s3.example/blob?")
    assert headers["Link"].startswith("</v2/_catalog?n=2&last=b&") and headers["Link"].endswith('rel="next"')
    assert headers["Docker-Upload-UUID"] == "u-1"


def test_redact_text_removes_credentials() -> None:
    line = ("headers {'Authorization': 'Basic dXNlcjpwYXNz'} body {\"token\": \"eyJhbGciOi.x.y\"} "
            "https://user:hunter2@host/v2/ ?access_token=abc&x=1")
    cleaned = redact_text(line, ["s3cr3t-value"])
    assert "'Authorization': 'Basic ***'" in cleaned
    assert redact_text("{'Authorization': '***'}") == "{'Authorization': '***'}"
    for secret in ("dXNlcjpwYXNz", "eyJhbGciOi", "hunter2", "abc&"):
        assert secret not in cleaned
    assert redact_text("password s3cr3t-value here", ["s3cr3t-value"]) == "password *** here"


def test_redact_text_masks_urllib3_request_lines() -> None:
    """urllib3 logs the request target without scheme or host: its query is masked too."""
    line = ('http://127.0.0.1:41234 "GET /bucket/blob?X-Amz-Algorithm=AWS4-HMAC-SHA256&'
            'X-Amz-Credential=AKIAEXAMPLE%2F20240101&X-Amz-Signature=0badc0ffee&X-Amz-Expires=60 '
            'HTTP/1.1" 200 1048576')
    cleaned = redact_text(line)
    for secret in ("AKIAEXAMPLE", "0badc0ffee"):
        assert secret not in cleaned
    assert "X-Amz-Algorithm=AWS4-HMAC-SHA256" in cleaned and "X-Amz-Expires=60" in cleaned
    assert '"GET /bucket/blob?' in cleaned and cleaned.endswith('HTTP/1.1" 200 1048576')
    azure = redact_text("Starting GET https://acct.blob.core.example/c/b?sv=2020&sig=AbCdEf%3D&se=1")
    assert "AbCdEf" not in azure and "sv=2020" in azure


def test_secret_forms_cover_what_a_registry_may_quote() -> None:
    forms = secret_forms("alice", "pa55word", "tok-123", None)
    basic = base64.b64encode(b"alice:pa55word").decode()
    assert set(forms) >= {"pa55word", "alice:pa55word", basic, "tok-123"}
    assert forms.index("alice:pa55word") < forms.index("pa55word")  # longest first
    quoted = secret_forms("u", "p@ss/word")
    assert "p%40ss%2Fword" in quoted
    assert secret_forms(None, None) == ()
    # a secret too short to replace on its own (masking every "ab" would garble the text)
    # is still caught in its longer spellings
    assert secret_forms("u", "ab") == ("dTphYg==", "u:ab")
    message = "UNAUTHORIZED: user alice:pa55word is not allowed (header Basic " + basic + ")"
    cleaned = redact_text(message, forms)
    assert "pa55word" not in cleaned and basic not in cleaned and "alice" not in cleaned.split(":")[1]
