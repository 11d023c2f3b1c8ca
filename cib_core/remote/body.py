"""Reading an answer's body within its deadline, and never mistaking a short one for a whole one.

A per-read timeout alone lets a server that sends one byte a minute keep cib forever. Every
request the transport sends gets a :class:`Deadline`: a fixed allowance plus the time its
expected bytes need at a minimum rate (with no size known, the bytes received so far count,
so the allowance grows only as fast as data really arrives). Bodies are read one network
read at a time with the socket's timeout cut to what is left, so no single read outlasts it.

A body that ends before its ``Content-Length`` or breaks off is ``BodyBrokenOff`` (temporary:
asking again may help); one that is too slow is ``DeadlineExceeded`` (not retried).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import requests

from cib_core.errors import RegistryError

_DEADLINE_ATTR = "_cib_deadline"
READ_SIZE = 1024 * 1024


class BodyBrokenOff(RegistryError):
    """An answer's body ended early or its connection broke: a retry may help."""


class DeadlineExceeded(RegistryError):
    """An answer came slower than the transport's minimum rate allows: cut off, not retried."""


@dataclass
class Deadline:
    """When a request must be done: ``start + allowance + max(expected, received) / min_rate``.

    ``read_timeout`` still bounds each single read; the deadline bounds their sum.
    """

    allowance: float
    min_rate: float
    read_timeout: float
    expected: int | None = None
    registry: str | None = None
    clock: Callable[[], float] = time.monotonic
    start: float = field(default=0.0)
    received: int = 0

    def __post_init__(self) -> None:
        if not self.start:
            self.start = self.clock()

    @property
    def at(self) -> float:
        """The moment the request is over its time (on ``clock``)."""
        size = max(self.expected or 0, self.received)
        return self.start + self.allowance + (size / self.min_rate if self.min_rate > 0 else 0.0)

    def remaining(self) -> float:
        return self.at - self.clock()

    def read_timeout_now(self) -> float:
        """The timeout for the next single read: the read timeout, or less if less is left."""
        return max(0.001, min(self.read_timeout, self.remaining()))

    def exceeded(self, what: str) -> DeadlineExceeded:
        elapsed = self.clock() - self.start
        rate = f"{self.min_rate / 1024:g} KiB/s"
        return DeadlineExceeded(
            f"{what}: {self.received} bytes arrived in {elapsed:.0f}s, slower than the "
            f"minimum of {rate} after {self.allowance:g}s; giving up (a slower link needs "
            "CIB_MIN_TRANSFER_RATE or CIB_REQUEST_DEADLINE set higher)",
            registry=self.registry, temporary=False)


def attach_deadline(resp: requests.Response, deadline: Deadline) -> None:
    setattr(resp, _DEADLINE_ATTR, deadline)


def deadline_of(resp: requests.Response) -> Deadline | None:
    found = getattr(resp, _DEADLINE_ATTR, None)
    return found if isinstance(found, Deadline) else None


def _cap_socket_timeout(resp: requests.Response, seconds: float) -> None:
    """Let the next network read of ``resp`` wait ``seconds`` at most (urllib3 connections;
    another adapter's responses keep their own timeouts and the deadline is checked between
    reads)."""
    conn = getattr(resp.raw, "connection", None)
    sock = getattr(conn, "sock", None)
    settimeout = getattr(sock, "settimeout", None)
    if settimeout is not None:
        try:
            settimeout(seconds)
        except OSError:
            pass


def read_piece(resp: requests.Response, size: int = READ_SIZE, what: str = "an answer") -> bytes:
    """Up to ``size`` bytes of ``resp``'s body after at most one network read; ``b""`` at its
    end. Raises ``DeadlineExceeded`` past the request's deadline and ``BodyBrokenOff`` when the
    connection breaks."""
    deadline = deadline_of(resp)
    raw = resp.raw
    if raw is None:
        raise BodyBrokenOff(f"{what}: the answer has no body to read", temporary=True)
    if deadline is not None:
        if deadline.remaining() <= 0:
            raise deadline.exceeded(what)
        _cap_socket_timeout(resp, deadline.read_timeout_now())
    read1 = getattr(raw, "read1", None)
    try:
        piece = read1(size, decode_content=True) if read1 is not None else \
            raw.read(size, decode_content=True)
    except Exception as exc:  # noqa: BLE001 - urllib3's many read errors (and other adapters')
        if deadline is not None and deadline.remaining() <= 0:
            raise deadline.exceeded(what) from exc
        got = deadline.received if deadline is not None else "some"
        raise BodyBrokenOff(f"{what}: the answer broke off after {got} bytes "
                            f"({type(exc).__name__})",
                            registry=deadline.registry if deadline else None,
                            temporary=True) from exc
    data = bytes(piece or b"")
    if deadline is not None:
        deadline.received += len(data)
    return data


def declared_length(resp: requests.Response) -> int | None:
    """The body's length from ``Content-Length``, when it is the length of what is read
    (not with a ``Content-Encoding``, where it counts the encoded bytes)."""
    if resp.headers.get("Content-Encoding", "identity").lower() not in ("", "identity"):
        return None
    length = resp.headers.get("Content-Length", "").strip()
    return int(length) if length.isdigit() else None


def read_body(resp: requests.Response, cap: int, what: str) -> bytes:
    """The whole body of ``resp`` (at most ``cap`` bytes are read; the caller says what more
    means) and close it. A body shorter than its ``Content-Length`` is ``BodyBrokenOff``,
    never a short success."""
    out = bytearray()
    try:
        while len(out) < cap:
            piece = read_piece(resp, min(READ_SIZE, cap - len(out)), what)
            if not piece:
                break
            out += piece
    finally:
        resp.close()
    length = declared_length(resp)
    if length is not None and len(out) < min(length, cap):
        deadline = deadline_of(resp)
        raise BodyBrokenOff(f"{what}: the answer ended after {len(out)} of the {length} bytes "
                            "it announced", registry=deadline.registry if deadline else None,
                            temporary=True)
    return bytes(out)


__all__ = ["READ_SIZE", "BodyBrokenOff", "Deadline", "DeadlineExceeded", "attach_deadline",
           "deadline_of", "declared_length", "read_body", "read_piece"]
