"""A registry's answers turned into typed errors.

``check_error`` is the one place an unexpected answer becomes a ``RegistryError``: it reads at
most ``MAX_ERROR_BODY`` bytes of the body, parses the distribution spec's ``errors`` list, picks
the subclass (``AuthenticationError``, ``AuthorizationError``, ``NotFound``), sets ``temporary``
from the status and the codes (what drives retries), and removes every secret the caller knows
from the text the registry sent (a registry may quote the decoded ``user:password`` back).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit

import requests

from cib_core.authn.challenge import parse_www_authenticate
from cib_core.errors import (
    AuthenticationError,
    AuthorizationError,
    NotFound,
    RegistryError,
    RegistryErrorDetail,
)
from cib_core.redact import redact_text
from cib_core.remote.body import read_piece
from cib_core.retry import TEMPORARY_STATUSES

MAX_ERROR_BODY = 64 * 1024
"""The most of an error answer that is read: enough for any ``errors`` list, not a flood."""

ERROR_CODES = frozenset({
    "BLOB_UNKNOWN", "BLOB_UPLOAD_INVALID", "BLOB_UPLOAD_UNKNOWN", "DIGEST_INVALID",
    "MANIFEST_BLOB_UNKNOWN", "MANIFEST_INVALID", "MANIFEST_UNKNOWN", "NAME_INVALID",
    "NAME_UNKNOWN", "SIZE_INVALID", "UNAUTHORIZED", "DENIED", "UNSUPPORTED", "TOOMANYREQUESTS",
})
"""The distribution spec's error codes (registries send others too; they are kept as sent)."""

NOT_FOUND_CODES = frozenset({"BLOB_UNKNOWN", "MANIFEST_UNKNOWN", "NAME_UNKNOWN",
                             "BLOB_UPLOAD_UNKNOWN", "TAG_UNKNOWN"})
TEMPORARY_CODES = frozenset({"TOOMANYREQUESTS", "UNAVAILABLE"})
"""Codes that say "later" whatever the status (Docker Hub's rate limit, distribution's 503)."""

_WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

_MAX_DETAILS = 20
_MAX_DETAIL_MESSAGE = 300


def media_type_of(header: str | None) -> str:
    """The media type of a ``Content-Type`` value, without parameters."""
    return (header or "").split(";", 1)[0].strip()


def read_error_body(resp: requests.Response, cap: int = MAX_ERROR_BODY) -> tuple[bytes, bool]:
    """At most ``cap`` bytes of an error answer and whether it arrived whole; closes ``resp``.
    An error body is best effort: the status already says what went wrong."""
    out = bytearray()
    whole = True
    try:
        while len(out) < cap:
            piece = read_piece(resp, cap - len(out), "an error answer")
            if not piece:
                break
            out += piece
    except RegistryError:  # broken off or too slow: the part that came is what there is
        whole = False
    finally:
        resp.close()
    return bytes(out), whole


def _details(doc: Any, secrets: Sequence[str]) -> list[RegistryErrorDetail]:
    details: list[RegistryErrorDetail] = []
    for entry in doc.get("errors", [])[:_MAX_DETAILS]:
        if isinstance(entry, dict):
            code = redact_text(str(entry.get("code") or "UNKNOWN"), secrets)[:64]
            message = redact_text(" ".join(str(entry.get("message") or "").split()), secrets)
            if len(message) > _MAX_DETAIL_MESSAGE:
                message = message[:_MAX_DETAIL_MESSAGE] + "..."
            details.append(RegistryErrorDetail(code, message))
    return details


Secrets = Sequence[str] | Callable[[], Sequence[str]]
"""Known secrets, or how to gather them (only done when an error is made)."""


