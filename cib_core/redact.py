"""Secrets out of every text cib shows: URLs, headers, log lines, registry answers.

One place for what counts as a secret: credentials in a URL's user info, sensitive query
values (a pre-signed redirect's signature, a token), ``Authorization``-like headers and their
values wherever they appear in text, JSON fields named like secrets, and the literal secrets
a caller knows (a password, its ``user:password`` and base64 forms, tokens).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Iterable, Mapping
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

MASK = "***"

SENSITIVE_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie",
                               "x-registry-auth", "x-amz-security-token"})
"""Headers whose whole value is a credential."""

_SENSITIVE_NAME = re.compile(
    r"(token|secret|password|passwd|signature|sig|credential|key|auth|code|session|_state)", re.I)
"""Query parameter names whose value is a credential: ``X-Amz-Signature``, Azure's ``sig``,
GCS's ``X-Goog-Credential``, CloudFront's ``Key-Pair-Id``, OAuth's ``code`` and ``_state``."""

_URL_HEADERS = frozenset({"location", "content-location"})
_LINK_TARGET = re.compile(r"<([^>]*)>")
_MIN_SECRET = 3
"""Shorter literal secrets are not replaced: masking every "a" would garble the text."""

# An absolute URL, or the query of a relative one ("GET /bucket/blob?X-Amz-Signature=... HTTP/1.1"
# in urllib3's own log lines).
_ABSOLUTE_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s\"'<>]+")
_QUERY_PAIR = re.compile(r"([?&;])([^=&;\s\"'<>#]+)=([^&;\s\"'<>#]*)")

_PATTERNS: tuple[tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]], ...] = (
    # "Authorization: Basic xxx", "'authorization': 'Bearer xxx'", "Proxy-Authorization=..."
    (re.compile(r"(?i)\b((?:proxy-)?authorization['\"]?\s*[:=]\s*['\"]?)(?:(basic|bearer)\s+)?[^'\",}\s]+"),
     lambda m: m.group(1) + (m.group(2) + " " if m.group(2) else "") + MASK),
    # a credential after its scheme anywhere else
    (re.compile(r"(?i)\b(basic|bearer)\s+[A-Za-z0-9._~+/=-]{8,}"), r"\1 " + MASK),
    # JSON (or repr) fields named like secrets
    (re.compile(r"(?i)(['\"](?:password|secret|token|access_token|refresh_token|identitytoken|"
                r"registrytoken|auth)['\"]\s*:\s*['\"])[^'\"]*"), r"\1" + MASK),
    # form fields and query strings outside a URL
    (re.compile(r"(?i)\b((?:password|secret|access_token|refresh_token|token)=)[^&\s'\"]+"), r"\1" + MASK),
)


def _mask_query(query: str) -> str:
    pairs = parse_qsl(query, keep_blank_values=True)
    return urlencode([(k, MASK if _SENSITIVE_NAME.search(k) else v) for k, v in pairs], safe="*:/,")


def redact_url(url: str) -> str:
    """A URL fit for logs and messages: no user info, sensitive query values masked."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    netloc = parts.netloc.rsplit("@", 1)[-1]
    query = _mask_query(parts.query) if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def redact_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Headers fit for logs: credentials masked, and the URLs in ``Location`` and ``Link``
    redacted like any URL (a redirect to blob storage carries a pre-signed signature)."""
    out: dict[str, str] = {}
    for key, value in headers.items():
        lower = key.lower()
        if lower in SENSITIVE_HEADERS:
            value = MASK
        elif lower in _URL_HEADERS:
            value = redact_url(value)
        elif lower == "link":
            value = _LINK_TARGET.sub(lambda m: f"<{redact_url(m.group(1))}>", value)
        out[key] = value
    return out


def secret_forms(username: str | None, secret: str | None, *tokens: str | None) -> tuple[str, ...]:
    """The spellings in which a registry or a log could repeat credentials: the secret, the
    tokens, ``user:secret`` and its base64 (a Basic header) and percent-encoded forms."""
    forms: list[str] = [t for t in tokens if t]
    if secret:
        forms.append(secret)
        forms.append(quote(secret, safe=""))
        if username is not None:
            pair = f"{username}:{secret}"
            forms.append(pair)
            forms.append(base64.b64encode(pair.encode()).decode("ascii"))
    # longest first, so "user:pw" goes before "pw" leaves "user:***" behind
    return tuple(sorted({f for f in forms if len(f) >= _MIN_SECRET}, key=len, reverse=True))


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every known secret replaced, URLs redacted (also a relative URL's query,
    as urllib3 logs it) and anything shaped like a credential masked."""
    for secret in sorted((s for s in secrets if s and len(s) >= _MIN_SECRET), key=len, reverse=True):
        text = text.replace(secret, MASK)
    text = _ABSOLUTE_URL.sub(lambda m: redact_url(m.group(0)), text)
    text = _QUERY_PAIR.sub(
        lambda m: f"{m.group(1)}{m.group(2)}={MASK if _SENSITIVE_NAME.search(m.group(2)) else m.group(3)}",
        text)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


__all__ = ["MASK", "SENSITIVE_HEADERS", "redact_headers", "redact_text", "redact_url", "secret_forms"]