def registry_error(resp: requests.Response, what: str, *, registry: str,
                   repository: str | None = None, anonymous: bool = True,
                   secrets: Secrets = (), missing: str | None = None) -> RegistryError:
    """The error for an unexpected answer ``resp`` to the request about ``what``; closes
    ``resp``. ``anonymous`` says whether credentials were sent (for the hint of a 401);
    ``secrets`` are removed from anything the registry wrote; ``missing`` names the thing a
    404 means is absent (``tag 'v1'``), for a message that says so."""
    if callable(secrets):
        secrets = secrets()
    status = resp.status_code
    method = ((resp.request.method if resp.request is not None else None) or "").upper()
    body, whole = (b"", True) if method == "HEAD" else read_error_body(resp)
    resp.close()
    details: list[RegistryErrorDetail] = []
    note = ""
    ctype = media_type_of(resp.headers.get("Content-Type")).lower()
    if body.strip():
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        if isinstance(doc, dict) and isinstance(doc.get("errors"), list):
            details = _details(doc, secrets)
        elif ctype == "text/html" or body.lstrip()[:1] == b"<":
            note = "; it answered with an HTML page, not the registry API (is this a registry?)"
        elif status == 405:
            note = ""  # distribution's plain "Method not allowed"; the status says it all
        elif doc is None:
            note = "; its answer was not valid JSON" + ("" if whole else " (it was cut off)")
        else:
            note = "; its answer had no 'errors' list"
    codes = tuple(d.code for d in details)
    summary = ", ".join(f"{d.code}: {d.message}" if d.message else d.code for d in details)
    where = f"{registry}/{repository}" if repository else registry
    host = urlsplit(resp.url or "").netloc
    source = f" from {host}" if host and host.lower() != registry.lower() else ""
    base = f"{what} in {where}: HTTP {status}{source}" + (f" ({summary})" if summary else "") + note
    base = redact_text(base, secrets)
    challenges = parse_www_authenticate(resp.headers.get("WWW-Authenticate", ""))
    common: dict[str, Any] = {"status": status, "errors": details, "registry": registry,
                              "repository": repository}
    if status == 401 and any(c.error == "insufficient_scope" for c in challenges):
        return AuthorizationError(base + ": these credentials do not allow this action", **common)
    if status == 401:
        hint = (f"no credentials were found; pass auth or log in with `cib auth login {registry}`"
                if anonymous else "the registry refused the credentials")
        return AuthenticationError(f"{base}: {hint}", **common)
    if status == 403 or "DENIED" in codes:
        return AuthorizationError(f"{base}: access denied for these credentials", **common)
    if status == 404 or (codes and set(codes) <= NOT_FOUND_CODES):
        answer = redact_text(f"HTTP {status}" + (f", {summary}" if summary else ""), secrets)
        if "NAME_UNKNOWN" in codes:
            return NotFound(f"repository {where} not found ({what}: {answer})", **common)
        if missing is not None:
            return NotFound(f"{missing} not found in {where} ({answer})", **common)
        return NotFound(base, **common)
    if status == 405 and method in _WRITE_METHODS:
        return _write_refused(resp, method, what, codes, base, common)
    temporary = status in TEMPORARY_STATUSES or any(c in TEMPORARY_CODES for c in codes)
    return RegistryError(base, temporary=temporary, **common)


def _write_refused(resp: requests.Response, method: str, what: str, codes: tuple[str, ...],
                   base: str, common: dict[str, Any]) -> RegistryError:
    """A 405 to a write: deletes switched off, or a registry that takes no writes at all
    (distribution's ``maintenance.readonly``, which answers every write with a plain 405
    and ``Allow: GET, HEAD``)."""
    registry = common["registry"]
    if method == "DELETE" and "UNSUPPORTED" in codes:
        return RegistryError(f"{base}: registry {registry} does not allow deletes "
                             "(docker-registry needs storage.delete.enabled: true)", **common)
    allow = [m.strip().upper() for m in resp.headers.get("Allow", "").split(",") if m.strip()]
    takes_writes = any(m in _WRITE_METHODS for m in allow) if allow else bool(codes)
    if takes_writes:
        return RegistryError(base, **common)  # this one request refused, not every write
    allowed = f", it allows only {', '.join(allow)}" if allow else ""
    target = f" to repository {common['repository']}" if common["repository"] else ""
    return RegistryError(
        f"registry {registry} refuses writes{target}: it is read-only, for example in "
        f"maintenance mode ({what}: HTTP 405{allowed}); try again once it takes writes, or "
        "write to another registry", **common)


def check_error(resp: requests.Response, ok: Iterable[int], what: str, *, registry: str,
                repository: str | None = None, anonymous: bool = True,
                secrets: Secrets = (), missing: str | None = None) -> requests.Response:
    """``resp`` when its status is one of ``ok``; otherwise the ``registry_error`` is raised."""
    if resp.status_code in set(ok):
        return resp
    raise registry_error(resp, what, registry=registry, repository=repository,
                         anonymous=anonymous, secrets=secrets, missing=missing)


__all__ = ["ERROR_CODES", "MAX_ERROR_BODY", "NOT_FOUND_CODES", "TEMPORARY_CODES", "check_error",
           "media_type_of", "read_error_body", "registry_error"]
